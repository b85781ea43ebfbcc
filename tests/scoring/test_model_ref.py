"""Model references without a server: parse, normalise, what can move, and pinning."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scoring.errors import ModelLoadError
from scoring.model_ref import (
    ModelRef,
    Pinned,
    check_model_uri,
    normalize_model_uri,
    registry_version,
)

RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("typed", "uri"),
    [
        (RUN, f"runs:/{RUN}/model"),
        (f"m-{RUN}", f"models:/m-{RUN}"),
        (" models:/santander@champion ", "models:/santander@champion"),
        ("/tmp/model", "/tmp/model"),
    ],
)
def test_what_a_user_types_becomes_a_uri(typed: str, uri: str) -> None:
    assert normalize_model_uri(typed) == uri


@pytest.mark.parametrize("bad", ["runs:/", "models:/", "models:/a/b/c", "models:/@x"])
def test_malformed_uris_are_refused_before_anything_starts(bad: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        check_model_uri(bad)


def test_parse_each_shape() -> None:
    assert ModelRef.parse(RUN).run_id == RUN
    assert ModelRef.parse(f"m-{RUN}").model_id == f"m-{RUN}"
    alias = ModelRef.parse("models:/santander@champion")
    assert (alias.name, alias.alias, alias.movable) == ("santander", "champion", True)
    fixed = ModelRef.parse("models:/santander/3")
    assert (fixed.name, fixed.version, fixed.movable) == ("santander", "3", False)
    assert ModelRef.parse("models:/santander/latest").movable
    assert ModelRef.parse("/tmp/m").name is None


class FakeRegistry:
    """The three registry calls a reference needs, and nothing else."""

    def __init__(self) -> None:
        self.mv = SimpleNamespace(version=4, run_id="r4", model_id="m-4")

    def get_model_version_by_alias(self, name: str, alias: str) -> SimpleNamespace:
        if alias != "champion":
            raise RuntimeError(f"Registered model alias {alias} not found.")
        return self.mv

    def get_model_version(self, name: str, version: str) -> SimpleNamespace:
        return SimpleNamespace(version=int(version), run_id=f"r{version}", model_id=None)

    def get_latest_versions(self, name: str) -> list[SimpleNamespace]:
        return [self.mv]


def test_an_alias_pins_to_the_version_it_points_at() -> None:
    registry = FakeRegistry()
    pinned = registry_version(ModelRef.parse("models:/santander@champion"), registry)
    assert pinned == Pinned("santander", "4", "r4", "m-4")
    assert pinned.uri == "models:/santander/4" and pinned.fingerprint == "santander/4:r4"
    registry.mv = SimpleNamespace(version=5, run_id="r5", model_id=None)
    moved = registry_version(ModelRef.parse("models:/santander@champion"), registry)
    assert moved is not None and moved.fingerprint == "santander/5:r5"
    assert registry_version(ModelRef.parse(f"runs:/{RUN}/model"), registry) is None


def test_an_unknown_alias_is_one_line_naming_the_uri() -> None:
    with pytest.raises(ModelLoadError) as failed:
        registry_version(ModelRef.parse("models:/santander@nope"), FakeRegistry())
    assert "models:/santander@nope" in str(failed.value) and "not found" in str(failed.value)
