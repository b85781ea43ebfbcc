"""Turn one benchmark run's figures into the Markdown table (printed, and saved with the JSON)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

_BIG_BODIES = (
    ("split JSON", "json", 0.6),
    ("Parquet", "parquet", 0.35),
    ("Arrow IPC stream", "arrow", 0.35),
)


def _against_the_floor(r: dict[str, Any], rows_n: str) -> list[str]:
    """The big bodies against in-process LightGBM, measured in turn (``bench.run.big_in_turn``)."""
    cores = r.get("floor", {}).get("cores", "?")
    turn = r["ours"]["big_in_turn"]
    lines = [
        f"**{rows_n} rows against the in-process floor** (LightGBM `Booster.predict`, all "
        f"{cores} threads, in the benchmark's process; each body posted and the floor timed "
        f"in turn for {turn['rounds']} rounds, the order rotating: figures are the medians "
        "of the rounds, each ratio the median of the rounds' own)",
        "",
        "| body | bytes | this service (s) | floor (s) | ÷ floor | target | holds |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    floor_s = turn["median_s"]["floor"]
    for label, name, limit in _BIG_BODIES:
        ratio = turn["ratio"].get(name)
        lines.append(
            f"| {label} | {_fmt(_get(r, 'ours', f'big_{name}_bytes'))} | "
            f"{_fmt(turn['median_s'].get(name))} | {_fmt(floor_s)} | {_fmt(ratio)} | "
            f"≤ {limit:g}x | {_verdict(ratio, limit, False)} |"
        )
    return [*lines, ""]


def _get(data: dict[str, Any], *path: str) -> float | None:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _gain(theirs: float | None, ours: float | None, higher_is_better: bool) -> float | None:
    if theirs is None or ours is None or theirs <= 0 or ours <= 0:
        return None
    return ours / theirs if higher_is_better else theirs / ours


def _median_ratio(mine: list[float], theirs: list[float]) -> float:
    """The median of the rounds' own ratios ``mine ÷ theirs`` (figures taken in turn)."""
    return float(statistics.median(a / b for a, b in zip(mine, theirs, strict=True) if b))


