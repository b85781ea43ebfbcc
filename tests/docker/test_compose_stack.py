"""The docker-compose stack, for real: build, up, train in the lab, serve from the API, tear down.

What a new team member does on day one, in order: ``docker-compose build``, ``up -d``; the API is
live but not ready (no champion yet); ``docker-compose exec lab python -m training.train --quick``
registers one; the API loads it by itself, without a restart; the README's request scores; the
MLflow UI, the lab and ``/docs`` answer on their published ports; ``./local-serve.sh`` serves the
same champion from the host against the compose tracking server. ``down -v`` always runs.

And who may do what (README, "Who can do what"): with no secret configured, as a fresh clone
starts, the MLflow server refuses anonymous requests (401), the API serves with its read-only
account, which cannot write what the lab made (403), the lab trains and registers with its own
account, and JupyterLab refuses a request without the token generated at first start (403, or a
redirect to its login page) and accepts the one ``docker-compose logs lab`` prints, also after a
restart. The secrets are read from the containers, as an operator would.

Runs under its own compose project name (``santander-smoke``), so it never touches a developer's
own stack or its volumes; it uses the documented ports when they are free, others when not.
Skipped when no Docker engine answers, unless ``REQUIRE_DOCKER=1`` (CI), where that fails.
Measured on this 2-core machine (busy with other jobs): cold `docker-compose build` 466 s (the
three images share one dependency layer), the whole module 12 min cold and 4.5 min warm.
"""

from __future__ import annotations

import configparser
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import requests

from tests.helpers import PROJECT_DIR, free_port, server_process

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]

PROJECT = "santander-smoke"
BUILD_TIMEOUT = 1800  # a cold build of the three images on 2 cores took 466 s; bounded anyway
UP_TIMEOUT = 300
TRAIN_TIMEOUT = 600
READY_TIMEOUT = 180  # the API's back-off between load attempts is capped well below this
# MLflow checks a password with a deliberately slow hash on every request; on 2 busy cores one
# authenticated call took over 5 s.
AUTH_TIMEOUT = 60


