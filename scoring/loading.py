"""Load a model from any MLflow model URI into a ready ``Predictor``, with what is known of it.

Settings come in as arguments (``LoadOptions``); nothing here reads the environment except
MLflow's own ``MLFLOW_TRACKING_URI`` (see ``scoring.tracking``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoring.drift import PROFILE_FILE, Profile, read_profile
from scoring.errors import ModelLoadError
from scoring.features import features_from_signature
from scoring.model_ref import ModelRef, Pinned, describe_cause, registry_version
from scoring.predictors import BoosterPredictor, Predictor, PyfuncPredictor
from scoring.tracking import configure_tracking
from scoring.trusted import UNTRUSTED_PYFUNC, UntrustedModel, read_lightgbm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadOptions:
    """How to build the predictor of a LightGBM model."""

    compiled: bool = True
    """Score with trees compiled by lleaves where they match LightGBM to 1e-9."""
    cache_dir: str | None = None
    """Where compiled object code is kept between starts (None: under the temp dir)."""
    background: bool = False
    """Serve with LightGBM at once and switch to the compiled trees when they are ready."""
    allow_untrusted: bool = False
    """Also load models whose loading can run code (python-function models, any pickle)."""
    explain: bool = False
    """Decide at load which engine explains (``scoring.treeshap`` or LightGBM), so no request
    builds it; else the first explanation does (``explain_on_demand``: in the background)."""
    explain_on_demand: bool = False
    """Without ``explain``: the first explanation starts building the fast engine in a thread
    and LightGBM explains until it is ready, so no request waits for the build and a model
    never asked for explanations spends no memory on them (numba and the tables: ~140 MB on
    the benchmark's model); without either, the first explanation builds it and waits."""


_NAMING = frozenset({"uri", "run_id", "registered_name", "version"})
"""The fields ``LoadedModel``'s kept names are made of."""


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
    profile: Profile | None = None
    """The training data's reference profile logged with the model, if any (drift)."""
    profile_note: str | None = None
    """Why there is no profile, when there is none."""

    @property
    def fingerprint(self) -> str | None:
        """``name/version:run`` for a registered model (what polling compares), else ``None``."""
        if self.registered_name is None:
            return None
        return f"{self.registered_name}/{self.version}:{self.run_id}"

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _NAMING:  # the names below are kept once asked for: made again
            for kept in ("label", "metric_name"):
                self.__dict__.pop(kept, None)

    @functools.cached_property
    def label(self) -> str:
        """``name/version`` for a registered model (the ``X-Model-Version`` header), else the
        run (``runs/<id>``) or the URI. Kept once asked for (every answer names its model)."""
        if self.registered_name is not None:
            return f"{self.registered_name}/{self.version}"
        if self.run_id:
            return f"runs/{self.run_id}"
        return self.uri

    @functools.cached_property
    def metric_name(self) -> str:
        """The model's name on the per-model metrics: registered name, else ``runs/<id>``, else
        the URI. Kept once asked for."""
        return self.registered_name or (f"runs/{self.run_id}" if self.run_id else self.uri)

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
            "loading": getattr(self.predictor, "loading", None),
            "explainer": getattr(self.predictor, "explainer_note", None),
            "features": list(self.predictor.features),
            "metrics": self.metrics,
            "params": self.params,
            "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 3),
        }


def _registry_facts(ref: ModelRef, loaded: LoadedModel, pinned: Pinned | None) -> None:
    """Fill in run id, registered name/version/alias and logged-model id where the URI tells."""
    import mlflow

    client = mlflow.MlflowClient()
    loaded.run_id = ref.run_id
    if ref.model_id is not None:
        loaded.model_id = ref.model_id
        loaded.run_id = client.get_logged_model(ref.model_id).source_run_id
    if pinned is not None:
        loaded.registered_name, loaded.version = pinned.name, pinned.version
        loaded.run_id, loaded.model_id, loaded.alias = pinned.run_id, pinned.model_id, ref.alias
    if loaded.run_id:
        data = client.get_run(loaded.run_id).data
        loaded.metrics = {k: float(v) for k, v in data.metrics.items()}
        loaded.params = dict(data.params)


