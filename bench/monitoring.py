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
    body: bytes, model: LoadedModel, settings: Settings, metrics: Metrics, calls: int
) -> float:
    """Median over 5 rounds of the mean seconds per ``score`` call."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            score(body, JSON, model, settings, metrics)
        rounds.append((time.perf_counter() - started) / calls)
    return statistics.median(rounds)


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
    settings = Settings()
    body = split_json(bench_rows(1))

    results = {"nothing watching": per_call(body, model, settings, Metrics(), args.calls)}
    drift_metrics = Metrics()
    drift = DriftMonitor(10_000, 1_000, drift_metrics)
    drift_metrics.scored_sinks.append(drift.observe)
    results["drift on"] = per_call(body, model, settings, drift_metrics, args.calls)

    with tempfile.TemporaryDirectory(prefix="bench-log-") as tmp:
        both = Metrics()
        drift_both = DriftMonitor(10_000, 1_000, both)
        writer = InferenceLog(
            tmp, sample=1.0, roll_bytes=32 << 20, roll_seconds=5, queue_rows=100_000, metrics=both
        )
        both.scored_sinks += [drift_both.observe, writer.observe]
        writer.start()
        results["drift + inference log on"] = per_call(body, model, settings, both, args.calls)
        writer.close()

    window = DriftMonitor(10_000, 1_000, Metrics())
    window.observe(bench_rows(10_000), np.zeros(10_000), model)
    started = time.perf_counter()
    window.compute()
    compute_ms = (time.perf_counter() - started) * 1000

    base = results["nothing watching"]
    print(f"one-row score() in process, {args.trees} trees, LightGBM backend, median of 5 rounds")
    print(f"{'set-up':<28}{'us/call':>10}{'cost':>9}")
    for name, seconds in results.items():
        print(f"{name:<28}{seconds * 1e6:>10.1f}{(seconds / base - 1) * 100:>8.1f}%")
    print(f"drift computation over 10,000 rows x 200 features: {compute_ms:.0f} ms (background)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
