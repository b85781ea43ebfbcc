"""Execute the notebooks headless with small data; a cell that raises fails the test.

The notebooks check their own claims (conclusions, run comparisons, served-vs-in-process
predictions) with assertions, so running them is the test; these tests add what only the
outside can see: which store the runs landed in, where the alias points, what was rendered.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from papermill.exceptions import PapermillExecutionError

from tests.conftest import LoggedModel
from tests.helpers import server_process
from tests.notebooks.conftest import RunNotebook, outputs
from training.data import synthesize, write_csv

pytestmark = pytest.mark.slow

EXPLORE = "01_explore_data.ipynb"
TRAIN = "02_train_and_track.ipynb"
API = "03_call_the_api.ipynb"
TUNE = "04_tune.ipynb"
EXPLAIN = "05_explain.ipynb"
# The explore notebook's conclusions are checked against chance levels; 20,000 rows are enough
# for them to hold and still take seconds.
EXPLORE_ROWS = 20_000


def test_explore_on_a_data_file(run_notebook: RunNotebook, tmp_path: Path) -> None:
    data = write_csv(synthesize(EXPLORE_ROWS + 2_000, seed=3), tmp_path / "train.csv")
    notebook = run_notebook(EXPLORE, data_file=str(data), rows=EXPLORE_ROWS)
    text = "".join(outputs(notebook, "stream"))
    assert f"{data.resolve()}: {EXPLORE_ROWS:,} rows x 202 columns" in text
    assert len(outputs(notebook, "image/png")) == 4  # balance, AUCs, distributions, correlations
    assert text.count("ok   ") == 5 and "FAIL" not in text


def test_explore_falls_back_to_the_synthetic_stand_in(
    run_notebook: RunNotebook, tmp_path: Path
) -> None:
    notebook = run_notebook(EXPLORE, data_file=str(tmp_path / "absent.csv"), rows=EXPLORE_ROWS)
    text = "".join(outputs(notebook, "stream"))
    assert f"synthetic stand-in (training.data.synthesize, seed 0; no {tmp_path}" in text
    assert f": {EXPLORE_ROWS:,} rows x 202 columns" in text
    assert text.count("ok   ") == 5


def test_train_and_track(
    run_notebook: RunNotebook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment(
        "nb-test", artifact_location=(store / "artifacts").as_uri()
    )
    # The environment points elsewhere: the tracking_uri parameter must win.
    decoy = tmp_path / "decoy.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{decoy}")
    variants = {"baseline": {}, "more features per tree": {"feature_fraction": 0.3}}

    notebook = run_notebook(
        TRAIN,
        tracking_uri=uri,
        experiment="nb-test",
        model_name="nb-model",
        data_file=str(tmp_path / "absent.csv"),
        rows=3_000,
        folds=2,
        num_boost_round=40,
        early_stopping_rounds=10,
        variants=variants,
    )

    assert not decoy.exists()
    runs = client.search_runs([experiment_id], "tags.`notebook.sweep` != ''")
    assert sorted(r.data.tags["mlflow.runName"] for r in runs) == sorted(variants)
    for run in runs:
        assert 0.5 < run.data.metrics["cv_auc_mean"] <= 1.0
        assert run.data.params["rows"] == "3000" and run.data.params["folds"] == "2"
        assert {"plots/roc.png", "plots/pr.png"} <= {
            a.path for a in client.list_artifacts(run.info.run_id, "plots")
        }
    best_auc = max(r.data.metrics["cv_auc_mean"] for r in runs)
    champion = client.get_model_version_by_alias("nb-model", "champion")
    assert str(champion.version) == "1"  # a fresh registry: the first version is promoted
    assert client.get_run(champion.run_id).data.metrics["cv_auc_mean"] == best_auc
    assert client.get_model_version("nb-model", "1").tags["cv_auc_mean"] == f"{best_auc:.6f}"

    links = "".join(outputs(notebook, "text/markdown"))
    assert f"http://localhost:5000/#/experiments/{experiment_id}/runs/{champion.run_id}" in links
    assert len(outputs(notebook, "image/png")) == 1


@pytest.fixture(scope="module")
def api_url(booster_model: LoggedModel) -> Iterator[str]:
    """A real API process serving the session store's ``santander@champion``."""
    args = [sys.executable, "-m", "app", "--model-uri", "models:/santander@champion"]
    with server_process([*args, "--port", "{port}"]) as (url, _):
        yield url