def _verdict(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "—"
    held = value >= target if at_least else value <= target
    return "yes" if held else "**no**"


def render(r: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    floor = r.get("floor", {})
    lgb_floor = _get(r, "floor", "lightgbm_all_s")
    rows_n = f"{r.get('rows', 0):,}"
    conn = r.get("connections", 16)
    ours_backend = r.get("ours", {}).get("backend", "?")
    lines = [
        f"# Benchmark: this service ({ours_backend}) vs `mlflow models serve`",
        "",
        f"`{r.get('command', '')}` — started {r.get('started', '')}, "
        f"{r['machine'].get('cores')} cores ({r['machine'].get('cpu', '')}), "
        f"load average at start {r['machine'].get('load_average_at_start')}; "
        f"model: {r['model']['trees']} trees, {r['model']['leaves']} leaves, "
        f"{r['model']['features']} features; LightGBM {r['machine'].get('lightgbm')}, "
        f"MLflow {r['machine'].get('mlflow')}; wrk runs of {r.get('duration_s')} s.",
        "",
        "Gain: times and memory are mlflow ÷ ours, rates are ours ÷ mlflow (above 1: ours is "
        "better).",
        "",
        "| measure | `mlflow models serve` | this service | gain (x) | target | holds |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]

    def row(
        label: str,
        path: tuple[str, ...],
        higher_is_better: bool = False,
        target: float | None = None,
        scale: float = 1.0,
    ) -> None:
        theirs = _get(r, "mlflow", *path)
        ours = _get(r, "ours", *path)
        theirs = theirs * scale if theirs is not None else None
        ours = ours * scale if ours is not None else None
        gain = _gain(theirs, ours, higher_is_better)
        goal = f"≥ {target:g}x" if target else ""
        holds = _verdict(gain, target, True) if target else ""
        lines.append(
            f"| {label} | {_fmt(theirs)} | {_fmt(ours)} | {_fmt(gain)} | {goal} | {holds} |"
        )

    row("1 row, 1 connection: p50 latency (ms)", ("c1", "p50_ms"), target=50)
    row("1 row, 1 connection: p99 latency (ms)", ("c1", "p99_ms"), target=20)
    row("1 row, 1 connection: requests/s", ("c1", "rps"), higher_is_better=True)
    pairs = r.get("mlflow_pairs")
    if pairs:  # both at once, in turn: the gain is the median of the rounds' own ratios
        ours_rounds, theirs_rounds = (pairs[n]["cn"]["rps_rounds"] for n in ("ours", "mlflow"))
        gain = _median_ratio(ours_rounds, theirs_rounds)
        lines.append(
            f"| 1 row, {conn} connections: requests/s (both running, in turn, "
            f"{len(ours_rounds)} rounds) | {_fmt(statistics.median(theirs_rounds))} | "
            f"{_fmt(statistics.median(ours_rounds))} | {_fmt(gain)} | ≥ 200x | "
            f"{_verdict(gain, 200, True)} |"
        )
        row(f"… separate runs of {r.get('duration_s')} s, minutes apart", ("cn", "rps"),
            higher_is_better=True)  # fmt: skip
    else:  # results of an older run: separate runs only
        row(f"1 row, {conn} connections: requests/s", ("cn", "rps"), higher_is_better=True,
            target=200)  # fmt: skip
    row(f"1 row, {conn} connections: p99 latency (ms)", ("cn", "p99_ms"))
    row(f"{rows_n} rows, split JSON: seconds (median)", ("big_json_s", "median"), target=3)
    row("resident memory right after the scoring runs (MB, RSS of the tree)",
        ("rss_scoring_now_mb",))  # fmt: skip
    row("… once settled (MB; no new low for 5 s)", ("rss_scoring_mb",), target=1)
    row("… after the /explain runs too, settled (MB)", ("rss_mb",))
    lines.append("")
    if pairs:
        lines += [
            f"At {conn} connections the two servers ran at once and were measured in turn "
            "(mlflow's runs as long as the separate ones, ours shorter; the order reversed every "
            "other round); the gain is the median of the rounds' own ratios. Rounds, ours ÷ "
            "mlflow: "
            + ", ".join(
                f"{a:,.0f} ÷ {b:.1f}"
                for a, b in zip(
                    pairs["ours"]["cn"]["rps_rounds"],
                    pairs["mlflow"]["cn"]["rps_rounds"],
                    strict=True,
                )
            )
            + ".",
            "",
        ]

    lines += _against_the_floor(r, rows_n)

    lines += [
        "**Scoring backends** (in process, and this service with each)",
        "",
        "| measure | LightGBM | lleaves (compiled) | gain (x) |",
        "| --- | ---: | ---: | ---: |",
    ]

    def pair(label: str, lgb: float | None, compiled: float | None) -> None:
        lines.append(
            f"| {label} | {_fmt(lgb)} | {_fmt(compiled)} | {_fmt(_gain(lgb, compiled, False))} |"
        )

    pair(f"in process, {rows_n} rows, 1 thread (s)", _get(r, "floor", "lightgbm_1t_s"),
         _get(r, "floor", "lleaves_1t_s"))  # fmt: skip
    pair(f"in process, {rows_n} rows, all threads (s)", lgb_floor,
         _get(r, "floor", "lleaves_all_s"))  # fmt: skip
    pair("in process, 1 row, 1 thread (ms)", _get(r, "floor", "lightgbm_one_row_1t_ms"),
         _get(r, "floor", "lleaves_one_row_ms"))  # fmt: skip
    if "ours_lightgbm" in r:
        pair(f"this service, {rows_n} rows split JSON (s)",
             _get(r, "ours_lightgbm", "big_json_s", "median"),
             _get(r, "ours", "big_json_s", "median"))  # fmt: skip
        pair(f"this service, {rows_n} rows Arrow IPC (s)",
             _get(r, "ours_lightgbm", "big_arrow_s", "median"),
             _get(r, "ours", "big_arrow_s", "median"))  # fmt: skip
        pair("this service, 1 row p50 (ms)", _get(r, "ours_lightgbm", "c1", "p50_ms"),
             _get(r, "ours", "c1", "p50_ms"))  # fmt: skip
    one_all = _get(r, "floor", "lightgbm_one_row_all_ms")
    lines += [
        "",
        f"One row with LightGBM's default thread count (all cores) costs {_fmt(one_all)} ms in "
        "process (OpenMP start-up); the service scores small batches on one thread.",
        f"Compiled backend: {floor.get('lleaves_note', '—')}; on the benchmark rows max abs "
        f"difference {_fmt(_get(r, 'floor', 'lleaves_bench_rows_max_abs_diff'))}.",
        f"Predictions checked against in-process `Booster.predict`: mlflow max abs diff "
        f"{_fmt(_get(r, 'mlflow', 'check_max_abs_diff'))}, ours "
        f"{_fmt(_get(r, 'ours', 'check_max_abs_diff'))}.",
        "",
    ]
    lines += render_floor(r, conn)
    if "swaps" in r:
        lines += [render_swaps(r), ""]
    if "shadow" in r:
        lines += [render_shadow(r), ""]
    lines += render_overheads(r, conn)
    return "\n".join(lines)


def render_floor(r: dict[str, Any], conn: int) -> list[str]:
    """The second round's targets: one-row requests against the HTTP floor (a bare ASGI app
    under the same uvicorn, ``bench/bare.py``), workers, memory and start-up against mlflow,
    and what the access log costs."""
    if "bare" not in r:
        return []
    pairs = r.get("floor_pairs")
    rounds = len(pairs["ours"]["c1"]["p50_rounds"]) if pairs else 0
    lines = [
        "**Against the HTTP floor** (the bare ASGI app under the same uvicorn reads the body and "
        "answers a constant; ratio: this service ÷ the reference"
        + (
            f"; the first three rows: both running at once, measured in turn for {rounds} "
            "rounds, each figure the median of the rounds and each ratio the median of the "
            "rounds' own ratios"
            if rounds
            else ""
        )
        + ")",
        "",
        "| measure | reference | this service | ratio | target | holds |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]

    def line(
        label: str, ref: float | None, ours: float | None, target: float, at_least: bool = False
    ) -> None:
        ratio = ours / ref if ref and ours is not None else None
        goal = f"{'≥' if at_least else '≤'} {target:g}x"
        lines.append(
            f"| {label} | {_fmt(ref)} | {_fmt(ours)} | {_fmt(ratio)} | {goal} | "
            f"{_verdict(ratio, target, at_least)} |"
        )

    if pairs:  # both at once, in turn: each ratio the median of the rounds' own ratios
        for key, label, target, at_least in (
            ("p50", "1 row, 1 connection: p50 (ms), bare app", 3, False),
            ("p99", "1 row, 1 connection: p99 (ms), bare app", 5, False),
            ("rps", f"1 row, {conn} connections: requests/s, bare app", 0.1, True),
        ):
            level = "cn" if key == "rps" else "c1"
            ours_rounds, bare_rounds = (pairs[n][level][f"{key}_rounds"] for n in ("ours", "bare"))
            ratio = _median_ratio(ours_rounds, bare_rounds)
            ref, ours = statistics.median(bare_rounds), statistics.median(ours_rounds)
            lines.append(
                f"| {label} | {_fmt(ref)} | {_fmt(ours)} | {_fmt(ratio)} | "
                f"{'≥' if at_least else '≤'} {target:g}x | {_verdict(ratio, target, at_least)} |"
            )
    else:  # results of an older run: separate runs
        line("1 row, 1 connection: p50 (ms), bare app", _get(r, "bare", "c1", "p50_ms"),
             _get(r, "ours", "c1", "p50_ms"), 3)  # fmt: skip
        line("1 row, 1 connection: p99 (ms), bare app", _get(r, "bare", "c1", "p99_ms"),
             _get(r, "ours", "c1", "p99_ms"), 5)  # fmt: skip
        line(f"1 row, {conn} connections: requests/s, bare app", _get(r, "bare", "cn", "rps"),
             _get(r, "ours", "cn", "rps"), 0.1, at_least=True)  # fmt: skip
    scale = r.get("scaling", {})
    cores = scale.get("cores", 1)
    if cores > 1:
        label = f"{cores} workers ÷ 1 worker, {scale.get('connections')} connections: requests/s"
        one, many = (
            scale.get("w1", {}).get("rps_rounds"),
            scale.get(f"w{cores}", {}).get("rps_rounds"),
        )
        if one and many:  # at once, in turn: the median of the rounds' own ratios
            ratio = _median_ratio(many, one)
            lines.append(
                f"| {label} (in turn, {len(one)} rounds) | {_fmt(statistics.median(one))} | "
                f"{_fmt(statistics.median(many))} | {_fmt(ratio)} | ≥ {0.7 * cores:g}x | "
                f"{_verdict(ratio, 0.7 * cores, True)} |"
            )
        else:
            line(label, _get(r, "scaling", "w1", "rps"), _get(r, "scaling", f"w{cores}", "rps"),
                 0.7 * cores, at_least=True)  # fmt: skip
    line("resident memory after the scoring runs, settled (MB), cold compile cache, mlflow",
         _get(r, "mlflow", "rss_scoring_mb"), _get(r, "ours", "rss_scoring_mb"), 0.6)  # fmt: skip
    line("… ours after the /explain runs too, settled (explanation engine built), mlflow",
         _get(r, "mlflow", "rss_mb"), _get(r, "ours", "rss_mb"), 0.6)  # fmt: skip
    line("start to ready (s), cold compile cache, service defaults, mlflow",
         _get(r, "mlflow", "ready_s"), _get(r, "startup", "ready_s"), 1)  # fmt: skip
    compiled = _get(r, "startup", "compiled_after_ready_s")
    lines.append(
        f"| compiled trees in use after ready (s), cold cache | | {_fmt(compiled)} | | ≤ 30 s | "
        f"{_verdict(compiled, 30, False)} |"
    )
    optimized = _get(r, "startup", "optimized_after_ready_s")
    if optimized is not None:
        lines.append(
            f"| … their optimized code in use after ready (s) | | {_fmt(optimized)} | | | |"
        )
    return [*lines, ""]


def render_swaps(r: dict[str, Any]) -> str:
    """Resident memory with a cold compile cache and across model swaps (this service)."""
    s = r.get("swaps", {})
    n = s.get("swaps", 10)
    growth = _get(r, "swaps", "growth_after_swaps")
    lines = [
        f"**Resident memory across model swaps** (this service, RSS of the process tree, MB; "
        f"each swap a forced `/admin/reload`; backend {s.get('backend_cold', '?')} at ready, "
        f"{s.get('backend_after_swaps', '?')} after)",
        "",
        "| ready, cold compile cache | after the first swap | after "
        f"{n} swaps | {n} swaps ÷ first | target | holds |",
        "| ---: | ---: | ---: | ---: | --- | --- |",
        f"| {_fmt(_get(r, 'swaps', 'rss_cold_mb'))} "
        f"| {_fmt(_get(r, 'swaps', 'rss_first_swap_mb'))} "
        f"| {_fmt(_get(r, 'swaps', 'rss_after_swaps_mb'))} | {_fmt(growth)} | ≤ 1.2x | "
        f"{_verdict(growth, 1.2, False)} |",
    ]
    return "\n".join(lines)


def render_shadow(r: dict[str, Any]) -> str:
    """One-row latency with a shadow challenger against none (this service)."""
    ratio = _get(r, "shadow", "p50_ratio")
    lines = [
        "**A shadow challenger** (the same model again, scoring every request off the hot path; "
        "1 row, 1 connection; challenger rows scored "
        f"{_fmt(_get(r, 'shadow', 'shadow_rows'))}, dropped "
        f"{_fmt(_get(r, 'shadow', 'shadow_dropped_rows'))})",
        "",
        "| measure | no challenger | shadow challenger | shadow ÷ none | target | holds |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| p50 latency (ms) | {_fmt(_get(r, 'shadow', 'alone', 'p50_ms'))} | "
        f"{_fmt(_get(r, 'shadow', 'shadow', 'p50_ms'))} | {_fmt(ratio)} | ≤ 1.1x | "
        f"{_verdict(ratio, 1.1, False)} |",
        f"| p99 latency (ms) | {_fmt(_get(r, 'shadow', 'alone', 'p99_ms'))} | "
        f"{_fmt(_get(r, 'shadow', 'shadow', 'p99_ms'))} | | | |",
        f"| requests | {_fmt(_get(r, 'shadow', 'alone', 'requests'))} | "
        f"{_fmt(_get(r, 'shadow', 'shadow', 'requests'))} | | | |",
    ]
    per_block = (r.get("shadow") or {}).get("p50_block_ratios")
    if isinstance(per_block, list) and per_block:
        lines += [
            "",
            "Both servers run at once and take one request each in turn on one connection each "
            "(a socket client, the order rotating), so both medians cover the same moments of "
            "the machine. The ratio of the medians of consecutive tenths of the run: "
            f"{', '.join(f'{v:.2f}' for v in per_block)}.",
        ]
    return "\n".join(lines)


def _paired_cost(run: dict[str, Any], against: dict[str, Any]) -> float:
    """Throughput lost: the median over rounds of ``1 - run ÷ against`` when both have
    per-round rates (this machine's speed swings 2x between rounds), else over all rounds."""
    mine, theirs = run.get("rps_rounds"), against.get("rps_rounds")
    if mine and theirs and len(mine) == len(theirs):
        return float(statistics.median(1 - a / b for a, b in zip(mine, theirs, strict=True)))
    return float(1 - run["rps"] / against["rps"])


def _cpu_cost(run: dict[str, Any], against: dict[str, Any]) -> float | None:
    """CPU time per request added: the median over rounds of ``run ÷ against - 1``."""
    mine, theirs = run.get("cpu_us_rounds"), against.get("cpu_us_rounds")
    if not mine or not theirs or len(mine) != len(theirs):
        return None
    ratios = [a / b - 1 for a, b in zip(mine, theirs, strict=True) if a and b]
    return float(statistics.median(ratios)) if ratios else None


def _cpu_us(run: dict[str, Any]) -> str:
    rounds = [v for v in run.get("cpu_us_rounds") or [] if v]
    return f"{statistics.median(rounds):.0f}" if rounds else ""


def render_overheads(r: dict[str, Any], conn: int) -> list[str]:
    """What drift, the inference log and the access log cost one-row requests: the service as
    deployed beside the same without each, all running at once and measured in turn."""
    ov = r.get("overheads")
    if not ov or "ours_no_drift" not in ov:
        return []
    lines = [
        "",
        "**What monitoring and the access log cost** (one-row requests; the four servers ran at "
        "once and were measured in turn, medians of the rounds; lower rate = cost; a cost is "
        "the median of the rounds' own costs, each round measuring both servers back to back; "
        f"CPU: the server's CPU time per request at c{conn}, from a run's start until the "
        "server is idle again, and what it adds, the median of the rounds' own)",
        "",
        f"| run | c1 p50 (ms) | c1 rps | c{conn} rps | cost at c{conn} | against | target "
        f"| holds | c{conn} CPU per request (µs) | CPU added |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |",
    ]
    rows = (
        ("ours_no_drift", "drift off (DRIFT_WINDOW=0)", None, None),
        (
            "ours",
            "as deployed: drift on (DRIFT_WINDOW=10000), access log on",
            "ours_no_drift",
            0.05,
        ),
        ("ours_log", "drift and the inference log on", "ours_no_drift", 0.10),
        ("ours_quiet", "drift on, access log off (LOG_LEVEL=WARNING)", None, None),
    )
    for name, label, against, target in rows:
        run = ov.get(name)
        if not run:
            continue
        cost, verdict, cpu_cost = "", "", ""
        if against and ov.get(against):
            value = _paired_cost(run["cn"], ov[against]["cn"])
            cost, verdict = f"{value:.1%}", _verdict(value, target or 0, False)
            added = _cpu_cost(run["cn"], ov[against]["cn"])
            cpu_cost = "" if added is None else f"{added:.1%}"
        lines.append(
            f"| {label} | {run['c1']['p50_ms']:.3f} | {run['c1']['rps']:.0f} | "
            f"{run['cn']['rps']:.0f} | {cost} | {against or ''} | "
            f"{f'≤ {target:.0%}' if target else ''} | {verdict} | {_cpu_us(run['cn'])} | "
            f"{cpu_cost} |"
        )
    if ov.get("ours_quiet") and ov.get("ours"):
        value = _paired_cost(ov["ours"]["cn"], ov["ours_quiet"]["cn"])
        added = _cpu_cost(ov["ours"]["cn"], ov["ours_quiet"]["cn"])
        lines.append(
            f"| the access log (as deployed against access log off) | | | | {value:.1%} | "
            f"ours_quiet | ≤ 10% | {_verdict(value, 0.10, False)} | | "
            f"{'' if added is None else f'{added:.1%}'} |"
        )
    return [*lines, ""]


def write(results: dict[str, Any], table: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out / "latest.md").write_text(table)
