"""The compiled predictor: equal to LightGBM, checked at load, with a fallback for every failure."""

from __future__ import annotations

import builtins
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from scoring.compiled import TOLERANCE, compile_booster, probe_rows
from scoring.predictors import BoosterPredictor
from tests.helpers import FEATURES, make_frame


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a process that has compiled no forest yet."""
    monkeypatch.setattr("scoring.compiled._forests_in_process", 0)


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    x, y = make_frame(800, seed=21)
    return lgb.train(
        {"objective": "binary", "num_leaves": 13, "verbose": -1, "seed": 21},
        lgb.Dataset(x, y),
        num_boost_round=40,
    )


def test_compiled_trees_match_lightgbm(booster: lgb.Booster, tmp_path: Path) -> None:
    forest, note = compile_booster(booster, tmp_path)
    assert forest is not None, note
    assert forest.max_abs_diff <= TOLERANCE
    rows, _ = make_frame(300, seed=22)
    x = rows.to_numpy(copy=True)
    x[5, 3] = np.nan
    x[6, 4] = 1e-40  # LightGBM reads this as zero
    got = forest.predict(np.ascontiguousarray(x), threads=2)
    np.testing.assert_allclose(got, booster.predict(x), rtol=0, atol=TOLERANCE)
    # One compiled forest per process: a second one (a reloaded model) is scored by LightGBM.
    second, note = compile_booster(booster, tmp_path)
    assert second is None and "already runs a compiled forest" in note


def test_compiled_code_is_cached_between_starts(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, note = compile_booster(booster, tmp_path)
    assert first is not None and not first.from_cache, note
    monkeypatch.setattr("scoring.compiled._forests_in_process", 0)  # as a new process would
    again, note = compile_booster(booster, tmp_path)
    assert again is not None and again.from_cache, note


def test_probe_rows_cover_the_split_thresholds(booster: lgb.Booster) -> None:
    rows = probe_rows(booster)
    assert rows.shape[1] == len(FEATURES)
    assert np.isnan(rows).any() and (rows == 0).any()


def test_a_failed_check_falls_back_to_lightgbm(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scoring.compiled.TOLERANCE", -1.0)  # nothing can pass
    forest, note = compile_booster(booster, tmp_path)
    assert forest is None and "using LightGBM" in note
    predictor = BoosterPredictor(booster, tuple(FEATURES), compiled=True, cache_dir=str(tmp_path))
    assert predictor.backend == "lightgbm"
    x = make_frame(10, seed=23)[0].to_numpy()
    np.testing.assert_array_equal(predictor.predict(x, 1), booster.predict(x, num_threads=1))


def test_a_missing_compiler_falls_back_to_lightgbm(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_lleaves(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("lleaves"):
            raise ImportError("No module named 'lleaves'", name="lleaves")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "lleaves", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_lleaves)
    monkeypatch.setattr("importlib.import_module", no_lleaves)
    forest, note = compile_booster(booster, tmp_path)
    assert forest is None and "lleaves is not installed" in note


def test_background_compilation_serves_at_once_then_switches(
    booster: lgb.Booster, tmp_path: Path
) -> None:
    predictor = BoosterPredictor(
        booster, tuple(FEATURES), compiled=True, cache_dir=str(tmp_path / "fresh"), background=True
    )
    x = make_frame(20, seed=24)[0].to_numpy()
    first = predictor.predict(x, 1)  # answers while compiling, whichever backend is on
    assert predictor.wait_compiled(timeout=300)
    assert predictor.backend == "lleaves"
    np.testing.assert_allclose(predictor.predict(x, 1), first, rtol=0, atol=TOLERANCE)