def test_call_the_api(run_notebook: RunNotebook, api_url: str, tmp_path: Path) -> None:
    notebook = run_notebook(
        API, api_url=api_url, data_file=str(tmp_path / "absent.csv"), rows=200, ready_timeout=30
    )
    text = "".join(outputs(notebook, "stream"))
    assert "in-process model models:/santander/" in text
    assert "largest difference" in text
    table = "".join(outputs(notebook, "text/plain"))
    for code in ("MISSING_COLUMNS", "INVALID_VALUE", "MALFORMED_REQUEST", "UNSUPPORTED_MEDIA_TYPE"):
        assert code in table


def test_call_the_api_fails_when_the_served_model_differs(
    run_notebook: RunNotebook, api_url: str, classifier_model: LoggedModel, tmp_path: Path
) -> None:
    """The served-vs-in-process comparison is a real check: another model must fail it."""
    with pytest.raises(PapermillExecutionError) as failure:
        run_notebook(
            API,
            api_url=api_url,
            data_file=str(tmp_path / "absent.csv"),
            rows=200,
            ready_timeout=30,
            local_model_uri=classifier_model.model_uri,
        )
    assert failure.value.ename == "AssertionError"
    assert "Not equal to tolerance" in failure.value.evalue


def test_tune(run_notebook: RunNotebook, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment(
        "nb-tune", artifact_location=(store / "artifacts").as_uri()
    )

    notebook = run_notebook(
        TUNE,
        tracking_uri=uri,
        experiment="nb-tune",
        model_name="nb-tuned",
        data_file=str(tmp_path / "absent.csv"),
        rows=3_000,
        folds=2,
        num_boost_round=60,
        early_stopping_rounds=20,
        trials=4,
    )

    assert (store / "optuna.db").is_file()  # the default storage: beside the MLflow store
    (parent,) = client.search_runs([experiment_id], "tags.`tune.role` = 'study'")
    children = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 4
    champion = client.get_model_version_by_alias("nb-tuned", "champion")
    assert parent.data.tags["tune.registered_run_id"] == champion.run_id
    winner = client.get_run(champion.run_id).data
    assert winner.params["model_family"] == parent.data.tags["best.model"]
    text = "".join(outputs(notebook, "stream"))
    assert f"parent run {parent.info.run_id}: 4 trials" in text
    assert "registered nb-tuned v1" in text
    assert len(outputs(notebook, "image/png")) == 1
    assert "the study in the MLflow UI" in "".join(outputs(notebook, "text/markdown"))


def test_explain(run_notebook: RunNotebook, api_url: str, tmp_path: Path) -> None:
    notebook = run_notebook(
        EXPLAIN,
        api_url=api_url,
        data_file=str(tmp_path / "absent.csv"),
        rows=300,
        top=6,
        ready_timeout=30,
    )
    text = "".join(outputs(notebook, "stream"))
    assert "300 rows from " in text and " explained in " in text
    assert "contributions add up: largest |base + sum - logit(p)| over 300 rows" in text
    assert "in-process models:/santander/" in text
    assert "its 6 reasons" in text
    assert len(outputs(notebook, "image/png")) == 2  # the waterfall, the global ranking
    tables = "".join(outputs(notebook, "text/plain"))
    assert "contribution" in tables and "gain_rank" in tables


MONITOR = "06_monitor.ipynb"


def test_monitor_finds_the_shifted_features_in_an_inference_log(
    run_notebook: RunNotebook, profiled_model: str, tmp_path: Path
) -> None:
    """A log written by the service itself (rows with five shifted features), then the notebook."""
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app
    from tests.conftest import SHIFTED, fresh_rows

    _, shifted = fresh_rows()
    log_dir = tmp_path / "log"
    settings = Settings(
        model_uri=profiled_model, inference_log_dir=str(log_dir), compiled_predictor=False
    )
    with TestClient(create_app(settings)) as client:
        for start in range(0, len(shifted), 500):
            r = client.post(
                "/invocations",
                content=shifted.iloc[start : start + 500].to_json(orient="split"),
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 200

    notebook = run_notebook(MONITOR, log_dir=str(log_dir), top=5)
    text = "".join(outputs(notebook, "stream"))
    assert f"{len(shifted):,} rows in" in text
    assert f"{profiled_model}: reference of" in text
    assert "decision: retrain" in text
    acting = text.split("features at >= 0.25: ", 1)[1].split("\n", 1)[0]
    assert sorted(ast.literal_eval(acting)) == sorted(SHIFTED)
    assert len(outputs(notebook, "image/png")) == 2  # PSI bars, distributions
