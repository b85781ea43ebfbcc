"""The model lifecycle on fakes (loader, resolver, clock, signal file): no MLflow, no HTTP.

A fake registry stands for MLflow: an alias pointing at a version, a resolver that reads it, a
loader that builds a model of that version (and can fail or block). A fake clock records the
loops' waits, so back-off is checked by its figures, not by timing.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.main import create_app
from app.model_holder import ModelHolder, ReloadSignal
from scoring.errors import ModelLoadError
from scoring.loading import LoadedModel

URI = "models:/m@champion"


class FakePredictor:
    flavor = "lightgbm"
    features = ("a", "b")

    def __init__(self, version: str) -> None:
        self.version = version

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        return np.full(len(x), float(self.version))


class Registry:
    """An alias, a resolver that reads it and a loader that builds that version."""

    def __init__(self) -> None:
        self.alias = "1"
        self.loads: list[str] = []
        self.resolves = 0
        self.fail_loads = 0  # how many of the next loads fail
        self.fail_resolve = False
        self.gate: threading.Event | None = None  # a load waits for it when set
        self.loading = threading.Event()

    def resolve(self, uri: str) -> str | None:
        self.resolves += 1
        if self.fail_resolve:
            raise ModelLoadError(uri, "the tracking server is unreachable")
        return f"m/{self.alias}:run{self.alias}"

    def load(self, uri: str) -> LoadedModel:
        version = self.alias  # a real loader pins the alias once, before downloading
        self.loading.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.fail_loads:
            self.fail_loads -= 1
            raise ModelLoadError(uri, f"version {version} could not be downloaded")
        self.loads.append(version)
        return LoadedModel(
            predictor=FakePredictor(version),
            uri=uri,
            registered_name="m",
            version=version,
            run_id=f"run{version}",
        )


class FakeClock:
    """Records every wait; time moves only by those waits (and what the loader adds)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0.001)  # let the test's own coroutines run


def holder_on(
    registry: Registry, clock: FakeClock | None = None, signal: Path | None = None
) -> ModelHolder:
    return ModelHolder(
        URI, loader=registry.load, resolver=registry.resolve, signal_file=signal, clock=clock
    )


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def running(coro: Awaitable[None], body: Callable[[], Awaitable[None]]) -> None:
    """Run the loop ``coro`` in the background while ``body`` runs, then cancel it."""
    task = asyncio.ensure_future(coro)
    try:
        await body()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not task.done() or task.cancelled(), "the loop ended by itself"


def version(holder: ModelHolder) -> str | None:
    return holder.current.version if holder.current else None


def test_first_load_backs_off_exponentially_up_to_the_cap() -> None:
    registry, clock = Registry(), FakeClock()
    registry.fail_loads = 5
    holder = holder_on(registry, clock)
    asyncio.run(holder.load_until_ready(max_delay=8, first_delay=1))
    assert clock.sleeps == [1, 2, 4, 8, 8]
    assert version(holder) == "1"
    assert holder.status()["load_failures"] == 5 and holder.status()["load_attempts"] == 6
    assert holder.last_error is None  # cleared by the load that worked


def test_back_off_counts_the_time_an_attempt_took() -> None:
    registry, clock = Registry(), FakeClock()
    registry.fail_loads = 2
    slow = registry.load

    def load(uri: str) -> LoadedModel:
        clock.now += 0.75  # the attempt itself took 0.75 s
        return slow(uri)

    holder = ModelHolder(URI, loader=load, resolver=registry.resolve, clock=clock)
    asyncio.run(holder.load_until_ready(max_delay=30, first_delay=1))
    assert clock.sleeps == [0.25, 1.25]


def test_not_ready_says_why_until_the_first_load() -> None:
    registry = Registry()
    registry.fail_loads = 1
    holder = holder_on(registry)
    with pytest.raises(ModelLoadError):
        holder.load()
    assert holder.current is None
    assert "version 1 could not be downloaded" in holder.not_ready_reason()


