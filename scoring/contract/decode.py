"""Turn each accepted body into one validated float64 matrix in the model's column order.

The contract is ``scoring.contract.models`` (JSON bodies: pydantic validates them straight from
the bytes) and ``scoring.contract.media`` (content types). CSV, Parquet and Arrow bodies go
through the same column checks (``column_problem``) and the same value rules.

``null``, ``NaN`` tokens and empty CSV cells are missing values; an infinity (``Infinity``, or a
number beyond a double) is ``INVALID_VALUE`` naming its row and column. Every other problem raises
a ``scoring.errors`` error naming the column or row at fault, never quoting the payload.

Large split bodies take a fast path (simdjson straight into a float buffer) that either yields
exactly what the contract's path would or declines, and the contract's path then decides;
``tests/scoring/test_contract.py`` runs one table of cases through both and through HTTP.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from scoring.contract.media import MediaType, parse_media_type
from scoring.contract.models import ENVELOPE, PROTOCOL_KEYS, column_problem, contract_for
from scoring.errors import (
    BadRequest,
    DuplicateColumns,
    DuplicateKeys,
    EmptyInput,
    InvalidInput,
    InvalidValue,
    MissingColumns,
    RowLengthMismatch,
    ServiceError,
    TooManyRows,
    UnknownColumns,
    name_list,
    quote_name,
)

CSV_NULLS = ["", "null", "NaN", "nan", "NA"]  # CSV cells read as missing values
FAST_PATH_BYTES = 32 * 1024
REUSED_PARSER_BYTES = 1024 * 1024
PARKED_PARSER_BYTES = 16 * 1024 * 1024
PARKED_SECONDS = 5.0
SPLIT_KEYS = {"columns", "index", "data"}

_local = threading.local()
_CODES: dict[str, type[ServiceError]] = {
    cls.error_code: cls
    for cls in (
        InvalidInput,
        MissingColumns,
        UnknownColumns,
        DuplicateColumns,
        RowLengthMismatch,
        InvalidValue,
        EmptyInput,
    )
}
_KINDS = {bool: "a boolean", str: "a string", list: "a list", dict: "an object", int: "an integer"}


def parse_body(
    body: bytes,
    content_type: str | None,
    features: Sequence[str],
    max_rows: int,
    fast_path: bool | None = None,
) -> np.ndarray:
    """Parse and validate a request body into an ``(n, len(features))`` float64 matrix.

    ``fast_path``: None tries a fast path on every split JSON body (``_plain_split`` on small
    ones, ``_fast_split`` on big ones); True forces ``_fast_split``; False never (tests).

    Raises:
        ServiceError: a subclass naming what is wrong.
    """
    media = parse_media_type(content_type)
    if media.is_json:
        return parse_json(body, features, max_rows, media, fast_path)
    if media.is_csv:
        return parse_csv(body, features, max_rows)
    return parse_arrow(body, media.is_parquet, features, max_rows)


def check_media_type(content_type: str | None) -> MediaType:
    """The media type if this service reads it; ``UnsupportedMediaType`` (415) otherwise."""
    return parse_media_type(content_type)


# --- JSON ------------------------------------------------------------------------------------


def parse_json(
    body: bytes,
    features: Sequence[str],
    max_rows: int,
    media: MediaType | None = None,
    fast_path: bool | None = None,
) -> np.ndarray:
    """A JSON body, validated by the contract's pydantic models (or the proven fast path)."""
    if not body or body.isspace():  # (not ``strip``: a copy of the body)
        raise BadRequest("the request body is empty; send a JSON object")
    records_only = media is not None and media.json_format == "pandas-records"
    if not records_only:
        fast: np.ndarray | None = None
        if fast_path is None:
            big = len(body) >= FAST_PATH_BYTES
            fast = (_fast_split if big else _plain_split)(body, features, max_rows)
        elif fast_path:
            fast = _fast_split(body, features, max_rows)
        if fast is not None:
            return fast
    return validate_json(body, tuple(features), max_rows, records_only=records_only)


