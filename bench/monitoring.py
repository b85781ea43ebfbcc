"""What drift and the inference log cost a one-row request, measured in process.

    python -m bench.monitoring                  # the bench model (1000 trees), LightGBM scoring
    python -m bench.monitoring --trees 100 --calls 2000

Times ``app.dataplane.score`` (parse, validate, predict, answer) on a one-row JSON body, the way
``/invocations`` runs it, in three set-ups: nothing watching, drift on (the ring-buffer copy),
drift and the inference log on (the queue put; the writer thread runs meanwhile). Over HTTP a
request also pays the server and client, so these in-process ratios bound the cost from above.
It also times one drift computation over a full 10,000-row window (the background task's work,
once per ``DRIFT_EVERY_SECONDS``). Prints one table; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from app.config import Settings
from app.dataplane import score
from app.monitoring import DriftMonitor, InferenceLog
from app.observability import Metrics
from bench.fixture import ModelSpec, bench_rows, fixed_booster, split_json
from scoring.drift import build_profile
from scoring.loading import LoadedModel
from scoring.predictors import BoosterPredictor
from training.data import FEATURES

BENCH_DIR = Path(__file__).resolve().parent
JSON = "application/json"


def per_call(
    setups: dict[str, Metrics], body: bytes, model: LoadedModel, calls: int, rounds: int = 9
) -> dict[str, float]:
    """Median over ``rounds`` of the mean seconds per ``score`` call, for each set-up. Rounds of
    the set-ups alternate, so a neighbour's load on a shared machine hits them all alike."""
    settings = Settings()
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, metrics in setups.items():
            started = time.perf_counter()
            for _ in range(calls):
                score(body, JSON, model, settings, metrics)
            times[name].append((time.perf_counter() - started) / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def hook_seconds(metrics: Metrics, model: LoadedModel, calls: int = 100_000) -> float:
    """Seconds per ``observe_scored`` call for one row: the whole hot-path cost of the sinks."""
    row, prediction = bench_rows(1), np.array([0.1])
    started = time.perf_counter()
    for _ in range(calls):
        metrics.observe_scored(row, prediction, model)
    return (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.monitoring", description=__doc__.split("\n")[0]
    )
    p.add_argument("--trees", type=int, default=ModelSpec.trees)
    p.add_argument("--calls", type=int, default=3000, help="score calls per round")
    args = p.parse_args(argv)

    booster, _ = fixed_booster(ModelSpec(trees=args.trees), BENCH_DIR / ".cache")
    reference = bench_rows(20_000)
    profile = build_profile(reference, booster.predict(reference), FEATURES)
    predictor = BoosterPredictor(booster, tuple(FEATURES))
    model = LoadedModel(predictor=predictor, uri="bench", profile=profile)
    body = split_json(bench_rows(1))

    drift_only = Metrics()
    drift_only.scored_sinks.append(DriftMonitor(10_000, 1_000, drift_only).observe)
    with tempfile.TemporaryDirectory(prefix="bench-log-") as tmp:
        both = Metrics()
        writer = InferenceLog(
            tmp, sample=1.0, roll_bytes=32 << 20, roll_seconds=5, queue_rows=100_000, metrics=both
        )
        both.scored_sinks += [DriftMonitor(10_000, 1_000, both).observe, writer.observe]
        writer.start()
        setups = {"nothing watching": Metrics(), "drift on": drift_only, "drift + log on": both}
        results = per_call(setups, body, model, args.calls)
        hooks = {name: hook_seconds(m, model) for name, m in setups.items()}
        writer.close()

    window = DriftMonitor(10_000, 1_000, Metrics())
    window.observe(bench_rows(10_000), np.zeros(10_000), model)
    started = time.perf_counter()
    window.compute()
    compute_ms = (time.perf_counter() - started) * 1000

    base = results["nothing watching"]
    print(
        f"one-row score() in process, {args.trees} trees, LightGBM backend, "
        "median of 9 alternating rounds"
    )
    print(f"{'set-up':<20}{'us/call':>10}{'cost':>9}{'hook us':>10}{'hook / call':>13}")
    for name, seconds in results.items():
        hook = hooks[name]
        print(
            f"{name:<20}{seconds * 1e6:>10.1f}{(seconds / base - 1) * 100:>8.1f}%"
            f"{hook * 1e6:>10.1f}{hook / base * 100:>12.1f}%"
        )
    print(f"drift computation over 10,000 rows x 200 features: {compute_ms:.0f} ms (background)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
