"""The single-machine backend: the whole pipeline in this process.

``load_or_synthesize -> cross_validate -> fit_final -> publish`` (log, register, promote).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from training.config import Settings
from training.modelling import FAMILIES, cross_validate, family_params, fit_final
from training.progress import say
from training.tracking import LoggedRun, load_or_synthesize, open_experiment, publish


def run_local(
    settings: Settings,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> LoggedRun:
    """Train, log, register and promote on this machine.

    Args:
        settings: What to train and where to log it.
        params: LightGBM parameters (default: those of ``settings.model`` at
            ``settings.learning_rate``), e.g. a tuned configuration.
        tags: Extra tags for the run.

    Returns:
        Where the run landed.
    """
    start = time.monotonic()
    # Data first: a bad file fails in seconds, before anything is written to the store.
    data = load_or_synthesize(settings.data, settings.rows, settings.seed)
    experiment_id = open_experiment(settings.experiment)
    say(
        f"data: {data.source}: {len(data.y):,} rows, {np.mean(data.y):.2%} positives, "
        f"digest {data.dataset.digest}"
    )
    if params is None:
        params = family_params(
            settings.model, settings.seed, settings.learning_rate, settings.num_threads
        )
    teacher = FAMILIES[settings.model].teacher
    say(
        f"{settings.model}: {settings.folds}-fold CV, up to {settings.num_boost_round} rounds at "
        f"learning rate {params['learning_rate']}, early stopping after "
        f"{settings.early_stopping_rounds}"
    )
    cv = cross_validate(
        data.X,
        data.y,
        params,
        settings.folds,
        num_boost_round=settings.num_boost_round,
        early_stopping_rounds=settings.early_stopping_rounds,
        seed=settings.seed,
        log_every=settings.log_every,
        teacher=teacher,
    )
    say(
        f"CV AUC {cv.mean_auc:.5f} ± {cv.std_auc:.5f}; best rounds {cv.best_iterations}; "
        f"final model: {cv.final_rounds} rounds on all rows"
    )
    booster = fit_final(
        data.X, data.y, params, cv.final_rounds, settings.log_every, teacher=teacher
    )
    logged = publish(data, params, cv, booster, settings, experiment_id=experiment_id, tags=tags)
    say(f"done in {time.monotonic() - start:.0f}s")
    return logged
