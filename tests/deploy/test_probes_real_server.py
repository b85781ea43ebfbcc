"""The Deployment's container, run for real: its command and environment, its probe paths.

The server is started with the manifest's command (host and port swapped for 127.0.0.1 and a free
port) and the ConfigMap's and the container's environment, the tracking URI pointed at the test
store. Where this process may make a mount namespace (root, as in CI), the root filesystem is
remounted read-only for the server and only the manifest's emptyDir paths (stand-ins in a
temporary folder) are writable, as ``readOnlyRootFilesystem: true`` will have it in the pod.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LoggedModel
from tests.deploy.manifests import KUBE_DIR, env_of, kustomize, one
from tests.helpers import PYTHON, free_port, server_process

RESOURCES = kustomize(KUBE_DIR)
CONTAINER = one(RESOURCES, "Deployment")["spec"]["template"]["spec"]["containers"][0]
CONFIGMAP = one(RESOURCES, "ConfigMap")


def _can_make_read_only_root() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "sh", "-c", "mount -o remount,bind,ro / && ! touch /.rw"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


READ_ONLY_ROOT = _can_make_read_only_root()


def _command(port: int) -> list[str]:
    command = list(CONTAINER["command"])
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    assert command[0] == "python"
    return [PYTHON, *command[1:]]


@pytest.fixture(scope="module")
def pod(booster_model: LoggedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("pod")
    env = {k: v for k, v in env_of(CONTAINER, CONFIGMAP).items() if isinstance(v, str)}
    volumes = {}
    for mount in CONTAINER["volumeMounts"]:
        volumes[mount["mountPath"]] = root / mount["name"]
        volumes[mount["mountPath"]].mkdir()
    # The manifest's paths point into the volumes; here the volumes are folders of their own.
    for name in ("TMPDIR", "COMPILED_CACHE_DIR"):
        env[name] = str(volumes[env[name]])
    home = root / "home"
    home.mkdir()
    env["HOME"] = str(home)
    env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]  # the session's store
    env["ADMIN_TOKEN"] = "test-admin-token"
    port = free_port()
    command = _command(port)
    if READ_ONLY_ROOT:
        store = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent
        writable = [*volumes.values(), store]  # the store stands for the remote tracking server
        # Each writable folder becomes a mount of its own first (a bind mount of a read-only
        # mount would be read-only too), then / alone goes read-only.
        binds = [f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))}" for p in writable]
        script = " && ".join([*binds, "mount -o remount,bind,ro /", f"cd {shlex.quote(str(home))}"])
        script += " && exec " + shlex.join(command)
        command = ["unshare", "--mount", "sh", "-c", script]
    with server_process(command, env=env, port=port, log_file=root / "server.log") as (base, _):
        yield base, volumes, home


def test_probe_paths_answer(pod: Any) -> None:
    base, _, _ = pod
    for probe, status in (("startupProbe", 200), ("readinessProbe", 200), ("livenessProbe", 200)):
        path = CONTAINER[probe]["httpGet"]["path"]
        r = httpx.get(base + path, timeout=10)
        assert r.status_code == status, (probe, path, r.text)
    assert httpx.get(base + "/health/ready", timeout=10).json()["status"] == "ready"
    metrics = httpx.get(base + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "http_requests_total" in metrics.text


def test_serves_with_the_manifest_settings(pod: Any, booster_model: LoggedModel) -> None:
    base, _, _ = pod
    frame = booster_model.frame.head(3)
    r = httpx.post(
        base + "/invocations",
        content=frame.to_json(orient="split"),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == pytest.approx(list(booster_model.expected[:3]), abs=1e-9)
    card = httpx.get(base + "/model", timeout=10).json()
    assert card["model_uri"] == CONFIGMAP["data"]["MODEL_URI"]
    assert card["registered_name"] == booster_model.registered_name
    # The admin token from the Secret turns the admin routes on.
    reload = httpx.post(
        base + "/admin/reload", headers={"Authorization": "Bearer test-admin-token"}, timeout=60
    )
    assert reload.status_code == 200, reload.text


@pytest.mark.skipif(not READ_ONLY_ROOT, reason="no mount namespace here to make / read-only")
def test_compiles_on_a_read_only_root_into_its_volume(pod: Any) -> None:
    base, volumes, _ = pod
    # The background compilation writes object code: it must find its volume, not the root.
    deadline = time.monotonic() + 180
    card = httpx.get(base + "/model", timeout=10).json()
    while "in the background" in card["backend_note"] and time.monotonic() < deadline:
        time.sleep(0.5)
        card = httpx.get(base + "/model", timeout=10).json()
    assert card["backend"] == "lleaves", card["backend_note"]
    cache = volumes[env_of(CONTAINER, CONFIGMAP)["COMPILED_CACHE_DIR"]]
    assert any(cache.rglob("*.o"))
