"""A shared MLflow server on real PostgreSQL, without Docker: train and serve through it over HTTP.

What the compose ``postgres`` profile runs, reproduced with the machine's own PostgreSQL binaries:
a throwaway cluster (``initdb``/``pg_ctl``) on a free loopback port, ``mlflow server`` on it with
``--serve-artifacts`` and MLflow's basic auth, started by the mlflow image's own entrypoint
(``docker/mlflow-entrypoint.sh``: it waits for the database and sets up the admin, lab and api
accounts), ``python -m training.train --quick`` registering the champion through the server with
the lab's account, and ``python -m app`` serving it with the API's read-only account. The
registry rows are then read back from PostgreSQL itself, so a silent fallback to another store
cannot pass; anonymous callers get 401 and the API's account cannot move the alias (403).

Skipped when no PostgreSQL binaries are found, unless ``REQUIRE_POSTGRES=1`` (CI), where that
fails. ``PG_BIN`` names the folder of ``initdb`` and ``pg_ctl`` if they are not on PATH or under
``/usr/lib/postgresql/*/bin``.
"""

from __future__ import annotations

import configparser
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import PROJECT_DIR, free_port, make_frame, server_process, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
# MLflow checks a password with a deliberately slow hash on every request: generous on busy cores.
AUTH_TIMEOUT = 60


def _pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PG_BIN, PATH, else Debian's newest."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb") or "").parent)
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    candidates += [Path(p) for p in versions]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


@dataclass
class Postgres:
    uri: str
    dsn: dict[str, Any]


