"""Trusted formats: LightGBM from native text or an allowlist; nothing else unpickled by default."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import cloudpickle
import lightgbm as lgb
import mlflow
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from mlflow.models import infer_signature

from app.config import Settings
from app.main import create_app
from scoring.errors import ModelLoadError
from scoring.loading import LoadOptions, build_predictor
from scoring.trusted import PICKLE_ALLOWLIST, UntrustedModel, allowlisted_loads
from tests.conftest import LoggedModel
from tests.helpers import PYTHON, make_frame

JSON = {"content-type": "application/json"}


class RunsCommand:
    """Unpickling this calls ``os.system``: what an attacker's pickle does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def classifier() -> lgb.LGBMClassifier:
    x, y = make_frame(500, seed=11)
    return lgb.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1, random_state=1).fit(x, y)


def test_the_allowlist_refuses_a_forbidden_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for dumps in (pickle.dumps, cloudpickle.dumps):
        with pytest.raises(UntrustedModel, match=r"system, which is not allowlisted"):
            allowlisted_loads(dumps(RunsCommand(marker)))
    assert not marker.exists()
    # An allowlisted class reached through a forbidden one is still refused.
    with pytest.raises(UntrustedModel, match=r"builtins\.eval"):
        allowlisted_loads(pickle.dumps(eval))
    # The same pickle does run with plain pickle: the test could fail.
    pickle.loads(pickle.dumps(RunsCommand(marker)))
    assert marker.exists()


def test_the_allowlist_reads_a_fitted_classifier(classifier: lgb.LGBMClassifier) -> None:
    rows, _ = make_frame(30, seed=12)
    expected = classifier.predict_proba(rows)[:, 1]
    for data in (
        pickle.dumps(classifier, protocol=2),
        pickle.dumps(classifier),
        cloudpickle.dumps(classifier),
    ):
        model = allowlisted_loads(data)
        assert isinstance(model, lgb.LGBMClassifier)
        np.testing.assert_allclose(model.predict_proba(rows)[:, 1], expected, rtol=0, atol=1e-12)
    # Nothing allowlisted reaches the interpreter, the OS or imports.
    modules = {module.split(".")[0] for module, _ in PICKLE_ALLOWLIST}
    assert modules <= {"lightgbm", "sklearn", "numpy", "collections", "_codecs"}


def _save_pickled(clf: lgb.LGBMClassifier, path: Path) -> Path:
    mlflow.lightgbm.save_model(clf, str(path), serialization_format="pickle")
    return path


def test_a_tampered_classifier_pickle_is_refused(
    classifier: lgb.LGBMClassifier, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    folder = _save_pickled(classifier, tmp_path / "model")
    (folder / "model.pkl").write_bytes(pickle.dumps(RunsCommand(marker)))
    with pytest.raises(ModelLoadError) as caught:
        build_predictor(folder, LoadOptions(compiled=False), "tampered")
    message = str(caught.value)
    assert "refused untrusted model" in message and "ALLOW_UNTRUSTED_MODELS" in message
    assert "\n" not in message
    assert not marker.exists()


def test_a_data_file_outside_the_model_is_refused(
    classifier: lgb.LGBMClassifier, tmp_path: Path
) -> None:
    folder = _save_pickled(classifier, tmp_path / "model")
    (tmp_path / "elsewhere.pkl").write_bytes((folder / "model.pkl").read_bytes())
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["lightgbm"]["data"] = "../elsewhere.pkl"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ModelLoadError, match="is not in the model"):
        build_predictor(folder, LoadOptions(compiled=False), "escaping")


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle", "skops"])
def test_a_logged_classifier_loads_by_default(
    tracking_dir: Path, classifier: lgb.LGBMClassifier, fmt: str
) -> None:
    rows, _ = make_frame(40, seed=13)
    expected = classifier.predict_proba(rows)[:, 1]
    with mlflow.start_run() as run:
        mlflow.lightgbm.log_model(
            classifier,
            name="model",
            signature=infer_signature(rows.head(5), expected[:5]),
            serialization_format=fmt,
            pip_requirements=["lightgbm"],
        )
    settings = Settings(model_uri=run.info.run_id, compiled_predictor=False)
    with TestClient(create_app(settings)) as client:
        card = client.get("/model").json()
        assert card["loading"] == ("allowlisted skops" if fmt == "skops" else "allowlisted pickle")
        r = client.post("/invocations", content=rows.to_json(orient="split"), headers=JSON)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"], expected, rtol=0, atol=1e-12)


def test_a_booster_loads_from_native_text(booster_model: LoggedModel) -> None:
    settings = Settings(model_uri=booster_model.model_uri, compiled_predictor=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/model").json()["loading"] == "lightgbm native text"
        frame = booster_model.frame
        r = client.post("/invocations", content=frame.to_json(orient="split"), headers=JSON)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(
            r.json()["predictions"], booster_model.expected, rtol=0, atol=1e-12
        )


LEAN_PROCESS = """
import json, sys
from pathlib import Path
import numpy as np
from scoring.trusted import import_lightgbm_for_serving
from scoring.loading import LoadOptions, build_predictor

import_lightgbm_for_serving(untrusted_allowed=True)  # leaves LightGBM to import as usual
assert "lightgbm" not in sys.modules
import_lightgbm_for_serving(untrusted_allowed=False)
rows = np.load(sys.argv[1])
out = {"sklearn_at_import": "sklearn" in sys.modules}
for folder in sys.argv[2:]:
    predictor = build_predictor(Path(folder), LoadOptions(compiled=False), folder)
    out[Path(folder).name] = {
        "loading": predictor.loading,
        "predictions": predictor.predict(rows, 1).tolist(),
        "sklearn": "sklearn" in sys.modules,
    }
print(json.dumps(out))
"""


def test_a_server_process_imports_lightgbm_without_sklearn_and_reads_every_format(
    classifier: lgb.LGBMClassifier, tmp_path: Path
) -> None:
    """What ``python -m app`` and each worker do: LightGBM imported without scikit-learn (its
    memory spared); a Booster then loads without it, and a classifier in every format still
    loads (scikit-learn imported then) and scores as the fitted classifier does."""
    rows, _ = make_frame(30, seed=14)
    x = np.ascontiguousarray(rows.to_numpy(dtype=np.float64))
    np.save(tmp_path / "rows.npy", x)
    folders = [tmp_path / "booster"]
    mlflow.lightgbm.save_model(classifier.booster_, str(folders[0]))
    for fmt in ("pickle", "cloudpickle", "skops"):
        folders.append(tmp_path / fmt)
        mlflow.lightgbm.save_model(classifier, str(folders[-1]), serialization_format=fmt)
    done = subprocess.run(
        [PYTHON, "-c", LEAN_PROCESS, str(tmp_path / "rows.npy"), *map(str, folders)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["sklearn_at_import"] is False
    assert out["booster"]["sklearn"] is False  # a Booster never needs it
    assert out["booster"]["loading"] == "lightgbm native text"
    expected = classifier.predict_proba(x)[:, 1]
    for name in ("booster", "pickle", "cloudpickle", "skops"):
        np.testing.assert_allclose(out[name]["predictions"], expected, rtol=0, atol=1e-12)
    assert out["skops"]["loading"] == "allowlisted skops"
    assert out["pickle"]["loading"] == out["cloudpickle"]["loading"] == "allowlisted pickle"
