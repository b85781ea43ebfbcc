"""Routing and the shadow queue on fakes: sticky keys, the split's share, drops, agreement."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from app.challenger import Shadow, routed_to_challenger
from app.model_holder import ModelHolder
from app.observability import Metrics
from scoring.loading import LoadedModel


class Constant:
    flavor = "lightgbm"

    def __init__(self, features: tuple[str, ...], weights: np.ndarray) -> None:
        self.features = features
        self.weights = weights

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        return np.asarray(x @ self.weights, dtype=np.float64)


def sample(metrics: Metrics, sample_name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(sample_name, labels)
    return float(value or 0.0)


def test_a_routing_key_always_gets_the_same_model_and_the_split_holds_its_share() -> None:
    keys = [f"customer-{i}" for i in range(20_000)]
    first = [routed_to_challenger(0.3, k) for k in keys]
    assert first == [routed_to_challenger(0.3, k) for k in keys]
    assert sum(first) / len(keys) == pytest.approx(0.3, abs=0.02)
    assert not any(routed_to_challenger(0.0, k) for k in keys[:500])
    assert all(routed_to_challenger(1.0, k) for k in keys[:500])
    # A key on the challenger at 30% stays there when the share grows.
    moved = [k for k, chosen in zip(keys, first, strict=True) if chosen]
    assert all(routed_to_challenger(0.5, k) for k in moved)


@pytest.fixture
def models() -> Iterator[tuple[ModelHolder, LoadedModel]]:
    features = ("a", "b")
    champion = LoadedModel(
        Constant(features, np.array([0.5, 0.0])), "models:/m@champion", registered_name="m",
        version="1",
    )  # fmt: skip
    # Same features in another order: the shadow reorders the champion's columns.
    challenger = LoadedModel(
        Constant(("b", "a"), np.array([0.0, 0.6])), "models:/m@challenger", registered_name="m",
        version="2",
    )  # fmt: skip
    holder = ModelHolder("models:/m@challenger", role="challenger")
    holder.current = challenger
    yield holder, champion


def test_shadow_scores_the_same_rows_and_counts_the_agreement(
    models: tuple[ModelHolder, LoadedModel],
) -> None:
    holder, champion = models
    metrics = Metrics()
    shadow = Shadow(holder, metrics, threshold=0.5, size=8)
    x = np.array([[0.5, 9.0], [0.9, 9.0], [1.2, 9.0]])
    mine = champion.predictor.predict(x, 1)  # 0.25, 0.45, 0.6
    theirs = x[:, 0] * 0.6  # 0.3, 0.54, 0.72: the second row crosses 0.5 only for the challenger

    async def main() -> None:
        shadow.submit(x, mine, champion)
        shadow.submit(x, mine, champion)
        task = asyncio.ensure_future(shadow.run())
        await asyncio.wait_for(shadow.queue.join(), 10)
        task.cancel()

    asyncio.run(main())
    pair = {"champion": "m/1", "challenger": "m/2"}
    assert sample(metrics, "shadow_rows_total", **pair) == 6
    assert sample(metrics, "shadow_abs_difference_total", **pair) == pytest.approx(
        2 * float(np.abs(mine - theirs).sum()), rel=1e-12
    )
    assert sample(metrics, "shadow_disagreements_total", **pair) == 2
    labels = {"name": "m", "version": "2", "role": "challenger"}
    assert sample(metrics, "model_rows_total", **labels) == 6
    assert sample(metrics, "model_requests_total", **labels) == 2
    assert sample(metrics, "rows_scored_total") == 0  # shadow rows were not answers
    assert shadow.queued_rows == 0


def test_shadow_drops_and_counts_when_full_or_without_a_challenger(
    models: tuple[ModelHolder, LoadedModel],
) -> None:
    holder, champion = models
    metrics = Metrics()
    shadow = Shadow(holder, metrics, threshold=0.5, size=2, max_rows=5)
    x = np.zeros((2, 2))

    async def main() -> None:
        shadow.submit(x, np.zeros(2), champion)
        shadow.submit(x, np.zeros(2), champion)
        shadow.submit(x, np.zeros(2), champion)  # two requests already wait
        shadow.submit(np.zeros((6, 2)), np.zeros(6), champion)  # over the row budget alone

    asyncio.run(main())
    assert shadow.queue.qsize() == 2
    assert sample(metrics, "shadow_dropped_rows_total", reason="queue full") == 8
    holder.current = None
    asyncio.run(main())
    assert sample(metrics, "shadow_dropped_rows_total", reason="challenger not loaded") == 12
