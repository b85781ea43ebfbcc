"""Benchmark this service against ``mlflow models serve`` on one fixed model, in one run.

    python -m bench.run                      # the full run (make bench), ~10 minutes
    python -m bench.run --trees 20 --rows 200 --duration 2 --repeats 2 --out /tmp/b   # tiny
    python -m bench.run --only swaps --out /tmp/b   # only the resident memory across swaps
    python -m bench.run --only memory --out /tmp/b  # only the memory under bursts (issue 19)

It trains (or loads from ``bench/.cache/``) a 1000-tree, 13-leaf LightGBM model over 200
synthetic features, logs it to a temporary MLflow store, starts both servers on it, checks they
answer the same predictions as in-process ``Booster.predict`` (to 1e-9), then measures with wrk
and httpx: one-row latency and throughput, one 10,000-row request as split JSON (and as Parquet
and Arrow IPC for this service), each server's resident memory, the in-process floor, and this
service's resident memory with a cold compile cache and across ten model swaps, and both
servers' resident memory under bursts of mixed, 10,000-row and 62 MiB bodies (``bench.memory``,
every answer checked). The table (with mlflow / ours ratios and the targets) is printed and
written to ``--out`` as ``latest.json`` and ``latest.md``.

The benchmark is a measuring tool, not a test: it fails only when a server cannot be run or
the two disagree on predictions (a wrong answer under the memory loads included).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import explain, fixture, load, memory, report, servers
from bench.fixture import ModelSpec

BENCH_DIR = Path(__file__).resolve().parent
JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"
ARROW = "application/vnd.apache.arrow.stream"
BIG_ROUNDS = 11
"""Rounds of the big bodies and the in-process floor in turn (``big_in_turn``)."""
BIG_BODIES = (
    ("json", "big", JSON),
    ("parquet", "big_parquet", PARQUET),
    ("arrow", "big_arrow", ARROW),
)
CHECK_ROWS = 500
TOLERANCE = 1e-9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--trees", type=int, default=1000)
    p.add_argument("--leaves", type=int, default=13)
    p.add_argument("--train-rows", type=int, default=20_000)
    p.add_argument("--rows", type=int, default=10_000, help="rows in the big request")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=16, help="the concurrent wrk run")
    p.add_argument("--repeats", type=int, default=5, help="big requests timed (median)")
    p.add_argument(
        "--big-rounds",
        type=int,
        default=BIG_ROUNDS,
        help="rounds of the big bodies and the in-process floor measured in turn",
    )
    p.add_argument("--workers", type=int, default=None, help="our workers (default: settings)")
    p.add_argument("--predict-threads", type=int, default=None, help="our PREDICT_THREADS")
    p.add_argument(
        "--no-lightgbm-run",
        action="store_true",
        help="skip the second run of ours with COMPILED_PREDICTOR=false (before/after)",
    )
    p.add_argument(
        "--only",
        choices=["swaps", "shadow", "memory", "overheads"],
        default=None,
        help="run one part alone (swaps: resident memory, cold cache and ten swaps; shadow: "
        "one-row latency with a shadow challenger against none; memory: both servers' resident "
        "memory under bursts, with a memory budget for ours)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the memory-under-bursts part")
    p.add_argument(
        "--memory-seconds",
        type=float,
        default=20.0,
        help="the mixed load's length in the memory part (its 2,500-row load: half of it)",
    )
    p.add_argument(
        "--memory-bodies", type=int, default=96, help="bodies of --rows rows in the memory part"
    )
    p.add_argument(
        "--memory-big-rows",
        type=int,
        default=42_500,
        help="rows of the memory part's biggest body (42,500: 62 MiB of split JSON, the issue's "
        "body just under MAX_BODY_BYTES)",
    )
    p.add_argument(
        "--memory-settle",
        type=float,
        default=30.0,
        help="longest wait for the memory kept after each load (seconds)",
    )
    p.add_argument("--swaps", type=int, default=10, help="model swaps in the swaps part")
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="reuse compiled trees from earlier runs (default: a cold cache, compiling at start "
        "as a fresh container would, so memory and start-up include the compiler)",
    )
    p.add_argument(
        "--no-monitoring-runs",
        action="store_true",
        help="skip the one-row runs of ours with drift off and with the inference log on",
    )
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = load.ensure_wrk() if args.only not in ("swaps", "memory") else ""
    spec = ModelSpec(trees=args.trees, leaves=args.leaves, train_rows=args.train_rows)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": " ".join(
            [
                "python -m bench.run",
                *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
            ]
        ),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": {"trees": spec.trees, "leaves": spec.leaves, "features": 200},
        "rows": args.rows,
        "duration_s": args.duration,
        "connections": args.connections,
    }

    booster, train_s = fixture.fixed_booster(spec, args.cache)
    log(f"model {spec.name}: {f'trained in {train_s:.0f}s' if train_s else 'from cache'}")
    if args.only == "swaps":
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
            tmp = Path(tmp_name)
            results["swaps"] = swap_memory(fixture.log_to_store(booster, tmp), args, tmp)
        log(f"swaps: {results['swaps']}")
        table = report.render_swaps(results)
        print(table)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "swaps.md").write_text(table)
        return 0
    if args.only in ("overheads", "shadow"):
        return _one_row_part(args.only, booster, wrk, args, results)
    if args.only == "memory":
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
            tmp = Path(tmp_name)
            results["memory"] = memory_part(booster, fixture.log_to_store(booster, tmp), args, tmp)
        table = "\n".join(memory.render(results))
        print(table)
        (args.out / "memory.md").write_text(table)
        (args.out / "memory.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        return fail_on_wrong_answers(results)
    x = fixture.bench_rows(args.rows)
    one = x[:1]
    check = x[: min(CHECK_ROWS, len(x))]
    results["floor"] = floor(booster, x, args.cache, args.repeats)
    log(f"floor: {results['floor']}")
    expected = booster.predict(x, num_threads=os.cpu_count() or 1)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        uri = fixture.log_to_store(booster, tmp)
        bodies = write_bodies(tmp, x, one, check)
        # Measure the steady state: ready only once the compiled trees score.
        cache = args.cache / "lleaves" if args.warm_cache else tmp / "lleaves-cold"
        ours_env = {"COMPILED_CACHE_DIR": str(cache), "COMPILE_IN_BACKGROUND": "false"}
        if args.predict_threads is not None:
            ours_env["PREDICT_THREADS"] = str(args.predict_threads)
        runs: list[tuple[str, list[str], str, dict[str, str], bool]] = []
        port = servers.free_port()
        runs.append(
            ("ours", servers.ours_command(uri, port, args.workers), "/health/ready", ours_env, True)
        )
        if not args.no_lightgbm_run:
            port = servers.free_port()
            lgb_env = {**ours_env, "COMPILED_PREDICTOR": "false"}
            runs.append(
                (
                    "ours_lightgbm",
                    servers.ours_command(uri, port, args.workers),
                    "/health/ready",
                    lgb_env,
                    True,
                )
            )
        port = servers.free_port()
        runs.append(("mlflow", servers.mlflow_command(uri, port), "/ping", {}, False))
        for name, command, ready, env, is_ours in runs:
            port = int(command[command.index("--port" if is_ours else "-p") + 1])
            log(f"starting {name}: {' '.join(command[1:])}")
            with servers.running(
                name, command, port, ready_path=ready, log_dir=tmp, env=env
            ) as server:
                results[name] = measure(
                    server,
                    is_ours=is_ours,
                    bodies=bodies,
                    expected=expected,
                    wrk=wrk,
                    args=args,
                    tmp=tmp,
                    full=name != "ours_lightgbm",
                )
                if name == "ours":
                    results[name]["big_in_turn"] = big_in_turn(
                        server.base + "/invocations",
                        bodies,
                        lambda: booster.predict(x, num_threads=os.cpu_count() or 1),
                        args.big_rounds,
                    )
            log(f"{name}: {results[name]}")
        results["mlflow_pairs"] = mlflow_pairs(uri, bodies, wrk, args, tmp, env=ours_env)
        log(f"mlflow pairs: {results['mlflow_pairs']}")
        results["floor_pairs"] = floor_pairs(uri, bodies["one"], wrk, args, tmp, env=ours_env)
        results["bare"] = results["floor_pairs"]["bare"]
        log(f"floor pairs: {results['floor_pairs']}")
        if not args.no_monitoring_runs:
            results["overheads"] = overheads(uri, bodies["one"], wrk, args, tmp)
            log(f"overheads: {results['overheads']}")
        results["startup"] = startup(uri, args, tmp)
        log(f"startup: {results['startup']}")
        results["scaling"] = scaling(uri, wrk, args, tmp, bodies["one"])
        log(f"scaling: {results['scaling']}")
        results["swaps"] = swap_memory(uri, args, tmp)
        log(f"swaps: {results['swaps']}")
        results["shadow"] = shadow_latency(uri, bodies["one"], wrk, args, tmp)
        log(f"shadow: {results['shadow']}")
        if not args.no_memory:
            results["memory"] = memory_part(booster, uri, args, tmp)

    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    table = (
        report.render(results)
        + "\n".join(explain.render(results))
        + "\n".join(memory.render(results))
    )
    print(table)
    report.write(results, table, args.out)
    log(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    return fail_on_wrong_answers(results)


def memory_part(booster: Any, uri: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Both servers' resident memory under bursts (``bench.memory``), with this service's
    compile cache cold (a fresh folder) unless ``--warm-cache``."""
    return memory.measure(
        booster,
        uri,
        big_rows=args.memory_big_rows,
        rows=args.rows,
        seconds=args.memory_seconds,
        bodies=args.memory_bodies,
        settle_seconds=args.memory_settle,
        compile_cache=args.cache / "lleaves" if args.warm_cache else tmp / "lleaves-memory",
        tmp=tmp,
        log=log,
    )


