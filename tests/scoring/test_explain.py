"""The core's explanations: LightGBM's own TreeSHAP, in the predictor's feature order, and reason
codes that are ordered and consistent with the contributions."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
from scipy.special import logit

from scoring.errors import ExplanationsUnavailable
from scoring.explain import explain, reason_columns, reasons, top_indices
from scoring.predictors import BoosterPredictor, PyfuncPredictor
from tests.helpers import make_frame


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    x, y = make_frame(500, seed=21)
    x.iloc[::13, 2] = np.nan  # the model learns a branch for missing values
    return lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": 21},
        lgb.Dataset(x, y),
        num_boost_round=20,
    )


def _rows(n: int = 60) -> np.ndarray:
    x, _ = make_frame(n, seed=22)
    matrix = x.to_numpy().copy()
    matrix[::4, 2] = np.nan
    matrix[5, :] = np.nan  # a row of nothing but missing values
    return matrix


def test_contributions_are_lightgbms_own_and_add_up(booster: lgb.Booster) -> None:
    features = tuple(booster.feature_name())
    x = _rows()
    explanation = explain(BoosterPredictor(booster, features), x, threads=1)
    native = booster.predict(x, pred_contrib=True)
    np.testing.assert_allclose(explanation.contributions, native[:, :-1], rtol=0, atol=1e-9)
    assert np.all(native[:, -1] == explanation.base_value)
    np.testing.assert_allclose(explanation.predictions, booster.predict(x), rtol=0, atol=1e-15)
    sums = explanation.base_value + explanation.contributions.sum(axis=1)
    np.testing.assert_allclose(sums, logit(explanation.predictions), rtol=0, atol=1e-9)
    assert explanation.contributions[:, 2][::4].any()  # missing values contribute too


def test_contributions_follow_the_signature_order_when_the_booster_differs(
    booster: lgb.Booster,
) -> None:
    """A signature listing the features in another order: columns come back in that order."""
    native_order = list(booster.feature_name())
    signature = tuple(reversed(native_order))
    x_native = _rows()
    x_signature = x_native[:, ::-1].copy()
    predictor = BoosterPredictor(booster, signature)
    assert predictor._order is not None
    out = predictor.contributions(x_signature, threads=1)
    native = booster.predict(x_native, pred_contrib=True)
    np.testing.assert_allclose(out[:, :-1], native[:, :-1][:, ::-1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out[:, -1], native[:, -1])


def test_reasons_are_ordered_and_consistent(booster: lgb.Booster) -> None:
    features = tuple(booster.feature_name())
    x = _rows()
    explanation = explain(BoosterPredictor(booster, features), x, threads=1)
    found = reasons(explanation, x, 5)
    columns = reason_columns(explanation, x, 5)
    index = {name: j for j, name in enumerate(features)}
    for row, listed in enumerate(found):
        weights = explanation.contributions[row]
        magnitudes = [abs(r["contribution"]) for r in listed]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert len(listed) == min(5, int(np.count_nonzero(weights)))
        if listed:  # nothing left out is larger than the smallest reason
            rest = np.delete(np.abs(weights), [index[r["feature"]] for r in listed])
            assert rest.max(initial=0) <= magnitudes[-1]
        for k, reason in enumerate(listed):
            j = index[reason["feature"]]
            assert reason["contribution"] == weights[j]
            value = x[row, j]
            assert reason["value"] == (None if np.isnan(value) else value)
            names, values, contribution = columns[k]
            assert names[row] == reason["feature"] and contribution[row] == reason["contribution"]
            assert values[row] == value or (np.isnan(values[row]) and np.isnan(value))
        for names, _, contribution in columns[len(listed) :]:
            assert names[row] is None and np.isnan(contribution[row])


def test_ties_and_zeros() -> None:
    contributions = np.array([[0.0, -2.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(top_indices(contributions, 3), [[1, 2, 3], [-1, -1, -1]])
    np.testing.assert_array_equal(top_indices(contributions, 10), [[1, 2, 3, -1], [-1] * 4])


def test_a_model_without_contributions_says_so() -> None:
    predictor = PyfuncPredictor(model=None, features=("a", "b"))
    with pytest.raises(ExplanationsUnavailable) as refused:
        explain(predictor, np.zeros((1, 2)), threads=1)
    assert refused.value.status_code == 422
    assert refused.value.error_code == "EXPLANATIONS_UNAVAILABLE"
    assert "python_function" in refused.value.message and "LightGBM" in refused.value.message
