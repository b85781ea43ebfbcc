"""Batch fixtures: a small Dask cluster in this process, and rows with ids and service scores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.conftest import LoggedModel
from tests.helpers import make_frame


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Client]:
    """Two workers, one thread each, threads of this process: the smallest real cluster."""
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
    )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


@dataclass(frozen=True)
class Scored:
    """Rows with an ``ID_code`` column, and what ``/invocations`` answers for each id."""

    frame: pd.DataFrame
    service: dict[str, float]


@pytest.fixture(scope="module")
def scored_rows(booster_model: LoggedModel) -> Scored:
    """1,200 rows (some missing values) scored by the service itself, over HTTP in process."""
    x, _ = make_frame(1200, seed=11)
    x.iloc[::97, 4] = np.nan
    frame = pd.concat([pd.DataFrame({"ID_code": [f"test_{i}" for i in range(len(x))]}), x], axis=1)
    settings = Settings(model_uri=booster_model.model_uri, max_rows=5000)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/invocations",
            content=x.to_csv(index=False),
            headers={"Content-Type": "text/csv"},
        )
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    return Scored(frame, dict(zip(frame["ID_code"], predictions, strict=True)))
