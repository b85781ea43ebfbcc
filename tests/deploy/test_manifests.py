"""deploy/kubernetes: valid against the Kubernetes schemas, and true to the service they deploy.

The built-in kinds go through ``kubernetes-validate --strict`` (its schemas ship in the package:
no network). The KServe ones have no schema there: they are parsed, their containers checked as
Kubernetes containers, and everything that names the service (image, command, port, probe paths,
environment) is checked against Dockerfile.api, docker-compose.yml, app/config.py and the routes,
so a change on either side that the other does not follow fails here.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.deploy.manifests import KSERVE_DIR, KUBE_DIR, env_of, kustomize, load_docs, one
from tests.helpers import PROJECT_DIR

VALIDATE = str(Path(sys.executable).parent / "kubernetes-validate")
# The oldest Kubernetes the manifests claim to work on, and the newest the validator knows.
VERSIONS = ["1.29.0", None]
# Read by the process but not Settings fields: MLflow's own, and Python's tempfile.
NOT_SETTINGS = {"MLFLOW_TRACKING_URI", "TMPDIR", "NUMBA_CACHE_DIR"}  # read by MLflow, Python, numba

PLAIN = kustomize(KUBE_DIR)
KSERVE = kustomize(KSERVE_DIR)
DEPLOYMENT = one(PLAIN, "Deployment")
POD = DEPLOYMENT["spec"]["template"]
CONTAINER = POD["spec"]["containers"][0]
CONFIGMAP = one(PLAIN, "ConfigMap")
RUNTIME = one(KSERVE, "ServingRuntime")
RUNTIME_CONTAINER = RUNTIME["spec"]["containers"][0]
ISVC = one(KSERVE, "InferenceService")


def _validate(paths: list[Path], version: str | None) -> subprocess.CompletedProcess[str]:
    args = [VALIDATE, "--strict", *(["-k", version] if version else []), *map(str, paths)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _builtin_files() -> list[Path]:
    files = sorted(KUBE_DIR.rglob("*.yaml"))
    return [p for p in files if p.name != "kustomization.yaml" and KSERVE_DIR not in p.parents]


def _answered_paths(paths: set[str]) -> set[str]:
    """Those of ``paths`` the service routes a GET to (with no model: 503 for readiness)."""
    app = create_app(Settings(model_uri=None))
    client = TestClient(app, raise_server_exceptions=False)
    return {p for p in paths if client.get(p).status_code not in (404, 405)}


def _dockerfile() -> str:
    return (PROJECT_DIR / "Dockerfile.api").read_text()


def _compose_api() -> dict[str, Any]:
    compose = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
    return dict(compose["services"]["api"])


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v or "latest")
def test_builtin_kinds_validate_strict(version: str | None) -> None:
    files = _builtin_files()
    kinds = {doc["kind"] for f in files for doc in load_docs(f)}
    expected = {"Namespace", "ConfigMap", "Deployment", "Service"}
    assert kinds == expected | {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    result = _validate(files, version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(PLAIN)


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    # The check above can fail: a typo that kubectl would silently drop is refused.
    bad = copy.deepcopy(DEPLOYMENT)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"tcpSocket": {}}
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = _validate([path], None)
    assert result.returncode != 0
    assert "readinessprobe" in result.stdout + result.stderr


def test_kserve_containers_are_valid_kubernetes_containers(tmp_path: Path) -> None:
    # ServingRuntime.spec.containers and .volumes are core/v1 types: check them inside a Pod.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "servingruntime-check"},
        "spec": {
            "containers": RUNTIME["spec"]["containers"],
            "volumes": RUNTIME["spec"]["volumes"],
        },
    }
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    result = _validate([path], None)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_is_in_a_kustomization() -> None:
    listed = {
        (d / entry).resolve()
        for d in (KUBE_DIR, KUBE_DIR / "common", KSERVE_DIR)
        for entry in load_docs(d / "kustomization.yaml")[0]["resources"]
    }
    files = {p.resolve() for p in KUBE_DIR.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files <= listed


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", [KUBE_DIR, KSERVE_DIR], ids=["plain", "kserve"])
def test_kubectl_kustomize_renders(directory: Path, tmp_path: Path) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == len(kustomize(directory))
    builtin = [d for d in docs if not d["apiVersion"].startswith("serving.kserve.io/")]
    for doc in builtin:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "santander"
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    result = _validate([path], None)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_and_command_are_the_api_image() -> None:
    compose = _compose_api()
    assert compose["build"]["dockerfile"] == "Dockerfile.api"
    image = compose["image"].rsplit(":", 1)[0]
    for container in (CONTAINER, RUNTIME_CONTAINER):
        assert container["image"].rsplit(":", 1)[0] == image
        cmd = re.search(r"^CMD (\[.*\])$", _dockerfile(), re.MULTILINE)
        assert cmd is not None
        assert container["command"] == json.loads(cmd.group(1))
    for kustomization in (KUBE_DIR, KSERVE_DIR):
        images = load_docs(kustomization / "kustomization.yaml")[0]["images"]
        assert [i["name"] for i in images] == [image]


def test_port_is_the_one_the_server_listens_on() -> None:
    command = CONTAINER["command"]
    port = int(command[command.index("--port") + 1])
    assert re.search(rf"^EXPOSE {port}$", _dockerfile(), re.MULTILINE)
    for container in (CONTAINER, RUNTIME_CONTAINER):
        assert [p["containerPort"] for p in container["ports"]] == [port]
    service = one(PLAIN, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == CONTAINER["ports"][0]["name"]
    assert POD["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert RUNTIME["spec"]["annotations"]["prometheus.kserve.io/port"] == str(port)


def test_probes_and_scrape_path_are_routes_of_the_service() -> None:
    scraped = {
        POD["metadata"]["annotations"]["prometheus.io/path"],
        RUNTIME["spec"]["annotations"]["prometheus.kserve.io/path"],
        RUNTIME["spec"]["annotations"]["prometheus.io/path"],
    }
    probed = set()
    for container in (CONTAINER, RUNTIME_CONTAINER):
        paths = {k: container[k]["httpGet"]["path"] for k in ("startupProbe", "readinessProbe")}
        paths["livenessProbe"] = container["livenessProbe"]["httpGet"]["path"]
        assert paths == {
            "startupProbe": "/health/live",
            "readinessProbe": "/health/ready",
            "livenessProbe": "/health/live",
        }
        probed |= set(paths.values())
    assert scraped == {"/metrics"}
    assert _answered_paths(probed | scraped | {"/no/such/route"}) == probed | scraped


def test_kserve_runs_the_same_container_as_the_deployment() -> None:
    def comparable(container: dict[str, Any]) -> dict[str, Any]:
        same = copy.deepcopy(container)
        for key in ("name", "ports"):
            same.pop(key)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            same[probe]["httpGet"].pop("port")
        same.pop("lifecycle", None)
        return same

    deployment = comparable(CONTAINER)
    # KServe's runtime has no pod-level security context: it sits on the container.
    pod_context = {k: v for k, v in POD["spec"]["securityContext"].items() if k.startswith("run")}
    deployment["securityContext"] = {**pod_context, **deployment["securityContext"]}
    assert comparable(RUNTIME_CONTAINER) == deployment
    assert RUNTIME["spec"]["volumes"] == POD["spec"]["volumes"]


def test_kserve_inference_service_uses_the_v2_runtime() -> None:
    assert RUNTIME["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert ISVC["apiVersion"] == "serving.kserve.io/v1beta1"
    assert RUNTIME["spec"]["protocolVersions"] == ["v2"]
    assert RUNTIME_CONTAINER["name"] == "kserve-container"
    model = ISVC["spec"]["predictor"]["model"]
    assert model["runtime"] == RUNTIME["metadata"]["name"]
    assert model["protocolVersion"] == "v2"
    formats = {f["name"] for f in RUNTIME["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    # The server pulls MODEL_URI from the registry: nothing for KServe's storage initializer.
    assert "storageUri" not in model
    # V2 clients address /v2/models/<name>: the registered model's name.
    registered = re.match(r"models:/([^/@]+)", CONFIGMAP["data"]["MODEL_URI"])
    assert registered is not None
    assert ISVC["metadata"]["name"] == registered.group(1)


@pytest.mark.parametrize("container", [CONTAINER, RUNTIME_CONTAINER], ids=["deployment", "kserve"])
def test_environment_is_what_the_service_reads(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(container, CONFIGMAP)
    fields = {name.upper() for name in Settings.model_fields}
    assert set(env) - fields == NOT_SETTINGS
    assert {"MODEL_URI", "MLFLOW_TRACKING_URI"} <= set(CONFIGMAP["data"])
    # The admin token comes from a Secret, optional: without it the admin routes are off.
    ref = env["ADMIN_TOKEN"]["secretKeyRef"]
    assert ref["key"] == "ADMIN_TOKEN" and ref["optional"] is True
    assert "ADMIN_TOKEN" not in CONFIGMAP["data"]
    # Every value is one the service accepts (types, ranges, the model URI's shape).
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.model_uri == CONFIGMAP["data"]["MODEL_URI"]
    assert settings.model_load_retry is True
    assert settings.model_poll_seconds > 0


@pytest.mark.parametrize("container", [CONTAINER, RUNTIME_CONTAINER], ids=["deployment", "kserve"])
def test_writes_go_to_volumes_on_a_read_only_root(container: dict[str, Any]) -> None:
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    env = env_of(container, CONFIGMAP)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = POD["spec"]["volumes"] if container is CONTAINER else RUNTIME["spec"]["volumes"]
    empty_dirs = {v["name"] for v in volumes if "emptyDir" in v}
    for variable in ("TMPDIR", "COMPILED_CACHE_DIR"):
        assert mounts[env[variable]] in empty_dirs


def test_runs_as_the_images_non_root_user() -> None:
    uid = re.search(r"useradd .*--uid (\d+)", _dockerfile())
    assert uid is not None
    for context in (POD["spec"]["securityContext"], RUNTIME_CONTAINER["securityContext"]):
        # The image's USER is a name: the kubelet can only check runAsNonRoot with a number.
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == int(uid.group(1)) > 0


def test_resources_bound_memory_and_request_cpu_for_the_autoscaler() -> None:
    for container in (CONTAINER, RUNTIME_CONTAINER):
        resources = container["resources"]
        assert "memory" in resources["limits"]
        assert "cpu" in resources["requests"] and "memory" in resources["requests"]
    hpa = one(PLAIN, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in DEPLOYMENT["spec"]  # the HPA owns the count
    pdb = one(PLAIN, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_selectors_match_the_pods() -> None:
    labels = POD["metadata"]["labels"]
    selectors = [
        DEPLOYMENT["spec"]["selector"]["matchLabels"],
        one(PLAIN, "Service")["spec"]["selector"],
        one(PLAIN, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()
    assert POD["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
