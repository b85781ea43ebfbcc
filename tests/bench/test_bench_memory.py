"""The memory part of ``make bench`` (issue 19) runs on tiny sizes, writes its table, and checks
every answer: a 200 that disagrees with in-process predictions is counted wrong and fails the run.

A measuring tool: no figure is asserted, only that every load was sent, answered and judged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from bench import memory, run
from tests.helpers import PROJECT_DIR

TINY = [
    "--trees", "5", "--train-rows", "500", "--rows", "200", "--memory-big-rows", "400",
    "--memory-seconds", "1", "--memory-bodies", "4", "--memory-settle", "1",
]  # fmt: skip


@pytest.mark.timeout(180)
def test_memory_part_runs_on_tiny_sizes_and_checks_every_answer(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--only", "memory", *TINY,
         "--out", str(out), "--cache", str(tmp_path / "cache")],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    m = json.loads((out / "memory.json").read_text())["memory"]
    assert m["limit_mb"] == memory.LIMIT_MB and m["workers"] == 2
    assert [load["key"] for load in m["loads"]] == ["mixed", "mid", "rows", "big"]
    ours = m["servers"]["ours"]
    assert ours["budget_mb"] > 2 * memory.LIMIT_MB
    for name in ("ours", "mlflow"):
        loads = m["servers"][name]["loads"]
        for key, result in loads.items():
            assert result["requests"] > 0, (name, key)
            assert result["checked"] == result["answers"].get("200", 0) > 0, (name, key)
            assert result["wrong"] == 0, (name, key, result["wrong_examples"])
            assert 0 < result["rss_before_mb"] <= result["rss_peak_mb"], (name, key)
            assert result["rss_kept_mb"] > 0, (name, key)
            assert ("holds" in result) == (name == "ours")
        mixed = loads["mixed"]["answers_by_body"]
        assert set(mixed) == {"1 row", "100 rows", "100 rows CSV", "400 rows", "malformed JSON"}
        assert all(k.endswith("to a malformed body") for k in mixed["malformed JSON"])
        assert loads["rows"]["requests"] == 4 and loads["big"]["requests"] == 32

    table = (out / "memory.md").read_text()
    assert "Resident memory under bursts" in table
    assert table.count("| this service |") == 4 and table.count("| mlflow |") == 4
    assert table in proc.stdout


def _answer(predictions: list[float]) -> bytes:
    return orjson.dumps({"predictions": predictions})


def test_every_200_is_judged_against_the_expected_predictions() -> None:
    body = memory.Body("2 rows", b"{}", memory.JSON, np.array([0.25, 0.75]))
    malformed = memory.Body("malformed JSON", memory.MALFORMED, memory.JSON, None)
    no_headers = httpx.Headers()
    answers = memory.Answers()

    memory.judge(body, 200, no_headers, _answer([0.25, 0.75]), answers)
    memory.judge(body, 200, no_headers, _answer([0.25, 0.75 + 1e-6]), answers)
    memory.judge(body, 200, no_headers, _answer([0.25]), answers)
    memory.judge(malformed, 200, no_headers, _answer([0.5]), answers)
    memory.judge(malformed, 400, no_headers, b"{}", answers)
    memory.judge(body, 503, httpx.Headers({"Retry-After": "5"}), b"{}", answers)
    memory.judge(body, 503, no_headers, b"{}", answers)

    assert answers.checked == 3 and answers.wrong == 3
    assert answers.counts == {
        "200": 4,
        "400 to a malformed body": 1,
        memory.RETRY_AFTER: 1,
        "503 without Retry-After": 1,
    }
    result = {"answers": dict(answers.counts), "wrong": answers.wrong, "rss_peak_mb": 10.0,
              "rss_before_mb": 8.0, "rss_kept_mb": 11.0}  # fmt: skip
    assert memory.verdicts(result, budget_mb=10.0) == {
        "peak_within_budget": True,
        "kept_within_1_3x": False,
        "no_other_5xx": False,
        "no_wrong_answers": False,
    }
    report = {"memory": {"servers": {"ours": {"loads": {"mixed": {
        "wrong": answers.wrong, "wrong_examples": answers.wrong_examples}}}}}}  # fmt: skip
    assert run.fail_on_wrong_answers(report) == 1
