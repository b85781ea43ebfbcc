"""The fast TreeSHAP engine: equal to LightGBM's ``pred_contrib`` on every row it explains, and
LightGBM's own where it cannot be proven equal."""

from __future__ import annotations

import functools
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from scoring import treeshap
from scoring.compiled import ZERO_THRESHOLD, probe_rows
from scoring.predictors import BoosterPredictor
from tests.helpers import make_frame

pytest.importorskip("numba")  # a core dependency; without it LightGBM explains (tested below)

TOLERANCE = 1e-9


def _training_frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_frame(800, seed=seed)
    matrix = x.to_numpy().copy()
    rng = np.random.default_rng(seed)
    # Missing values and zeros where the model splits, so it learns where to send them.
    for j in (0, 1, 2):
        matrix[rng.random(len(matrix)) < 0.15, j] = np.nan
        matrix[rng.random(len(matrix)) < 0.15, j] = 0.0
    return matrix, y


MODELS: dict[str, dict[str, Any]] = {
    "stumps": {"num_leaves": 2},
    "small, missing as NaN": {"num_leaves": 7},
    "deep paths": {"num_leaves": 40, "min_data_in_leaf": 3, "max_depth": 12},
    "zero as missing": {"num_leaves": 15, "zero_as_missing": True},
    "missing ignored": {"num_leaves": 15, "use_missing": False},
    "regression": {"num_leaves": 15, "objective": "regression"},
}


@functools.cache
def _trained(name: str) -> lgb.Booster:
    """The model ``MODELS[name]``, trained once per test session."""
    x, y = _training_frame(5)
    settings = {"objective": "binary", "verbose": -1, "seed": 5} | MODELS[name]
    return lgb.train(settings, lgb.Dataset(x, y), num_boost_round=20)


