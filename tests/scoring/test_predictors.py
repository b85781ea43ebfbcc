"""Predictors without HTTP or MLflow: probabilities, column order, threads."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np

from scoring.predictors import BoosterPredictor
from tests.helpers import FEATURES, make_frame


def _booster() -> lgb.Booster:
    x, y = make_frame(400, seed=5)
    return lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": 5},
        lgb.Dataset(x, y),
        num_boost_round=15,
    )


def test_booster_predictor_gives_lightgbm_probabilities() -> None:
    booster = _booster()
    rows, _ = make_frame(30, seed=6)
    x = rows.to_numpy().copy()
    x[2, 4] = np.nan
    predictor = BoosterPredictor(booster, tuple(FEATURES), compiled=False)
    got = predictor.predict(x, threads=1)
    np.testing.assert_allclose(got, booster.predict(x), rtol=0, atol=0)
    assert ((got > 0) & (got < 1)).all()
    np.testing.assert_allclose(predictor.predict(x, threads=2), got, rtol=0, atol=1e-15)


def test_a_signature_in_another_order_is_followed_not_swapped() -> None:
    booster = _booster()
    rows, _ = make_frame(10, seed=7)
    signature = tuple(reversed(FEATURES))
    predictor = BoosterPredictor(booster, signature, compiled=False)
    # The caller sends columns in the signature's order; the booster's own order is restored.
    got = predictor.predict(np.ascontiguousarray(rows[list(signature)].to_numpy()), threads=1)
    np.testing.assert_allclose(got, booster.predict(rows.to_numpy()), rtol=0, atol=0)
