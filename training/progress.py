"""Progress for people on stderr, so that stdout carries only what a script reads (a run id)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any


def say(message: str) -> None:
    """Print one progress line to stderr."""
    print(message, file=sys.stderr, flush=True)


def progress_callback(label: str, every: int) -> Callable[[Any], None]:
    """A LightGBM callback printing ``label``, the round and the validation AUC so far.

    Args:
        label: E.g. ``"fold 2/5"``.
        every: Print every this many rounds (0: never).

    Returns:
        The callback.
    """
    start = time.monotonic()
    best = {"auc": -math.inf, "iteration": 0}

    def _callback(env: Any) -> None:
        iteration = env.iteration + 1
        aucs = [r[2] for r in env.evaluation_result_list if r[1] == "auc"]
        if aucs and aucs[0] > best["auc"]:
            best["auc"], best["iteration"] = aucs[0], iteration
        if every and (iteration % every == 0 or iteration == env.end_iteration):
            elapsed = time.monotonic() - start
            score = (
                f"  auc {aucs[0]:.5f}  best {best['auc']:.5f} @ {best['iteration']}" if aucs else ""
            )
            say(f"  {label}  round {iteration:>6}{score}  ({elapsed:.0f}s)")

    # Before early stopping (order 30), which ends training at the last round by raising.
    _callback.order = 25  # type: ignore[attr-defined]
    return _callback