def _hard_rows(booster: lgb.Booster, n: int = 400) -> np.ndarray:
    """Rows at, just off and beyond the thresholds, with NaN, zeros and tiny values (another
    seed than the probe the engine was checked on), and plain random rows."""
    rows = probe_rows(booster, n=n, seed=99)
    rng = np.random.default_rng(7)
    plain = rng.normal(size=(n // 4, booster.num_feature()))
    plain[rng.random(plain.shape) < 0.1] = np.nan
    plain[rng.random(plain.shape) < 0.05] = 0.0
    plain[rng.random(plain.shape) < 0.02] = -ZERO_THRESHOLD / 2
    return np.vstack([rows, plain, np.full((1, booster.num_feature()), np.nan)])


def _engine(booster: lgb.Booster) -> treeshap.TreeShapEngine:
    engine, note = treeshap.build_engine(booster)
    assert engine is not None, note
    assert note.startswith("fast TreeSHAP explains")
    return engine


@pytest.mark.parametrize("name", list(MODELS))
def test_equals_lightgbm_on_hard_rows(name: str) -> None:
    booster = _trained(name)
    engine = _engine(booster)
    x = _hard_rows(booster)
    native = booster.predict(x, pred_contrib=True)
    for threads in (1, 2):
        got = engine.contributions(x, threads)
        assert got.shape == native.shape
        np.testing.assert_allclose(got, native, rtol=0, atol=TOLERANCE)
        np.testing.assert_array_equal(got[:, -1], native[:, -1])  # the base value, bit for bit


GROUPINGS: dict[str, dict[str, int]] = {
    "no groups": {"GROUP_SPLITS": 0},
    "small groups": {"GROUP_SPLITS": 3},
    "group tables full halfway": {},  # MAX_GROUP_ENTRIES: half of what the model's groups take
}


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("name", list(MODELS))
def test_leaves_grouped_or_one_by_one_equal_lightgbm(
    name: str, grouping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each way a leaf is explained (in a subtree's table, or alone from its own) and any mix
    of the two in one tree gives LightGBM's contributions."""
    booster = _trained(name)
    for setting, value in GROUPINGS[grouping].items():
        monkeypatch.setattr(treeshap, setting, value)
    if not GROUPINGS[grouping]:
        full, _ = treeshap._flatten(booster.dump_model())
        monkeypatch.setattr(treeshap, "MAX_GROUP_ENTRIES", len(full.group_table) // 2)
    arrays, _ = treeshap._flatten(booster.dump_model())
    leaves = len(arrays.leaf_value)
    apart = len(arrays.rest_leaf)
    if grouping == "no groups":
        assert len(arrays.group_root) == 0 and apart == leaves
    elif name != "stumps":  # a stump's two leaves depend on one split: always a group
        assert 0 < apart < leaves and len(arrays.group_root) > 0
    engine = _engine(booster)
    x = _hard_rows(booster)
    np.testing.assert_allclose(
        engine.contributions(x, 1), booster.predict(x, pred_contrib=True), rtol=0, atol=TOLERANCE
    )


def test_deep_trees_mix_groups_and_single_leaves() -> None:
    """As built, the deep model's trees have both (the case the benchmark's trees are in)."""
    arrays, _ = treeshap._flatten(_trained("deep paths").dump_model())
    groups = np.diff(arrays.tree_group_start)
    apart = np.diff(arrays.tree_rest_start)
    assert np.any((groups > 0) & (apart > 0))


@pytest.mark.parametrize("name", list(MODELS))
def test_threads_splitting_the_trees_of_a_few_rows_add_up_to_lightgbm(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few rows (one, on the benchmark's model, ~0.5 ms) get their trees split among the
    threads, each adding into its own matrix: still LightGBM's contributions."""
    monkeypatch.setattr(treeshap, "MIN_TREES_PER_THREAD", 4)  # these models have 20 trees
    booster = _trained(name)
    engine = _engine(booster)
    x = _hard_rows(booster)
    for rows in (x[:1], x[-1:], x[:7]):
        native = booster.predict(rows, pred_contrib=True)
        for threads in (2, 3):
            got = engine.contributions(rows, threads)
            np.testing.assert_allclose(got, native, rtol=0, atol=TOLERANCE)
            np.testing.assert_array_equal(got[:, -1], native[:, -1])
    assert engine._helpers.size > 0, "the trees were not split among threads"


def test_one_row_and_no_rows() -> None:
    booster = _trained("small, missing as NaN")
    engine = _engine(booster)
    x = _hard_rows(booster)[:1]
    np.testing.assert_allclose(
        engine.contributions(x, 2), booster.predict(x, pred_contrib=True), rtol=0, atol=TOLERANCE
    )
    assert engine.contributions(x[:0], 2).shape == (0, booster.num_feature() + 1)


def test_the_classifier_is_explained_like_its_booster() -> None:
    x, y = _training_frame(11)
    clf = lgb.LGBMClassifier(n_estimators=30, num_leaves=11, verbose=-1, random_state=11)
    clf.fit(x, y)
    engine = _engine(clf.booster_)
    rows = _hard_rows(clf.booster_)
    np.testing.assert_allclose(
        engine.contributions(rows, 2), clf.predict_proba(rows, pred_contrib=True), atol=TOLERANCE
    )


def test_the_predictor_uses_it_and_keeps_the_signature_order() -> None:
    booster = _trained("deep paths")
    native_order = tuple(booster.feature_name())
    predictor = BoosterPredictor(booster, tuple(reversed(native_order)), explain=True)
    assert predictor.explainer_note.startswith("fast TreeSHAP explains")
    x = _hard_rows(booster)
    out = predictor.contributions(x[:, ::-1].copy(), threads=2)
    native = booster.predict(x, pred_contrib=True)
    np.testing.assert_allclose(out[:, :-1], native[:, :-1][:, ::-1], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(out[:, -1], native[:, -1])


def test_categorical_splits_fall_back_to_lightgbm() -> None:
    x, y = _training_frame(13)
    x[:, 4] = np.random.default_rng(13).integers(0, 6, size=len(x))
    y = (x[:, 4] % 2 == 0).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "min_data_per_group": 5},
        lgb.Dataset(x, y, categorical_feature=[4]),
        num_boost_round=10,
    )
    engine, note = treeshap.build_engine(booster)
    assert engine is None
    assert "LightGBM pred_contrib explains" in note and "categorical" in note
    predictor = BoosterPredictor(booster, tuple(booster.feature_name()), explain=True)
    assert predictor.explainer_note == note
    rows = x[:50]
    np.testing.assert_array_equal(
        predictor.contributions(rows, 1), booster.predict(rows, pred_contrib=True, num_threads=1)
    )


def test_multiclass_and_linear_trees_fall_back() -> None:
    x, y = _training_frame(17)
    three = lgb.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1},
        lgb.Dataset(x, (y + (x[:, 5] > 0)).astype(int)),
        num_boost_round=5,
    )
    linear = lgb.train(
        {"objective": "binary", "linear_tree": True, "verbose": -1},
        lgb.Dataset(np.nan_to_num(x), y),
        num_boost_round=5,
    )
    for booster, why in ((three, "multiclass"), (linear, "linear")):
        engine, note = treeshap.build_engine(booster)
        assert engine is None and why in note


def test_tables_too_large_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    booster = _trained("small, missing as NaN")
    with monkeypatch.context() as patch:
        patch.setattr(treeshap, "MAX_TABLE_ENTRIES", 10)
        engine, note = treeshap.build_engine(booster)
        assert engine is None and "too deep" in note
    monkeypatch.setattr(treeshap, "MAX_PATH_FEATURES", 2)
    engine, note = treeshap.build_engine(booster)
    assert engine is None and "distinct features (over 2)" in note


def test_a_mismatch_on_the_probe_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe is what proves the engine: tables that are off by a hair are refused."""
    booster = _trained("small, missing as NaN")
    flatten = treeshap._flatten

    def off_base(dump: dict[str, Any]) -> tuple[Any, float]:
        arrays, base = flatten(dump)
        return arrays, base + 1e-8

    monkeypatch.setattr(treeshap, "_flatten", off_base)
    engine, note = treeshap.build_engine(booster)
    assert engine is None and "differs by" in note