def fail_on_wrong_answers(results: dict[str, Any]) -> int:
    """Exit status 1, after the table is written, when a server answered wrong under a memory
    load (the other parts stop at once on a wrong answer)."""
    wrong = memory.wrong_answers(results)
    for line in wrong:
        print(f"error: wrong answers under the memory loads: {line}", file=sys.stderr)
    return 1 if wrong else 0


def _one_row_part(
    part: str, booster: Any, wrk: str, args: argparse.Namespace, results: dict[str, Any]
) -> int:
    """``--only overheads`` or ``--only shadow``: that part alone on the one-row body; writes
    ``<part>.md`` and ``<part>.json``."""
    measure = {"overheads": overheads, "shadow": shadow_latency}[part]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        uri = fixture.log_to_store(booster, tmp)
        one_body = tmp / "one.body"
        one_body.write_bytes(fixture.split_json(fixture.bench_rows(1)))
        results[part] = measure(uri, one_body, wrk, args, tmp)
    log(f"{part}: {results[part]}")
    if part == "overheads":
        table = "\n".join(report.render_overheads(results, args.connections))
    else:
        table = report.render_shadow(results)
    print(table)
    (args.out / f"{part}.md").write_text(table)
    (args.out / f"{part}.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def startup(uri: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Start to ready with the service's own defaults and a cold compile cache, as a fresh
    container starts: ready while LightGBM scores, then the compiled trees take over in the
    background, quick code first, then the optimized. Seconds to ready, and from ready until
    ``/model`` says compiled trees score, and until the optimized code does."""
    env = {"COMPILED_CACHE_DIR": str(tmp / "startup-cold-cache")}
    port = servers.free_port()
    command = servers.ours_command(uri, port, args.workers)
    log(f"starting ours for start-up (defaults, cold compile cache): {' '.join(command[1:])}")
    with servers.running(
        "ours_startup", command, port, ready_path="/health/ready", log_dir=tmp, env=env
    ) as server:
        ready = time.monotonic()
        out: dict[str, Any] = {"ready_s": server.ready_s}
        deadline = ready + 600
        while True:
            card = load.httpx_get_json(server.base + "/model")
            if card.get("backend") == "lleaves":
                out.setdefault("compiled_after_ready_s", time.monotonic() - ready)
                note = str(card.get("backend_note"))
                if "optimized code failed" in note:
                    out["optimized_failed"] = note
                    break
                if "quick code" not in note:
                    out["optimized_after_ready_s"] = time.monotonic() - ready
                    break
            if time.monotonic() > deadline:
                out.setdefault("compiled_after_ready_s", None)
                return out
            time.sleep(0.25)
        out["rss_mb"] = server.rss_bytes()[0] / 2**20
    return out


SCALING_CONNECTIONS = 64


def scaling(uri: str, wrk: str, args: argparse.Namespace, tmp: Path, one: Path) -> dict[str, Any]:
    """One-row requests per second at 64 connections with one worker and with one worker per
    core: how the service scales with workers on this machine (wrk shares its cores). Both
    servers run at once and are measured in turn (``paired_one_row``), the ratio taken round
    by round."""
    cores = os.cpu_count() or 1
    env = {"COMPILED_CACHE_DIR": str(args.cache / "lleaves"), "COMPILE_IN_BACKGROUND": "false"}
    out: dict[str, Any] = {"cores": cores, "connections": SCALING_CONNECTIONS}
    with contextlib.ExitStack() as stack:
        running: dict[str, servers.Server] = {}
        for workers in sorted({1, cores}):
            port = servers.free_port()
            command = servers.ours_command(uri, port, workers)
            log(f"starting ours ({workers} worker(s)): {' '.join(command[1:])}")
            running[f"w{workers}"] = stack.enter_context(
                servers.running(
                    f"ours_w{workers}", command, port, ready_path="/health/ready", log_dir=tmp,
                    env=env,
                )
            )  # fmt: skip
        rounds = max(2, min(FLOOR_ROUNDS, round(args.duration)))
        pairs = paired_one_row(
            running, one, wrk, args, tmp, connections=(SCALING_CONNECTIONS,), rounds=rounds,
            threads=2,
        )  # fmt: skip
    for name, result in pairs.items():
        out[name] = result["cn"]
    return out


def swap_memory(uri: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """This service's resident memory (the whole process tree, compiler children included)
    ready with a cold compile cache, then after one and after ``args.swaps`` forced reloads
    (each loads the model again and swaps: a new booster and compiled forest each time)."""
    token = "bench-admin-token"
    cold_cache = tmp / "cold-lleaves-cache"
    env = {
        "COMPILED_CACHE_DIR": str(cold_cache),
        "COMPILE_IN_BACKGROUND": "false",
        "ADMIN_TOKEN": token,
    }
    port = servers.free_port()
    command = servers.ours_command(uri, port, args.workers)
    log(f"starting ours for swaps (cold compile cache): {' '.join(command[1:])}")
    out: dict[str, Any] = {"swaps": args.swaps}
    with servers.running(
        "ours_swaps", command, port, ready_path="/health/ready", log_dir=tmp, env=env
    ) as server:
        card = load.httpx_get_json(server.base + "/model")
        out["backend_cold"] = card.get("backend")
        out["rss_cold_mb"] = server.rss_bytes()[0] / 2**20
        headers = {"Authorization": f"Bearer {token}"}
        for swap in range(1, args.swaps + 1):
            r = load.httpx_post_json(server.base + "/admin/reload?force=true", headers)
            if r.get("status") != "reloaded":
                raise SystemExit(f"error: swap {swap} did not reload: {r}")
            if swap == 1:
                out["rss_first_swap_mb"] = server.rss_bytes()[0] / 2**20
        out["rss_after_swaps_mb"] = server.rss_bytes()[0] / 2**20
        out["backend_after_swaps"] = load.httpx_get_json(server.base + "/model").get("backend")
    out["growth_after_swaps"] = out["rss_after_swaps_mb"] / out["rss_first_swap_mb"]
    return out


PAIRED_ROUNDS = 6
SETTLE_SECONDS = 30.0
"""Longest wait for a server's memory to settle after the scoring runs (``memory.settle``)."""


@dataclasses.dataclass(frozen=True)
class Turn:
    """How ``paired_one_row`` runs one server when it differs from the others: the body it
    takes (mlflow's wraps the frame in ``dataframe_split``), seconds per run, warm-up posts."""

    body: Path
    seconds: float
    warm: int


def paired_one_row(
    servers_by_name: dict[str, servers.Server],
    one: Path,
    wrk: str,
    args: argparse.Namespace,
    tmp: Path,
    *,
    connections: tuple[int, ...] = (1,),
    rounds: int = PAIRED_ROUNDS,
    threads: int = 1,
    turns: dict[str, Turn] | None = None,
) -> dict[str, Any]:
    """One-row wrk runs on servers that all run at once, taken in turn for ``rounds`` rounds
    (each run ``args.duration / rounds`` s, at least 1, after a few requests not counted:
    ``load.warm``; ``turns`` sets a server's own), the order reversed every other round: a
    slow minute of the machine then touches every server alike, and none is always first.
    Per server and connection count: the median p50 and p99 of the rounds, the requests/s
    over all of them, and each round's figures (for ratios taken round by round), with the
    server's CPU time per request (its process tree's, from the run's start until it is idle
    again: ``Server.cpu_when_idle``, which also keeps one server's leftover work out of the
    next one's run)."""
    default = Turn(one, max(1.0, args.duration / rounds), 200)
    runs: dict[tuple[str, int], list[Any]] = {}
    names = list(servers_by_name)
    for i in range(rounds):
        for c in connections:
            for name in names if i % 2 == 0 else names[::-1]:
                server = servers_by_name[name]
                turn = (turns or {}).get(name, default)
                load.warm(server.base + "/invocations", turn.body.read_bytes(), JSON, turn.warm)
                cpu = server.cpu_when_idle()
                result = load.run_wrk(
                    wrk, server.base + "/invocations", turn.body, content_type=JSON,
                    connections=c, seconds=turn.seconds, threads=threads, work_dir=tmp,
                )  # fmt: skip
                cpu = server.cpu_when_idle() - cpu
                runs.setdefault((name, c), []).append((result, cpu))
    out: dict[str, Any] = {}
    for (name, c), measured in runs.items():
        key = "c1" if c == 1 else "cn"
        results = [r for r, _ in measured]
        out.setdefault(name, {})[key] = {
            "cpu_us_rounds": [
                cpu / r.requests * 1e6 if r.requests else None for r, cpu in measured
            ],
            "connections": c,
            "rounds": len(results),
            "requests": sum(r.requests for r in results),
            "errors": sum(r.errors for r in results),
            "p50_ms": float(np.median([r.p50_ms for r in results])),
            "p50_rounds": [r.p50_ms for r in results],
            "p99_rounds": [r.p99_ms for r in results],
            "rps_rounds": [r.requests / r.seconds for r in results],
            "p99_ms": float(np.median([r.p99_ms for r in results])),
            "rps": sum(r.requests for r in results) / sum(r.seconds for r in results),
        }
    return out


FLOOR_ROUNDS = 10


def _ours_beside(
    other: str,
    stack: contextlib.ExitStack[Any],
    uri: str,
    args: argparse.Namespace,
    *,
    tmp: Path,
    env: dict[str, str],
) -> servers.Server:
    """This service started (and stopped with ``stack``) to be measured in turn beside
    ``other``; its log is ``ours_beside_<other>.log``."""
    port = servers.free_port()
    command = servers.ours_command(uri, port, args.workers)
    log(f"starting ours (beside {other}): {' '.join(command[1:])}")
    return stack.enter_context(
        servers.running(
            f"ours_beside_{other}", command, port, ready_path="/health/ready", log_dir=tmp,
            env=env,
        )
    )  # fmt: skip


def floor_pairs(
    uri: str, one: Path, wrk: str, args: argparse.Namespace, tmp: Path, *, env: dict[str, str]
) -> dict[str, Any]:
    """This service (``env``: the compile cache the first run filled) and the bare ASGI app
    (``bench.bare``, the HTTP floor) running at once, measured in turn (``paired_one_row``,
    up to ``FLOOR_ROUNDS`` rounds of 1 and ``--connections`` connections): the floor ratios
    are taken round by round, each from two runs seconds apart, not from runs minutes apart
    while the machine's speed swings 2x."""
    with contextlib.ExitStack() as stack:
        running = {"ours": _ours_beside("floor", stack, uri, args, tmp=tmp, env=env)}
        port = servers.free_port()
        running["bare"] = stack.enter_context(
            servers.running("bare", servers.bare_command(port), port, ready_path="/", log_dir=tmp)
        )
        rounds = max(2, min(FLOOR_ROUNDS, round(args.duration)))
        out = paired_one_row(
            running, one, wrk, args, tmp, connections=(1, args.connections), rounds=rounds
        )
        out["bare"]["ready_s"] = running["bare"].ready_s
        return out


MLFLOW_ROUNDS = 5


def mlflow_pairs(
    uri: str, bodies: dict[str, Path], wrk: str, args: argparse.Namespace, tmp: Path,
    *, env: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """This service (``env``: the compile cache the first run filled) and ``mlflow models
    serve`` running at once, one row at ``--connections`` connections, measured in turn for
    ``MLFLOW_ROUNDS`` rounds (fewer for runs under 5 s; ``paired_one_row``): the gain is the
    median of the rounds' own ratios. The separate ``--duration`` runs minutes apart
    (``measure``) gave 192-307x in the last seven runs (one-row path unchanged), the machine's
    speed moving both. Each mlflow run lasts ``--duration`` as there (~11 requests/s: a shorter
    run counts too few) and warms up with 3 posts (each takes tens of ms); ours runs as in
    every other part taken in turn."""
    with contextlib.ExitStack() as stack:
        running = {"ours": _ours_beside("mlflow", stack, uri, args, tmp=tmp, env=env)}
        port = servers.free_port()
        command = servers.mlflow_command(uri, port)
        log(f"starting mlflow (beside ours): {' '.join(command[1:])}")
        running["mlflow"] = stack.enter_context(
            servers.running("mlflow_pair", command, port, ready_path="/ping", log_dir=tmp)
        )
        turns = {"mlflow": Turn(bodies["one_mlflow"], args.duration, 3)}
        return paired_one_row(
            running, bodies["one"], wrk, args, tmp, connections=(args.connections,),
            rounds=max(2, min(MLFLOW_ROUNDS, round(args.duration))), turns=turns,
        )  # fmt: skip


SHADOW_BLOCKS = 10


def shadow_latency(
    uri: str, one: Path, wrk: str, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """One-row latency (one connection each) of this service alone and with the same model as
    a shadow challenger (every request scored again off the hot path), both running at once
    and taking one request each in turn (``load.interleaved``) for ``args.duration`` s. The
    ratio is that of the two medians; the ratios of ``SHADOW_BLOCKS`` consecutive blocks show
    its spread. (Back-to-back wrk rounds gave 0.71-1.91 between rounds of the same code.)"""
    del wrk  # the interleaved client is its own
    env = {"COMPILED_CACHE_DIR": str(args.cache / "lleaves"), "COMPILE_IN_BACKGROUND": "false"}
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        running: dict[str, servers.Server] = {}
        for name, extra in (("alone", {}), ("shadow", {"CHALLENGER_URI": uri})):
            port = servers.free_port()
            command = servers.ours_command(uri, port, args.workers)
            log(f"starting ours ({name}): {' '.join(command[1:])}")
            running[name] = stack.enter_context(
                servers.running(
                    f"ours_{name}", command, port, ready_path="/health/ready", log_dir=tmp,
                    env={**env, **extra},
                )
            )  # fmt: skip
        deadline = time.monotonic() + 600
        while not load.httpx_get_json(running["shadow"].base + "/model")["challenger"]["loaded"]:
            if time.monotonic() > deadline:
                raise SystemExit("error: the shadow challenger did not load")
            time.sleep(0.5)
        urls = {name: server.base + "/invocations" for name, server in running.items()}
        taken = load.interleaved(urls, one.read_bytes(), JSON, seconds=args.duration)
        for name, seconds in taken.items():
            ms = np.asarray(seconds) * 1000
            out[name] = {
                "requests": len(ms),
                "p50_ms": float(np.median(ms)),
                "p99_ms": float(np.percentile(ms, 99)),
            }
        text = load.httpx_get_text(running["shadow"].base + "/metrics")
        out["shadow_rows"] = _sample_sum(text, "shadow_rows_total")
        out["shadow_dropped_rows"] = _sample_sum(text, "shadow_dropped_rows_total")
    blocks = zip(
        np.array_split(np.asarray(taken["shadow"]), SHADOW_BLOCKS),
        np.array_split(np.asarray(taken["alone"]), SHADOW_BLOCKS),
        strict=True,
    )
    out["p50_block_ratios"] = [round(float(np.median(a) / np.median(b)), 3) for a, b in blocks]
    out["p50_ratio"] = out["shadow"]["p50_ms"] / out["alone"]["p50_ms"]
    return out


OVERHEAD_ROUNDS = 10


def overheads(uri: str, one: Path, wrk: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """What drift, the inference log and the access log cost a one-row request: the service as
    deployed (drift on, access log on) beside the same without each, all running at once and
    measured in turn at 1 and ``--connections`` connections (``paired_one_row``)."""
    base = {"COMPILED_CACHE_DIR": str(args.cache / "lleaves"), "COMPILE_IN_BACKGROUND": "false"}
    # Each pair compared (access log: quiet against ours; drift: ours against no drift; the
    # inference log: no drift against log) is measured back to back in every round.
    variants = {
        "ours_quiet": {"LOG_LEVEL": "WARNING"},
        "ours": {},
        "ours_no_drift": {"DRIFT_WINDOW": "0"},
        "ours_log": {"INFERENCE_LOG_DIR": str(tmp / "inference-log")},
    }
    with contextlib.ExitStack() as stack:
        running: dict[str, servers.Server] = {}
        for name, extra in variants.items():
            port = servers.free_port()
            command = servers.ours_command(uri, port, args.workers)
            log(f"starting {name}: {' '.join(command[1:])}")
            running[name] = stack.enter_context(
                servers.running(
                    name, command, port, ready_path="/health/ready", log_dir=tmp,
                    env={**base, **extra},
                )
            )  # fmt: skip
        # Runs of 1 s, many rounds: the machine's speed moves a server's CPU per request by a
        # third within seconds (290-394 us between 2-s rounds of one run), so a cost is the
        # median of many ratios of runs taken as close together as possible.
        rounds = max(2, min(OVERHEAD_ROUNDS, round(args.duration)))  # a quick look: fewer
        return paired_one_row(
            running, one, wrk, args, tmp, connections=(1, args.connections), rounds=rounds
        )


def _sample_sum(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def write_bodies(tmp: Path, x: np.ndarray, one: np.ndarray, check: np.ndarray) -> dict[str, Path]:
    """Every request body, in files (wrk reads its body from one)."""
    bodies = {
        "one": fixture.split_json(one),
        "one_mlflow": fixture.split_json(one, mlflow_protocol=True),
        "check": fixture.split_json(check),
        "check_mlflow": fixture.split_json(check, mlflow_protocol=True),
        "big": fixture.split_json(x),
        "big_mlflow": fixture.split_json(x, mlflow_protocol=True),
        "big_parquet": fixture.parquet_body(x),
        "big_arrow": fixture.arrow_body(x),
        "explain_rows": fixture.split_json(x[: explain.ROWS]),
    }
    paths = {}
    for name, content in bodies.items():
        path = tmp / f"{name}.body"
        path.write_bytes(content)
        paths[name] = path
    return paths


def measure(
    server: servers.Server,
    *,
    is_ours: bool,
    bodies: dict[str, Path],
    expected: np.ndarray,
    wrk: str,
    args: argparse.Namespace,
    tmp: Path,
    full: bool,
) -> dict[str, Any]:
    """Check one server's predictions, then run every measurement on it."""
    url = server.base + "/invocations"
    suffix = "" if is_ours else "_mlflow"
    out: dict[str, Any] = {"ready_s": server.ready_s}
    if is_ours:
        card = load.httpx_get_json(server.base + "/model")
        out["backend"] = card.get("backend", "lightgbm")
        out["backend_note"] = card.get("backend_note")

    got = predictions(load.post(url, bodies["check" + suffix].read_bytes(), JSON))
    n = len(got)
    diff = float(np.max(np.abs(got - expected[:n])))
    out["check_max_abs_diff"] = diff
    if not diff <= TOLERANCE:
        raise SystemExit(f"error: {server.name} differs from Booster.predict by {diff:.3g}")

    one = bodies["one" + suffix]
    c1 = load.run_wrk(
        wrk,
        url,
        one,
        content_type=JSON,
        connections=1,
        seconds=args.duration,
        threads=1,
        work_dir=tmp,
    )
    out["c1"] = vars(c1) | {"rps": c1.rps}
    if full:
        cn = load.run_wrk(
            wrk,
            url,
            one,
            content_type=JSON,
            connections=args.connections,
            seconds=args.duration,
            threads=1,
            work_dir=tmp,
        )
        out["cn"] = vars(cn) | {"rps": cn.rps}

    big = bodies["big" + suffix].read_bytes()
    out["big_json_bytes"] = len(big)
    repeats = args.repeats if is_ours else max(3, args.repeats // 2 + 1)
    out["big_json_s"] = load.times_summary(load.time_posts(url, big, JSON, repeats))
    if is_ours:
        for key, media in (("big_parquet", PARQUET), ("big_arrow", ARROW)):
            body = bodies[key].read_bytes()
            got = predictions(load.post(url, body, media))
            diff = float(np.max(np.abs(got - expected)))
            if not diff <= TOLERANCE:
                raise SystemExit(f"error: {key} answers differ from Booster.predict by {diff:.3g}")
            out[key + "_bytes"] = len(body)
            out[key + "_s"] = load.times_summary(load.time_posts(url, body, media, args.repeats))
    # What the scoring runs leave, both servers alike: right after the last answer, and once
    # the tree's RSS stops falling (ours gives the big bodies' memory back 2 s after the last
    # one, mlflow keeps it). Ours builds its explanation engine on the first /explain, which the
    # measure below sends: measured again after it.
    out["rss_scoring_now_mb"] = server.rss_bytes()[0] / 2**20
    settled, out["rss_settle_s"] = memory.settle(server.proc.pid, SETTLE_SECONDS)
    out["rss_scoring_mb"] = settled / 2**20
    if is_ours and full:
        out["explain"] = explain.measure(
            server.base,
            one,
            bodies["explain_rows"].read_bytes(),
            expected,
            wrk=wrk,
            duration=args.duration,
            repeats=args.repeats,
            work_dir=tmp,
        )
        settled, _ = memory.settle(server.proc.pid, SETTLE_SECONDS)
        out["rss_mb"] = settled / 2**20
    else:
        out["rss_mb"] = out["rss_scoring_mb"]  # nothing ran since
    out["pss_mb"] = server.rss_bytes()[1] / 2**20
    return out


def big_in_turn(
    url: str, bodies: dict[str, Path], floor_fn: Callable[[], Any], rounds: int
) -> dict[str, Any]:
    """The big bodies posted and the in-process floor (``floor_fn``: LightGBM on all threads)
    timed in turn, ``rounds`` times, the order rotating: each ratio is the median of the rounds'
    own (a post ÷ the floor's time of the same round), so both sides see the same moments of a
    machine whose speed swings within a minute (the floor timed alone, minutes before the posts,
    moved the ratios by a quarter between runs)."""
    posts = {name: (bodies[key].read_bytes(), media) for name, key, media in BIG_BODIES}
    times: dict[str, list[float]] = {"floor": [], **{name: [] for name in posts}}
    with httpx.Client(timeout=300.0) as client:

        def post(name: str) -> None:
            body, media = posts[name]
            response = client.post(url, content=body, headers={"Content-Type": media})
            response.raise_for_status()
            response.json()

        steps: list[tuple[str, Callable[[], Any]]] = [("floor", floor_fn)]
        steps += [(name, functools.partial(post, name)) for name in posts]
        for _, step in steps:  # warm-up
            step()
        for k in range(rounds):
            turn = k % len(steps)
            for name, step in steps[turn:] + steps[:turn]:
                started = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - started)
    floor_s = times["floor"]
    return {
        "rounds": rounds,
        "median_s": {name: load.median(values) for name, values in times.items()},
        "ratio": {
            name: load.median([t / f for t, f in zip(times[name], floor_s, strict=True)])
            for name in posts
        },
        "all": {name: [round(t, 4) for t in values] for name, values in times.items()},
    }


def predictions(response: Any) -> np.ndarray:
    response.raise_for_status()
    return np.asarray(response.json()["predictions"], dtype=np.float64)


def floor(booster: Any, x: np.ndarray, cache: Path, repeats: int) -> dict[str, Any]:
    """In-process scoring of the same rows: LightGBM (one thread, all threads) and lleaves."""
    from scoring.compiled import compile_booster

    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"cores": cores}

    def timed(fn: Any, n: int) -> float:
        fn()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return load.median(times)

    out["lightgbm_1t_s"] = timed(lambda: booster.predict(x, num_threads=1), repeats)
    out["lightgbm_all_s"] = timed(lambda: booster.predict(x, num_threads=cores), repeats)
    out["lightgbm_one_row_1t_ms"] = 1000 * timed(lambda: booster.predict(x[:1], num_threads=1), 200)
    out["lightgbm_one_row_all_ms"] = 1000 * timed(
        lambda: booster.predict(x[:1], num_threads=cores), 50
    )
    started = time.perf_counter()
    forest, note = compile_booster(booster, cache / "lleaves")
    out["lleaves_load_s"] = time.perf_counter() - started
    out["lleaves_note"] = note
    if forest is not None:
        expected = booster.predict(x, num_threads=cores)
        out["lleaves_bench_rows_max_abs_diff"] = float(
            np.max(np.abs(forest.predict(x, cores) - expected))
        )
        out["lleaves_1t_s"] = timed(lambda: forest.predict(x, 1), repeats)
        out["lleaves_all_s"] = timed(lambda: forest.predict(x, cores), repeats)
        out["lleaves_one_row_ms"] = 1000 * timed(lambda: forest.predict(x[:1], 1), 200)
    return out


def machine() -> dict[str, Any]:
    import lightgbm
    import mlflow

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load_avg = list(os.getloadavg())
    except OSError:
        load_avg = []
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "lightgbm": lightgbm.__version__,
        "mlflow": mlflow.__version__,
        "load_average_at_start": [round(v, 2) for v in load_avg],
    }


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
