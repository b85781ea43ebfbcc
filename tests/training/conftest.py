"""Fixtures for the training tests: a fresh MLflow store per test, small synthetic data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from training.train import TrainingData, load_or_synthesize


@dataclass(frozen=True)
class Store:
    """A private SQLite MLflow store whose experiment keeps its artifacts in the test folder."""

    uri: str
    experiment_id: str
    root: Path


@pytest.fixture(scope="module")
def fresh_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Point MLflow (and subprocesses, via the environment) at a new store for one test module.

    One per module, not per test: creating a SQLite store runs all of MLflow's migrations,
    seconds each time. Tests that share it use their own model names.

    The experiment ``santander`` is created up front with its artifacts in the temporary folder:
    on a store that is not the project's own, MLflow would otherwise put them in ``./mlruns``.
    """
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        experiment_id = mlflow.MlflowClient().create_experiment(
            "santander", artifact_location=(root / "artifacts").as_uri()
        )
        yield Store(uri=uri, experiment_id=experiment_id, root=root)
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


@pytest.fixture(scope="session")
def small_data() -> TrainingData:
    """3,000 synthetic rows: enough for a model clearly better than chance, trained in a second."""
    return load_or_synthesize(None, rows=3_000, seed=0)
