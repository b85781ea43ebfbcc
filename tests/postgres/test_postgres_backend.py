"""A shared MLflow server on real PostgreSQL, without Docker: train and serve through it over HTTP.

What the compose ``postgres`` profile runs, reproduced with the machine's own PostgreSQL binaries:
a throwaway cluster (``initdb``/``pg_ctl``) on a free loopback port, ``mlflow server`` on it with
``--serve-artifacts``, ``python -m training.train --quick`` registering the champion through the
server, and ``python -m app`` serving it. The registry rows are then read back from PostgreSQL
itself, so a silent fallback to another store cannot pass.

Skipped when no PostgreSQL binaries are found, unless ``REQUIRE_POSTGRES=1`` (CI), where that
fails. ``PG_BIN`` names the folder of ``initdb`` and ``pg_ctl`` if they are not on PATH or under
``/usr/lib/postgresql/*/bin``.
"""

from __future__ import annotations

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
def tracking_server(postgres: Postgres) -> Iterator[str]:
    """``mlflow server`` on the PostgreSQL store, serving artifacts from a temporary folder."""
    root = Path(tempfile.mkdtemp(prefix="santander-mlflow-"))
    port = free_port()
    log = (root / "server.log").open("wb")
    # Output to a file: a pipe nobody reads would fill up and stall the server mid-test.
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", postgres.uri,
            "--artifacts-destination", str(root / "artifacts"),
            "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # As in Dockerfile.mlflow: no job runner and its eight extra processes.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
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
        yield base
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def champion(tracking_server: str) -> str:
    """Train and register through the server, as a team member would with the shared server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = tracking_server
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", "--quick"],
        check=False, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"\ntraining through the server: {time.monotonic() - started:.0f}s")
    return tracking_server


def test_registry_lives_in_postgres(postgres: Postgres, champion: str) -> None:
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


def test_api_serves_the_champion_from_postgres(champion: str) -> None:
    import mlflow

    frame, _ = make_frame(25, seed=11)
    body = {"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}}
    env = {"MLFLOW_TRACKING_URI": champion, "MODEL_LOAD_RETRY": "false"}
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
    try:
        mlflow.set_tracking_uri(champion)
        mlflow.set_registry_uri(champion)
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
