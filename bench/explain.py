"""What ``POST /explain`` costs: one row against ``/invocations``, and 1,000 rows.

``make bench`` measures it on its own server (``bench.run`` calls ``measure`` and ``render``);
``python -m bench.explain`` measures only this, on the same fixed model, against this service
alone (about a minute with the model cached in ``bench/.cache/``):

    python -m bench.explain [--duration 10] [--repeats 5]

Targets (issue 16): one row at most 3x the one-row ``/invocations`` p50; 1,000 rows under 1 s.
Before timing, the contributions are checked: ``base_value + sum(row)`` must equal the logit of
in-process ``Booster.predict`` to 1e-9 on every checked row.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import fixture, load, servers
from bench.fixture import ModelSpec

JSON = "application/json"
ROWS = 1_000
TOLERANCE = 1e-9
ONE_ROW_TARGET = 3.0  # x the one-row /invocations p50
ROWS_TARGET_S = 1.0


ENGINE_WAIT_SECONDS = 300


def _check(url: str, rows: bytes, expected: np.ndarray) -> tuple[float, int]:
    """Exit (status 1) unless each row's contributions add up to the logit of ``expected``;
    else the largest gap and the rows checked."""
    answer = load.post(url, rows, JSON)
    answer.raise_for_status()
    data = answer.json()
    sums = data["base_value"] + np.sum(np.asarray(data["contributions"]), axis=1)
    p = np.asarray(expected[: len(sums)], dtype=np.float64)
    gap = float(np.max(np.abs(sums - np.log(p / (1 - p)))))
    if not gap <= TOLERANCE:
        raise SystemExit(f"error: /explain contributions miss the logit by {gap:.3g}")
    return gap, len(sums)


def _wait_for_engine(base: str) -> float:
    """Seconds until ``/model`` says the explanation engine is decided (it is built in the
    background after the first ``/explain``): the figures below are the engine's, not
    LightGBM's that answers meanwhile."""
    started = time.monotonic()
    while True:
        note = str(load.httpx_get_json(base + "/model").get("explainer"))
        if "while" not in note and "decided by" not in note:
            return time.monotonic() - started
        if time.monotonic() - started > ENGINE_WAIT_SECONDS:
            raise SystemExit(f"error: the explanation engine is not ready: {note}")
        time.sleep(0.25)


def measure(
    base: str,
    one: Path,
    rows: bytes,
    expected: np.ndarray,
    *,
    wrk: str,
    duration: float,
    repeats: int,
    work_dir: Path,
) -> dict[str, Any]:
    """Check ``/explain`` against ``expected`` (in-process probabilities of the rows in
    ``rows``), then time one row (wrk, 1 connection; then one request each to ``/explain`` and
    ``/invocations`` in turn, ``load.interleaved``, for the ratio) and the ``rows`` body (median
    of ``repeats``)."""
    url = base + "/explain"
    first_gap, _ = _check(url, rows, expected)  # the first /explain starts the engine's build
    engine_ready_s = _wait_for_engine(base)
    gap, checked = _check(url, rows, expected)  # and the engine's own answers
    c1 = load.run_wrk(
        wrk,
        url,
        one,
        content_type=JSON,
        connections=1,
        seconds=duration,
        threads=1,
        work_dir=work_dir,
    )
    taken = load.interleaved(
        {"explain": url, "invocations": base + "/invocations"},
        one.read_bytes(),
        JSON,
        seconds=duration,
    )
    p50 = {name: float(np.median(seconds)) * 1000 for name, seconds in taken.items()}
    return {
        "check_max_abs_logit_gap": max(first_gap, gap),
        "rows": checked,
        "engine_ready_s": engine_ready_s,
        "c1": vars(c1) | {"rps": c1.rps},
        "in_turn": {
            "requests": len(taken["explain"]),
            "explain_p50_ms": p50["explain"],
            "invocations_p50_ms": p50["invocations"],
        },
        "rows_s": load.times_summary(load.time_posts(url + "?top=5", rows, JSON, repeats)),
    }


