"""App fixtures: the service on real models from the session's MLflow store, in process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.conftest import LoggedModel


def _client(model_uri: str, **overrides: object) -> Iterator[TestClient]:
    settings = Settings(model_uri=model_uri, **overrides)  # type: ignore[arg-type]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def client(booster_model: LoggedModel) -> Iterator[TestClient]:
    """The service on the registered Booster, loaded through models:/santander@champion."""
    yield from _client("models:/santander@champion", max_rows=1000, max_body_bytes=2_000_000)


@pytest.fixture(scope="module")
def classifier_client(classifier_model: LoggedModel) -> Iterator[TestClient]:
    yield from _client(classifier_model.model_uri)
