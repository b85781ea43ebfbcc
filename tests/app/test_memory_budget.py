"""The memory budget gives freed memory back at the end of a burst of big requests, not after
each one (the next big body would fault it all in again), the parked JSON parser included."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from app import limits
from app.observability import Metrics
from scoring.contract import decode
from tests.helpers import PYTHON


def _budget() -> limits.MemoryBudget:
    return limits.MemoryBudget(
        8 * 1024 * limits.MIB,
        Metrics(),
        wait_seconds=1,
        queue=4,
        small_share=0.1,
        small_body=64 * 1024,
        trim=True,
    )


def test_memory_goes_back_once_a_burst_of_big_requests_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[float] = []
    monkeypatch.setattr(limits, "TRIM_DELAY_SECONDS", 0.3)
    monkeypatch.setattr(limits, "trim_memory", lambda: trims.append(0.0) or True)
    parked = decode._ParkedParser()
    monkeypatch.setattr(decode, "_parked", parked)

    async def burst() -> None:
        budget = _budget()
        budget.start()
        trims.clear()  # start() trims once
        big = limits.need_bytes("json", 15 * limits.MIB)
        for _ in range(5):  # one after another, as a batch client sends them
            r = await budget.reserve(big)
            await asyncio.sleep(0.05)
            r.release()
            await asyncio.sleep(0.02)  # the client's round trip: a trim due now would run here
        assert trims == [], "memory was given back between the requests of a burst"
        held = await budget.reserve(big)  # in flight when the delay ends: no trim under it
        await asyncio.sleep(0.5)
        assert trims == []
        parked.park(object())  # the last big body's parser, kept for the next one
        held.release()
        await asyncio.sleep(0.6)
        assert len(trims) == 1, "the end of the burst did not give memory back"
        assert not parked.parked, "the idle worker was measured with a parser in it"
        small = await budget.reserve(1024)  # small requests never trim
        small.release()
        await asyncio.sleep(0.5)
        assert len(trims) == 1

    asyncio.run(burst())


ARROW_TRIM = """
import io, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from app.limits import trim_memory
from scoring.contract.decode import parse_arrow
from scoring.features import SANTANDER_FEATURES as F

def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])

x = np.random.default_rng(0).normal(size=(10_000, 200))
buffer = io.BytesIO()
pq.write_table(pa.table({f: x[:, i] for i, f in enumerate(F)}), buffer)
body = buffer.getvalue()
del x, buffer
before = rss()
for _ in range(3):
    parse_arrow(body, True, F, 100_000)
after = rss()
trim_memory()
print(before, after, rss())
"""


def test_the_trim_gives_back_what_arrows_pool_kept() -> None:
    """Parquet bodies decode through Arrow's own pool (mimalloc), which keeps what they freed;
    ``trim_memory`` (run once a burst of big bodies is over) gives it back too."""
    done = subprocess.run(
        [PYTHON, "-c", ARROW_TRIM], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, trimmed = (int(v) / 1024 for v in done.stdout.split())
    assert after - before > 30, f"the decodes kept only {after - before:.0f} MB: nothing to show"
    assert trimmed - before < 0.3 * (after - before), (before, after, trimmed)


POOL = """
import sys
if sys.argv[1] == "imported":
    import pyarrow
from app.main import serve_app
try:
    serve_app()
except Exception:
    pass  # no model to serve here: the process set-up before it is what is looked at
import pyarrow as pa
print(pa.default_memory_pool().backend_name)
"""


@pytest.mark.parametrize("when", ["not yet imported", "imported"])
def test_the_server_has_arrow_allocate_with_malloc(when: str) -> None:
    """Arrow's default pool (mimalloc) kept what big Parquet bodies freed in the worker threads
    that decode them (a 10,000-row burst left a worker ~50 MB larger, settled, than with
    malloc: ``make bench`` shows the memory); the server's set-up makes Arrow use malloc,
    whose memory the trim gives back, whether Arrow was imported before or not. A pool chosen
    by the operator (``ARROW_DEFAULT_MEMORY_POOL``) is kept."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    env["MODEL_URI"] = "runs:/0123456789abcdef0123456789abcdef/model"
    env["MLFLOW_TRACKING_URI"] = "file:///nonexistent-store"
    for chosen, expected in ((None, "system"), ("mimalloc", "mimalloc")):
        if chosen is not None:
            env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
        done = subprocess.run(
            [PYTHON, "-c", POOL, when.split(maxsplit=1)[0]],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[-1] == expected, (chosen, done.stdout, done.stderr[-500:])


def test_a_small_reservation_is_taken_at_once_and_the_rest_goes_the_waiting_way() -> None:
    """``take_small`` (the hot path's: no coroutine) takes what fits of a small request and
    leaves anything else to ``reserve``, which waits for room or refuses."""

    async def run() -> None:
        budget = _budget()
        budget.start()
        need = budget.small_need
        # Room for exactly two small requests.
        budget.idle_rss = int(budget.limit * (1 - limits.HEADROOM)) - 2 * need
        assert budget.capacity == 2 * need
        assert budget.take_small(need + 1) is None  # a big request's: not here
        first, second = budget.take_small(need), budget.take_small(need)
        assert first is not None and second is not None and first.small
        assert budget.reserved == 2 * need
        assert budget.take_small(need) is None  # no room: reserve decides
        waiting = asyncio.ensure_future(budget.reserve(need))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # waits for room
        first.release()
        granted = await asyncio.wait_for(waiting, 1)
        assert granted.small and budget.reserved == 2 * need
        second.release()
        granted.release()
        assert budget.reserved == 0

    asyncio.run(run())
