"""``make bench``'s code runs end to end on a tiny configuration and writes its table.

The benchmark is a measuring tool; this checks only that it works (both servers start, agree
with in-process predictions, get measured, and the JSON and Markdown land), not any figure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR

TINY = ["--trees", "5", "--train-rows", "500", "--rows", "50", "--duration", "1"]


@pytest.mark.timeout(400)
def test_bench_runs_on_a_tiny_configuration_and_writes_its_table(tmp_path: Path) -> None:
    if shutil.which("wrk") is None and not Path("/usr/bin/apt-get").exists():
        pytest.skip("wrk is not installed and cannot be installed here")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", *TINY, "--repeats", "1", "--big-rounds", "2",
         "--no-lightgbm-run",
         "--swaps", "2", "--no-memory",  # the memory part has its own test (test_bench_memory)
         "--out", str(out), "--cache", str(tmp_path / "cache")],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=390, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    for server in ("ours", "mlflow"):
        assert results[server]["check_max_abs_diff"] <= 1e-9
        assert results[server]["c1"]["requests"] > 0 and results[server]["c1"]["errors"] == 0
        assert results[server]["cn"]["requests"] > 0
        assert results[server]["big_json_s"]["median"] > 0
        assert results[server]["rss_mb"] > 0 and results[server]["rss_scoring_mb"] > 0
    assert results["ours"]["big_arrow_s"]["median"] > 0
    assert results["ours"]["big_parquet_s"]["median"] > 0
    assert results["floor"]["lightgbm_all_s"] > 0
    turn = results["ours"]["big_in_turn"]  # the big bodies and the floor, round by round
    assert turn["rounds"] == 2
    assert all(len(turn["all"][name]) == 2 for name in ("floor", "json", "parquet", "arrow"))
    assert all(turn["ratio"][name] > 0 for name in ("json", "parquet", "arrow"))
    swaps = results["swaps"]
    assert swaps["swaps"] == 2 and swaps["backend_after_swaps"] == "lleaves"
    assert swaps["rss_cold_mb"] > 0 and swaps["rss_after_swaps_mb"] > 0
    assert results["bare"]["c1"]["requests"] > 0
    pairs = results["floor_pairs"]  # ours and the floor side by side, round by round
    for name in ("ours", "bare"):
        for level in ("c1", "cn"):
            run = pairs[name][level]
            assert run["rounds"] == 2 and run["errors"] == 0
            assert len(run["p50_rounds"]) == len(run["p99_rounds"]) == len(run["rps_rounds"]) == 2
            assert len(run["cpu_us_rounds"]) == 2 and min(run["cpu_us_rounds"]) > 0
    turns = results["mlflow_pairs"]  # ours and mlflow side by side at 16 connections
    for name in ("ours", "mlflow"):
        run = turns[name]["cn"]
        assert run["rounds"] == 2 and run["errors"] == 0 and len(run["rps_rounds"]) == 2
        assert run["connections"] == 16 and min(run["rps_rounds"]) > 0
    overheads = results["overheads"]
    for name in ("ours", "ours_no_drift", "ours_log", "ours_quiet"):
        assert overheads[name]["c1"]["requests"] > 0 and overheads[name]["cn"]["errors"] == 0
    startup = results["startup"]
    assert startup["ready_s"] > 0 and startup["compiled_after_ready_s"] > 0
    assert startup["optimized_after_ready_s"] >= startup["compiled_after_ready_s"]
    scaling = results["scaling"]
    assert all(scaling[f"w{w}"]["requests"] > 0 for w in {1, scaling["cores"]})
    shadow = results["shadow"]
    assert shadow["alone"]["requests"] > 0 and shadow["shadow"]["requests"] > 0
    assert shadow["shadow_rows"] + shadow["shadow_dropped_rows"] > 0
    assert len(shadow["p50_block_ratios"]) == 10 and shadow["p50_ratio"] > 0
    explain = results["ours"]["explain"]
    assert explain["check_max_abs_logit_gap"] <= 1e-9 and explain["rows"] == 50
    assert explain["c1"]["requests"] > 0 and explain["c1"]["errors"] == 0
    assert explain["in_turn"]["requests"] > 0 and explain["in_turn"]["explain_p50_ms"] > 0
    assert explain["rows_s"]["median"] > 0 and explain["engine_ready_s"] >= 0

    table = (out / "latest.md").read_text()
    assert "| 1 row, 1 connection: p50 latency (ms) |" in table
    assert "Arrow IPC stream" in table and "Parquet" in table
    assert "Resident memory across model swaps" in table
    assert "A shadow challenger" in table
    assert "measured in turn for 2 rounds" in table
    assert "| 1 row, 16 connections: requests/s (both running, in turn, 2 rounds) |" in table
    assert "the floor timed in turn for 2 rounds" in table
    assert "Against the HTTP floor" in table and "What monitoring and the access log cost" in table
    assert "| c16 CPU per request (µs) | CPU added |" in table
    assert "| 1 row, 1 connection: p50 latency (ms) |" in table.split("**POST /explain**")[1]
    assert table in proc.stdout  # the same table is printed