def _engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], check=False, capture_output=True, timeout=20
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _compose_command() -> list[str]:
    """``docker-compose`` (v1, as in the README), else the ``docker compose`` plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    plugin = subprocess.run(
        ["docker", "compose", "version"], check=False, capture_output=True, timeout=20
    )
    if plugin.returncode == 0:
        return ["docker", "compose"]
    pytest.fail("a Docker engine answers but neither docker-compose nor `docker compose` exists")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Stack:
    """A running compose project and the host URLs of its published services."""

    compose: list[str]
    env: dict[str, str]
    mlflow: str
    api: str
    lab: str
    token: str = ""  # the Jupyter token the lab printed (generated at first start)
    admin: tuple[str, str] = ("", "")  # MLflow accounts: (username, password)
    api_account: tuple[str, str] = ("", "")
    lab_account: tuple[str, str] = ("", "")

    def run(
        self, *args: str, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*self.compose, "-p", PROJECT, *args]
        try:
            proc = subprocess.run(
                cmd,
                check=False,
                cwd=PROJECT_DIR,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raw = exc.stdout or b""
            out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            pytest.fail(f"`{shlex.join(cmd)}` took over {timeout}s:\n{out[-3000:]}")
        if check and proc.returncode != 0:
            pytest.fail(
                f"`{shlex.join(cmd)}` exited {proc.returncode}:\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def health(self, service: str) -> str:
        cid = self.run("ps", "-q", service, timeout=60).stdout.strip()
        if not cid:
            return "absent"
        out = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Status}}/{{.State.Health.Status}}", cid],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip()

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "60", timeout=120, check=False).stdout


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if not _engine_answers():
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail("REQUIRE_DOCKER=1 but no Docker engine answers (`docker info` failed)")
        pytest.skip("no Docker engine answers")
    ports = {
        name: (default if _port_is_free(default) else free_port())
        for name, default in (("MLFLOW_PORT", 5000), ("API_PORT", 8000), ("LAB_PORT", 10000))
    }
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "STACK_BIND": "127.0.0.1",
    }
    # No secret given: the stack must generate its own (lab token, MLflow passwords).
    for leak in (
        "COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "MODEL_URI", "MLFLOW_BACKEND_STORE_URI",
        "JUPYTER_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
        *(f"MLFLOW_{who}_{what}" for who in ("ADMIN", "API", "LAB")
          for what in ("USERNAME", "PASSWORD")),
    ):  # fmt: skip
        env.pop(leak, None)
    s = Stack(
        compose=_compose_command(),
        env=env,
        mlflow=f"http://localhost:{ports['MLFLOW_PORT']}",
        api=f"http://localhost:{ports['API_PORT']}",
        lab=f"http://localhost:{ports['LAB_PORT']}",
    )
    # A stale project from an interrupted earlier run would hold the ports and the volumes.
    s.run("down", "-v", "--remove-orphans", timeout=180, check=False)
    try:
        started = time.monotonic()
        s.run("build", timeout=BUILD_TIMEOUT)
        print(f"\ndocker-compose build: {time.monotonic() - started:.0f}s")
        s.run("up", "-d", timeout=UP_TIMEOUT)
        _wait_healthy(s, ("mlflow", "lab"), UP_TIMEOUT)
        s.token = _printed_token(s)
        s.admin = ("admin", _read_in(s, "mlflow", "/mlflow/auth/admin-password").strip())
        s.api_account = _credentials(_read_in(s, "mlflow", "/credentials/api/credentials"))
        s.lab_account = _credentials(_read_in(s, "mlflow", "/credentials/lab/credentials"))
        yield s
    except BaseException:
        print(s.logs())
        raise
    finally:
        s.run("down", "-v", "--remove-orphans", timeout=300, check=False)


def _read_in(s: Stack, service: str, path: str) -> str:
    return s.run("exec", "-T", service, "cat", path, timeout=60).stdout


def _credentials(text: str) -> tuple[str, str]:
    """(username, password) from an MLflow credentials file, read as MLflow's client reads it."""
    config = configparser.ConfigParser()
    config.read_string(text)
    section = config["mlflow"]
    return section["mlflow_tracking_username"], section["mlflow_tracking_password"]


def _printed_token(s: Stack, timeout: float = 120) -> str:
    """The token in the login URL that ``docker-compose logs lab`` shows (the last one printed)."""
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        logs = s.run("logs", "--no-color", "lab", timeout=60).stdout
        found = re.findall(re.escape(s.lab) + r"/lab\?token=([0-9a-f]+)", logs)
        if found:
            return found[-1]
        time.sleep(2)
    pytest.fail(f"no {s.lab}/lab?token=... login URL in the lab's logs:\n{logs[-2000:]}")


