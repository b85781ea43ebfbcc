"""Predictors: score a float64 matrix with a model. Know nothing of HTTP, MLflow stores or Dask.

A LightGBM model (a ``Booster`` or an ``LGBMClassifier`` from the ``lightgbm`` flavor) is scored
through its native booster, which gives P(target = 1) for a binary objective, or through its trees
compiled by lleaves where they match it. Any other pyfunc flavor falls back to ``mlflow.pyfunc``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from scoring.compiled import CompiledForest, compile_booster, is_cached
from scoring.errors import ExplanationsUnavailable
from scoring.treeshap import TreeShapEngine, build_engine

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the service needs of a model: its feature order and a scoring function."""

    features: tuple[str, ...]
    flavor: str

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        """Score a float64 matrix whose columns are in ``features`` order."""
        ...


class BoosterPredictor:
    """Scores through a LightGBM ``Booster``: probabilities for a binary objective.

    With ``compiled=True`` the trees are compiled by lleaves (``scoring.compiled``) and that code
    scores instead, but only if it matched ``Booster.predict`` to 1e-9 on probe rows at load
    time; otherwise, or without lleaves, LightGBM scores. ``backend`` says which.

    Contributions come from ``scoring.treeshap`` where it matched ``pred_contrib`` to 1e-9 on
    probe rows, else from LightGBM; ``explainer_note`` says which. That is decided once: at load
    with ``explain=True`` (in the background too with ``background=True``), else by the first
    explanation asked for (with ``explain_on_demand=True`` in a thread ``explaining``, LightGBM
    explaining until it is done).
    """

    flavor = "lightgbm"
    loading = "in memory"
    """How the model was read (``scoring.trusted``: native text, allowlisted pickle, ...)."""

    def __init__(
        self,
        booster: Any,
        features: tuple[str, ...],
        compiled: bool = False,
        cache_dir: str | None = None,
        background: bool = False,
        *,
        explain: bool = False,
        explain_on_demand: bool = False,
    ) -> None:
        self.booster = booster
        booster_names = list(booster.feature_name())
        if len(booster_names) != len(features):
            raise ValueError(
                f"the model has {len(booster_names)} features, its signature {len(features)}"
            )
        # A booster trained on a named frame knows its own order; follow it if the signature's
        # order differs, so columns can never be silently swapped.
        self._order: np.ndarray | None = None
        if set(booster_names) == set(features) and booster_names != list(features):
            index = {name: i for i, name in enumerate(features)}
            self._order = np.array([index[n] for n in booster_names])
        self.features = features
        self.objective = str(booster.params.get("objective", "")) or _objective_of(booster)
        self.backend = "lightgbm"
        self.backend_note = "LightGBM Booster.predict (compiled predictor off)"
        self._compiled: CompiledForest | None = None
        self.compiling: threading.Thread | None = None
        self.on_ready: list[Callable[[], None]] = []
        """Called (in the building thread) when work a thread finished changed what the model
        holds: compiled trees swapped in, the explanation engine decided."""
        if compiled and background:
            # Compiling a big forest takes minutes: serve with LightGBM meanwhile, switch after.
            self.backend_note = "LightGBM Booster.predict while lleaves compiles in the background"
            self.compiling = threading.Thread(
                target=self._compile,
                args=(cache_dir, True),
                name="lleaves-compile",
                daemon=True,
            )
            self.compiling.start()
        elif compiled:
            self._compile(cache_dir)
        self._explainer: TreeShapEngine | None = None
        self._explainer_decided = False
        self._explainer_lock = threading.Lock()
        self._explain_on_demand = explain_on_demand
        self.explaining: threading.Thread | None = None
        self.explainer_note = "decided by the first explanation"
        if explain and background:
            self._build_explainer_in_background()
        elif explain:
            self.prepare_explanations()

    def _compile(self, cache_dir: str | None, tiered: bool = False) -> None:
        """Compile (or load) the optimized code; ``tiered`` and not cached yet: the quick code
        first, which scores until the optimized replaces it (``scoring.compiled``)."""
        if tiered and not is_cached(self.booster, cache_dir):
            quick, note = compile_booster(self.booster, cache_dir, quick=True)
            if quick is not None:
                self.backend = quick.backend
                self._compiled = quick  # one assignment: requests switch over atomically
                note += "; optimized code compiling in the background"
            self.backend_note = note
            log.info("scoring backend: %s", note)
        compiled, note = compile_booster(self.booster, cache_dir)
        if compiled is not None:
            self.backend = compiled.backend
            self._compiled = compiled
        elif self._compiled is not None:
            note = f"{self._compiled.describe()} (the optimized code failed: {note})"
        self.backend_note = note
        log.info("scoring backend: %s", note)
        self._ready()

    def _ready(self) -> None:
        for hook in self.on_ready:
            try:
                hook()
            except Exception:  # a hook must not undo the work: say it, go on
                log.exception("a hook after background work failed")

    def prepare_explanations(self) -> None:
        """Decide which engine explains (build and check the fast one), unless done already."""
        with self._explainer_lock:
            self._decide_explainer()

    def _decide_explainer(self) -> None:
        if self._explainer_decided:
            return
        self._explainer, self.explainer_note = build_engine(self.booster)
        self._explainer_decided = True
        log.info("explanations: %s", self.explainer_note)
        self._ready()

    def _explainer_now(self) -> TreeShapEngine | None:
        """The fast engine once decided. Decides now when no other thread is deciding (on
        demand: starts a thread that does); meanwhile LightGBM explains rather than wait."""
        if not self._explainer_decided and self._explainer_lock.acquire(blocking=False):
            try:
                if not self._explain_on_demand:
                    self._decide_explainer()
                elif self.explaining is None:
                    self.explainer_note = (
                        "LightGBM pred_contrib explains while fast TreeSHAP builds"
                    )
                    self._build_explainer_in_background()
            finally:
                self._explainer_lock.release()
        return self._explainer

    def _build_explainer_in_background(self) -> None:
        self.explaining = threading.Thread(
            target=self.prepare_explanations, name="treeshap-build", daemon=True
        )
        self.explaining.start()

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait for a background compilation; whether the compiled forest now scores."""
        if self.compiling is not None:
            self.compiling.join(timeout)
        return self._compiled is not None

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        if self._order is not None:
            x = np.ascontiguousarray(x[:, self._order])
        compiled = self._compiled
        if compiled is not None:
            return compiled.predict(x, threads)
        out = self.booster.predict(x, num_threads=threads)
        return np.asarray(out, dtype=np.float64)

    def contributions(self, x: np.ndarray, threads: int) -> np.ndarray:
        """Exact per-feature contributions (TreeSHAP: ``scoring.treeshap`` where it is proven
        equal, else LightGBM's own ``pred_contrib``) in the raw score (log-odds for a binary
        objective): an ``(n, len(features) + 1)`` matrix whose columns follow ``features`` (the
        order ``x`` came in), the last one the base value; each row adds up to the row's raw
        score. Neither depends on whether lleaves scores.
        """
        booster_x = np.ascontiguousarray(x[:, self._order]) if self._order is not None else x
        engine = self._explainer_now()
        if engine is not None:
            out = engine.contributions(booster_x, threads)
        else:
            out = np.asarray(
                self.booster.predict(booster_x, pred_contrib=True, num_threads=threads),
                dtype=np.float64,
            )
        width = len(self.features) + 1
        if out.ndim != 2 or out.shape[1] != width:
            raise ExplanationsUnavailable(
                f"this model gives {out.shape[-1]} contribution columns per row, not {width} "
                "(one per feature and the base value): only single-output models are explained"
            )
        if self._order is not None:
            # Booster column j is feature self._order[j]; put each back in ``features`` order.
            reordered = np.empty_like(out)
            reordered[:, self._order] = out[:, :-1]
            reordered[:, -1] = out[:, -1]
            out = reordered
        return out


class PyfuncPredictor:
    """Any other MLflow flavor, through ``mlflow.pyfunc`` (a DataFrame in, an array out)."""

    flavor = "python_function"
    backend = "mlflow.pyfunc"
    loading = "in memory"

    def __init__(self, model: Any, features: tuple[str, ...]) -> None:
        self.model = model
        self.features = features
        self.files: Any = None  # the folder it was loaded from, where it must outlive the load

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        import pandas as pd

        out = self.model.predict(pd.DataFrame(x, columns=list(self.features)))
        if hasattr(out, "to_numpy"):
            out = out.to_numpy()
        out = np.asarray(out, dtype=np.float64)
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def _objective_of(booster: Any) -> str:
    for line in booster.model_to_string(num_iteration=0).splitlines()[:20]:
        if line.startswith("objective="):
            return str(line.split("=", 1)[1])
    return ""
