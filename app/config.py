"""Service settings, read from the environment once (pydantic-settings).

Every field is an environment variable of the same name in upper case, e.g. ``MODEL_URI``.
``MLFLOW_TRACKING_URI`` is read by MLflow itself (see ``scoring.tracking``). Read once, at the
entry point (``serve_app``), and passed down: nothing below it reads the environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.auth import ApiKeys
from scoring.loading import LoadOptions
from scoring.model_ref import check_model_uri, normalize_model_uri

MIB = 1024 * 1024
DEFAULT_MEMORY_MB = 2048
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a huge page-aligned number


def cgroup_memory_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """The container's memory limit in bytes (cgroup v2, else v1), or ``None`` without one."""
    for path in (f"{root}/memory.max", f"{root}/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= _NO_LIMIT:
            return None
        return int(text)
    return None


class Settings(BaseSettings):
    """What the service is configured with."""

    # Validation errors never repeat their input: it can be a secret (ADMIN_TOKEN, API_KEYS).
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

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

    allow_untrusted_models: bool = False
    """Also load models whose loading can run code: python-function models, pickles beyond
    the LightGBM allowlist. Off: only LightGBM native text and allowlisted pickles load."""

    api_keys: SecretStr | None = None
    """Comma-separated API keys (``key`` or ``name:key``, 16+ characters) for the scoring
    routes and /model; with API_KEYS_FILE unset too, those routes are open."""

    api_keys_file: str | None = None
    """A file of API keys, one a line (``key`` or ``name:key``; ``#`` comment lines)."""

    _api_keys: ApiKeys | None = PrivateAttr(default=None)

    explain_at_load: bool = False
    """Build the fast explanation engine (numba kernels and tables, ~140 MB and a few seconds
    on a 1000-tree model) as each model loads. Off: the first ``/explain`` starts the build in
    the background and LightGBM's own TreeSHAP answers (the same contributions, a few times
    slower) until it is ready; a model never asked for explanations spends nothing on them."""

    model_poll_seconds: float = Field(default=0.0, ge=0)
    """Re-resolve MODEL_URI this often and swap in a new version; 0: no polling."""

    request_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest a scoring request may take once its body is in; then 504."""

    body_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest a client may take to send its body; then 408 (slow senders)."""

    max_in_flight: int = Field(default=64, ge=1)
    """Scoring requests in progress per worker beyond which new ones get 503 + Retry-After."""

    max_body_reads: int = Field(default=1024, ge=1)
    """Bodies being received at once per worker beyond which new requests get 503 + Retry-After
    (reading a body is not scoring: this is much larger than ``max_in_flight``)."""

    body_min_rate_bytes_per_second: int = Field(default=10_000, ge=0)
    """Once ``body_min_rate_grace_seconds`` have passed, a body must have arrived at this mean
    rate or the request gets 408 at once (a trickling sender); 0: only the total timeout."""

    body_min_rate_grace_seconds: float = Field(default=5.0, ge=0)
    """How long a body may arrive at any rate before the minimum rate applies."""

    memory_limit_mb: int = Field(default=0, ge=0)
    """Memory one worker may use in all (model included); 0: the container's cgroup limit
    divided among the workers, or 2048 per worker where there is no limit."""

    memory_wait_seconds: float = Field(default=5.0, ge=0)
    """How long a request that would exceed the memory budget waits for room; then 503."""

    memory_queue: int = Field(default=64, ge=0)
    """Requests that may wait for memory at once per worker; more get 503 at once."""

    memory_small_share: float = Field(default=0.1, ge=0, lt=1)
    """Share of the memory budget kept for small bodies (up to ``inline_body_bytes``), so
    one-row requests are never starved by big ones."""

    memory_trim: bool = True
    """Give freed memory back to the system (glibc ``malloc_trim``) once no big request came
    for ``app.limits.TRIM_DELAY_SECONDS`` (the end of a burst)."""

    malloc_arena_max: int = Field(default=2, ge=0)
    """glibc malloc arenas per worker (``mallopt(M_ARENA_MAX)``); 0: glibc's default."""

    scoring_threads: int = Field(default=0, ge=0)
    """Threads that parse and score big bodies at once per worker; 0: the machine's cores."""

    max_connections: int = Field(default=4096, ge=1)
    """Open connections per worker; beyond it the longest-idle one is closed for the new one,
    and with none idle the new one gets 503 and is closed (capped by the file limit)."""

    keep_alive_timeout_seconds: int = Field(default=5, ge=1)
    """An idle keep-alive connection is closed after this long."""

    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """A connection must complete its request headers within this long of opening (or of its
    previous answer), else it is closed (header slowloris, idle connections)."""

    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request line + headers; larger gets 431 and the connection is closed."""

    send_timeout_seconds: float = Field(default=30.0, gt=0)
    """A client that reads none of its answer for this long is dropped (slow readers)."""

    reload_signal_file: str | None = None
    """A file the workers of one server share to pass on reloads (``python -m app`` sets it)."""

    prometheus_multiproc_dir: str | None = None
    """Prometheus' folder shared by the workers of one server (``python -m app`` sets it)."""

    challenger_uri: str | None = None
    """A second model beside MODEL_URI, e.g. models:/santander@challenger; unset: none."""

    challenger_mode: str = "shadow"
    """shadow: the champion answers, the challenger scores the same rows off the hot path;
    split:<fraction>: that share of requests is answered by the challenger."""

    shadow_queue_size: int = Field(default=256, ge=1)
    """Requests waiting for the challenger in shadow mode per worker; beyond, dropped (counted)."""

    decision_threshold: float = Field(default=0.5, ge=0, le=1)
    """Where a probability becomes a positive, for the champion/challenger agreement figures."""

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

    @field_validator("challenger_mode")
    @classmethod
    def _valid_mode(cls, value: str) -> str:
        value = value.strip().lower()
        if value == "shadow":
            return value
        kind, _, fraction = value.partition(":")
        try:
            share = float(fraction)
        except ValueError:
            share = -1.0
        if kind != "split" or not 0.0 <= share <= 1.0:
            raise ValueError("expected 'shadow' or 'split:<fraction between 0 and 1>'")
        return f"split:{share:g}"

    @property
    def split_fraction(self) -> float | None:
        """The challenger's share of requests in split mode; None in shadow mode."""
        if not self.challenger_mode.startswith("split:"):
            return None
        return float(self.challenger_mode.split(":", 1)[1])

    @field_validator("model_uri", "challenger_uri")
    @classmethod
    def _valid_uri(cls, value: str | None) -> str | None:
        return (
            None
            if value is None or not value.strip()
            else check_model_uri(normalize_model_uri(value))
        )

    @model_validator(mode="after")
    def _read_api_keys(self) -> Settings:
        # Raises ApiKeyError (not a ValueError: pydantic lets it through, unwrapped).
        self._api_keys = ApiKeys.from_settings(
            self.api_keys.get_secret_value() if self.api_keys else None,
            self.api_keys_file or None,
        )
        return self

    def api_key_set(self) -> ApiKeys | None:
        """The API keys the scoring routes require, or ``None``: those routes are open."""
        return self._api_keys

    def load_options(self) -> LoadOptions:
        """How the model loader builds predictors, from these settings."""
        return LoadOptions(
            compiled=self.compiled_predictor,
            cache_dir=self.compiled_cache_dir or None,
            background=self.compile_in_background,
            allow_untrusted=self.allow_untrusted_models,
            explain=self.explain_at_load,
            explain_on_demand=True,  # a request never waits for the engine's build
        )

    def memory_limit_bytes(self) -> int:
        """What one worker may use: ``memory_limit_mb``, else its share of the cgroup limit."""
        if self.memory_limit_mb:
            return self.memory_limit_mb * MIB
        container = cgroup_memory_limit()
        if container is None:
            return DEFAULT_MEMORY_MB * MIB
        return container // self.workers

    def threads_for(self, rows: int) -> int:
        """How many threads to score ``rows`` rows with."""
        if rows < self.single_thread_rows:
            return 1
        return self.all_threads

    @property
    def all_threads(self) -> int:
        """``PREDICT_THREADS``, else one per core."""
        return self.predict_threads or os.cpu_count() or 1


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