def _wait_healthy(s: Stack, services: tuple[str, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {name: s.health(name) for name in services}
        if all(state == "running/healthy" for state in states.values()):
            return
        if any(state.startswith(("exited", "dead")) for state in states.values()):
            break
        time.sleep(2)
    pytest.fail(f"services not healthy within {timeout}s: {states}\n{s.logs()}")


def _wait_status(url: str, status: int, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == status:
                return r
            last = (r.status_code, r.text[:300])
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    pytest.fail(f"{url} did not answer {status} within {timeout}s (last: {last!r})")


def readme_request(api: str) -> tuple[str, bytes]:
    """Send the README's example ``/invocations`` request to ``api``; return (content type, body).

    The README's first Python block that posts to ``/invocations`` runs as written, its
    ``:8000`` URL pointed at ``api``; its response must be a 200. Failing that, its first ``curl``
    command to ``/invocations`` (body inline or ``-d @file``) is read. Either way the README cannot
    drift from what the stack serves.
    """
    readme = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL):
        if "/invocations" not in block:
            continue
        code = re.sub(r"http://(?:0\.0\.0\.0|localhost|127\.0\.0\.1):8000", api, block)
        namespace: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), namespace)  # the README's own snippet
        responses = [v for v in namespace.values() if isinstance(v, requests.Response)]
        assert responses, "the README's /invocations snippet keeps no response to check"
        response = responses[-1]
        assert response.status_code == 200, response.text
        sent = response.request
        body = sent.body.encode() if isinstance(sent.body, str) else bytes(sent.body or b"")
        return str(sent.headers.get("Content-Type", "application/json")), body
    # Shell line continuations joined, so a multi-line curl reads as one command.
    text = readme.replace("\\\n", " ")
    for line in text.splitlines():
        if "curl" not in line or "/invocations" not in line:
            continue
        args = shlex.split(line[line.index("curl") :], comments=True)
        content_type, curl_body = "application/json", None
        for flag, value in itertools.pairwise(args):
            if flag in ("-H", "--header") and value.lower().startswith("content-type:"):
                content_type = value.split(":", 1)[1].strip()
            if flag in ("-d", "--data", "--data-binary", "--data-raw"):
                if value.startswith("@") and flag != "--data-raw":
                    curl_body = (PROJECT_DIR / value[1:]).read_bytes()
                else:
                    curl_body = value.encode()
        if curl_body is not None:
            return content_type, curl_body
    pytest.fail("README.md has no example request to /invocations (Python block or curl)")


def test_fresh_api_is_live_but_not_ready(stack: Stack) -> None:
    """No champion yet: the API runs and says why it cannot serve."""
    _wait_status(stack.api + "/health/live", 200, 120)
    r = httpx.get(stack.api + "/health/ready", timeout=5)
    assert r.status_code == 503, r.text
    assert "santander" in r.text or "champion" in r.text, r.text  # the reason names the model


def test_services_answer_on_published_ports(stack: Stack) -> None:
    ui = httpx.get(stack.mlflow + "/", auth=stack.lab_account, timeout=AUTH_TIMEOUT)
    assert ui.status_code == 200 and "<html" in ui.text.lower()
    lab = httpx.get(f"{stack.lab}/lab?token={stack.token}", timeout=AUTH_TIMEOUT)
    assert lab.status_code == 200 and "jupyterlab" in lab.text.lower()
    docs = httpx.get(stack.api + "/docs", timeout=AUTH_TIMEOUT)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_lab_refuses_a_missing_or_wrong_token(stack: Stack) -> None:
    assert len(stack.token) >= 32 and stack.token != "santander"  # generated, not published
    for token in ("", "santander", "0" * len(stack.token)):
        query = f"?token={token}" if token else ""
        contents = httpx.get(f"{stack.lab}/api/contents{query}", timeout=AUTH_TIMEOUT)
        assert contents.status_code == 403, (token, contents.status_code)
        page = httpx.get(f"{stack.lab}/lab{query}", timeout=AUTH_TIMEOUT)
        assert page.status_code == 302 and "/login" in page.headers["location"], (token, page)
    accepted = httpx.get(f"{stack.lab}/api/contents?token={stack.token}", timeout=AUTH_TIMEOUT)
    assert accepted.status_code == 200
    assert "notebooks" in {item["name"] for item in accepted.json()["content"]}


def test_registry_refuses_anonymous_and_unknown_callers(stack: Stack) -> None:
    health = httpx.get(stack.mlflow + "/health", timeout=AUTH_TIMEOUT)  # for healthchecks
    assert health.status_code == 200
    writes = [
        ("registered-models/create", {"name": "santander"}),
        ("experiments/create", {"name": "intruder"}),
        ("registered-models/alias", {"name": "santander", "alias": "champion", "version": "1"}),
    ]
    for auth in (None, ("admin", "password1234"), (stack.lab_account[0], "not-the-password")):
        assert httpx.get(stack.mlflow + "/", auth=auth, timeout=AUTH_TIMEOUT).status_code == 401
        for path, body in writes:
            r = httpx.post(
                f"{stack.mlflow}/api/2.0/mlflow/{path}", json=body, auth=auth, timeout=AUTH_TIMEOUT
            )
            assert r.status_code == 401, (auth and auth[0], path, r.status_code, r.text[:200])
        search = httpx.get(
            stack.mlflow + "/api/2.0/mlflow/registered-models/search",
            auth=auth,
            timeout=AUTH_TIMEOUT,
        )
        assert search.status_code == 401
    admin = httpx.get(
        stack.mlflow + "/api/2.0/mlflow/registered-models/search",
        auth=stack.admin,
        timeout=AUTH_TIMEOUT,
    )
    assert admin.status_code == 200


