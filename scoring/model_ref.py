"""MLflow model references: parse what a user types, pin an alias to a version, fingerprint.

The one place that knows the shapes of a model URI::

    <32-hex run id>            -> runs:/<id>/model
    m-<32-hex>                 -> models:/m-<id>            (an MLflow 3 logged model)
    runs:/<run-id>/<path>
    models:/<name>/<version>   models:/<name>/latest   models:/<name>@<alias>
    anything else              a local path or another artifact URI, taken as it is
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from scoring.errors import ModelLoadError

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_LOGGED_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")
_RUNS_URI = re.compile(r"^runs:/[0-9A-Za-z_-]+(/.*)?$")
_MODELS_URI = re.compile(r"^models:/(m-[0-9a-f]+|[^/@]+(/[^/]+|@[^/]+))/?$")


def normalize_model_uri(ref: str) -> str:
    """Turn what a user types into an MLflow model URI.

    A bare 32-hex run id means ``runs:/<id>/model``; a logged-model id ``m-<hex>`` means
    ``models:/m-<hex>``; anything else is taken as a URI or a local path.
    """
    ref = ref.strip()
    if _RUN_ID.match(ref):
        return f"runs:/{ref}/model"
    if _LOGGED_MODEL_ID.match(ref):
        return f"models:/{ref}"
    return ref


def check_model_uri(uri: str) -> str:
    """Reject a malformed ``runs:/`` or ``models:/`` URI before anything starts."""
    if uri.startswith("runs:") and not _RUNS_URI.match(uri):
        raise ValueError(f"malformed run URI {uri!r}: expected runs:/<run-id>/<path>")
    if uri.startswith("models:") and not _MODELS_URI.match(uri):
        raise ValueError(
            f"malformed model URI {uri!r}: expected models:/<name>/<version>, "
            "models:/<name>@<alias> or models:/m-<logged-model-id>"
        )
    return uri


@dataclass(frozen=True)
class ModelRef:
    """A parsed model URI. Exactly one of the shapes in the module docstring."""

    uri: str
    run_id: str | None = None
    model_id: str | None = None
    name: str | None = None
    version: str | None = None  # a number or "latest"
    alias: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        uri = check_model_uri(normalize_model_uri(uri))
        if uri.startswith("runs:/"):
            return cls(uri, run_id=uri[len("runs:/") :].split("/", 1)[0])
        if not uri.startswith("models:/"):
            return cls(uri)
        ref = uri[len("models:/") :].strip("/")
        if ref.startswith("m-") and "/" not in ref and "@" not in ref:
            return cls(uri, model_id=ref)
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return cls(uri, name=name, alias=alias)
        name, version = ref.rsplit("/", 1)
        return cls(uri, name=name, version=version)

    @property
    def movable(self) -> bool:
        """Whether what it names can change: an alias or ``latest`` (worth polling)."""
        return self.alias is not None or self.version == "latest"


@dataclass(frozen=True)
class Pinned:
    """A registered model version a movable reference pointed at, at one moment."""

    name: str
    version: str
    run_id: str | None
    model_id: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def fingerprint(self) -> str:
        return f"{self.name}/{self.version}:{self.run_id}"


def describe_cause(exc: BaseException) -> str:
    """One line for an MLflow or connection failure, without a traceback."""
    text = " ".join(str(exc).split())
    if "Max retries exceeded" in text or "Connection refused" in text or "NewConnection" in text:
        return "the tracking server is unreachable (" + text[:200] + ")"
    return text[:400] or type(exc).__name__


def registry_version(ref: ModelRef, client: Any = None) -> Pinned | None:
    """The registered version ``ref`` names now (``None`` for a run, a logged model, a path).

    Raises:
        ModelLoadError: the registry cannot be asked, or has no such name, version or alias.
    """
    if ref.name is None:
        return None
    import mlflow

    from scoring.tracking import configure_tracking

    if client is None:
        configure_tracking()
        client = mlflow.MlflowClient()
    try:
        if ref.alias is not None:
            mv = client.get_model_version_by_alias(ref.name, ref.alias)
        elif ref.version == "latest":
            mv = client.get_latest_versions(ref.name)[0]
        else:
            mv = client.get_model_version(ref.name, ref.version)
    except Exception as exc:
        raise ModelLoadError(ref.uri, describe_cause(exc)) from None
    return Pinned(ref.name, str(mv.version), mv.run_id, getattr(mv, "model_id", None))


def pin(uri: str) -> str:
    """``models:/name@alias`` (or ``/latest``) -> ``models:/name/<version>``, so that a job or a
    worker uses one version even if the alias moves meanwhile. Other URIs are returned as given.

    Raises:
        ModelLoadError: as ``registry_version``.
    """
    ref = ModelRef.parse(uri)
    if not ref.movable:
        return ref.uri
    pinned = registry_version(ref)
    assert pinned is not None
    return pinned.uri


def resolve_fingerprint(uri: str) -> str | None:
    """What ``uri`` points at now (registered version and run), without downloading anything.

    ``None`` for URIs that cannot move (a run, a fixed version, a path): there is nothing to poll.

    Raises:
        ModelLoadError: as ``registry_version``.
    """
    ref = ModelRef.parse(uri)
    if not ref.movable:
        return None
    pinned = registry_version(ref)
    return pinned.fingerprint if pinned else None