def read_model_folder(
    local: Path, options: LoadOptions, uri: str = "?"
) -> tuple[tuple[str, ...], Any, str]:
    """Read the MLflow model in ``local`` as far as is trusted: its features, its booster for a
    LightGBM model (``None`` for any other, which only ``options.allow_untrusted`` lets through),
    and how it is read (native text, an allowlisted pickle, or untrusted pyfunc).

    Raises:
        ModelLoadError: no MLmodel there, an unusable signature, or an untrusted model.
    """
    from mlflow.models import Model

    if not (local / "MLmodel").is_file():
        raise ModelLoadError(uri, "no MLflow model there (no MLmodel file)")
    mlmodel = Model.load(str(local))
    check_trusted(mlmodel.flavors, options, uri)
    features = features_from_signature(mlmodel.signature, uri)
    if "lightgbm" not in mlmodel.flavors:
        return features, None, UNTRUSTED_PYFUNC
    try:
        booster, how = read_lightgbm(local, mlmodel.flavors["lightgbm"], options.allow_untrusted)
    except UntrustedModel as exc:
        raise ModelLoadError(uri, _refusal(str(exc))) from None
    return features, booster, how


def build_predictor(local: Path, options: LoadOptions, uri: str = "?") -> Predictor:
    """The predictor of the MLflow model in the folder ``local``.

    A LightGBM model loads from native text or through an allowlist (``scoring.trusted``); any
    other model only with ``options.allow_untrusted``, since loading it can run its code.

    Raises:
        ModelLoadError: no MLmodel there, an unusable signature, or an untrusted model.
    """
    import mlflow

    features, booster, how = read_model_folder(local, options, uri)
    if booster is not None:
        predictor = BoosterPredictor(
            booster,
            features,
            options.compiled,
            options.cache_dir,
            options.background,
            explain=options.explain,
            explain_on_demand=options.explain_on_demand,
        )
        predictor.loading = how
        return predictor
    pyfunc = PyfuncPredictor(mlflow.pyfunc.load_model(str(local)), features)
    pyfunc.loading = how
    return pyfunc


def check_trusted(flavors: dict[str, Any], options: LoadOptions, uri: str = "?") -> None:
    """Refuse a model that is not LightGBM unless untrusted models are allowed (MLmodel only).

    Raises:
        ModelLoadError: one line saying why and what would allow it.
    """
    if "lightgbm" in flavors or options.allow_untrusted:
        return
    kinds = ", ".join(sorted(flavors)) or "none"
    raise ModelLoadError(uri, _refusal(f"a python-function model (flavors: {kinds})"))


def _refusal(what: str) -> str:
    return (
        f"refused untrusted model: {what}; loading it could run code from the registry. Only "
        "LightGBM native text and allowlisted LGBMClassifier pickles load by default; set "
        "ALLOW_UNTRUSTED_MODELS=true to load it anyway"
    )


