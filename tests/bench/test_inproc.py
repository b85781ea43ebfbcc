"""``python -m bench.inproc`` drives the service's own app in process; ``--opcodes`` counts the
bytecodes of a request instead of timing it, and the count holds still between runs (what makes
it usable on a machine too noisy to time a change)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR

MAKE_STORE = """
import sys
from pathlib import Path
from bench import fixture
booster, _ = fixture.fixed_booster(fixture.ModelSpec(trees=5, train_rows=500), Path(sys.argv[1]))
print(fixture.log_to_store(booster, Path(sys.argv[1])))
"""


@pytest.mark.timeout(240)
def test_opcode_counts_hold_still_between_runs(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-c", MAKE_STORE, str(tmp_path)],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    uri = made.stdout.strip().splitlines()[-1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "COMPILED_CACHE_DIR": str(tmp_path / "lleaves"),
    }
    counts = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.inproc", "--model-uri", uri, "--requests", "40",
             "--opcodes", "5"],
            cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=100, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        found = re.search(
            r"(\d+) bytecodes, (\d+) Python calls and (\d+) calls of built-in functions per",
            proc.stdout,
        )
        assert found, proc.stdout
        counts.append(int(found.group(1)))
        assert int(found.group(3)) > 10 and "\nbuilt-in functions called:\n" in proc.stdout
        busiest = proc.stdout.splitlines()[1:6]
        assert len(busiest) == 5 and all(":" in line for line in busiest)
    assert counts[0] > 500  # a one-row request runs hundreds of lines of Python
    assert abs(counts[0] - counts[1]) <= counts[0] * 0.01

    proc = subprocess.run(
        [sys.executable, "-m", "bench.inproc", "--model-uri", uri, "--requests", "300", "--tail"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(
        r"p50 (\d+) p90 (\d+) p99 (\d+) p99.9 (\d+) max (\d+) us; over 1 ms: (\d+) of 300 ",
        proc.stdout,
    )
    assert found, proc.stdout
    figures = [int(g) for g in found.groups()[:5]]
    assert figures == sorted(figures) and figures[0] > 0
