"""The service's own ASGI app driven in process: microseconds per request with HTTP and the load
generator out of the figure (how ``bench/results/hot-path.md`` was measured).

    python -m bench.inproc --model-uri runs:/<id>/model [--path /invocations] [--rows 1]
        [--requests 5000] [--against DRIFT_WINDOW=0 ...] [--tail] [--opcodes N]

The model comes from ``MLFLOW_TRACKING_URI`` like the service's; the body is the split body of
``--rows`` rows ``make bench`` sends (one by default; ``--path`` may carry a query,
``/explain?top=3``). Prints wall and CPU microseconds per request after warm-up ones.

``--against`` builds a second app with those settings changed and takes the two in turn, blocks
of ``BLOCK`` requests each, in one process: this machine's speed drifts by up to 2x within a
minute, which separate runs cannot tell from a 5% cost; blocks side by side can. Prints each
app's CPU per request and the median of the blocks' ratios.

``--tail`` times each request on its own (a turn of the event loop between them) and prints
percentiles up to the slowest: what the service's own periodic work (metrics counted in
batches, the drift window's copies, garbage collection) adds to a few requests in a thousand.

``--opcodes N`` counts instead of timing: the bytecodes Python runs per request (and the calls
of Python functions), in total and for the ``N`` busiest functions, by ``sys.settrace``. The
count does not move with the machine's speed: the same code gives the same figure, so a change
to the hot path can be weighed on a machine too noisy to time it (C work, such as parsing or
the compiled trees, is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
import types
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from bench import fixture

BLOCK = 100


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-uri", required=True)
    p.add_argument("--path", default="/invocations")
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--against", nargs="*", default=[], metavar="SETTING=VALUE")
    p.add_argument("--opcodes", type=int, default=None, metavar="N")
    p.add_argument("--tail", action="store_true")
    args = p.parse_args(argv)
    os.environ["MODEL_URI"] = args.model_uri
    os.environ.setdefault("COMPILE_IN_BACKGROUND", "false")

    from app.config import get_settings
    from app.main import ServerEntry, create_app
    from app.observability import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    changed = dict(kv.split("=", 1) for kv in args.against)
    other = None
    if changed:
        values = settings.model_dump() | {k.lower(): v for k, v in changed.items()}
        other = create_app(type(settings).model_validate(values))
    # Requests go in as the server sends them (``serve_app``'s entry); the lifespan through the app.
    entries = {a: ServerEntry(a) for a in (app, other) if a is not None}
    path, _, query = args.path.partition("?")
    scoring = path in ("/invocations", "/explain")
    body = fixture.split_json(fixture.bench_rows(args.rows)) if scoring else b""
    warm_up = max(3, min(200, 200_000 // (args.rows * 200)))
    method = "POST" if body else "GET"
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def one(target: Any = app) -> list[MutableMapping[str, Any]]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
            "state": {},
        }  # fmt: skip
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        out: list[MutableMapping[str, Any]] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            out.append(message)

        await entries[target](scope, receive, send)
        return out

    async def ready(target: Any) -> None:
        challenger = target.state.challenger  # CHALLENGER_URI: measured once it scores too
        waited = 0.0
        while challenger is not None and challenger.current is None and waited < 600:
            await asyncio.sleep(0.5)
            waited += 0.5
        for _ in range(warm_up):
            answer = await one(target)
        if answer[0]["status"] != 200:
            raise SystemExit(f"error: {args.path} answered {answer[0]['status']}")

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await ready(app)
            if other is not None:
                async with other.router.lifespan_context(other):
                    await ready(other)
                    await compare()
                return
            if args.opcodes is not None:
                await count_opcodes(args.opcodes)
                return
            if args.tail:
                await tail()
                return
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.requests):
                await one()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"{method} {args.path}: {wall / args.requests * 1e6:.1f} us per request "
                f"(CPU {cpu / args.requests * 1e6:.1f} us), {args.requests} requests"
            )

    async def tail() -> None:
        took = np.empty(args.requests)
        for i in range(args.requests):
            started = time.perf_counter()
            await one()
            took[i] = time.perf_counter() - started
            await asyncio.sleep(0)  # a turn of the loop between requests, as a server has
        us = took * 1e6
        p50, p90, p99, p999, top = np.percentile(us, [50, 90, 99, 99.9, 100])
        print(
            f"{method} {args.path}: p50 {p50:.0f} p90 {p90:.0f} p99 {p99:.0f} p99.9 {p999:.0f} "
            f"max {top:.0f} us; over 1 ms: {int(np.count_nonzero(us > 1000))} of "
            f"{args.requests} requests"
        )

    async def count_opcodes(top: int) -> None:
        opcodes: collections.Counter[str] = collections.Counter()
        calls: collections.Counter[str] = collections.Counter()
        root = str(Path(__file__).resolve().parents[1]) + os.sep

        def trace(frame: types.FrameType, event: str, arg: object) -> Any:
            frame.f_trace_opcodes = True
            code = frame.f_code
            name = code.co_filename.split("site-packages" + os.sep)[-1].replace(root, "")
            key = f"{name}:{code.co_name}"
            if event == "opcode":
                opcodes[key] += 1
            elif event == "call":
                calls[key] += 1
            return trace

        builtins: collections.Counter[str] = collections.Counter()

        def profile(frame: types.FrameType, event: str, arg: Any) -> None:
            if event == "c_call":
                owner = getattr(arg, "__self__", None)
                kind = type(owner).__name__ if owner is not None else ""
                builtins[f"{kind}.{arg.__name__}" if kind != "module" else arg.__qualname__] += 1

        sys.settrace(trace)
        sys.setprofile(profile)
        try:
            for _ in range(args.requests):
                await one()
        finally:
            sys.settrace(None)
            sys.setprofile(None)
        n = args.requests
        print(
            f"{method} {args.path}: {sum(opcodes.values()) / n:.0f} bytecodes, "
            f"{sum(calls.values()) / n:.0f} Python calls and {sum(builtins.values()) / n:.0f} "
            f"calls of built-in functions per request ({n} requests)"
        )
        for key, count in opcodes.most_common(top):
            print(f"{count / n:8.1f} {calls[key] / n:6.1f}  {key}")
        print("built-in functions called:")
        for key, count in builtins.most_common(top):
            print(f"{count / n:8.1f}  {key}")

    async def compare() -> None:
        cpu: dict[str, list[float]] = {"as set": [], "against": []}
        for _ in range(max(1, args.requests // BLOCK)):
            for name, target in (("as set", app), ("against", other)):
                started = time.process_time()
                for _ in range(BLOCK):
                    await one(target)
                cpu[name].append((time.process_time() - started) / BLOCK * 1e6)
        ratios = np.array(cpu["as set"]) / np.array(cpu["against"])
        print(
            f"{method} {args.path}, {len(ratios)} blocks of {BLOCK} in turn: CPU per request "
            f"{np.median(cpu['as set']):.1f} us as set, {np.median(cpu['against']):.1f} us with "
            f"{' '.join(args.against)}; as set / against: median {np.median(ratios):.3f} "
            f"(quartiles {np.quantile(ratios, 0.25):.3f}-{np.quantile(ratios, 0.75):.3f})"
        )

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
