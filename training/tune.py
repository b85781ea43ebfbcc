"""Search LightGBM configurations and model families with Optuna, every trial an MLflow run.

``python -m training.tune [--quick] [--trials N] [--timeout S] [--data PATH] [--register]``

* One Optuna study (TPE sampler; median or Hyperband pruning) kept in an Optuna storage
  (``--storage``, default ``optuna.db`` beside the MLflow SQLite store): running the same command
  again resumes the study, adding ``--trials`` more trials to it.
* One MLflow **parent run** per study (its id is kept in the study, so a resumed study logs to
  the same parent); every trial is a **child run** (tag ``mlflow.parentRunId``) with its
  parameters, per-fold AUCs and ``cv_auc_mean``; a pruned trial is tagged
  ``optuna.trial.state=PRUNED`` and ends ``KILLED``.
* The parent carries the best trial's parameters (tags ``best.<name>``, ``best_params.json``),
  its ``cv_auc_mean`` and Optuna's plots (``plots/optimization_history.png``,
  ``plots/param_importances.png``, ``plots/parallel_coordinate.png``).
* Pruning: LightGBM's pruning callback reports the first fold's validation AUC after every
  round (a hopeless trial stops within its first fold); after each fold the mean AUC so far is
  reported at step ``num_boost_round + fold``, so later folds can stop a trial too.
* ``--register`` cross-validates the best configuration again, fits it on all rows, and logs,
  registers and promotes it exactly as ``python -m training.train`` does (``training.local``).

Progress goes to stderr; the last line of stdout is the parent run id.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import numpy as np
import optuna
from lightgbm.basic import LightGBMError
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import LightGBMPruningCallback

from training.config import (
    DEFAULT,
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
    MODEL_FAMILIES,
    PROJECT_DIR,
    QUICK,
    Settings,
)
from training.data import DataError
from training.local import run_local
from training.modelling import FAMILIES, CVResult, as_matrix, cross_validate, family_params
from training.progress import say
from training.promote import CV_METRIC, POLICIES
from training.tracking import (
    LoggedRun,
    TrainingData,
    configure_tracking,
    load_or_synthesize,
    open_experiment,
)

PARENT_ATTR = "mlflow_parent_run_id"
SETTINGS_ATTR = "settings"
# What a resumed study must share with the first session, or its trials are not comparable.
COMPARABLE = ("data", "rows", "seed", "folds", "num_boost_round", "early_stopping_rounds")


@dataclass(frozen=True)
class TuneSettings:
    """A tuning session.

    Attributes:
        train: Data, folds, rounds, experiment, registration (as ``training.train``).
        trials: Trials to run in this session (a resumed study adds them to its own).
        timeout: Stop starting new trials after this many seconds (``None``: no limit).
        storage: Optuna storage URL; ``None``: ``optuna.db`` beside the MLflow store.
        study_name: The study (and the parent run's name).
        pruner: ``median`` or ``hyperband``.
        families: Model families to search.
        register: Fit, register and promote the best configuration at the end.
    """

    train: Settings
    trials: int = 50
    timeout: float | None = None
    storage: str | None = None
    study_name: str = "santander-tune"
    pruner: str = "median"
    families: tuple[str, ...] = MODEL_FAMILIES
    register: bool = False


def default_storage(tracking_uri: str) -> str:
    """``optuna.db`` beside a SQLite MLflow store; in the project folder for any other store.

    Args:
        tracking_uri: The MLflow tracking URI in force.

    Returns:
        A SQLite URL for Optuna.
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite" and tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    else:
        folder = PROJECT_DIR
    return f"sqlite:///{folder / 'optuna.db'}"


def suggest(
    trial: optuna.Trial, families: Sequence[str], quick: bool, train_rows: int
) -> dict[str, Any]:
    """The search space: the model family and the LightGBM parameters that matter here.

    Args:
        trial: The Optuna trial.
        families: Families to choose from.
        quick: Few rounds per fold (``--quick``): keep the learning rate high enough to converge.
        train_rows: Rows in a training fold: a leaf must not need more than a few percent.

    Returns:
        The suggested values (``model`` and LightGBM parameter names).
    """
    family = trial.suggest_categorical("model", list(families))
    additive = family != "gbdt"
    return {
        "model": family,
        "learning_rate": trial.suggest_float(
            "learning_rate", 0.05 if quick else 0.01, 0.3 if quick else 0.15, log=True
        ),
        # An additive tree splits one feature: a few leaves suffice; gbdt trees need more.
        "num_leaves": trial.suggest_int("num_leaves", 2, 16 if additive else 48, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.02, 1.0, log=True),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.3, 1.0),
        "min_data_in_leaf": trial.suggest_int(
            "min_data_in_leaf", 5, int(np.clip(train_rows // 30, 10, 1000)), log=True
        ),
        "lambda_l1": trial.suggest_float("lambda_l1", 1e-3, 10.0, log=True),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 100.0, log=True),
    }


def lightgbm_params(suggested: dict[str, Any], seed: int, num_threads: int) -> dict[str, Any]:
    """LightGBM parameters for suggested values: the family's, with the suggestions on top.

    Args:
        suggested: As :func:`suggest` returns (or a finished trial's ``params``).
        seed: LightGBM seed.
        num_threads: LightGBM threads.

    Returns:
        A LightGBM parameter dict.
    """
    values = dict(suggested)
    params = family_params(values.pop("model"), seed, num_threads=num_threads)
    params.update(values)
    params["bagging_freq"] = 1 if params["bagging_fraction"] < 1.0 else 0
    return params


def make_pruner(name: str, settings: Settings) -> optuna.pruners.BasePruner:
    """The pruner: ``median`` (after 5 trials, past a quarter of the rounds) or ``hyperband``."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, settings.num_boost_round // 20),
            max_resource=settings.num_boost_round + settings.folds,
            reduction_factor=3,
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=5, n_warmup_steps=max(1, settings.num_boost_round // 4)
    )


class Objective:
    """One trial: suggest, cross-validate with pruning, log a child run of the parent."""

    def __init__(
        self, tune: TuneSettings, data: TrainingData, experiment_id: str, parent_id: str
    ) -> None:
        self.tune = tune
        self.settings = tune.train
        self.matrix = as_matrix(data.X)
        self.y = data.y
        self.experiment_id = experiment_id
        self.parent_id = parent_id

    def __call__(self, trial: optuna.Trial) -> float:
        """Run ``trial`` and return its mean CV AUC (raises ``TrialPruned`` when pruned)."""
        s = self.settings
        train_rows = len(self.y) * (s.folds - 1) // s.folds
        suggested = suggest(trial, self.tune.families, s.preset == "quick", train_rows)
        params = lightgbm_params(suggested, s.seed, s.num_threads)
        done: list[CVResult] = []

        def pruners(k: int) -> list[Any]:
            return [LightGBMPruningCallback(trial, "auc", valid_name="valid")] if k == 1 else []

        def after_fold(k: int, cv: CVResult) -> None:
            done[:] = [cv]
            trial.report(cv.mean_auc, s.num_boost_round + k)
            if k < s.folds and trial.should_prune():
                raise optuna.TrialPruned(f"mean AUC {cv.mean_auc:.5f} after fold {k}")

        tags = {
            "mlflow.parentRunId": self.parent_id,
            "optuna.study_name": self.tune.study_name,
            "optuna.trial.number": str(trial.number),
            "model_family": suggested["model"],
        }
        run_id = ""
        state = TrialState.FAIL
        try:
            with mlflow.start_run(
                experiment_id=self.experiment_id,
                run_name=f"trial-{trial.number}",
                nested=True,
                tags=tags,
            ) as run:
                run_id = run.info.run_id
                trial.set_user_attr("mlflow_run_id", run_id)
                mlflow.log_params({**suggested, "folds": s.folds, "cv_seed": s.seed})
                try:
                    cv = cross_validate(
                        self.matrix,
                        self.y,
                        params,
                        s.folds,
                        num_boost_round=s.num_boost_round,
                        early_stopping_rounds=s.early_stopping_rounds,
                        seed=s.seed,
                        log_every=0,
                        teacher=FAMILIES[suggested["model"]].teacher,
                        fold_callbacks=pruners,
                        after_fold=after_fold,
                    )
                    state = TrialState.COMPLETE
                except optuna.TrialPruned:
                    state = TrialState.PRUNED
                    raise
                finally:
                    if done:
                        _log_cv(done[0], complete=state == TrialState.COMPLETE)
                    mlflow.set_tag("optuna.trial.state", state.name)
        finally:
            if state == TrialState.PRUNED and run_id:
                # The exception ended the run as FAILED; a pruned trial did not fail.
                mlflow.MlflowClient().set_terminated(run_id, "KILLED")
        return cv.mean_auc


def _log_cv(cv: CVResult, complete: bool) -> None:
    metrics = {f"fold{k}_auc": auc for k, auc in enumerate(cv.fold_auc, 1)}
    metrics.update(
        {f"fold{k}_best_iteration": float(b) for k, b in enumerate(cv.best_iterations, 1)}
    )
    metrics["cv_seconds"] = cv.seconds
    if complete:
        metrics.update(
            {
                CV_METRIC: cv.mean_auc,
                "cv_auc_std": cv.std_auc,
                "best_iteration_mean": float(np.mean(cv.best_iterations)),
            }
        )
    mlflow.log_metrics(metrics)


class StudyMismatch(ValueError):
    """A stored study was run with other data or CV settings than this session's."""


def open_study(tune: TuneSettings, storage: str) -> optuna.Study:
    """Create the study, or load it to resume; a resumed study must be on the same data and CV.

    Raises:
        StudyMismatch: The stored study was run with other data or CV settings.
    """
    recorded = {k: str(getattr(tune.train, k)) for k in COMPARABLE}
    study = optuna.create_study(
        study_name=tune.study_name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        pruner=make_pruner(tune.pruner, tune.train),
    )
    previous = study.user_attrs.get(SETTINGS_ATTR)
    if previous is None:
        study.set_user_attr(SETTINGS_ATTR, recorded)
    elif previous != recorded:
        differ = sorted(k for k in recorded if previous.get(k) != recorded[k])
        raise StudyMismatch(
            f"study {tune.study_name!r} in {storage} was run with other settings ("
            + ", ".join(f"{k}: {previous.get(k)} then, {recorded[k]} now" for k in differ)
            + "); resume it with the same ones or choose another --study-name"
        )
    # A resumed session must not replay the first session's random start-up points.
    study.sampler = optuna.samplers.TPESampler(seed=tune.train.seed + len(study.trials))
    return study


@contextlib.contextmanager
def parent_run(study: optuna.Study, tune: TuneSettings, experiment_id: str) -> Iterator[str]:
    """The study's parent run: the one recorded in the study if it still exists, else a new one."""
    parent_id = study.user_attrs.get(PARENT_ATTR)
    if parent_id is not None:
        try:
            mlflow.MlflowClient().get_run(parent_id)
        except MlflowException:
            parent_id = None
    if parent_id is not None:
        with mlflow.start_run(run_id=parent_id) as run:
            say(
                f"resuming study {tune.study_name!r} ({len(study.trials)} trials) "
                f"in run {parent_id}"
            )
            yield run.info.run_id
        return
    s = tune.train
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=tune.study_name,
        tags={"optuna.study_name": tune.study_name, "tune.role": "study", "preset": s.preset},
    ) as run:
        study.set_user_attr(PARENT_ATTR, run.info.run_id)
        mlflow.log_params(
            {
                "sampler": "TPESampler",
                "pruner": tune.pruner,
                "families": ",".join(tune.families),
                "folds": s.folds,
                "cv_seed": s.seed,
                "rows": s.rows if s.rows is not None else "all",
                "data": str(s.data) if s.data else "synthetic",
                "num_boost_round": s.num_boost_round,
                "early_stopping_rounds": s.early_stopping_rounds,
            }
        )
        yield run.info.run_id


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or ``None`` when none completed."""
    if not any(t.state == TrialState.COMPLETE for t in study.trials):
        return None
    return study.best_trial


def log_study(study: optuna.Study) -> FrozenTrial | None:
    """On the active parent run: the best trial's parameters and score, and Optuna's plots."""
    best = best_trial(study)
    if best is None:
        say("no trial completed: nothing to report on the parent run")
        return None
    mlflow.log_metric(CV_METRIC, float(best.value or 0.0))
    mlflow.log_metric("best_trial", best.number)
    counts = {state: sum(t.state == state for t in study.trials) for state in TrialState}
    mlflow.log_metrics(
        {
            "trials_complete": counts[TrialState.COMPLETE],
            "trials_pruned": counts[TrialState.PRUNED],
            "trials_failed": counts[TrialState.FAIL],
        }
    )
    # Tags, not params: a resumed study may find a better trial, and params cannot change.
    mlflow.set_tags({f"best.{k}": str(v) for k, v in best.params.items()})
    mlflow.set_tag("best.trial", str(best.number))
    mlflow.set_tag("best.mlflow_run_id", str(best.user_attrs.get("mlflow_run_id", "")))
    mlflow.log_dict(
        {"trial": best.number, CV_METRIC: best.value, "params": best.params},
        "best_params.json",
    )
    _log_plots(study)
    return best


def _log_plots(study: optuna.Study) -> None:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history": vis.plot_optimization_history,
        "param_importances": vis.plot_param_importances,
        "parallel_coordinate": vis.plot_parallel_coordinate,
    }
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                say(f"plot {name} skipped: {exc}")
                continue
        figure = np.ravel(axes)[0].figure
        figure.set_size_inches(10, 6)
        figure.tight_layout()
        mlflow.log_figure(figure, f"plots/{name}.png")
        plt.close(figure)


def tune(settings: TuneSettings) -> str:
    """Run (or resume) the study, log it, optionally register the best; returns the parent id.

    Args:
        settings: The session.

    Returns:
        The parent run id.
    """
    start = time.monotonic()
    s = settings.train
    data = load_or_synthesize(s.data, s.rows, s.seed)
    experiment_id = open_experiment(s.experiment)
    storage = settings.storage or default_storage(configure_tracking())
    say(f"Optuna storage: {storage} (study {settings.study_name!r})")
    say(f"data: {data.source}: {len(data.y):,} rows, {s.folds} folds")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(settings, storage)
    objective = Objective(settings, data, experiment_id, parent_id="")

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        best = best_trial(study)
        value = "pruned" if trial.state == TrialState.PRUNED else f"{trial.value or 0.0:.5f}"
        if trial.state == TrialState.FAIL:
            value = "failed"
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        ahead = f"; best {best.value:.5f} (trial {best.number})" if best else ""
        say(f"trial {trial.number} [{trial.params.get('model')}]: {value} in {seconds:.0f}s{ahead}")
        if best is not None:
            mlflow.log_metric(f"best_{CV_METRIC}", float(best.value or 0.0), step=trial.number)

    with parent_run(study, settings, experiment_id) as parent_id:
        objective.parent_id = parent_id
        study.optimize(
            objective,
            n_trials=settings.trials,
            timeout=settings.timeout,
            callbacks=[progress],
            # A configuration LightGBM rejects fails its trial (child run FAILED), not the study.
            catch=(LightGBMError,),
        )
        best = log_study(study)
    if best is not None:
        say(f"best: trial {best.number}, {CV_METRIC} {best.value:.5f}, {best.params}")
    if settings.register and best is not None:
        register_best(best, s, parent_id)
    say(f"done in {time.monotonic() - start:.0f}s")
    return parent_id


def register_best(best: FrozenTrial, settings: Settings, parent_id: str) -> LoggedRun:
    """Train the best configuration as ``training.train`` does: CV, fit, log, register, promote.

    Args:
        best: The trial whose configuration to train (e.g. ``study.best_trial``).
        settings: Data, folds, rounds, registered name and promotion policy.
        parent_id: The study's parent run, linked both ways by tags.

    Returns:
        Where the registered run landed.
    """
    params = lightgbm_params(best.params, settings.seed, settings.num_threads)
    family = str(best.params["model"])
    train = replace(settings, model=family, learning_rate=float(params["learning_rate"]))
    say(f"registering the best configuration (trial {best.number}, {family})")
    logged = run_local(
        train,
        params=params,
        tags={"tune.parent_run_id": parent_id, "tune.trial": str(best.number)},
    )
    client = mlflow.MlflowClient()
    client.set_tag(parent_id, "tune.registered_run_id", logged.run_id)
    if logged.version:
        client.set_tag(parent_id, "tune.registered_version", f"{logged.name}/{logged.version}")
    return logged


def parse_args(argv: Sequence[str] | None = None) -> TuneSettings:
    """Turn the command line into :class:`TuneSettings`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.tune",
        description="Search model families and LightGBM parameters with Optuna (TPE, pruning); "
        "every trial is a child MLflow run of one parent run per study; resumable. Progress "
        "goes to stderr; the last line of stdout is the parent run id.",
    )
    parser.add_argument("--trials", type=int, help="trials to run now (default 50; --quick 4)")
    parser.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small preset: 20000 rows, 3 folds, at most 300 rounds, 4 trials",
    )
    parser.add_argument("--data", type=Path, help="Santander train.csv (default: synthesize)")
    parser.add_argument("--rows", type=int, help="rows to synthesize or sample (as train)")
    parser.add_argument("--seed", type=int, help="seed for data, folds, LightGBM, TPE (default 0)")
    parser.add_argument("--folds", type=int, help="CV folds (default 5; --quick 3)")
    parser.add_argument("--num-boost-round", type=int, help="max rounds per fold")
    parser.add_argument("--early-stopping-rounds", type=int, help="patience on valid AUC")
    parser.add_argument("--threads", type=int, help="LightGBM threads (default 0: all cores)")
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: optuna.db beside the MLflow store)"
    )
    parser.add_argument("--study-name", help="study name, also the parent run's name")
    parser.add_argument(
        "--pruner", choices=("median", "hyperband"), default="median", help="default median"
    )
    parser.add_argument(
        "--families",
        help=f"comma-separated model families to search (default {','.join(MODEL_FAMILIES)})",
    )
    parser.add_argument("--experiment", help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    parser.add_argument(
        "--register",
        action="store_true",
        help="fit the best configuration on all rows, log, register and promote it",
    )
    parser.add_argument(
        "--register-as", help=f"registered model name (default {DEFAULT_MODEL_NAME})"
    )
    parser.add_argument("--promote", choices=POLICIES, help="as training.train (if-better)")
    args = parser.parse_args(argv)
    base = replace(QUICK if args.quick else DEFAULT, log_every=0)
    given = {
        "data": args.data,
        "rows": args.rows,
        "seed": args.seed,
        "folds": args.folds,
        "num_boost_round": args.num_boost_round,
        "early_stopping_rounds": args.early_stopping_rounds,
        "num_threads": args.threads,
        "experiment": args.experiment,
        "register_as": args.register_as,
        "promote": args.promote,
    }
    train = replace(base, **{k: v for k, v in given.items() if v is not None})
    if args.data is not None and args.rows is None:
        train = replace(train, rows=None)
    families = tuple(args.families.split(",")) if args.families else MODEL_FAMILIES
    unknown = sorted(set(families) - set(MODEL_FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(MODEL_FAMILIES)}")
    if train.folds < 2:
        parser.error("--folds must be at least 2")
    if train.rows is not None and train.rows < 10 * train.folds:
        parser.error("--rows is too small for the number of folds")
    trials = args.trials if args.trials is not None else (4 if args.quick else 50)
    if trials < 1:
        parser.error("--trials must be at least 1")
    return TuneSettings(
        train=train,
        trials=trials,
        timeout=args.timeout,
        storage=args.storage,
        study_name=args.study_name or ("santander-tune-quick" if args.quick else "santander-tune"),
        pruner=args.pruner,
        families=families,
        register=args.register,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: tune, then print the parent run id as the last line of stdout."""
    settings = parse_args(argv)
    stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            parent_id = tune(settings)
    except (FileNotFoundError, DataError, StudyMismatch) as exc:
        say(f"error: {exc}")
        return 2
    print(parent_id, file=stdout, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
