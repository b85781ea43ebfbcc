"""What decides a training run: :class:`Settings`, the presets, and the ``training.train`` CLI.

No MLflow and no LightGBM here: parsing a command line or reading a preset costs nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from training.promote import POLICIES, Policy

# The family names, here rather than imported from training.modelling so that a command line is
# parsed without importing LightGBM (tests/training/test_train.py checks the two agree).
MODEL_FAMILIES = ("gbdt", "additive", "nb-trees")

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = "santander"
DEFAULT_MODEL_NAME = "santander"
DEFAULT_ROWS = 200_000
"""Rows of the synthetic stand-in when no file and no row count is given."""


@dataclass(frozen=True)
class Settings:
    """Everything that decides a training run (the command line, after presets are applied).

    Attributes:
        data: A Santander ``train.csv``; ``None`` synthesizes a stand-in.
        rows: Rows to synthesize, or to sample (stratified) from ``data``; ``None`` keeps all.
        seed: Seed for synthesis, fold split and LightGBM: same seed, same data, same model.
        folds: Number of stratified CV folds.
        num_boost_round: Upper bound on boosting rounds per fold (early stopping picks fewer).
        learning_rate: LightGBM learning rate.
        early_stopping_rounds: Stop a fold after this many rounds without a better valid AUC.
        log_every: Print progress every this many rounds.
        num_threads: LightGBM threads (0: OpenMP default, all cores).
        experiment: MLflow experiment name.
        register_as: Registered model name; empty string: log the model but do not register it.
        promote: Promotion policy for alias ``champion``.
        preset: ``"quick"`` or ``"default"``, recorded as a tag.
        dask_scheduler: ``tcp://host:8786`` or ``"local"``: train with ``lightgbm.dask`` there
            (``training.distributed``); ``None``: on this machine.
        model: The model family (``training.modelling.FAMILIES``).
    """

    data: Path | None = None
    rows: int | None = DEFAULT_ROWS
    seed: int = 0
    folds: int = 5
    num_boost_round: int = 20_000
    learning_rate: float = 0.05
    early_stopping_rounds: int = 300
    log_every: int = 500
    num_threads: int = 0
    experiment: str = DEFAULT_EXPERIMENT
    register_as: str = DEFAULT_MODEL_NAME
    promote: Policy = "if-better"
    preset: str = "default"
    dask_scheduler: str | None = None
    model: str = "gbdt"


DEFAULT = Settings()
# Small enough to finish in seconds (demos, tests, `make run`), still clearly better than chance.
QUICK = replace(
    DEFAULT,
    rows=20_000,
    folds=3,
    num_boost_round=300,
    learning_rate=0.1,
    early_stopping_rounds=50,
    log_every=100,
    num_threads=1,  # on 20,000 rows a second thread costs more in synchronisation than it saves
    preset="quick",
)


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Turn the command line into :class:`Settings` (``--quick`` first, then explicit options)."""
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Cross-validate and fit the Santander LightGBM model, log it to MLflow, "
        "register it and promote it to @champion if it beats the current one. Progress goes "
        "to stderr; the last line of stdout is the run id.",
    )
    parser.add_argument("--data", type=Path, help="Santander train.csv (default: synthesize)")
    parser.add_argument(
        "--rows",
        type=int,
        help="rows to synthesize (default 200000; --quick 20000), or to sample from --data",
    )
    parser.add_argument("--seed", type=int, help="seed for data, folds and LightGBM (default 0)")
    parser.add_argument("--folds", type=int, help="CV folds (default 5; --quick 3)")
    parser.add_argument(
        "--num-boost-round",
        type=int,
        help="max rounds per fold, early stopping picks (default 20000; --quick 300)",
    )
    parser.add_argument(
        "--learning-rate", type=float, help="learning rate (default 0.05; --quick 0.1)"
    )
    parser.add_argument(
        "--early-stopping-rounds", type=int, help="patience on valid AUC (default 300; --quick 50)"
    )
    parser.add_argument("--threads", type=int, help="LightGBM threads (default 0: all cores)")
    parser.add_argument("--experiment", help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    parser.add_argument(
        "--register-as",
        help=f"registered model name (default {DEFAULT_MODEL_NAME}; '' to skip registering)",
    )
    parser.add_argument(
        "--promote",
        choices=POLICIES,
        help="move @champion: if-better (default, compares mean CV AUC), always, never",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small preset for demos and tests: 20000 rows, 3 folds, 300 rounds at 0.1",
    )
    parser.add_argument(
        "--log-every", type=int, help="progress every N rounds (default 500; --quick 100)"
    )
    parser.add_argument(
        "--dask-scheduler",
        help="train with lightgbm.dask on this Dask scheduler (tcp://host:8786), or 'local'",
    )
    parser.add_argument(
        "--model",
        choices=MODEL_FAMILIES,
        help="model family: gbdt (default), additive (one feature per tree), nb-trees (additive "
        "trees fitted to a Gaussian naive Bayes teacher)",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULT
    given = {
        "data": args.data,
        "rows": args.rows,
        "seed": args.seed,
        "folds": args.folds,
        "num_boost_round": args.num_boost_round,
        "learning_rate": args.learning_rate,
        "early_stopping_rounds": args.early_stopping_rounds,
        "num_threads": args.threads,
        "experiment": args.experiment,
        "register_as": args.register_as,
        "promote": args.promote,
        "log_every": args.log_every,
        "dask_scheduler": args.dask_scheduler,
        "model": args.model,
    }
    settings = replace(base, **{k: v for k, v in given.items() if v is not None})
    if args.data is not None and args.rows is None:
        settings = replace(settings, rows=None)  # a file: all its rows unless told otherwise
    if settings.folds < 2:
        parser.error("--folds must be at least 2")
    if settings.dask_scheduler and settings.model == "nb-trees":
        parser.error("--model nb-trees trains on this machine only (no --dask-scheduler)")
    if settings.rows is not None and settings.rows < 10 * settings.folds:
        parser.error("--rows is too small for the number of folds")
    return settings
