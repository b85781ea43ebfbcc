"""training.tune: a study as nested MLflow runs, resumable, with pruned trials marked."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pytest

from tests.training.conftest import Store
from training.config import QUICK
from training.promote import CV_METRIC
from training.tracking import TrainingData
from training.tune import Objective, TuneSettings, main, parse_args

# 2 folds x at most 60 rounds on 3,000 rows: a few seconds a trial.
SMALL = ["--quick", "--rows", "3000", "--folds", "2", "--num-boost-round", "60", "--threads", "1"]
PLOTS = {"optimization_history", "param_importances", "parallel_coordinate"}


def _tune(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*SMALL, *args]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out, "nothing on stdout"
    return out[-1]  # the parent run id


def _children(store: Store, parent_id: str) -> list[mlflow.entities.Run]:
    return mlflow.MlflowClient().search_runs(
        [store.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )


def test_quick_study_parent_children_best_and_plots(
    fresh_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    parent_id = _tune(["--trials", "4", "--storage", storage, "--study-name", "four"], capsys)

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    children = _children(fresh_store, parent_id)
    assert len(children) == 4
    assert {c.data.tags["optuna.trial.number"] for c in children} == {"0", "1", "2", "3"}
    for child in children:
        state = child.data.tags["optuna.trial.state"]
        assert state in {"COMPLETE", "PRUNED"}
        assert child.info.status == ("FINISHED" if state == "COMPLETE" else "KILLED")
        assert {"model", "learning_rate", "num_leaves", "feature_fraction"} <= set(
            child.data.params
        )
        assert "fold1_auc" in child.data.metrics or state == "PRUNED"
    complete = [c for c in children if c.data.tags["optuna.trial.state"] == "COMPLETE"]
    best = max(complete, key=lambda c: c.data.metrics[CV_METRIC])
    assert parent.data.metrics[CV_METRIC] == pytest.approx(best.data.metrics[CV_METRIC])
    assert parent.data.tags["best.mlflow_run_id"] == best.info.run_id
    for key, value in best.data.params.items():
        if key not in {"folds", "cv_seed"}:
            assert parent.data.tags[f"best.{key}"] == value, key
    assert parent.data.metrics[CV_METRIC] > 0.6
    artifacts = {a.path for a in client.list_artifacts(parent_id, "plots")}
    assert {f"plots/{name}.png" for name in PLOTS} <= artifacts
    local = mlflow.artifacts.download_artifacts(f"runs:/{parent_id}/best_params.json")
    assert json.loads(Path(local).read_text())["params"]["model"] == best.data.params["model"]
    study = optuna.load_study(study_name="four", storage=storage)
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    assert study.best_value == pytest.approx(parent.data.metrics[CV_METRIC])


def test_resumed_study_adds_trials_to_the_same_study_and_parent(
    fresh_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["--trials", "2", "--storage", storage, "--study-name", "again"]
    first = _tune(args, capsys)
    second = _tune(args, capsys)
    assert second == first
    assert len(optuna.load_study(study_name="again", storage=storage).trials) == 4
    children = _children(fresh_store, first)
    assert sorted(int(c.data.tags["optuna.trial.number"]) for c in children) == [0, 1, 2, 3]
    # Different data would make the trials incomparable: refused, with the reason.
    assert main([*SMALL, "--rows", "4000", *args]) == 2
    assert "rows: 3000 then, 4000 now" in capsys.readouterr().err


class AlwaysPrune(optuna.pruners.BasePruner):
    """Prunes at the first report: the trial's child run must say so."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_a_pruned_trial_is_marked_on_its_child_run(
    fresh_store: Store, small_data: TrainingData
) -> None:
    settings = TuneSettings(train=QUICK, families=("gbdt",))
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    with mlflow.start_run(experiment_id=fresh_store.experiment_id) as parent:
        objective = Objective(settings, small_data, fresh_store.experiment_id, parent.info.run_id)
        study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    (child,) = _children(fresh_store, parent.info.run_id)
    assert child.data.tags["optuna.trial.state"] == "PRUNED"
    assert child.info.status == "KILLED"
    assert CV_METRIC not in child.data.metrics


def test_options() -> None:
    quick = parse_args(["--quick"])
    assert (quick.trials, quick.train.rows, quick.train.folds, quick.pruner) == (
        4,
        20_000,
        3,
        "median",
    )
    assert parse_args([]).trials == 50
    chosen = parse_args(["--families", "additive,nb-trees", "--pruner", "hyperband"])
    assert chosen.families == ("additive", "nb-trees") and chosen.pruner == "hyperband"
    with pytest.raises(SystemExit):
        parse_args(["--families", "forest"])
