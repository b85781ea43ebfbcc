"""Fixtures for the production tests: a loaded model holder and in-process apps around it."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.main import create_app
from app.model_holder import ModelHolder
from tests.conftest import LoggedModel

ADMIN_TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="session")
def loaded_holder(booster_model: LoggedModel) -> ModelHolder:
    holder = ModelHolder(booster_model.model_uri)
    holder.load()
    return holder


def make_app(holder: ModelHolder, **overrides: object):  # type: ignore[no-untyped-def]
    options = {"admin_token": ADMIN_TOKEN, **overrides}
    settings = Settings(model_uri=holder.uri, **options)  # type: ignore[arg-type]
    fresh = ModelHolder(holder.uri, loader=holder.loader)
    fresh.current = holder.current
    return create_app(settings, holder=fresh)