def validate_json(
    body: bytes, features: tuple[str, ...], max_rows: int, records_only: bool = False
) -> np.ndarray:
    """The contract's path: pydantic validates the bytes, then one matrix is built."""
    contract = contract_for(features)
    try:
        if records_only:
            parsed: Any = contract.records.validate_json(body)
        else:
            parsed = contract.body.validate_json(body)
    except ValidationError as exc:
        _refuse_repeated_keys(body, None)  # a key given twice explains most shape errors
        raise to_service_error(exc, body, features) from None
    columns: Sequence[str] = features
    if records_only:
        x, what = _records_matrix(parsed, features, max_rows), "record"
    else:
        x, columns, what = _matrix(parsed, features, max_rows)
    _refuse_repeated_keys(body, parsed)
    check_finite(x, columns, what)
    return align(x, columns, features)


def _matrix(
    parsed: BaseModel, features: tuple[str, ...], max_rows: int
) -> tuple[np.ndarray, Sequence[str], str]:
    """The float matrix of a validated body, its column order and what its rows are called."""
    key = next((k for k in PROTOCOL_KEYS if k in type(parsed).model_fields), None)
    if key is None or key == "dataframe_split":
        frame: Any = parsed if key is None else parsed.dataframe_split  # type: ignore[attr-defined]
        check_row_count(len(frame.data), max_rows)
        return np.array(frame.data, dtype=np.float64), frame.columns, "row"
    value = getattr(parsed, key)
    if isinstance(value, dict):  # an object of columns
        check_row_count(len(next(iter(value.values()))), max_rows)
        columns = list(value)
        return np.array(list(value.values()), dtype=np.float64).T.copy(), columns, "row"
    if value and isinstance(value[0], BaseModel):
        return _records_matrix(value, features, max_rows), features, "record"
    check_row_count(len(value), max_rows)
    return np.array(value, dtype=np.float64), features, "row"


def _records_matrix(records: list[Any], features: tuple[str, ...], max_rows: int) -> np.ndarray:
    check_row_count(len(records), max_rows)
    return np.array([[getattr(r, f) for f in features] for r in records], dtype=np.float64)


def _refuse_repeated_keys(body: bytes, parsed: Any) -> None:
    """A key given twice in one object (a JSON parser silently keeps the last one): 400.

    Records and objects of columns carry a key per value, so those bodies are always read again
    (and so is any body that failed validation: ``parsed`` None); split bodies only when one of
    their few keys appears twice in the bytes.
    """
    fields = type(parsed).model_fields if isinstance(parsed, BaseModel) else {}
    keys = list(fields) + list(SPLIT_KEYS)
    record_like = (
        parsed is None
        or isinstance(parsed, list)
        or any(
            isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], BaseModel))
            for v in (
                getattr(parsed, k, None) for k in ("dataframe_records", "instances", "inputs")
            )
        )
    )
    if not record_like and not any(body.count(orjson.dumps(k)) > 1 for k in keys):
        return

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise DuplicateKeys(f"the key {quote_name(key)} is given twice in one object")
            seen.add(key)
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return  # not JSON Python can read: the validation error says what is wrong


# --- pydantic's errors, in this service's error tree -----------------------------------------


def to_service_error(exc: ValidationError, body: bytes, features: Sequence[str]) -> ServiceError:
    """The first problem pydantic found, as the error a client of this service gets.

    Messages name the field, row and column, never a value. ``body`` is read again only here,
    on the error path, to name the column of a bad value in a split frame.
    """
    errors = exc.errors(include_url=False, include_context=True)
    first = errors[0]
    kind, loc = first["type"], _plain_loc(first["loc"])
    if kind == "json_invalid":
        return BadRequest(f"malformed JSON: {first['msg'][:200]}")
    if kind in _CODES:
        return _CODES[kind](str(first.get("ctx", {}).get("message", first["msg"])))
    if kind == ENVELOPE:
        return _envelope_error(first.get("input"), loc)
    if kind == "missing" and len(loc) >= 2 and isinstance(loc[-2], int):
        record = loc[-2]
        missing = [
            e["loc"][-1]
            for e in errors
            if e["type"] == "missing" and _plain_loc(e["loc"])[:-1] == loc[:-1]
        ]
        return MissingColumns(f"record {record} lacks column(s) {name_list(missing)}")
    if kind == "extra_forbidden" and len(loc) >= 2 and isinstance(loc[-2], int):
        return UnknownColumns(f"record {loc[-2]} has unknown column(s) {quote_name(loc[-1])}")
    if kind in ("float_type", "float_parsing", "finite_number"):
        return InvalidValue(
            f"{_value_at(loc, body, features)}: expected a number or null, "
            f"got {_KINDS.get(type(first.get('input')), 'something else')}"
        )
    if kind in ("too_short", "too_long"):
        return _length_error(kind, loc, first.get("input"), features)
    where = _where(loc)
    if kind == "missing":
        return InvalidInput(f"{where} is required")
    if kind == "extra_forbidden":
        return InvalidInput(f"unexpected field {where}")
    return InvalidInput(f"{where}: {first['msg']}")


