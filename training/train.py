"""Train the Santander LightGBM model: ``python -m training.train [--quick] [--data PATH] ...``.

The entry point only: it parses the command line (``training.config``) and hands the settings to
a backend, this machine (``training.local``) or a Dask cluster (``training.distributed``, with
``--dask-scheduler``). Progress goes to stderr; the last line of stdout is the run id, so
``RUN=$(python -m training.train --quick | tail -n1)`` works.

Where the pieces live (each usable on its own; the names below are re-exported here, so
``from training.train import cross_validate`` keeps working)::

    training.config      Settings, DEFAULT, QUICK, parse_args          what decides a run
    training.modelling   default_params, cross_validate, fit_final     LightGBM, pure functions
    training.tracking    load_or_synthesize, log_and_register, publish  MLflow: data, log, register
    training.promote     promote                                        move @champion or not
    training.local / training.distributed                               the two backends
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

from training.config import (
    DEFAULT,
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
    PROJECT_DIR,
    QUICK,
    Settings,
    parse_args,
)
from training.data import DataError
from training.local import run_local
from training.modelling import CVResult, cross_validate, default_params, fit_final
from training.progress import progress_callback, say
from training.tracking import (
    LoggedRun,
    TrainingData,
    dataset_schema,
    git_commit,
    load_or_synthesize,
    log_and_register,
    model_signature,
    pip_requirements,
)

__all__ = [
    "DEFAULT",
    "DEFAULT_EXPERIMENT",
    "DEFAULT_MODEL_NAME",
    "PROJECT_DIR",
    "QUICK",
    "CVResult",
    "LoggedRun",
    "Settings",
    "TrainingData",
    "cross_validate",
    "dataset_schema",
    "default_params",
    "fit_final",
    "git_commit",
    "load_or_synthesize",
    "log_and_register",
    "main",
    "model_signature",
    "parse_args",
    "pip_requirements",
    "progress_callback",
    "run",
    "say",
]


def run(settings: Settings) -> LoggedRun:
    """The whole pipeline for ``settings``: data, CV, final fit, log, register, promote.

    Args:
        settings: What to train and where to log it.

    Returns:
        Where the run landed.
    """
    if settings.dask_scheduler:
        # Imported when asked for: it brings in Dask, which the local path never needs.
        from training import distributed

        return distributed.run_distributed(settings, settings.dask_scheduler)
    return run_local(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: train, then print the run id as the last line of stdout."""
    settings = parse_args(argv)
    stdout = sys.stdout
    try:
        # Anything else that prints (MLflow, LightGBM's Python logger) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            logged = run(settings)
    except (FileNotFoundError, DataError) as exc:
        say(f"error: {exc}")
        return 2
    print(logged.run_id, file=stdout, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