def test_polling_swaps_in_the_version_the_alias_moved_to() -> None:
    registry, clock = Registry(), FakeClock()
    holder = holder_on(registry, clock)
    holder.load()

    async def body() -> None:
        await until(lambda: len(clock.sleeps) >= 3, "a few polls")
        assert registry.loads == ["1"], "nothing moved: no load"
        registry.alias = "2"
        await until(lambda: version(holder) == "2", "polling to swap in v2")
        registry.alias = "3"
        await until(lambda: version(holder) == "3", "polling to swap in v3")

    asyncio.run(running(holder.poll(5.0), body))
    assert registry.loads == ["1", "2", "3"]
    assert set(clock.sleeps) == {5.0}


def test_a_resolve_failure_keeps_the_model_and_says_so_then_recovers() -> None:
    registry, clock = Registry(), FakeClock()
    holder = holder_on(registry, clock)
    holder.load()

    async def body() -> None:
        registry.fail_resolve = True
        registry.alias = "2"
        await until(lambda: holder.status()["load_failures"] >= 2, "failed polls")
        assert version(holder) == "1"
        assert "unreachable" in str(holder.last_error)
        registry.fail_resolve = False
        await until(lambda: version(holder) == "2", "recovery")

    asyncio.run(running(holder.poll(1.0), body))
    assert holder.last_error is None


def test_a_load_failure_keeps_the_old_model_serving_and_says_so() -> None:
    registry = Registry()
    holder = holder_on(registry)
    holder.load()
    registry.alias, registry.fail_loads = "2", 1

    async def main() -> None:
        with pytest.raises(ModelLoadError, match="version 2 could not be downloaded"):
            await holder.reload()
        assert version(holder) == "1"
        assert holder.require().predictor.predict(np.zeros((1, 2)), 1)[0] == 1.0
        assert "version 2" in str(holder.last_error)
        assert holder.status()["load_failures"] == 1
        assert await holder.reload() is True  # the next attempt works
        assert version(holder) == "2" and holder.last_error is None

    asyncio.run(main())


def test_an_unmoved_alias_or_a_fixed_uri_reloads_nothing_unless_forced() -> None:
    registry = Registry()
    holder = holder_on(registry)
    holder.load()

    async def main() -> None:
        assert await holder.reload() is False
        assert await holder.reload(force=True) is True

    asyncio.run(main())
    assert registry.loads == ["1", "1"]

    fixed = ModelHolder("runs:/abc/model", loader=registry.load, resolver=lambda uri: None)
    fixed.load()
    assert asyncio.run(fixed.reload()) is False


def test_two_workers_follow_one_signal(tmp_path: Path) -> None:
    registry = Registry()
    signal = tmp_path / "reload-signal"
    a, b = holder_on(registry, FakeClock(), signal), holder_on(registry, FakeClock(), signal)
    a.load()
    b.load()

    async def body() -> None:
        for target in ("2", "3", "1"):  # each announce moves every worker, back included
            registry.alias = target
            await a.announce_reload()
            assert await a.reload() is True
            await until(lambda t=target: version(b) == t, f"b to follow to v{target}")
        # Two announces in a row (no time to see the first): b still ends on the last version.
        registry.alias = "4"
        await a.announce_reload()
        registry.alias = "5"
        await a.announce_reload()
        await until(lambda: version(b) == "5", "b to follow to v5")
        # b fails to load: it keeps its model and says so; a moves on.
        registry.alias, registry.fail_loads = "6", 1
        await a.announce_reload()
        await until(lambda: b.status()["load_failures"] == 1, "b's failure")
        assert version(b) == "5" and "version 6" in str(b.last_error)

    asyncio.run(running(b.follow_reloads(0.5), body))
    # A worker that starts after an announce loads the alias as it is then.
    late = holder_on(registry, FakeClock(), signal)
    late.load()
    assert version(late) == "6"
    assert late._seen == ReloadSignal(signal).read()  # and does not reload for an old announce