_TAGS = {"split", "records", "rows", "columns", *PROTOCOL_KEYS}


def _plain_loc(loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """The location without the union tags pydantic puts in it (the envelope's, the shape's)."""
    out = list(loc)
    if out and out[0] in _TAGS:
        out = out[1:]  # the envelope's tag
    if len(out) >= 2 and out[0] in ("instances", "inputs") and out[1] in _TAGS:
        del out[1]  # the shape's tag
    return tuple(out)


def _where(loc: Sequence[int | str]) -> str:
    if not loc:
        return "the body"
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return repr(text[:80])


def _envelope_error(value: Any, loc: Sequence[int | str]) -> ServiceError:
    if loc:  # the shape under instances/inputs
        return InvalidInput(
            f"{_where(loc)} must be a list of records, a list of rows, or an object of columns"
        )
    if not isinstance(value, dict):
        return BadRequest(
            'the JSON body must be an object: {"columns": [...], "data": [[...]]} '
            'or MLflow\'s {"dataframe_split" | "dataframe_records" | "instances" | "inputs"}'
        )
    found = [k for k in PROTOCOL_KEYS if k in value]
    if len(found) > 1:
        return InvalidInput(f"give exactly one of {name_list(found)}, not several")
    return InvalidInput(
        "unrecognized JSON body: expected 'columns' and 'data' (pandas orient='split'), or one "
        "of 'dataframe_split', 'dataframe_records', 'instances', 'inputs'"
    )


def _value_at(loc: Sequence[int | str], body: bytes, features: Sequence[str]) -> str:
    """ "row 3, column 'var_7'" for the location of one value."""
    *path, last = loc
    if isinstance(last, str) and path and isinstance(path[-1], int):  # a record's field
        return f"record {path[-1]}, column {quote_name(last)}"
    if len(path) >= 2 and path[-2] in ("instances", "inputs") and isinstance(path[-1], str):
        return f"row {last}, column {quote_name(path[-1])}"  # an object of columns
    if not (isinstance(last, int) and path and isinstance(path[-1], int)):
        return _where(loc)
    row, column = path[-1], last
    names: Sequence[Any] = features
    if "data" in path:  # a split frame: the column is the frame's own
        try:
            doc = orjson.loads(body)
            frame = doc.get("dataframe_split", doc)
            names = frame["columns"]
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            return f"row {row}, column {column}"
    name = names[column] if 0 <= column < len(names) else column
    return f"row {row}, column {quote_name(name)}"


def _length_error(
    kind: str, loc: Sequence[int | str], value: Any, features: Sequence[str]
) -> ServiceError:
    if not loc or not isinstance(loc[-1], int):
        if kind == "too_short":
            return EmptyInput(f"no rows to score: {_where(loc)} is empty")
        return InvalidInput(f"{_where(loc)} is too long")
    got = len(value) if isinstance(value, list) else "a wrong number of"
    if len(loc) >= 2 and loc[0] in ("instances", "inputs"):
        return RowLengthMismatch(
            f"row {loc[-1]} of '{loc[0]}' has {got} values; rows given without column names "
            f"must have all {len(features)} features in the model's order"
        )
    return RowLengthMismatch(
        f"row {loc[-1]} has {got} values, but there are {len(features)} columns"
    )


# --- shared checks ---------------------------------------------------------------------------


def check_row_count(n: int, max_rows: int) -> None:
    if n == 0:
        raise EmptyInput("no rows to score: 'data' is empty")
    if n > max_rows:
        raise TooManyRows(f"{n} rows is more than the limit of {max_rows} per request")


def check_columns(columns: Any, features: Sequence[str]) -> list[str]:
    """Column names must be strings, unique, and exactly the model's features (any order)."""
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInput("'columns' must be a list of column names (strings)")
    problem = column_problem(columns, features)
    if problem is not None:
        raise problem
    return columns


def align(x: np.ndarray, columns: Sequence[str], features: Sequence[str]) -> np.ndarray:
    """Reorder the matrix's columns from ``columns`` order to the model's ``features`` order."""
    if list(columns) == list(features):
        return x
    position = {c: i for i, c in enumerate(columns)}
    return np.ascontiguousarray(x[:, [position[f] for f in features]])


def check_finite(x: np.ndarray, columns: Sequence[str], what: str = "row") -> None:
    """NaN is a missing value; an infinity is an error naming its row and column."""
    bad = np.isinf(x)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise InvalidValue(
            f"{what} {i}, column {quote_name(columns[j])}: infinite value (or beyond a 64-bit "
            "float); send null for a missing value"
        )


# --- the fast paths for split bodies ---------------------------------------------------------


_PLAIN = {float, type(None)}


def _plain_split(body: bytes, features: Sequence[str], max_rows: int) -> np.ndarray | None:
    """A small split body of plain floats in the model's column order (the one-row request of
    every client), or ``None`` to decline: the contract's path then decides.

    orjson and one pass over the values, no pydantic: it accepts only what the contract accepts
    and builds the same matrix (``tests/scoring/test_contract.py`` holds it to that). Declines
    on anything unusual: other column orders, nulls, integers, strings, NaN tokens, a key given
    twice, an index that does not fit, infinities. Nulls are missing values, as there.
    """
    canonical = _canonical_split(body, features, max_rows)
    if canonical is not None:
        return canonical
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict:
        return None
    keys = len(doc)
    if keys == 1 and "dataframe_split" in doc:
        doc = doc["dataframe_split"]
        if type(doc) is not dict:
            return None
        keys += len(doc)
    # Every key of this document is followed by '":' and nothing else is (column names are the
    # features; values are numbers): more of them than keys parsed means a key given twice.
    if body.count(b'":') != keys:
        return None
    columns, data, index = doc.get("columns"), doc.get("data"), doc.get("index")
    if (
        type(columns) is not list
        or len(doc) != 2 + ("index" in doc)
        or tuple(columns) != tuple(features)
    ):
        return None
    return _plain_rows(data, index, "index" in doc, len(features), max_rows)


def _plain_rows(
    data: Any, index: Any, indexed: bool, width: int, max_rows: int
) -> np.ndarray | None:
    """The matrix of a split body's ``data`` (and ``index``, if ``indexed``), or ``None``
    unless every row is a list of ``width`` floats or nulls, within ``max_rows``, the index (if
    any) of as many ints or strings, and no value infinite."""
    if not _rows_and_index(data, index, indexed, max_rows):
        return None
    for row in data:
        if type(row) is not list or len(row) != width or not set(map(type, row)) <= _PLAIN:
            return None
    x = np.array(data, dtype=np.float64)
    if np.isinf(x).any():
        return None
    return x


def _rows_and_index(data: Any, index: Any, indexed: bool, max_rows: int) -> bool:
    """Whether ``data`` is a list of 1 to ``max_rows`` rows and the index (if ``indexed``) a
    list of as many ints or strings."""
    if type(data) is not list:
        return False
    return _row_count_and_index(len(data), index if indexed else None, max_rows)


def _row_count_and_index(rows: int, index: Any | None, max_rows: int) -> bool:
    """Whether 1 to ``max_rows`` rows came, and the index (if not ``None``) is a list of as
    many ints or strings."""
    if not 0 < rows <= max_rows:
        return False
    return index is None or (
        type(index) is list
        and len(index) == rows
        and all(map(_INDEX_TYPES.__contains__, map(type, index)))  # in C: no frame per value
    )


_INDEX_TYPES = frozenset({int, str})
"""The types an index value may have (exactly: not ``bool``, not a subclass)."""


@functools.lru_cache(maxsize=8)
def _columns_prefix_of(features: tuple[str, ...]) -> bytes:
    return b'{"columns":' + orjson.dumps(list(features)) + b","


class _LastPrefix:
    """The canonical prefix of the last feature list asked for, kept by identity (one tuple,
    replaced whole: threads never see one list's prefix under another's)."""

    pair: tuple[Sequence[str] | None, bytes] = (None, b"")


def _columns_prefix(features: Sequence[str]) -> bytes:
    """The bytes a canonical split body starts with for these features: the served model's
    tuple is the same object on every request, so the last answer is kept by identity (hashing
    200 names costs more than the rest of the check)."""
    pair = _LastPrefix.pair
    if pair[0] is not features:
        pair = _LastPrefix.pair = (features, _columns_prefix_of(tuple(features)))
    return pair[1]


_NUMBERS = b"0123456789.eE+-,]nul"
"""Every byte the data of a split body of numbers and nulls may hold but ``[`` (``n``, ``u``,
``l``: in valid JSON only as ``null``)."""


def _canonical_split(body: bytes, features: Sequence[str], max_rows: int) -> np.ndarray | None:
    """``_plain_split`` for the body ``DataFrame.to_json(orient="split")`` writes, byte for
    byte: ``{"columns":[<the model's features>],("index":[...],)"data":[[...]]}``. The columns
    are compared as bytes (not parsed into 200 strings and compared) and only the index and
    the data are parsed: half the time of a one-row body. ``None`` declines (any other layout,
    spacing or key order), and ``_plain_split`` goes on as for any body.

    The data's values are checked on its bytes, not one by one after parsing: nothing but
    numbers, nulls, commas and brackets, and (once parsed) one ``[`` per row and one around
    them: no array nested in a row. Integers read as the contract reads them (as floats;
    beyond 64 bits the parsers refuse them and the contract's path answers). orjson never
    gives an infinity (it refuses ``1e999``), and numpy refuses ragged or nested rows."""
    prefix = _columns_prefix(features)
    if not body.startswith(prefix) or not body.endswith(b"}"):
        return None
    at = len(prefix)
    index = None
    indexed = body.startswith(b'"index":', at)
    try:
        if indexed:
            # The index's own "]": one inside a string or a nested list leaves invalid JSON.
            end = body.find(b"]", at)
            index = orjson.loads(body[at + 8 : end + 1])
            if body[end + 1 : end + 2] != b",":
                return None
            at = end + 2
        if not body.startswith(b'"data":', at):
            return None
        # Everything up to the closing brace: a key after the data leaves invalid JSON.
        data = body[at + 7 : -1]
        opens = data.translate(None, _NUMBERS)
        if opens.strip(b"["):
            return None  # a byte that is none of those
        x: np.ndarray | None
        if b"n" in data:  # nulls (missing values): numpy reads None as NaN
            rows = orjson.loads(data)
            if not _rows_and_index(rows, index, indexed, max_rows):
                return None
            x = np.array(rows, dtype=np.float64)
        else:
            x = _numbers_matrix(
                data, len(features), max_rows, index if indexed else None, len(opens)
            )
    except (orjson.JSONDecodeError, ValueError, TypeError, RuntimeError):
        return None  # invalid JSON; ragged or nested rows; a parser in use
    if x is None or x.ndim != 2 or x.shape[1] != len(features):
        return None
    return x


def _numbers_matrix(
    data: bytes, width: int, max_rows: int, index: Any | None, opens: int
) -> np.ndarray | None:
    """The rows of a JSON array of arrays of numbers (no nulls), read by simdjson straight into
    a float buffer (a third of orjson's list of floats and numpy's copy of it); ``None`` unless
    it holds 1 to ``max_rows`` rows of ``width`` numbers (and ``index``, if given, as many ints
    or strings). ``opens``: how many ``[`` the data holds. Raises ``ValueError`` for invalid
    JSON, ``RuntimeError`` for an integer beyond 64 bits."""
    import simdjson

    size = len(data)
    # A small body's parser is its thread's (what ``_parser`` would give; no call for it).
    parser = getattr(_local, "parser", None) if size <= REUSED_PARSER_BYTES else None
    if parser is None:
        parser = _parser(size)
    try:
        rows: Any = parser.parse(data)
        if not isinstance(rows, simdjson.Array):
            return None
        n = len(rows)
        if not _row_count_and_index(n, index, max_rows):
            return None
        if opens != n + 1:
            return None  # an array in a row: ``as_buffer`` would flatten it in
        if n > 1 and not all(isinstance(r, simdjson.Array) and len(r) == width for r in rows):
            return None  # ragged rows: ``as_buffer`` would flatten them into a matrix
        flat = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
        del rows  # the parser is reused once nothing refers to its document
    finally:
        if size > REUSED_PARSER_BYTES:
            _give_back(parser, size)
    return flat.reshape(n, width) if flat.size == n * width else None


# The fast path for big split bodies


class _ParkedParser:
    """One simdjson parser kept for ``PARKED_SECONDS`` after a big body, for the next one.

    A parser keeps the capacity of the largest document it parsed (its tape alone is 8 bytes
    per body byte, of which a split body of numbers touches about 2), so one made for each big
    body pays the kernel for every page of it: 10,000 rows (15 MB) parsed in 0.17 s with a
    fresh parser, 0.11 s with a used one. Clients send big bodies one after another, so the
    last parser waits here for the next body (one at a time; a body arriving while it is in use
    gets its own) and is freed, with its memory, once no big body came for ``PARKED_SECONDS``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parser: Any = None
        self._timer: threading.Timer | None = None

    def take(self) -> Any:
        """The parked parser (``None`` if there is none or it is in use)."""
        with self._lock:
            parser, self._parser = self._parser, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return parser

    def park(self, parser: Any) -> None:
        """Keep ``parser`` for the next big body, unless one is kept already."""
        with self._lock:
            if self._parser is not None:
                return
            self._parser = parser
            self._timer = threading.Timer(PARKED_SECONDS, self.drop)
            self._timer.daemon = True
            self._timer.start()

    def drop(self) -> None:
        """Free the parked parser (after ``PARKED_SECONDS`` without a big body)."""
        with self._lock:
            self._parser = None
            self._timer = None

    @property
    def parked(self) -> bool:
        return self._parser is not None


_parked = _ParkedParser()


def release_parked_parser() -> None:
    """Free the parser kept for the next big body now (a caller about to measure or give back
    memory, or short of it), instead of ``PARKED_SECONDS`` after the last one."""
    _parked.drop()


def _parser(size: int) -> Any:
    """A simdjson parser for a body of ``size`` bytes; ``_give_back`` it when done.

    Bodies up to ``REUSED_PARSER_BYTES`` share their thread's parser; bigger ones up to
    ``PARKED_PARSER_BYTES`` take the parked one (``_ParkedParser``) when it is free; any other
    gets its own, freed with its document: parsers are sized to the request, not kept at the
    capacity of the largest body ever seen.
    """
    import simdjson

    if size <= REUSED_PARSER_BYTES:
        parser = getattr(_local, "parser", None)
        if parser is None:
            parser = _local.parser = simdjson.Parser()
        return parser
    if size <= PARKED_PARSER_BYTES:
        parser = _parked.take()
        if parser is not None:
            return parser
    return simdjson.Parser()


def _give_back(parser: Any, size: int) -> None:
    """A parser from ``_parser`` whose documents are all gone."""
    if REUSED_PARSER_BYTES < size <= PARKED_PARSER_BYTES:
        _parked.park(parser)


def _fast_split(body: bytes, features: Sequence[str], max_rows: int) -> np.ndarray | None:
    """Split JSON of plain numbers straight into a float buffer, or ``None`` to decline.

    Declines (and the precise path takes over) on anything unusual: nulls, strings, booleans,
    nesting, ragged rows, unknown keys, duplicate keys, malformed JSON.
    """
    parser = _parser(len(body))
    try:
        found = _read_split(parser, body, max_rows)
    finally:
        _give_back(parser, len(body))  # every simdjson object of the body died in _read_split
    if found is None:
        return None
    names, n, flat = found
    if flat.size != n * len(names):
        return None
    columns_checked = check_columns(names, features)
    x = flat.reshape(n, len(names))
    check_finite(x, columns_checked)
    return align(x, columns_checked, features)


def _read_split(
    parser: Any, body: bytes, max_rows: int
) -> tuple[list[Any], int, np.ndarray] | None:
    """The column names, the row count and the values (a copy, off the parser) of a split body
    of plain numbers, or ``None``."""
    import simdjson

    try:
        doc: Any = parser.parse(body)
        if not isinstance(doc, simdjson.Object):
            return None
        keys = list(doc.keys())
        frame: Any = doc
        if keys == ["dataframe_split"]:
            frame = doc["dataframe_split"]
            if not isinstance(frame, simdjson.Object):
                return None
            keys = list(frame.keys())
        if len(keys) != len(set(keys)) or not {"columns", "data"} <= set(keys) <= SPLIT_KEYS:
            return None
        columns = frame["columns"]
        data = frame["data"]
        if not isinstance(columns, simdjson.Array) or not isinstance(data, simdjson.Array):
            return None
        names: list[Any] = columns.as_list()
        n = len(data)
        if n == 0 or n > max_rows or not all(isinstance(c, str) for c in names):
            return None
        brackets = 2 + n + sum(c.count("[") for c in names)
        if "index" in keys:
            index = frame["index"]
            if not isinstance(index, simdjson.Array):
                return None
            values = index.as_list()
            if len(values) != n or not all(
                isinstance(v, int | str) and not isinstance(v, bool) for v in values
            ):
                return None  # the contract's path names the fault
            brackets += 1 + sum(v.count("[") for v in values if isinstance(v, str))
        if len(keys) != len(set(keys)) or body.count(b"[") != brackets:
            return None  # nested arrays somewhere, or brackets in unexpected places
        # ``as_buffer`` flattens whatever it is given: ragged rows of the right total would
        # pass as a reshaped matrix (~2 ms for 10,000 rows to rule out).
        width = len(names)
        if not all(isinstance(row, simdjson.Array) and len(row) == width for row in data):
            return None
        flat = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError):
        return None
    return names, n, flat


# --- CSV, Parquet, Arrow -----------------------------------------------------------------


def csv_header(line: bytes) -> list[str]:
    """The column names of a CSV header line (quotes and spaces around names dropped)."""
    return [h.strip().strip('"') for h in line.decode("utf-8", errors="replace").strip().split(",")]


def is_numeric(arrow_type: Any) -> bool:
    """Whether an Arrow column of this type holds numbers (or only nulls) to score as float64."""
    import pyarrow as pa

    t = arrow_type
    return bool(
        pa.types.is_floating(t)
        or pa.types.is_integer(t)
        or pa.types.is_null(t)
        or pa.types.is_decimal(t)
    )


def parse_csv(body: bytes, features: Sequence[str], max_rows: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if not body.strip():
        raise BadRequest("the request body is empty; send CSV with a header row")
    check_columns(csv_header(body.split(b"\n", 1)[0]), features)
    try:
        table = pcsv.read_csv(
            pa.py_buffer(body),
            convert_options=pcsv.ConvertOptions(null_values=CSV_NULLS),
        )
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        text = str(exc)
        where = text.split(":", 1)[0] if text.startswith(("CSV parse error", "In CSV")) else ""
        raise BadRequest(f"malformed CSV{': ' + where if where else ''}") from None
    return from_table(table, features, max_rows)


def parse_arrow(body: bytes, parquet: bool, features: Sequence[str], max_rows: int) -> np.ndarray:
    import pyarrow as pa

    what = "Parquet" if parquet else "Arrow IPC"
    if not body:
        raise BadRequest(f"the request body is empty; send a {what} file")
    try:
        if parquet:
            import pyarrow.parquet as pq

            table = pq.read_table(pa.BufferReader(body))  # zero-copy: BytesIO copies it
        else:
            reader = (
                pa.ipc.open_stream(body)
                if not body.startswith(b"ARROW1")
                else pa.ipc.open_file(body)
            )
            table = reader.read_all()
    except (pa.ArrowException, OSError, ValueError):
        raise BadRequest(f"malformed {what} body") from None
    return from_table(table, features, max_rows)


def from_table(table: Any, features: Sequence[str], max_rows: int) -> np.ndarray:
    """Validate an Arrow table's columns and types and stack it into the model's order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = check_columns(list(table.column_names), features)
    check_row_count(table.num_rows, max_rows)
    if all(t == pa.float64() for t in table.schema.types):
        # The usual big batch: Arrow stacks it in C++ (nulls as NaN), column-major: each column
        # one copy (10,000 rows of 200: 1.5 ms, row-major 5.5), and the compiled trees' batch
        # code reads columns in place (``scoring.lanes``).
        batch = table.combine_chunks().to_batches()[0]
        x = np.asarray(batch.to_tensor(null_to_nan=True, row_major=False).to_numpy())
        check_finite(x, columns)
        return align(x, columns, features)
    x = np.empty((table.num_rows, len(features)), dtype=np.float64)
    position = {name: i for i, name in enumerate(columns)}
    for j, name in enumerate(features):
        col = table.column(position[name])
        t = col.type
        if not is_numeric(t):
            kind = "text" if pa.types.is_string(t) or pa.types.is_large_string(t) else str(t)
            row = _first_bad_row(col)
            at = f" (first at row {row})" if row is not None else ""
            raise InvalidValue(f"column {quote_name(name)} holds {kind}, not numbers{at}")
        x[:, j] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    check_finite(x, features)
    return x


def _first_bad_row(col: Any) -> int | None:
    """Where the first value that is not a number sits (error path only)."""
    for i, v in enumerate(col.to_pylist()):
        if v is None:
            continue
        try:
            float(v)
        except (TypeError, ValueError):
            return i
        if isinstance(v, bool):
            return i
    return None
