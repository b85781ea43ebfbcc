"""The service's own ASGI app driven in process: microseconds per request with HTTP and the load
generator out of the figure (how ``bench/results/hot-path.md`` was measured).

    python -m bench.inproc --model-uri runs:/<id>/model [--path /invocations] [--rows 1]
        [--requests 5000] [--against DRIFT_WINDOW=0 ...]

The model comes from ``MLFLOW_TRACKING_URI`` like the service's; the body is the split body of
``--rows`` rows ``make bench`` sends (one by default; ``--path`` may carry a query,
``/explain?top=3``). Prints wall and CPU microseconds per request after warm-up ones.

``--against`` builds a second app with those settings changed and takes the two in turn, blocks
of ``BLOCK`` requests each, in one process: this machine's speed drifts by up to 2x within a
minute, which separate runs cannot tell from a 5% cost; blocks side by side can. Prints each
app's CPU per request and the median of the blocks' ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import MutableMapping
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
    args = p.parse_args(argv)
    os.environ["MODEL_URI"] = args.model_uri
    os.environ.setdefault("COMPILE_IN_BACKGROUND", "false")

    from app.config import get_settings
    from app.main import create_app
    from app.observability import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    changed = dict(kv.split("=", 1) for kv in args.against)
    other = None
    if changed:
        values = settings.model_dump() | {k.lower(): v for k, v in changed.items()}
        other = create_app(type(settings).model_validate(values))
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

        await target(scope, receive, send)
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
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.requests):
                await one()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"{method} {args.path}: {wall / args.requests * 1e6:.1f} us per request "
                f"(CPU {cpu / args.requests * 1e6:.1f} us), {args.requests} requests"
            )

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