def test_two_workers_announcing_at_once_lose_no_announce(tmp_path: Path) -> None:
    signal = ReloadSignal(tmp_path / "s")
    tokens = set()
    barrier = threading.Barrier(8)

    def announce() -> None:
        barrier.wait()
        tokens.add(signal.announce())

    threads = [threading.Thread(target=announce) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 8  # every announce wrote its own content
    assert signal.read() in tokens


def test_reloads_asked_during_a_slow_load_wait_off_the_loop_and_coalesce() -> None:
    registry = Registry()
    holder = holder_on(registry)
    holder.load()

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        tick_task = asyncio.ensure_future(ticker())
        registry.alias, registry.gate = "2", threading.Event()
        registry.loading.clear()
        first = asyncio.ensure_future(holder.reload())
        await until(registry.loading.is_set, "the slow load to start")
        # Three more asks while v2 downloads, after the alias moved again.
        registry.alias = "3"
        waiting = [asyncio.ensure_future(holder.reload()) for _ in range(3)]
        before = ticks
        await asyncio.sleep(0.2)
        assert ticks - before >= 10, "the event loop stalled during the load"
        assert not first.done() and not any(w.done() for w in waiting)
        assert version(holder) == "1"  # still serving the old one meanwhile
        registry.gate.set()
        assert await first is True
        assert await asyncio.gather(*waiting) == [True, True, True]
        tick_task.cancel()

    asyncio.run(main())
    assert version(holder) == "3"
    assert registry.loads == ["1", "2", "3"], "the three asks shared one load"


def test_a_swapped_out_model_is_freed(tmp_path: Path) -> None:
    registry = Registry()
    holder = holder_on(registry)
    # The service's own hooks (metrics labels, logs) must not keep a model alive.
    create_app(Settings(model_uri=URI, admin_token="t"), holder=holder)
    holder.load()
    first = weakref.ref(holder.require())
    predictor = weakref.ref(holder.require().predictor)
    for target in ("2", "3"):
        registry.alias = target
        assert asyncio.run(holder.reload()) is True
    gc.collect()
    assert first() is None and predictor() is None
    assert version(holder) == "3"


def test_a_worker_never_follows_its_own_announce(tmp_path: Path) -> None:
    registry = Registry()
    holder = holder_on(registry, FakeClock(), tmp_path / "reload-signal")
    holder.load()
    assert holder.signal is not None
    write = holder.signal.announce

    def slow_write(token: str | None = None) -> str:
        written = write(token)
        time.sleep(0.1)  # the worker's own follow loop reads the file meanwhile
        return written

    holder.signal.announce = slow_write  # type: ignore[method-assign]

    async def body() -> None:
        registry.alias = "2"
        await holder.announce_reload()
        # The reload this worker was asked for is its own, not one its follow loop took first.
        assert await holder.reload() is True

    asyncio.run(running(holder.follow_reloads(0.5), body))
    assert registry.loads == ["1", "2"]


def test_admin_reload_says_reloaded_when_another_loop_swapped_during_the_call() -> None:
    registry = Registry()
    holder = holder_on(registry)
    app = create_app(Settings(model_uri=URI, admin_token="t"), holder=holder)
    holder.load()

    async def main() -> None:
        registry.alias, registry.gate = "2", threading.Event()
        registry.loading.clear()
        polled = asyncio.ensure_future(holder.reload())  # e.g. the polling loop
        await until(registry.loading.is_set, "the poll's load to start")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            asked = asyncio.ensure_future(
                client.post("/admin/reload", headers={"Authorization": "Bearer t"})
            )
            # The admin call has noted what it served and waits behind the poll's load.
            await until(lambda: holder._asked >= 2, "the admin reload to be asked")
            registry.gate.set()
            assert await polled is True
            r = await asked
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "reloaded" and r.json()["model"]["version"] == "2"

    asyncio.run(main())
    assert registry.loads == ["1", "2"]


def test_a_models_kept_names_follow_its_registry_facts() -> None:
    """``label`` and ``metric_name`` are kept once asked for; the registry facts filled in
    after (as loading does) make them again."""
    model = LoadedModel(predictor=None, uri="models:/santander@champion")  # type: ignore[arg-type]
    assert (model.label, model.metric_name) == ("models:/santander@champion",) * 2
    model.run_id = "abc"
    assert (model.label, model.metric_name) == ("runs/abc", "runs/abc")
    model.registered_name, model.version = "santander", "3"
    assert (model.label, model.metric_name) == ("santander/3", "santander")
    model.alias = "champion"  # not part of either name
    assert model.__dict__["label"] == "santander/3"
