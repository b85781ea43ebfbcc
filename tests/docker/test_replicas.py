"""The replica recipe, for real: mlflow + ``--scale api=2`` + the nginx proxy, hit through the
proxy; both replicas answer, and both serve the same registered version. ``down -v`` always runs.

Own compose project (``santander-replicas``) and free ports, so it never touches a developer's
stack. The champion is registered from this host through the stack's MLflow server (as a data
scientist's laptop would, with the lab's account; the passwords are given in the environment, as
a team's ``.env`` would), then the replicas load it by themselves with the API's read-only account.
Skipped when no Docker engine answers, unless ``REQUIRE_DOCKER=1`` (CI), where that fails.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.helpers import PROJECT_DIR, free_port, make_frame

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

PROJECT = "santander-replicas"
FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.scale.yml"]
REPLICAS = 2
BUILD_TIMEOUT = 1500  # cold: the API and MLflow images share their dependency layer
UP_TIMEOUT = 300
READY_TIMEOUT = 240


def _free_range(size: int, avoid: set[int]) -> int:
    """The first port of ``size`` consecutive free ports, none of them in ``avoid``."""
    import socket

    for base in range(21000, 29000, size):
        ports = range(base, base + size)
        if avoid & set(ports):
            continue
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free range of host ports")


def _engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], check=False, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    plugin = subprocess.run(
        ["docker", "compose", "version"], check=False, capture_output=True, timeout=20
    )
    if plugin.returncode == 0:
        return ["docker", "compose"]
    pytest.fail("a Docker engine answers but neither docker-compose nor `docker compose` exists")


@dataclass
class Replicas:
    compose: list[str]
    env: dict[str, str]
    mlflow: str
    proxy: str
    lab_account: tuple[str, str]

    def run(self, *args: str, timeout: float, check: bool = True) -> str:
        cmd = [*self.compose, "-p", PROJECT, *FILES, *args]
        try:
            done = subprocess.run(
                cmd, check=False, cwd=PROJECT_DIR, env=self.env, capture_output=True, text=True,
                timeout=timeout, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{shlex.join(cmd)}` took over {timeout}s")
        if check and done.returncode != 0:
            pytest.fail(f"`{shlex.join(cmd)}` exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done.stdout


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    if not _engine_answers():
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail("REQUIRE_DOCKER=1 but no Docker engine answers (`docker info` failed)")
        pytest.skip("no Docker engine answers")
    first = free_port()
    mlflow_port = free_port()
    # A range of host ports for the replicas (see docker-compose.scale.yml), free now and apart
    # from the proxy's and MLflow's.
    base = _free_range(10, avoid={first, mlflow_port})
    env = {
        **os.environ,
        "MLFLOW_PORT": str(mlflow_port),
        "PROXY_PORT": str(first),
        "API_PORT": f"{base}-{base + 9}",
        "STACK_BIND": "127.0.0.1",
        # Passwords set by the operator (the smoke test covers the generated ones).
        **{f"MLFLOW_{who}_PASSWORD": f"{who.lower()}-{os.urandom(12).hex()}"
           for who in ("ADMIN", "LAB", "API")},
    }  # fmt: skip
    for leak in (
        "COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "MODEL_URI", "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_ADMIN_USERNAME", "MLFLOW_LAB_USERNAME", "MLFLOW_API_USERNAME",
    ):  # fmt: skip
        env.pop(leak, None)
    r = Replicas(
        compose=_compose_command(),
        env=env,
        mlflow=f"http://127.0.0.1:{env['MLFLOW_PORT']}",
        proxy=f"http://127.0.0.1:{env['PROXY_PORT']}",
        lab_account=("lab", env["MLFLOW_LAB_PASSWORD"]),
    )
    r.run("down", "-v", "--remove-orphans", timeout=180, check=False)
    try:
        r.run("build", "mlflow", "api", "proxy", timeout=BUILD_TIMEOUT)
        r.run("up", "-d", "--scale", f"api={REPLICAS}", "proxy", timeout=UP_TIMEOUT)
        yield r
    except BaseException:
        print(r.run("logs", "--no-color", "--tail", "60", timeout=120, check=False))
        raise
    finally:
        r.run("down", "-v", "--remove-orphans", timeout=300, check=False)


def _wait(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(2)
    pytest.fail(f"{url} did not answer 200 within {timeout}s (last: {last!r})")


def test_replicas_behind_the_proxy_serve_one_version(replicas: Replicas) -> None:
    _wait(f"{replicas.mlflow}/health", UP_TIMEOUT)
    assert "Up" in replicas.run("ps", "api", timeout=60)
    # No champion yet: the proxy answers, the replicas are live but not ready.
    _wait(f"{replicas.proxy}/proxy/health", UP_TIMEOUT)
    _wait(f"{replicas.proxy}/health/live", UP_TIMEOUT)  # 502 while the replicas start
    assert httpx.get(f"{replicas.proxy}/health/ready", timeout=10).status_code == 503

    train = subprocess.run(
        [sys.executable, "-m", "training.train", "--quick", "--rows", "2000", "--folds", "2",
         "--num-boost-round", "20", "--experiment", "replicas"],
        cwd=PROJECT_DIR,
        env={**replicas.env, "MLFLOW_TRACKING_URI": replicas.mlflow,
             "MLFLOW_TRACKING_USERNAME": replicas.lab_account[0],
             "MLFLOW_TRACKING_PASSWORD": replicas.lab_account[1]},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    run_id = train.stdout.strip().splitlines()[-1]

    rows, _ = make_frame(5, seed=9)
    body = {"dataframe_split": rows.to_dict(orient="split")}
    upstreams: dict[str, set[str]] = {}
    answers = []
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and len(upstreams) < REPLICAS:
        ready = httpx.get(f"{replicas.proxy}/health/ready", timeout=10)
        if ready.status_code == 200:
            model = httpx.get(f"{replicas.proxy}/model", timeout=10)
            scored = httpx.post(f"{replicas.proxy}/invocations", json=body, timeout=30)
            assert scored.status_code == 200, scored.text
            answers.append(scored.json()["predictions"])
            upstreams.setdefault(model.headers["x-upstream"], set()).add(
                f"{model.json()['version']}/{model.json()['run_id']}"
            )
        time.sleep(1)
    assert len(upstreams) == REPLICAS, f"only {sorted(upstreams)} answered through the proxy"
    assert set().union(*upstreams.values()) == {f"1/{run_id}"}  # every replica, one version
    assert all(a == answers[0] for a in answers)
