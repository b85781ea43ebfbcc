"""Where MLflow lives: the one store that training, serving and the notebooks share.

With ``MLFLOW_TRACKING_URI`` set, MLflow reads it as usual and everything talks to that server.
Unset, the embedded default is a SQLite store in the project folder (``mlflow.db``) with artifacts
beside it (``mlartifacts/``), whatever the current directory is.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_DB = PROJECT_DIR / "mlflow.db"
DEFAULT_ARTIFACTS = PROJECT_DIR / "mlartifacts"


def default_tracking_uri() -> str:
    """The embedded store's URI: SQLite in the project folder."""
    return f"sqlite:///{DEFAULT_DB}"


def tracking_uri() -> str:
    """The tracking URI in force: ``MLFLOW_TRACKING_URI`` if set, else the embedded default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def is_embedded(uri: str | None = None) -> bool:
    """Whether ``uri`` (default: the one in force) is the embedded project store."""
    return (uri or tracking_uri()) == default_tracking_uri()


def configure_tracking() -> str:
    """Point MLflow at the store in force and return its URI.

    Sets the registry URI too, so registered models live in the same store.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """Return the id of experiment ``name``, creating it if needed.

    On a SQLite store (the embedded one included) the artifacts go under ``mlartifacts/`` beside
    the database, so runs logged from a notebook, a test or the CLI all land in one place whatever
    the working directory. On a tracking server the server chooses (``--serve-artifacts``).
    """
    configure_tracking()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name, artifact_location=_artifact_location(name)))


def _artifact_location(experiment: str) -> str | None:
    """Artifacts of a SQLite store go beside its database file, not under the working directory."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides (--serve-artifacts)
    db = Path(uri[len("sqlite:///") :])
    root = DEFAULT_ARTIFACTS if is_embedded(uri) else db.parent / "mlartifacts"
    return (root / experiment).as_uri()
