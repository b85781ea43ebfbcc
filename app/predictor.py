"""Load a model from any MLflow model URI and score rows with it. Knows nothing of HTTP.

A LightGBM model (a ``Booster`` or an ``LGBMClassifier`` from the ``lightgbm`` flavor) is scored
through its native booster, which gives P(target = 1) for a binary objective. Any other pyfunc
flavor falls back to ``mlflow.pyfunc``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.compiled import CompiledForest, compile_booster
from app.config import get_settings
from app.errors import ModelLoadError
from app.tracking import configure_tracking

log = logging.getLogger(__name__)

DEFAULT_FEATURES = tuple(f"var_{i}" for i in range(200))
NUMERIC_TYPES = {"double", "float", "long", "integer"}


class Predictor(Protocol):
    """What the service needs of a model: its feature order and a scoring function."""

    features: tuple[str, ...]
    flavor: str

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        """Score a float64 matrix whose columns are in ``features`` order."""
        ...


class BoosterPredictor:
    """Scores through a LightGBM ``Booster``: probabilities for a binary objective.

    With ``compiled=True`` the trees are compiled by lleaves (``app.compiled``) and that code
    scores instead, but only if it matched ``Booster.predict`` to 1e-9 on probe rows at load
    time; otherwise, or without lleaves, LightGBM scores. ``backend`` says which.
    """

    flavor = "lightgbm"

    def __init__(
        self,
        booster: Any,
        features: tuple[str, ...],
        compiled: bool = False,
        cache_dir: str | None = None,
        background: bool = False,
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
        if compiled and background:
            # Compiling a big forest takes minutes: serve with LightGBM meanwhile, switch after.
            self.backend_note = "LightGBM Booster.predict while lleaves compiles in the background"
            self.compiling = threading.Thread(
                target=self._compile, args=(cache_dir,), name="lleaves-compile", daemon=True
            )
            self.compiling.start()
        elif compiled:
            self._compile(cache_dir)

    def _compile(self, cache_dir: str | None) -> None:
        compiled, note = compile_booster(self.booster, cache_dir)
        if compiled is not None:
            self.backend = compiled.backend
            self._compiled = compiled  # one assignment: requests switch over atomically
        self.backend_note = note
        log.info("scoring backend: %s", note)

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


class PyfuncPredictor:
    """Any other MLflow flavor, through ``mlflow.pyfunc`` (a DataFrame in, an array out)."""

    flavor = "python_function"
    backend = "mlflow.pyfunc"

    def __init__(self, model: Any, features: tuple[str, ...]) -> None:
        self.model = model
        self.features = features

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        import pandas as pd

        out = self.model.predict(pd.DataFrame(x, columns=list(self.features)))
        if hasattr(out, "to_numpy"):
            out = out.to_numpy()
        out = np.asarray(out, dtype=np.float64)
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


@dataclass
class LoadedModel:
    """A model ready to serve, and what ``/model`` tells about it."""

    predictor: Predictor
    uri: str
    run_id: str | None = None
    registered_name: str | None = None
    version: str | None = None
    alias: str | None = None
    model_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "model_uri": self.uri,
            "run_id": self.run_id,
            "model_id": self.model_id,
            "registered_name": self.registered_name,
            "version": self.version,
            "alias": self.alias,
            "flavor": self.predictor.flavor,
            "backend": getattr(self.predictor, "backend", self.predictor.flavor),
            "backend_note": getattr(self.predictor, "backend_note", None),
            "features": list(self.predictor.features),
            "metrics": self.metrics,
            "params": self.params,
            "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 3),
        }


def _objective_of(booster: Any) -> str:
    for line in booster.model_to_string(num_iteration=0).splitlines()[:20]:
        if line.startswith("objective="):
            return str(line.split("=", 1)[1])
    return ""


def _signature_features(mlmodel: Any) -> tuple[str, ...]:
    """Feature names from the signature; ``var_0..var_199`` when there is none."""
    signature = mlmodel.signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return DEFAULT_FEATURES
    names = signature.inputs.input_names()
    for spec in signature.inputs.inputs:
        kind = str(getattr(spec.type, "name", spec.type))
        if kind not in NUMERIC_TYPES:
            raise ModelLoadError(
                "?", f"input {spec.name!r} has type {kind}; this service serves numeric features"
            )
    return tuple(str(n) for n in names)


def _describe_cause(exc: BaseException) -> str:
    """One line for an MLflow or connection failure, without a traceback."""
    text = " ".join(str(exc).split())
    if "Max retries exceeded" in text or "Connection refused" in text or "NewConnection" in text:
        return "the tracking server is unreachable (" + text[:200] + ")"
    return text[:400] or type(exc).__name__


def _registry_facts(uri: str, loaded: LoadedModel) -> None:
    """Fill in run id, registered name/version/alias and logged-model id where the URI tells."""
    import mlflow

    client = mlflow.MlflowClient()
    if uri.startswith("runs:/"):
        loaded.run_id = uri.split("/")[1]
    elif uri.startswith("models:/"):
        ref = uri[len("models:/") :].strip("/")
        if ref.startswith("m-") and "/" not in ref and "@" not in ref:
            loaded.model_id = ref
            loaded.run_id = client.get_logged_model(ref).source_run_id
        else:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
                loaded.alias = alias
            else:
                name, version = ref.split("/", 1)
                mv = (
                    client.get_latest_versions(name)[0]
                    if version == "latest"
                    else client.get_model_version(name, version)
                )
            loaded.registered_name, loaded.version, loaded.run_id = name, str(mv.version), mv.run_id
            loaded.model_id = getattr(mv, "model_id", None)
    if loaded.run_id:
        data = client.get_run(loaded.run_id).data
        loaded.metrics = {k: float(v) for k, v in data.metrics.items()}
        loaded.params = dict(data.params)


def load_model(uri: str, compiled: bool | None = None, cache_dir: str | None = None) -> LoadedModel:
    """Resolve ``uri`` against the tracking store in force, download it and build a predictor.

    ``compiled`` and ``cache_dir`` default to the settings ``compiled_predictor`` and
    ``compiled_cache_dir`` (see ``BoosterPredictor``).

    Raises:
        ModelLoadError: one line naming the URI and the cause (unknown run or version, an
            unreachable tracking server, a run without a model, an unusable model).
    """
    import mlflow
    from mlflow.models import Model

    configure_tracking()
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            if not (local / "MLmodel").is_file():
                raise ModelLoadError(uri, "no MLflow model there (no MLmodel file)")
            mlmodel = Model.load(str(local))
            features = _signature_features(mlmodel)
            predictor: Predictor
            if "lightgbm" in mlmodel.flavors:
                native = mlflow.lightgbm.load_model(str(local))
                booster = getattr(native, "booster_", native)
                background = False
                if compiled is None:
                    settings = get_settings()
                    compiled = settings.compiled_predictor
                    background = settings.compile_in_background
                    cache_dir = cache_dir or settings.compiled_cache_dir or None
                predictor = BoosterPredictor(booster, features, compiled, cache_dir, background)
            else:
                predictor = PyfuncPredictor(mlflow.pyfunc.load_model(str(local)), features)
        loaded = LoadedModel(predictor=predictor, uri=uri)
        _registry_facts(uri, loaded)
    except ModelLoadError as exc:
        raise ModelLoadError(uri, exc.cause) from None
    except Exception as exc:
        log.debug("loading %s failed", uri, exc_info=True)
        raise ModelLoadError(uri, _describe_cause(exc)) from None
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def check_model(uri: str) -> str:
    """Cheap pre-flight: resolve ``uri`` and read its MLmodel. Returns the flavor names.

    Raises:
        ModelLoadError: as ``load_model``.
    """
    import mlflow

    configure_tracking()
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as exc:
        raise ModelLoadError(uri, _describe_cause(exc)) from None
    return ", ".join(sorted(info.flavors))
