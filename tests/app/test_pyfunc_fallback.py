"""A model of another flavor is served through mlflow.pyfunc (when untrusted models are allowed:
loading one runs its code), with the same validation."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from fastapi.testclient import TestClient
from mlflow.models import infer_signature

from app.config import Settings
from app.main import create_app
from tests.helpers import make_frame


class MeanOfTwo(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """A stand-in for any non-LightGBM model: a probability from two features."""

    def predict(self, context, model_input: pd.DataFrame, params=None):  # type: ignore[no-untyped-def]
        z = model_input["var_0"].to_numpy() - model_input["var_1"].to_numpy()
        return 1 / (1 + np.exp(-z))


def test_pyfunc_model_is_served_with_the_same_checks(tracking_dir) -> None:  # type: ignore[no-untyped-def]
    frame, _ = make_frame(12, seed=31)
    frame = frame[["var_1", "var_0", *frame.columns[2:]]]  # the signature's own order
    expected = MeanOfTwo().predict(None, frame)
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=MeanOfTwo(),
            signature=infer_signature(frame, expected),
            pip_requirements=["mlflow"],
        )
    settings = Settings(model_uri=run.info.run_id, allow_untrusted_models=True)
    with TestClient(create_app(settings)) as client:
        card = client.get("/model").json()
        assert card["flavor"] == "python_function" and card["features"][:2] == ["var_1", "var_0"]
        assert card["loading"] == "pyfunc (untrusted allowed)"
        shuffled = frame[list(reversed(frame.columns))]
        r = client.post(
            "/invocations",
            content=shuffled.to_json(orient="split"),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"], expected, atol=1e-12)
        bad = client.post(
            "/invocations",
            content=frame.iloc[:, 1:].to_json(orient="split"),
            headers={"content-type": "application/json"},
        )
        assert bad.status_code == 422 and "'var_1'" in bad.json()["message"]