def test_each_service_uses_its_own_account(stack: Stack) -> None:
    """The API and the lab reach MLflow as `api` and `lab`, from their credentials files."""
    probe = (
        "from mlflow.utils.credentials import read_mlflow_creds as r; c = r(); "
        "print(c.username, c.password)"
    )
    for service, account in (("api", stack.api_account), ("lab", stack.lab_account)):
        out = stack.run("exec", "-T", service, "python", "-c", probe, timeout=120).stdout.split()
        assert out == list(account), service
    assert stack.api_account[0] == "api" and stack.lab_account[0] == "lab"
    assert len({stack.admin[1], stack.api_account[1], stack.lab_account[1]}) == 3


@pytest.fixture(scope="module")
def trained(stack: Stack) -> Stack:
    """Train in the lab as the README says; the API must then get ready on its own."""
    started = time.monotonic()
    out = stack.run(
        "exec", "-T", "lab", "python", "-m", "training.train", "--quick", timeout=TRAIN_TIMEOUT
    )
    print(f"\ntraining in the lab: {time.monotonic() - started:.0f}s\n{out.stdout[-1500:]}")
    _wait_status(stack.api + "/health/ready", 200, READY_TIMEOUT)
    return stack


def test_api_gets_ready_by_itself_and_serves_the_readme_request(trained: Stack) -> None:
    content_type, body = readme_request(trained.api)
    r = httpx.post(
        trained.api + "/invocations",
        content=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) >= 1
    assert all(0.0 <= p <= 1.0 for p in predictions)
    # Same numbers as the champion itself, fetched from the compose server on the host.
    expected = _champion_probabilities(trained, content_type, body)
    np.testing.assert_allclose(predictions, expected, rtol=1e-6, atol=1e-9)


def test_api_container_is_healthy_once_ready(trained: Stack) -> None:
    _wait_healthy(trained, ("api",), 60)


def test_api_account_reads_the_model_but_cannot_write(trained: Stack) -> None:
    """The lab's model and its @champion are readable by the API's account, not writable."""
    rest = trained.mlflow + "/api/2.0/mlflow/"
    api = trained.api_account
    model = httpx.get(
        rest + "registered-models/get", params={"name": "santander"}, auth=api, timeout=AUTH_TIMEOUT
    )
    assert model.status_code == 200, model.text
    champion = httpx.get(
        rest + "registered-models/alias",
        params={"name": "santander", "alias": "champion"},
        auth=api,
        timeout=AUTH_TIMEOUT,
    )
    assert champion.status_code == 200, champion.text
    version = champion.json()["model_version"]
    writes = [
        ("POST", "registered-models/alias", {"name": "santander", "alias": "champion",
                                             "version": version["version"]}),
        ("POST", "model-versions/create", {"name": "santander", "source": version["source"],
                                           "run_id": version["run_id"]}),
        ("PATCH", "registered-models/update", {"name": "santander", "description": "owned"}),
        ("DELETE", "registered-models/delete", {"name": "santander"}),
        ("POST", "runs/create", {"experiment_id": _experiment_id(trained, "santander")}),
    ]  # fmt: skip
    for method, path, body in writes:
        r = httpx.request(method, rest + path, json=body, auth=api, timeout=AUTH_TIMEOUT)
        assert r.status_code == 403, (path, r.status_code, r.text[:300])
    # The API read the artifacts with that account: it serves the champion's version.
    served = httpx.get(trained.api + "/model", timeout=AUTH_TIMEOUT).json()
    assert str(served["version"]) == str(version["version"])