def render(r: dict[str, Any]) -> list[str]:
    """The table's lines (empty when the run did not measure /explain)."""
    explain = (r.get("ours") or {}).get("explain")
    if not explain:
        return []
    in_turn = explain.get("in_turn")
    if in_turn:  # both on the same server at the same moments: the ratio this machine can show
        one, invocations = in_turn["explain_p50_ms"], in_turn["invocations_p50_ms"]
    else:
        one = explain["c1"]["p50_ms"]
        invocations = ((r.get("ours") or {}).get("c1") or {}).get("p50_ms")
    ratio = one / invocations if invocations else None
    seconds = explain["rows_s"]["median"]

    def holds(ok: bool | None) -> str:
        return "—" if ok is None else "yes" if ok else "**no**"

    return [
        "",
        "**POST /explain** (exact contributions, this service)",
        "",
        "| measure | /explain | /invocations | ratio | target | holds |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| 1 row, 1 connection: p50 latency (ms) | {one:.3g} | "
        f"{'—' if invocations is None else f'{invocations:.3g}'} | "
        f"{'—' if ratio is None else f'{ratio:.3g}'} | ≤ {ONE_ROW_TARGET:g}x | "
        f"{holds(None if ratio is None else ratio <= ONE_ROW_TARGET)} |",
        f"| {explain['rows']:,} rows, split JSON, ?top=5: seconds (median) | {seconds:.3g} | | "
        f"| < {ROWS_TARGET_S:g} s | {holds(seconds < ROWS_TARGET_S)} |",
        "",
        *(
            [
                f"One row: one request each to /explain and /invocations in turn, one connection "
                f"each ({in_turn['requests']:,} each), medians. wrk alone on /explain: p50 "
                f"{explain['c1']['p50_ms']:.3g} ms, p99 {explain['c1']['p99_ms']:.3g} ms.",
                "",
            ]
            if in_turn
            else []
        ),
        f"Contributions checked: base value + sum = logit of in-process `Booster.predict` to "
        f"{explain['check_max_abs_logit_gap']:.2g} on {explain['rows']:,} rows, from LightGBM "
        f"(the first /explain) and from the fast engine, built in the background "
        f"{explain.get('engine_ready_s', float('nan')):.1f} s after it.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__.split("\n")[0])
    p.add_argument("--trees", type=int, default=1000)
    p.add_argument("--leaves", type=int, default=13)
    p.add_argument("--train-rows", type=int, default=20_000)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = p.parse_args(argv)
    wrk = load.ensure_wrk()
    spec = ModelSpec(trees=args.trees, leaves=args.leaves, train_rows=args.train_rows)
    booster, _ = fixture.fixed_booster(spec, args.cache)
    x = fixture.bench_rows(ROWS)
    expected = booster.predict(x)
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp_name:
        tmp = Path(tmp_name)
        uri = fixture.log_to_store(booster, tmp)
        one = tmp / "one.body"
        one.write_bytes(fixture.split_json(x[:1]))
        rows = fixture.split_json(x)
        port = servers.free_port()
        env = {"COMPILED_CACHE_DIR": str(args.cache / "lleaves"), "COMPILE_IN_BACKGROUND": "false"}
        command = servers.ours_command(uri, port, None)
        with servers.running(
            "ours", command, port, ready_path="/health/ready", log_dir=tmp, env=env
        ) as server:
            c1 = load.run_wrk(
                wrk,
                server.base + "/invocations",
                one,
                content_type=JSON,
                connections=1,
                seconds=args.duration,
                threads=1,
                work_dir=tmp,
            )
            explained = measure(
                server.base,
                one,
                rows,
                expected,
                wrk=wrk,
                duration=args.duration,
                repeats=args.repeats,
                work_dir=tmp,
            )
    results = {"ours": {"c1": vars(c1), "explain": explained}}
    print(f"model {spec.name}")
    print("\n".join(render(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
