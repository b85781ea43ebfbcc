"""Content types, as MLflow's scoring server reads them (and a little more).

``application/json`` (also ``text/json`` and any ``+json``), ``text/csv``, Parquet and Arrow IPC.
Parameters: ``charset`` must be UTF-8 (anything else: 415 saying so), and MLflow 1.x's
``format=pandas-split`` / ``format=pandas-records`` are honoured on JSON; any other parameter is
refused with 415 naming it, as ``mlflow models serve`` does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from scoring.errors import UnsupportedMediaType, name_list, quote_name

JSON_TYPES = frozenset({"application/json", "text/json"})
CSV_TYPES = frozenset({"text/csv", "application/csv"})
PARQUET_TYPES = frozenset({"application/vnd.apache.parquet", "application/x-parquet"})
ARROW_TYPES = frozenset(
    {"application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file"}
)
ACCEPTED = JSON_TYPES | CSV_TYPES | PARQUET_TYPES | ARROW_TYPES
SUPPORTED = (
    "application/json, text/csv, application/vnd.apache.parquet, "
    "application/vnd.apache.arrow.stream"
)
JSON_FORMATS = frozenset({"pandas-split", "pandas-records"})


@dataclass(frozen=True)
class MediaType:
    """A request's ``Content-Type``: the bare type and the JSON ``format`` (MLflow 1.x) if any."""

    kind: str
    json_format: str | None = None

    @property
    def is_json(self) -> bool:
        return self.kind in JSON_TYPES or self.kind.endswith("+json")

    @property
    def is_csv(self) -> bool:
        return self.kind in CSV_TYPES

    @property
    def is_parquet(self) -> bool:
        return self.kind in PARQUET_TYPES


def media_type(content_type: str | None) -> str:
    """The bare media type of a ``Content-Type`` header, lower-cased."""
    return (content_type or "").split(";", 1)[0].strip().lower()


@functools.lru_cache(maxsize=64)
def parse_media_type(content_type: str | None) -> MediaType:
    """The media type this service reads, or ``UnsupportedMediaType`` (415) saying why not.

    Cached (clients repeat their ``Content-Type``); refusals are raised again each time."""
    kind, *pairs = (part.strip() for part in (content_type or "").split(";"))
    kind = kind.lower()
    if not kind:
        raise UnsupportedMediaType(f"no Content-Type given; send one of: {SUPPORTED}")
    if kind not in ACCEPTED and not kind.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {quote_name(kind)} is not supported; use {SUPPORTED}"
        )
    params: dict[str, str] = {}
    for pair in pairs:
        if not pair:
            continue
        key, _, value = pair.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    charset = params.pop("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(
            f"charset {quote_name(charset)} is not supported: this service reads UTF-8 only"
        )
    json_format = params.pop("format", None)
    is_json = kind in JSON_TYPES or kind.endswith("+json")
    if json_format is not None and (not is_json or json_format.lower() not in JSON_FORMATS):
        raise UnsupportedMediaType(
            f"format={quote_name(json_format)} is not supported; MLflow 1.x's "
            "format=pandas-split and format=pandas-records are, on application/json"
        )
    if params:
        raise UnsupportedMediaType(
            f"unrecognized Content-Type parameter(s) {name_list(sorted(params))}; "
            "only charset=utf-8 (and format=pandas-split|pandas-records on JSON) are read"
        )
    return MediaType(kind, json_format.lower() if json_format else None)
