"""The /docs page as a person sees it: a real headless Chromium renders it from a real server,
with no CDN (this machine, like many clients' networks, reaches none)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LoggedModel
from tests.helpers import PYTHON, server_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
    "--window-size=1280,1600",
]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM or "chromium", *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("REQUIRE_BROWSER"),
    reason="chromium not installed (CI installs it and sets REQUIRE_BROWSER=1)",
)
def test_docs_page_renders_the_api_offline(booster_model: LoggedModel, tmp_path: Path) -> None:
    args = [PYTHON, "-m", "app", "--model-uri", booster_model.model_uri, "--port", "{port}"]
    with server_process(args) as (base, _):
        dom = chromium("--dump-dom", f"{base}/docs", profile=tmp_path / "p1").stdout
        shot = tmp_path / "docs.png"
        chromium(f"--screenshot={shot}", f"{base}/docs", profile=tmp_path / "p2")
    # Swagger UI ran in the browser and drew every operation from /openapi.json.
    assert "swagger-ui" in dom and "opblock" in dom, dom[:2000]
    for path in ("/invocations", "/health/ready", "/model", "/metrics"):
        assert f'data-path="{path}"' in dom, path
    assert "Santander transaction scoring" in dom
    assert shot.stat().st_size > 30_000  # a drawn page, not a blank one
    out = os.environ.get("DOCS_SCREENSHOT")
    if out:
        shutil.copy(shot, out)