@dataclass
class Tracking:
    """The server's URL and its accounts, as ``(username, password)``."""

    url: str
    admin: tuple[str, str]
    lab: tuple[str, str]
    api: tuple[str, str]

    def env(self, account: tuple[str, str]) -> dict[str, str]:
        """A client environment for ``account``, without any other MLFLOW_ variable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_TRACKING_URI"] = self.url
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = account
        return env


def _unprivileged() -> dict[str, Any]:
    """Process credentials for PostgreSQL: it refuses to run as root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    pytest.fail("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg_bin = _pg_bin()
    if pg_bin is None:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(
                "REQUIRE_POSTGRES=1 but no initdb/pg_ctl found (apt-get install postgresql)"
            )
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl)")
    creds = _unprivileged()
    # Not pytest's tmp_path: its parents are private to root; the server may run as another user.
    root = Path(tempfile.mkdtemp(prefix="santander-pg-"))
    if creds:
        os.chown(root, creds["user"], creds["group"])
    data, port = root / "data", free_port()

    def run(*args: str, timeout: float = 120) -> None:
        proc = subprocess.run(
            [str(pg_bin / args[0]), *args[1:]],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=root,
            **creds,
        )
        if proc.returncode != 0:
            log = root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{args[0]} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}{tail}")

    run("initdb", "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run("pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start")
    try:
        import psycopg2

        dsn = {"host": "127.0.0.1", "port": port, "user": "mlflow"}
        conn = psycopg2.connect(dbname="postgres", **dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield Postgres(uri=f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow", dsn=dsn)
    finally:
        run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres: Postgres) -> Iterator[Tracking]:
    """The mlflow image's entrypoint on the PostgreSQL store, artifacts in a temporary folder."""
    root = Path(tempfile.mkdtemp(prefix="santander-mlflow-"))
    port = free_port()
    log = (root / "server.log").open("wb")
    admin_password = "admin-" + os.urandom(12).hex()
    # Output to a file: a pipe nobody reads would fill up and stall the server mid-test.
    proc = subprocess.Popen(
        # Later --host/--port win over the entrypoint's 0.0.0.0:5000 (click keeps the last).
        ["sh", str(PROJECT_DIR / "docker" / "mlflow-entrypoint.sh"),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # As in Dockerfile.mlflow (no job runner and its eight extra processes) and the compose
        # file; the lab's and the API's passwords are left to be generated.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_BACKEND_STORE_URI": postgres.uri,
            "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts"),
            "MLFLOW_WORKERS": "1",
            "MLFLOW_AUTH_DIR": str(root / "auth"),
            "MLFLOW_CREDENTIALS_DIR": str(root / "credentials"),
            "MLFLOW_ADMIN_PASSWORD": admin_password,
        },
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        print(f"\nmlflow server on PostgreSQL up in {time.monotonic() - started:.0f}s")
        yield Tracking(
            url=base,
            admin=("admin", admin_password),
            lab=_credentials(root / "credentials" / "lab" / "credentials"),
            api=_credentials(root / "credentials" / "api" / "credentials"),
        )
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _credentials(path: Path) -> tuple[str, str]:
    """(username, password) from an MLflow credentials file, read as MLflow's client reads it."""
    config = configparser.ConfigParser()
    config.read(path)
    return config["mlflow"]["mlflow_tracking_username"], config["mlflow"][
        "mlflow_tracking_password"
    ]


@pytest.fixture(scope="module")
def champion(tracking_server: Tracking) -> Tracking:
    """Train and register through the server with the lab's account, as the lab would."""
    env = tracking_server.env(tracking_server.lab)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", "--quick"],
        check=False, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"\ntraining through the server: {time.monotonic() - started:.0f}s")
    return tracking_server


def test_registry_refuses_anonymous_callers_and_api_writes(champion: Tracking) -> None:
    rest = champion.url + "/api/2.0/mlflow/registered-models/"
    alias = {"name": "santander", "alias": "champion", "version": "1"}
    assert httpx.get(rest + "search", timeout=AUTH_TIMEOUT).status_code == 401
    assert httpx.post(rest + "alias", json=alias, timeout=AUTH_TIMEOUT).status_code == 401
    assert httpx.get(rest + "search", auth=champion.api, timeout=AUTH_TIMEOUT).status_code == 200
    assert (
        httpx.post(rest + "alias", json=alias, auth=champion.api, timeout=AUTH_TIMEOUT).status_code
        == 403
    )
    assert (
        httpx.post(rest + "alias", json=alias, auth=champion.lab, timeout=AUTH_TIMEOUT).status_code
        == 200
    )
    assert champion.api[0] == "api" and champion.lab[0] == "lab"


def test_lab_may_edit_what_others_made_and_api_may_not(champion: Tracking) -> None:
    """A model and an experiment the lab did not create (the admin's, as from before auth)."""
    rest = champion.url + "/api/2.0/mlflow/"
    made = httpx.post(
        rest + "registered-models/create",
        json={"name": "preexisting"},
        auth=champion.admin,
        timeout=AUTH_TIMEOUT,
    )
    assert made.status_code == 200, made.text
    update = {"name": "preexisting", "description": "edited"}
    for account, status in ((champion.lab, 200), (champion.api, 403)):
        r = httpx.patch(
            rest + "registered-models/update", json=update, auth=account, timeout=AUTH_TIMEOUT
        )
        assert r.status_code == status, (account[0], r.text)
        run = httpx.post(
            rest + "runs/create", json={"experiment_id": "0"}, auth=account, timeout=AUTH_TIMEOUT
        )
        assert run.status_code == status, (account[0], run.text)
    # EDIT, not MANAGE: the lab may not delete what it did not create.
    gone = httpx.request(
        "DELETE",
        rest + "registered-models/delete",
        json={"name": "preexisting"},
        auth=champion.lab,
        timeout=AUTH_TIMEOUT,
    )
    assert gone.status_code == 403, gone.text


def test_registry_lives_in_postgres(postgres: Postgres, champion: Tracking) -> None:
    import psycopg2

    conn = psycopg2.connect(dbname="mlflow", **postgres.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT a.version, v.status FROM registered_model_aliases a "
                "JOIN model_versions v ON v.name = a.name AND v.version = a.version "
                "WHERE a.name = 'santander' AND a.alias = 'champion'"
            )
            rows = cur.fetchall()
            cur.execute("SELECT count(*) FROM runs")
            (runs,) = cur.fetchone() or (0,)
    finally:
        conn.close()
    assert len(rows) == 1 and rows[0][1] == "READY", rows
    assert runs >= 1


def test_api_serves_the_champion_from_postgres(champion: Tracking) -> None:
    import mlflow

    frame, _ = make_frame(25, seed=11)
    body = {"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}}
    env = {**champion.env(champion.api), "MODEL_LOAD_RETRY": "false"}
    with server_process(
        [sys.executable, "-m", "app", "--model-uri", "models:/santander@champion",
         "--host", "127.0.0.1", "--port", "{port}"],
        env=env, timeout=180,
    ) as (base, _proc):  # fmt: skip
        r = httpx.post(base + "/invocations", json=body, timeout=30)
        model_card = httpx.get(base + "/model", timeout=10)
    assert r.status_code == 200, r.text
    served = r.json()["predictions"]

    saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", champion.api[0])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", champion.api[1])
        try:
            mlflow.set_tracking_uri(champion.url)
            mlflow.set_registry_uri(champion.url)
            model = mlflow.lightgbm.load_model("models:/santander@champion")
        finally:
            mlflow.set_tracking_uri(saved[0])
            mlflow.set_registry_uri(saved[1])
    if hasattr(model, "predict_proba"):
        expected = model.predict_proba(frame)[:, 1]
    else:
        expected = model.predict(frame.to_numpy())
    np.testing.assert_allclose(served, expected, rtol=1e-6, atol=1e-9)
    assert model_card.status_code == 200 and "santander" in model_card.text