def test_lab_account_owns_what_it_registered(trained: Stack) -> None:
    """The lab trained and registered as `lab`: it may move an alias of the model it created."""
    rest = trained.mlflow + "/api/2.0/mlflow/registered-models/alias"
    lab = trained.lab_account
    champion = httpx.get(
        rest, params={"name": "santander", "alias": "champion"}, auth=lab, timeout=AUTH_TIMEOUT
    )
    version = champion.json()["model_version"]["version"]
    alias = {"name": "santander", "alias": "smoke-check", "version": version}
    assert httpx.post(rest, json=alias, auth=lab, timeout=AUTH_TIMEOUT).status_code == 200
    assert (
        httpx.request("DELETE", rest, json=alias, auth=lab, timeout=AUTH_TIMEOUT).status_code == 200
    )


def _experiment_id(s: Stack, name: str) -> str:
    r = httpx.get(
        s.mlflow + "/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": name},
        auth=s.lab_account,
        timeout=AUTH_TIMEOUT,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["experiment"]["experiment_id"])


def test_local_serve_against_compose_tracking_server(trained: Stack) -> None:
    """`./local-serve.sh` on the host serves the champion registered in the compose stack."""
    env = {
        "MLFLOW_TRACKING_URI": trained.mlflow,
        "MLFLOW_TRACKING_USERNAME": trained.api_account[0],
        "MLFLOW_TRACKING_PASSWORD": trained.api_account[1],
    }
    content_type, body = readme_request(trained.api)
    with server_process(
        [
            "./local-serve.sh",
            "models:/santander@champion",
            "--port",
            "{port}",
            "--host",
            "127.0.0.1",
        ],
        env=env,
        timeout=180,
    ) as (base, _proc):
        local = httpx.post(
            base + "/invocations",
            content=body,
            headers={"Content-Type": content_type},
            timeout=30,
        )
    remote = httpx.post(
        trained.api + "/invocations",
        content=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert local.status_code == 200, local.text
    assert local.json()["predictions"] == pytest.approx(remote.json()["predictions"])


def _champion_probabilities(s: Stack, content_type: str, body: bytes) -> list[float]:
    """Score ``body`` with the champion loaded natively from the compose tracking server."""
    import mlflow
    import pandas as pd

    assert "json" in content_type, "the README example is expected to be JSON"
    payload: Any = json.loads(body)
    split = payload.get("dataframe_split", payload)
    frame = pd.DataFrame(split["data"], columns=split["columns"], dtype="float64")
    # Another test may have pointed MLflow's process-wide URIs elsewhere: swap them for this load,
    # with the API's read-only account.
    saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", s.api_account[0])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", s.api_account[1])
        try:
            mlflow.set_tracking_uri(s.mlflow)
            mlflow.set_registry_uri(s.mlflow)
            model = mlflow.lightgbm.load_model("models:/santander@champion")
        finally:
            mlflow.set_tracking_uri(saved[0])
            mlflow.set_registry_uri(saved[1])
    if hasattr(model, "predict_proba"):
        return [float(p) for p in model.predict_proba(frame)[:, 1]]
    return [float(p) for p in model.predict(frame.to_numpy())]


def test_lab_token_survives_a_restart(trained: Stack) -> None:
    """The generated token is kept in the lab's volume: a restart prints and accepts the same."""
    before = trained.token
    trained.run("restart", "lab", timeout=180)
    _wait_healthy(trained, ("lab",), UP_TIMEOUT)
    url = f"{trained.lab}/lab?token={before}"
    deadline = time.monotonic() + 120
    logs = ""
    while time.monotonic() < deadline and logs.count(url) < 2:  # printed before and after
        time.sleep(2)
        logs = trained.run("logs", "--no-color", "lab", timeout=60).stdout
    assert logs.count(url) >= 2, logs[-2000:]
    assert _printed_token(trained) == before
    r = httpx.get(f"{trained.lab}/api/contents?token={before}", timeout=10)
    assert r.status_code == 200
