"""The Kubernetes manifests of ``deploy/kubernetes``, read as the cluster would get them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.helpers import PROJECT_DIR

KUBE_DIR = PROJECT_DIR / "deploy" / "kubernetes"
KSERVE_DIR = KUBE_DIR / "kserve"


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of one file (empty ones dropped)."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The resources a kustomization lists, followed into sub-kustomizations (no transformers)."""
    kustomization = load_docs(directory / "kustomization.yaml")[0]
    resources: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        target = (directory / entry).resolve()
        resources += kustomize(target) if target.is_dir() else load_docs(target)
    return resources


def one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any], configmap: dict[str, Any]) -> dict[str, Any]:
    """The environment a container gets: its ConfigMap's data, then its own ``env`` entries."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
        env.update(configmap["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env
