"""Promotion: the pure decision, and the alias moves in a real (temporary) registry."""

from __future__ import annotations

import math

import mlflow
import pytest
from mlflow import MlflowClient

from tests.training.conftest import Store
from training.promote import CHAMPION, CV_METRIC, champion_score, promote, should_promote


@pytest.mark.parametrize(
    ("candidate", "champion", "policy", "expected"),
    [
        (0.80, None, "if-better", True),  # first model
        (0.91, 0.90, "if-better", True),  # better
        (0.89, 0.90, "if-better", False),  # worse
        (0.90, 0.90, "if-better", False),  # a tie keeps the champion
        (math.nan, 0.90, "if-better", False),  # no score, no promotion
        (math.nan, None, "if-better", False),
        (0.50, 0.90, "always", True),
        (0.50, None, "always", True),
        (0.99, 0.90, "never", False),
        (0.99, None, "never", False),
    ],
)
def test_should_promote(
    candidate: float, champion: float | None, policy: str, expected: bool
) -> None:
    assert should_promote(candidate, champion, policy) is expected  # type: ignore[arg-type]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown promotion policy"):
        should_promote(0.9, 0.8, "sometimes")  # type: ignore[arg-type]


def _version(store: Store, name: str, cv_auc: float | None, metric: str = CV_METRIC) -> str:
    """Register a new version of ``name`` from a run that logged ``cv_auc`` (no model needed)."""
    client = MlflowClient()
    with mlflow.start_run(experiment_id=store.experiment_id) as run:
        if cv_auc is not None:
            mlflow.log_metric(metric, cv_auc)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    source = f"{store.root.as_uri()}/fake-model"
    return str(client.create_model_version(name, source, run_id=run.info.run_id).version)


def _champion(name: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)


def test_first_better_and_worse_models(fresh_store: Store) -> None:
    client = MlflowClient()
    assert champion_score(client, "first") is None

    first = _version(fresh_store, "first", 0.85)
    assert promote(client, "first", first, 0.85) is True
    assert _champion("first") == first
    assert champion_score(client, "first") == (first, 0.85)

    worse = _version(fresh_store, "first", 0.84)
    assert promote(client, "first", worse, 0.84) is False
    assert _champion("first") == first

    better = _version(fresh_store, "first", 0.86)
    assert promote(client, "first", better, 0.86) is True
    assert _champion("first") == better

    tags = client.get_model_version("first", worse).tags
    assert tags[CV_METRIC] == "0.840000"
    assert tags["promotion"].startswith(f"not promoted to {CHAMPION}: champion v{first}")


def test_always_and_never(fresh_store: Store) -> None:
    client = MlflowClient()
    first = _version(fresh_store, "always", 0.90)
    assert promote(client, "always", first, 0.90, "never") is False
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("always", CHAMPION)
    assert promote(client, "always", first, 0.90, "always") is True
    worse = _version(fresh_store, "always", 0.70)
    assert promote(client, "always", worse, 0.70, "always") is True
    assert _champion("always") == worse
    better = _version(fresh_store, "always", 0.95)
    assert promote(client, "always", better, 0.95, "never") is False
    assert _champion("always") == worse


def test_a_champion_without_a_comparable_score_is_replaced(fresh_store: Store) -> None:
    client = MlflowClient()
    old = _version(fresh_store, "noscore", None)
    client.set_registered_model_alias("noscore", CHAMPION, old)
    assert champion_score(client, "noscore") == (old, None)
    new = _version(fresh_store, "noscore", 0.6)
    assert promote(client, "noscore", new, 0.6) is True
    assert _champion("noscore") == new


def test_older_metric_name_is_still_compared(fresh_store: Store) -> None:
    client = MlflowClient()
    old = _version(fresh_store, "oldname", 0.75, metric="cv_auc")
    client.set_registered_model_alias("oldname", CHAMPION, old)
    assert champion_score(client, "oldname") == (old, 0.75)
    new = _version(fresh_store, "oldname", 0.74)
    assert promote(client, "oldname", new, 0.74) is False
    assert _champion("oldname") == old
