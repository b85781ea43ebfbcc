"""Optional API keys on the scoring routes: a real server process, keys from a file and the env."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.auth import ApiKeyError, ApiKeys
from app.config import Settings
from app.main import create_app
from tests.conftest import LoggedModel
from tests.helpers import PROJECT_DIR, PYTHON, server_process

JSON = {"content-type": "application/json"}
NAMED_KEY = "alice-key-6f0c5e1d8a2b4c7e9d31"
BARE_KEY = "bare-key-0a9b8c7d6e5f4a3b2c1d"
ENV_KEY = "env-key-13579bdf2468ace0fedc"


def _bearer(key: str) -> dict[str, str]:
    return {**JSON, "Authorization": f"Bearer {key}"}


def test_keys_on_a_real_server(booster_model: LoggedModel, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# scoring clients\nalice:{NAMED_KEY}\n\n  # the batch job\n{BARE_KEY}\n")
    log_file = tmp_path / "server.log"
    env = {
        "API_KEYS_FILE": str(keys_file),
        "API_KEYS": ENV_KEY,
        "COMPILED_PREDICTOR": "false",
        "LOG_FORMAT": "json",
    }
    args = [PYTHON, "-m", "app", "--model-uri", booster_model.model_uri]
    args += ["--host", "127.0.0.1", "--port", "{port}"]
    body = booster_model.frame.to_json(orient="split")
    bare_id = hashlib.sha256(BARE_KEY.encode()).hexdigest()[:8]
    env_id = hashlib.sha256(ENV_KEY.encode()).hexdigest()[:8]
    with server_process(args, env=env, log_file=log_file) as (base, _), httpx.Client() as http:
        for headers in (JSON, _bearer("not-a-key-at-all-000000"), _bearer(NAMED_KEY[:-1])):
            r = http.post(f"{base}/invocations", content=body, headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error_code"] == "UNAUTHORIZED"
            assert r.headers["www-authenticate"] == "Bearer"
        basic = http.post(
            f"{base}/invocations",
            content=body,
            headers={**JSON, "Authorization": f"Basic {NAMED_KEY}"},
        )
        assert basic.status_code == 401
        for key in (NAMED_KEY, BARE_KEY, ENV_KEY, NAMED_KEY):
            r = http.post(f"{base}/invocations", content=body, headers=_bearer(key))
            assert r.status_code == 200, r.text
        assert http.get(f"{base}/model").status_code == 401
        assert http.get(f"{base}/model", headers=_bearer(BARE_KEY)).json()["loading"]
        for path in ("/health", "/health/live", "/health/ready", "/ping", "/version", "/docs"):
            assert http.get(f"{base}{path}").status_code == 200, path
        schema = http.get(f"{base}/openapi.json").json()
        assert schema["components"]["securitySchemes"]["APIKey"]["scheme"] == "bearer"
        assert schema["paths"]["/invocations"]["post"]["security"] == [{"APIKey": []}]
        assert "security" not in schema["paths"]["/health"]["get"]
        metrics = http.get(f"{base}/metrics").text
    assert 'api_key_requests_total{key_id="alice"} 2.0' in metrics
    assert f'api_key_requests_total{{key_id="{bare_id}"}} 2.0' in metrics
    assert f'api_key_requests_total{{key_id="{env_id}"}} 1.0' in metrics
    assert "api_key_rejected_total 5.0" in metrics
    log = log_file.read_text()
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(e.get("key_id") == "alice" and e.get("path") == "/invocations" for e in entries)
    for key in (NAMED_KEY, BARE_KEY, ENV_KEY):
        assert key not in metrics and key not in log
        assert key[:12] not in metrics and key[:12] not in log


def test_without_keys_scoring_is_open_and_the_schema_says_so(booster_model: LoggedModel) -> None:
    settings = Settings(model_uri=booster_model.model_uri, compiled_predictor=False)
    with TestClient(create_app(settings)) as client:
        body = booster_model.frame.to_json(orient="split")
        assert client.post("/invocations", content=body, headers=JSON).status_code == 200
        assert client.get("/model").status_code == 200
        schema = client.get("/openapi.json").json()
        assert "securitySchemes" not in schema["components"]
        operation = schema["paths"]["/invocations"]["post"]
        assert "security" not in operation and "401" not in operation["responses"]
        assert "api_key_requests_total{" not in client.get("/metrics").text


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("short-key", "at least 16 characters"),
        (f"{NAMED_KEY},{NAMED_KEY}", "given twice"),
        (f"a:{NAMED_KEY},a:{BARE_KEY}", "key id 'a' is given twice"),
    ],
)
def test_bad_key_lists_are_refused_without_echoing_a_key(keys: str, message: str) -> None:
    with pytest.raises(ApiKeyError, match=message) as caught:
        Settings(api_keys=keys)  # type: ignore[arg-type]
    assert NAMED_KEY not in str(caught.value) and "short-key" not in str(caught.value)


def test_a_bad_key_list_stops_the_server_with_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "app", "--model-uri", "runs:/0123456789abcdef0123456789abcdef/model"],
        env={**os.environ, "API_KEYS_FILE": str(tmp_path / "missing")},
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "API_KEYS_FILE" in done.stderr and "No such file" in done.stderr


def test_identify_compares_against_every_key() -> None:
    keys = ApiKeys.parse([("1", f"a:{NAMED_KEY}"), ("2", BARE_KEY)])
    assert keys.identify(NAMED_KEY) == "a"
    assert keys.identify(BARE_KEY) == hashlib.sha256(BARE_KEY.encode()).hexdigest()[:8]
    assert keys.identify("") is None and keys.identify(f"a:{NAMED_KEY}") is None