def load_model(uri: str, options: LoadOptions | None = None) -> LoadedModel:
    """Resolve ``uri`` against the tracking store in force, download it and build a predictor.

    Raises:
        ModelLoadError: one line naming the URI and the cause (unknown run or version, an
            unreachable tracking server, a run without a model, an unusable model).
    """
    import mlflow

    options = options or LoadOptions()
    configure_tracking()
    started = time.perf_counter()
    try:
        ref = ModelRef.parse(uri)
        # Resolve an alias (or "latest") once, and download that version: the trees and the
        # facts (version, run, the fingerprint polling compares) then name the same version even
        # if the alias moves during the download. Resolving twice (the download, then the facts)
        # once left a worker serving v1's trees as "v2", never to reload: it looked up to date.
        pinned = registry_version(ref)
        source = pinned.uri if pinned is not None and ref.movable else uri
        with tempfile.TemporaryDirectory(prefix="model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
            predictor = build_predictor(local, options, uri)
            profile, note = _profile(local, predictor.features)
        loaded = LoadedModel(predictor=predictor, uri=uri, profile=profile, profile_note=note)
        _registry_facts(ref, loaded, pinned)
    except ModelLoadError as exc:
        raise ModelLoadError(uri, exc.cause) from None
    except Exception as exc:
        log.debug("loading %s failed", uri, exc_info=True)
        raise ModelLoadError(uri, describe_cause(exc)) from None
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def _profile(local: Path, features: tuple[str, ...]) -> tuple[Profile | None, str | None]:
    """The reference profile in the model folder, or why there is none. Never fails a load: a
    model without a usable profile serves, only without drift."""
    try:
        profile = read_profile(local)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("the model's %s is unreadable: %s", PROFILE_FILE, exc)
        return None, f"the model's {PROFILE_FILE} is unreadable ({exc})"
    if profile is None:
        return None, (
            f"the model has no {PROFILE_FILE} in its artifacts (it was not logged by "
            "training.train, or by a version before profiles); drift is not measured"
        )
    unknown = sorted(set(profile.features) - set(features))
    if unknown:
        return None, f"the profile names features the model does not take: {unknown[:5]}"
    return profile, None


def model_info(uri: str) -> Any:
    """MLflow's ``ModelInfo`` (flavors, signature) without downloading the model itself.

    Raises:
        ModelLoadError: as ``load_model``.
    """
    import mlflow

    configure_tracking()
    try:
        return mlflow.models.get_model_info(uri)
    except Exception as exc:
        raise ModelLoadError(uri, describe_cause(exc)) from None


def check_model(uri: str, options: LoadOptions | None = None) -> str:
    """Cheap pre-flight: resolve ``uri`` and read its MLmodel. Returns the flavor names.

    With ``options``, also refuse a model that is not LightGBM unless untrusted models are
    allowed (nothing is downloaded or unpickled; pickles are checked when loaded).

    Raises:
        ModelLoadError: as ``load_model``.
    """
    flavors = model_info(uri).flavors
    if options is not None:
        check_trusted(flavors, options, uri)
    return ", ".join(sorted(flavors))


def model_features(uri: str) -> tuple[str, ...]:
    """The model's input columns from its signature (checked numeric), without loading it.

    Raises:
        ModelLoadError: as ``load_model``, or a non-numeric input column.
    """
    return features_from_signature(model_info(uri).signature, uri)


@dataclass(frozen=True)
class ModelPackage:
    """A model as plain data, to build its predictor in another process or on another machine
    without any MLflow store: a LightGBM model's text, or any other flavor's model folder as a
    tar archive, with the feature order its signature gives."""

    uri: str
    features: tuple[str, ...]
    flavor: str  # "lightgbm" or "python_function"
    booster_text: str | None = None
    archive: bytes | None = None

    @functools.cached_property
    def key(self) -> str:
        """Names the content: the same model packed twice has the same key."""
        digest = hashlib.sha256("\0".join((self.uri, self.flavor, *self.features)).encode())
        digest.update((self.booster_text or "").encode())
        digest.update(self.archive or b"")
        return digest.hexdigest()[:32]

    @property
    def nbytes(self) -> int:
        return len(self.booster_text or "") + len(self.archive or b"")


def package_model(uri: str, options: LoadOptions | None = None) -> ModelPackage:
    """Resolve ``uri`` against the tracking store in force, download it once and pack it.

    A LightGBM model is read as ``build_predictor`` reads it (native text, or an allowlisted
    pickle); any other model is packed only with ``options.allow_untrusted``.

    Raises:
        ModelLoadError: as ``load_model``, or an untrusted model.
    """
    options = options or LoadOptions()
    import mlflow

    configure_tracking()
    try:
        with tempfile.TemporaryDirectory(prefix="model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            features, booster, _ = read_model_folder(local, options, uri)
            if booster is not None:
                return ModelPackage(
                    uri, features, "lightgbm", booster_text=booster.model_to_string()
                )
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                tar.add(local, arcname="model")
            return ModelPackage(uri, features, "python_function", archive=buffer.getvalue())
    except ModelLoadError as exc:
        raise ModelLoadError(uri, exc.cause) from None
    except Exception as exc:
        log.debug("packing %s failed", uri, exc_info=True)
        raise ModelLoadError(uri, describe_cause(exc)) from None


def predictor_from_package(package: ModelPackage, options: LoadOptions | None = None) -> Predictor:
    """The predictor of a packed model. Reads no tracking store and writes nothing but a temporary
    folder (a pyfunc model's files) and the compiled-tree cache.

    Raises:
        ModelLoadError: the package cannot be turned into a model.
    """
    options = options or LoadOptions()
    try:
        if package.booster_text is not None:
            import lightgbm as lgb

            booster = lgb.Booster(model_str=package.booster_text)
            return BoosterPredictor(
                booster,
                package.features,
                options.compiled,
                options.cache_dir,
                options.background,
                explain=options.explain,
                explain_on_demand=options.explain_on_demand,
            )
        if package.archive is None:
            raise ModelLoadError(package.uri, "the package holds no model")
        import mlflow.pyfunc

        # A pyfunc model may read its files after loading: they live as long as the predictor.
        files = tempfile.TemporaryDirectory(prefix="model-")
        with tarfile.open(fileobj=io.BytesIO(package.archive), mode="r:gz") as tar:
            tar.extractall(files.name, filter="data")
        model = mlflow.pyfunc.load_model(str(Path(files.name) / "model"))
        predictor = PyfuncPredictor(model, package.features)
        predictor.files = files
        return predictor
    except ModelLoadError:
        raise
    except Exception as exc:
        log.debug("building %s from its package failed", package.uri, exc_info=True)
        raise ModelLoadError(package.uri, describe_cause(exc)) from None
