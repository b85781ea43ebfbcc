"""Service settings, read from the environment once (pydantic-settings).

Every field is an environment variable of the same name in upper case, e.g. ``MODEL_URI``.
``MLFLOW_TRACKING_URI`` is read by MLflow itself (see ``scoring.tracking``). Read once, at the
entry point (``serve_app``), and passed down: nothing below it reads the environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scoring.loading import LoadOptions
from scoring.model_ref import check_model_uri, normalize_model_uri


class Settings(BaseSettings):
    """What the service is configured with."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    model_uri: str | None = None
    """MLflow model URI: runs:/<id>/model, models:/<name>@<alias>, models:/m-<id>, a path."""

    model_load_retry: bool = False
    """Start without a model, live but not ready, and retry with back-off instead of failing."""

    model_retry_max_seconds: float = Field(default=30.0, gt=0)
    """Longest wait between two load attempts in retry mode."""

    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest request body accepted; larger gets 413."""

    max_rows: int = Field(default=100_000, gt=0)
    """Most rows in one request; more gets 413."""

    predict_threads: int = Field(default=0, ge=0)
    """Threads for a large batch; 0 means all cores of this machine."""

    single_thread_rows: int = Field(default=256, ge=1)
    """Batches smaller than this run on one thread (no OpenMP start-up for a single row)."""

    inline_body_bytes: int = Field(default=64 * 1024, ge=0)
    """Bodies up to this size are parsed and scored on the event loop, larger ones in a thread."""

    workers: int = Field(default=1, ge=1)
    """Server processes (``python -m app`` and the container)."""

    compiled_predictor: bool = True
    """Score LightGBM models with trees compiled by lleaves where it matches LightGBM to 1e-9."""

    compiled_cache_dir: str = ""
    """Where compiled models are kept between starts; empty: a folder under the temp dir."""

    compile_in_background: bool = True
    """Serve with LightGBM at once and switch to the compiled trees when they are ready."""

    enable_docs: bool = True
    """Serve /docs, /redoc and /openapi.json."""

    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS (JSON list, e.g. ["https://app.example"]); empty: CORS off."""

    log_format: Literal["text", "json"] = "text"
    """Log lines as text or JSON lines (method, path, status, rows, duration, model version)."""

    log_level: str = "INFO"
    """Root log level."""

    admin_token: SecretStr | None = None
    """Bearer token for /admin/*; unset: the admin routes are off (404)."""

    model_poll_seconds: float = Field(default=0.0, ge=0)
    """Re-resolve MODEL_URI this often and swap in a new version; 0: no polling."""

    request_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest a scoring request may take once its body is in; then 504."""

    body_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest a client may take to send its body; then 408 (slow senders)."""

    max_in_flight: int = Field(default=64, ge=1)
    """Scoring requests in progress per worker beyond which new ones get 503 + Retry-After."""

    reload_signal_file: str | None = None
    """A file the workers of one server share to pass on reloads (``python -m app`` sets it)."""

    prometheus_multiproc_dir: str | None = None
    """Prometheus' folder shared by the workers of one server (``python -m app`` sets it)."""

    drift_window: int = Field(default=10_000, ge=0)
    """Scored rows kept (per worker) to compare with the training profile; 0: no drift."""

    drift_every_seconds: float = Field(default=60.0, gt=0)
    """How often drift (PSI per feature and of the predictions) is computed, off the hot path."""

    drift_min_rows: int = Field(default=1_000, ge=1)
    """Fewer rows in the window than this (or than the window): no verdict yet, too noisy."""

    inference_log_dir: str | None = None
    """Folder or fsspec URL (s3://...) for the inference log (Parquet); unset: no log."""

    inference_log_sample: float | None = Field(default=None, gt=0, le=1)
    """Fraction of rows logged; unset: 1.0 when INFERENCE_LOG_DIR is set."""

    inference_log_roll_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    """A log file is closed once its rows take about this many bytes (uncompressed)."""

    inference_log_roll_seconds: float = Field(default=300.0, gt=0)
    """A log file is closed at the latest this long after its first row."""

    inference_log_queue_rows: int = Field(default=100_000, gt=0)
    """Rows waiting for the log writer beyond which new rows are dropped (and counted)."""

    @field_validator("model_uri")
    @classmethod
    def _valid_uri(cls, value: str | None) -> str | None:
        return (
            None
            if value is None or not value.strip()
            else check_model_uri(normalize_model_uri(value))
        )

    def load_options(self) -> LoadOptions:
        """How the model loader builds predictors, from these settings."""
        return LoadOptions(
            compiled=self.compiled_predictor,
            cache_dir=self.compiled_cache_dir or None,
            background=self.compile_in_background,
        )

    def threads_for(self, rows: int) -> int:
        """How many threads to score ``rows`` rows with."""
        if rows < self.single_thread_rows:
            return 1
        return self.predict_threads or os.cpu_count() or 1


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
