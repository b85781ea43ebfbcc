"""Score whole tables (CSV or Parquet, one file or many, larger than memory) on a Dask cluster.

``python -m batch --model-uri URI --input PATH_OR_GLOB --output DIR`` cuts the inputs into
pieces (a run of Parquet row groups, or a byte range of a CSV file cut at a line end), and each
Dask task reads one piece, checks it with the core's ``scoring.contract.decode.from_table`` (the
checks behind ``/invocations``), scores it with the core's own predictors (``scoring``) and writes
one Parquet part ``DIR/part-NNNNN.parquet`` holding the row id next to the probability.
With ``--explain K`` each part also holds each row's K reason codes (``scoring.explain``: the
features with the largest exact contributions, largest first) as flat columns
``reason_1_feature``, ``reason_1_value``, ``reason_1_contribution`` (log-odds), ...,
``reason_K_...``: null where a row has fewer than K features that contributed anything.

Inputs and output are fsspec URLs (``s3://bucket/in/*.parquet``, ``gs://...``, ``abfs://...``,
``file:///data/in``, ``memory://...``) or plain paths, so workers on other machines read and
write the same shared storage; each machine's own credentials for that storage apply.

The model travels with the job, not through a store: the client resolves the URI, pins an alias
to its version and downloads the model once (``scoring.loading.package_model``); the package (a
LightGBM model's text, or any other flavor's files as a tar archive, with its feature list) goes
to every worker once through Dask, and each worker builds its predictor from it once: compiled
trees (lleaves, checked against LightGBM to 1e-9, object code cached per machine) where the
compiler is there, LightGBM otherwise. Workers need this package installed and nothing else: no
``MLFLOW_TRACKING_URI``, and no worker ever opens or creates an MLflow store.

Why it is safe to re-run: a piece's output name depends only on the inputs, each part is written
to a temporary name and renamed into place (on object stores, where there is no rename, in one
upload: it appears complete or not at all), and a part that exists is not scored again. So an
interrupted job, run again with the same arguments, finishes the missing parts and duplicates
nothing. ``DIR/_job.json`` records what the parts were made from (files, sizes, the model
version an alias pointed to) and a re-run with different inputs or model is refused unless
``--overwrite`` clears the folder first. ``DIR/_SUCCESS`` is written last.

Bad input: a file whose columns the service would refuse (missing, unknown, duplicated, not
numeric), or that cannot be read, stops the job before anything is scored, naming the file. A
bad row (text where a number belongs, an infinity, a CSV line with the wrong number of fields)
stops the job naming its file, row and id (``--bad-rows fail``, the default), or is left out
and written with its location and reason to ``DIR/rejects/part-NNNNN.parquet``
(``--bad-rows skip``).

A worker that cannot do its part (a file it cannot read, storage it cannot write, a model it
cannot build) stops the job with one line naming the worker, the piece and the cause.

Runs on a new ``LocalCluster`` unless ``--scheduler tcp://host:8786`` names an existing one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from scoring.contract.decode import CSV_NULLS, check_columns, csv_header, from_table, is_numeric
from scoring.errors import InvalidInput, ServiceError, quote_name
from scoring.explain import explain, reason_columns
from scoring.loading import LoadOptions, ModelPackage, package_model, predictor_from_package
from scoring.model_ref import pin

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
PROBABILITY = "probability"
NO_ROW_LIMIT = 2**62
JOB_FILE = "_job.json"
SUCCESS_FILE = "_SUCCESS"


class BatchError(Exception):
    """A job that cannot run or finish; the message names the file (and row) at fault."""


class BadRows(BatchError):
    """Rows the service would refuse, under ``--bad-rows fail``."""


class WorkerFailed(BatchError):
    """A worker could not do its part; the message names the worker, the piece and the cause."""


# --- storage: fsspec URLs or plain paths ----------------------------------------------------------


def _fs(url: str) -> tuple[Any, str]:
    """The filesystem of ``url`` and the path within it."""
    return fsspec.core.url_to_fs(url)  # type: ignore[no-any-return]


def _is_local(fs: Any) -> bool:
    return isinstance(fs, LocalFileSystem)


def _url(fs: Any, path: str) -> str:
    """What the user would type: a plain path on the local disk, else a URL."""
    return path if _is_local(fs) else str(fs.unstrip_protocol(path))


def _join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *names])


def _modified(fs: Any, path: str) -> int | None:
    try:
        return int(fs.modified(path).timestamp())
    except (NotImplementedError, AttributeError, OSError, ValueError):
        return None


def _put(fs: Any, path: str, data: bytes) -> None:
    """Write a whole file so that it exists complete or not at all.

    Local disk: a temporary name, then a rename. Object stores have no rename but an upload
    lands whole, so it is written directly.
    """
    if _is_local(fs):
        parent, name = os.path.split(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


# --- the plan: files -> pieces ----------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """One task's share of the input: row groups ``[start, stop)`` of a Parquet file, or bytes
    ``[start, stop)`` of a CSV file (the lines that begin in that range)."""

    index: int
    path: str
    kind: str  # "csv" or "parquet"
    start: int
    stop: int
    first_row: int = 0  # Parquet: rows of the file before this piece (CSV: counted on error)
    header: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    def describe(self) -> str:
        if self.kind == "parquet":
            return f"{self.path}, row groups {self.start} to {self.stop - 1}"
        return f"{self.path}, bytes {self.start} to {self.stop}"


@dataclass(frozen=True)
class Job:
    """What every task needs: the model (pinned to a version), the columns and the policy."""

    model_uri: str
    features: tuple[str, ...]
    output: str
    id_column: str = "ID_code"
    drop_columns: tuple[str, ...] = ()
    bad_rows: str = "fail"
    predict_threads: int = 1
    compiled: bool = True
    """Score with lleaves-compiled trees on the workers where they match LightGBM."""
    compiled_cache_dir: str | None = None
    """Where each worker machine keeps compiled object code (None: under its temp dir)."""
    explain: int = 0
    """Reason codes to write per row (``--explain K``); 0 writes none."""


@dataclass
class PieceResult:
    index: int
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    skipped: bool = False  # already written by an earlier run
    seconds: float = 0.0
    worker: str = ""
    backend: str = ""  # "lleaves", "lightgbm" or "mlflow.pyfunc"


@dataclass
class Summary:
    files: int
    pieces: int
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    resumed: int = 0
    seconds: float = 0.0
    model_uri: str = ""
    backends: dict[str, list[str]] = field(default_factory=dict)
    """Scoring backend -> the workers that scored with it (pieces scored in this run)."""
    results: list[PieceResult] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def describe_backends(self) -> str:
        if not self.backends:
            return "no piece scored in this run"
        return "; ".join(
            f"{backend} on {len(workers)} worker(s)" for backend, workers in self.backends.items()
        )


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by paths, URLs, globs or folders (their CSV and Parquet files), sorted, unique.

    Local files come back as absolute paths, others as URLs (``s3://bucket/key``).
    """
    found: list[str] = []
    for pattern in patterns:
        try:
            fs, path = _fs(pattern)
            if fs.isdir(path):
                matches = [
                    p
                    for p in sorted(fs.find(path))
                    if p.rsplit("/", 1)[-1].lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)
                ]
            elif fsspec.core.has_magic(path):
                listed = fs.glob(path, detail=True)
                matches = sorted(p for p, info in listed.items() if info.get("type") == "file")
            else:
                matches = [path] if fs.isfile(path) else []
        except (OSError, ValueError, ImportError) as exc:
            raise BatchError(f"{pattern}: cannot list it ({type(exc).__name__}: {exc})") from None
        if not matches:
            raise BatchError(f"{pattern}: no such file, and no file matches it")
        found.extend(_url(fs, m) for m in matches)
    return list(dict.fromkeys(found))


def file_kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    raise BatchError(f"{path}: not a .csv or .parquet file")


def check_file_columns(path: str, names: Sequence[str], job: Job) -> None:
    """The service's column check on a file's header, with the id column taken out."""
    if job.id_column not in names:
        raise BatchError(f"{path}: no row id column {quote_name(job.id_column)}")
    rest = [n for n in names if n != job.id_column and n not in job.drop_columns]
    try:
        check_columns(rest, job.features)
    except ServiceError as exc:
        raise BatchError(f"{path}: {exc.error_code}: {exc.message}") from None


def plan(
    files: Sequence[str], job: Job, rows_per_piece: int = 100_000, csv_block_bytes: int = 64 << 20
) -> list[Piece]:
    """Check every file's columns and cut the files into pieces (cheap: headers and footers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pieces: list[Piece] = []
    for path in files:
        kind = file_kind(path)
        fs, fs_path = _fs(path)
        if kind == "parquet":
            try:
                with fs.open(fs_path, "rb") as f:
                    meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
            except (pa.ArrowException, OSError) as exc:
                raise BatchError(f"{path}: not a readable Parquet file ({exc})") from None
            check_file_columns(path, schema.names, job)
            for name in job.features:
                t = schema.field(name).type
                if not is_numeric(t):
                    raise BatchError(
                        f"{path}: INVALID_VALUE: column {quote_name(name)} holds {t}, not numbers"
                    )
            first, group, rows = 0, 0, 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if rows and rows + n > rows_per_piece:
                    pieces.append(Piece(len(pieces), path, kind, group, g, first))
                    first, group, rows = first + rows, g, 0
                rows += n
            if rows or not pieces or pieces[-1].path != path:
                pieces.append(Piece(len(pieces), path, kind, group, meta.num_row_groups, first))
        else:
            with fs.open(fs_path, "rb") as f:
                header_line = f.readline()
            header = tuple(csv_header(header_line))
            check_file_columns(path, header, job)
            size = int(fs.size(fs_path))
            for start in range(0, max(size, 1), csv_block_bytes):
                stop = min(start + csv_block_bytes, size)
                pieces.append(Piece(len(pieces), path, kind, start, stop, header=header))
    return pieces


# --- one piece: read, check, score, write -------------------------------------------------------

_predictors: OrderedDict[tuple[str, bool, str | None], Any] = OrderedDict()
_predictors_lock = threading.Lock()
_KEEP_PREDICTORS = 2  # a long-lived cluster serves job after job: keep the last few models only


def _predictor(model: ModelPackage, job: Job) -> Any:
    """The model's predictor, built once per worker process from the package the client sent
    (threads of a worker share it; compiling happens here, once)."""
    key = (model.key, job.compiled, job.compiled_cache_dir)
    with _predictors_lock:
        if key not in _predictors:
            options = LoadOptions(compiled=job.compiled, cache_dir=job.compiled_cache_dir)
            _predictors[key] = predictor_from_package(model, options)
            while len(_predictors) > _KEEP_PREDICTORS:
                _predictors.popitem(last=False)
        return _predictors[key]


def _csv_block(piece: Piece) -> tuple[int, bytes]:
    """The lines that begin in ``[start, stop)``, and the byte offset of the first one."""
    fs, path = _fs(piece.path)
    with fs.open(path, "rb") as f:
        if piece.start == 0:
            f.readline()  # the header
        else:
            f.seek(piece.start - 1)
            f.readline()  # the rest of a line that began in the previous piece
        pos = f.tell()
        if pos >= piece.stop:
            return pos, b""
        data = f.read(piece.stop - pos)
        if data and not data.endswith(b"\n"):
            data += f.readline()
    return pos, data


def _lines_before(path: str, offset: int) -> int:
    """Newlines before ``offset`` (only on the error path: it reads the file up to there)."""
    count, left = 0, offset
    fs, fs_path = _fs(path)
    with fs.open(fs_path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                break
            count += chunk.count(b"\n")
            left -= len(chunk)
    return count


@dataclass
class _Read:
    table: Any  # pyarrow.Table with the file's columns
    malformed: list[tuple[int, str]]  # (1-based row within the piece, reason)
    row_offset: Any  # callable: rows of the file before this piece


def read_piece(piece: Piece, job: Job) -> _Read:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if piece.kind == "parquet":
        fs, path = _fs(piece.path)
        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_groups(list(range(piece.start, piece.stop)))
        return _Read(table, [], lambda: piece.first_row)
    pos, data = _csv_block(piece)
    malformed: list[tuple[int, str]] = []

    def on_invalid(row: Any) -> str:
        # pyarrow gives the line within this block (1-based) when it reads single-threaded.
        malformed.append(
            (int(row.number or 0), f"{row.actual_columns} fields, expected {row.expected_columns}")
        )
        return "skip"

    types = {job.id_column: pa.string()}
    try:
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(column_names=list(piece.header), use_threads=False),
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(null_values=CSV_NULLS, column_types=types),
        )
    except pa.ArrowException as exc:
        raise BatchError(f"{piece.path}: malformed CSV after byte {pos}: {exc}") from None
    # Data rows of the file before this block: its lines before, less the header.
    return _Read(table, malformed, lambda: max(_lines_before(piece.path, pos) - 1, 0))


def _bad_rows(features: Any, names: Sequence[str]) -> dict[int, str]:
    """Row -> reason, for rows holding a value ``from_table`` refuses (text, infinity).

    Only locates: whatever is scored still goes through ``from_table`` afterwards.
    """
    import pandas as pd
    import pyarrow as pa

    bad: dict[int, str] = {}
    for name in names:
        col = features.column(name)
        t = col.type
        if pa.types.is_floating(t):
            values = col.to_numpy(zero_copy_only=False)
            problem = np.isinf(values)
            reason = "infinite value; leave it empty for a missing value"
        elif is_numeric(t):
            continue
        else:
            raw = pd.Series(col.to_pandas())
            numbers = pd.to_numeric(raw, errors="coerce").astype("float64")
            problem = (raw.notna() & numbers.isna()).to_numpy() | np.isinf(numbers.to_numpy())
            reason = "not a finite number"
        for i in np.flatnonzero(problem):
            bad.setdefault(int(i), f"column {quote_name(name)}: {reason}")
    return bad


def _coerce_text(table: Any) -> Any:
    """Text columns left after the bad rows are gone hold numbers; make them numbers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, f in enumerate(table.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            table = table.set_column(i, f.name, pc.cast(table.column(i), pa.float64()))
    return table


def _write(table: Any, url: str) -> None:
    """Write one Parquet part so that a part that exists is a complete part (see ``_put``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fs, path = _fs(url)
    _put(fs, path, sink.getvalue().to_pybytes())


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()} (pid {os.getpid()})"


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def score_piece(piece: Piece, job: Job, model: ModelPackage) -> PieceResult:
    """Read, check, score and write one piece; a no-op if its part already exists.

    Raises:
        BadRows, BatchError: the data is at fault (the message names the file and row).
        WorkerFailed: anything else; one line naming this worker, the piece and the cause.
    """
    try:
        return _score_piece(piece, job, model)
    except BatchError:
        raise
    except Exception as exc:
        log.debug("piece %d failed", piece.index, exc_info=True)
        raise WorkerFailed(
            f"worker {_worker_name()} could not score piece {piece.index} "
            f"({piece.describe()}): {_cause(exc)}"
        ) from None


def _score_piece(piece: Piece, job: Job, model: ModelPackage) -> PieceResult:
    import pyarrow as pa

    started = time.perf_counter()
    out = _join(job.output, piece.name)
    fs, out_path = _fs(out)
    if fs.exists(out_path):
        return PieceResult(piece.index, skipped=True)
    read = read_piece(piece, job)
    table = read.table
    ids = table.column(job.id_column)
    features = table.drop_columns([job.id_column, *job.drop_columns])
    names = list(features.column_names)
    rejects: list[tuple[int, str, str]] = []  # (row within piece, error code, reason)
    keep = np.ones(table.num_rows, dtype=bool)
    if read.malformed:
        # Skipped by the CSV reader already; they have no row in the table.
        rejects.extend((n, "MALFORMED_REQUEST", why) for n, why in read.malformed)
    try:
        x = from_table(features, job.features, NO_ROW_LIMIT) if table.num_rows else None
    except InvalidInput as exc:
        bad = _bad_rows(features, names)
        if not bad:
            raise BatchError(f"{piece.path}: {exc.error_code}: {exc.message}") from None
        for i, reason in bad.items():
            keep[i] = False
            rejects.append((i, "INVALID_VALUE", reason))
        x = None
    if rejects and job.bad_rows == "fail":
        raise BadRows(_first_bad(piece, read, rejects, ids, keep))
    if not keep.all():
        good = _coerce_text(features.filter(pa.array(keep)))
        ids = ids.filter(pa.array(keep))
        x = from_table(good, job.features, NO_ROW_LIMIT) if good.num_rows else None
    predictor = _predictor(model, job)
    reasons = None
    if x is None:
        probabilities = np.empty(0, dtype=np.float64)
    elif job.explain:
        explanation = explain(predictor, x, job.predict_threads)
        probabilities = explanation.predictions
        reasons = reason_columns(explanation, x, job.explain)
    else:
        probabilities = predictor.predict(x, job.predict_threads)
    if rejects:
        _write(
            _rejects_table(piece, read, rejects, table), _join(job.output, "rejects", piece.name)
        )
    columns = {job.id_column: ids, PROBABILITY: pa.array(probabilities, pa.float64())}
    if job.explain:
        columns.update(_reason_arrays(reasons, job.explain))
    _write(pa.table(columns), out)
    return PieceResult(
        piece.index,
        rows=table.num_rows + len(read.malformed),
        scored=len(probabilities),
        rejected=len(rejects),
        seconds=time.perf_counter() - started,
        worker=_worker_name(),
        backend=str(getattr(predictor, "backend", predictor.flavor)),
    )


def _reason_arrays(
    reasons: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None, k: int
) -> dict[str, Any]:
    """The columns ``reason_<i>_feature``, ``_value``, ``_contribution`` for i in 1..k, typed the
    same in every part (a part with no rows, or rows with fewer reasons, holds nulls)."""
    import pyarrow as pa

    empty = (np.empty(0, dtype=object), np.empty(0), np.empty(0))
    out: dict[str, Any] = {}
    for i in range(k):
        names, values, weights = empty if reasons is None else reasons[i]
        out[f"reason_{i + 1}_feature"] = pa.array(names, pa.string())
        out[f"reason_{i + 1}_value"] = pa.array(values, pa.float64(), from_pandas=True)
        out[f"reason_{i + 1}_contribution"] = pa.array(weights, pa.float64(), from_pandas=True)
    return out


def _row_in_file(read: _Read, i: int, malformed: bool) -> int:
    """1-based data row of the file (header not counted) for table row ``i`` (0-based), or for
    malformed CSV line ``i`` (1-based within the block, skipped by the reader)."""
    if malformed:
        return int(read.row_offset()) + i
    line = i + 1
    for skipped in sorted(n for n, _ in read.malformed):
        if skipped <= line:
            line += 1
    return int(read.row_offset()) + line


def _first_bad(
    piece: Piece, read: _Read, rejects: list[tuple[int, str, str]], ids: Any, keep: np.ndarray
) -> str:
    i, code, reason = rejects[0]
    is_malformed = code == "MALFORMED_REQUEST"
    row = _row_in_file(read, i, is_malformed)
    ident = "" if is_malformed else f" ({ids[i].as_py()!s:.64})"
    more = f"; {len(rejects) - 1} more bad row(s) in this piece" if len(rejects) > 1 else ""
    return (
        f"{piece.path}, row {row}{ident}: {code}: {reason}{more} "
        "(--bad-rows skip scores the rest and writes these to DIR/rejects/)"
    )


def _rejects_table(
    piece: Piece, read: _Read, rejects: list[tuple[int, str, str]], table: Any
) -> Any:
    """One line per refused row: where it is, why, and its values as text to fix and re-run."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns: dict[str, Any] = {
        "source_file": pa.array([piece.path] * len(rejects), pa.string()),
        "source_row": pa.array(
            [_row_in_file(read, i, c == "MALFORMED_REQUEST") for i, c, _ in rejects],
            pa.int64(),
        ),
        "error_code": pa.array([c for _, c, _ in rejects], pa.string()),
        "reason": pa.array([w for _, _, w in rejects], pa.string()),
    }
    # Values only exist for rows the reader could split; malformed lines get nulls.
    take = pa.array([i if c != "MALFORMED_REQUEST" else None for i, c, _ in rejects], pa.int64())
    for name in table.column_names:
        columns[name] = pc.cast(table.column(name).take(take), pa.string())
    return pa.table(columns)


# --- the job --------------------------------------------------------------------------------------


def _manifest(job: Job, files: Sequence[str], pieces: Sequence[Piece]) -> dict[str, Any]:
    stats = []
    for f in files:
        fs, path = _fs(f)
        stats.append((f, int(fs.size(path)), _modified(fs, path)))
    shape = [(p.path, p.kind, p.start, p.stop) for p in pieces]
    return {
        "model_uri": job.model_uri,
        "id_column": job.id_column,
        "drop_columns": list(job.drop_columns),
        "bad_rows": job.bad_rows,
        # Only when asked, so that the folders of jobs without it still resume.
        **({"explain": job.explain} if job.explain else {}),
        "files": [{"path": f, "bytes": b, "mtime": m} for f, b, m in stats],
        "pieces": len(pieces),
        "plan_sha256": hashlib.sha256(json.dumps(shape).encode()).hexdigest(),
    }


def prepare_output(output: str, manifest: dict[str, Any], overwrite: bool) -> int:
    """Start or resume a job folder (a path or URL). Returns how many parts an earlier run wrote."""
    fs, root = _fs(output)
    job_file = _join(root, JOB_FILE)
    if overwrite and fs.exists(root):
        fs.rm(root, recursive=True)
    if fs.exists(job_file):
        previous = json.loads(fs.cat_file(job_file))
        if previous != manifest:
            keys = {**previous, **manifest}  # a key only one of them has differs too
            changed = sorted(k for k in keys if previous.get(k) != manifest.get(k))
            raise BatchError(
                f"{output} holds the output of a different job (it differs in: "
                f"{', '.join(changed)}); pass --overwrite to replace it, or another --output"
            )
    elif fs.glob(_join(root, "part-*.parquet")):
        raise BatchError(f"{output} holds parts of unknown origin; pass --overwrite or empty it")
    fs.makedirs(root, exist_ok=True)
    if fs.exists(_join(root, SUCCESS_FILE)):
        fs.rm_file(_join(root, SUCCESS_FILE))
    _put(fs, job_file, (json.dumps(manifest, indent=2) + "\n").encode())
    if _is_local(fs):  # half-written parts of an interrupted run (object stores have none)
        for folder in (root, _join(root, "rejects")):
            for stale in fs.glob(_join(folder, ".part-*.tmp")):
                fs.rm_file(stale)
    return len(fs.glob(_join(root, "part-*.parquet")))


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("santander-serving")
    except PackageNotFoundError:
        return "not installed"


def _worker_ready() -> str:
    """Run on every worker before the job: importing this proves the package is there."""
    return _package_version()


def check_workers(client: Any, timeout: float = 60.0) -> int:
    """Every worker can run this job's code, in the client's version. Returns how many there are.

    Raises:
        WorkerFailed: no worker within ``timeout``, or one naming the worker that cannot.
    """
    if not client.scheduler_info()["workers"]:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise WorkerFailed(
                f"no Dask worker joined {client.scheduler.address} within {timeout:.0f}s"
            ) from None
    mine = _package_version()
    replies = client.run(_worker_ready, on_error="return")
    for worker, reply in sorted(replies.items()):
        if isinstance(reply, BaseException):
            raise WorkerFailed(
                f"worker {worker} cannot run the job: {_cause(reply)} (every worker needs this "
                "package installed, the same version as the client)"
            )
        if reply != mine:
            raise WorkerFailed(
                f"worker {worker} runs santander-serving {reply}, this client {mine}: "
                "install the same version everywhere"
            )
    return len(replies)


def run(
    client: Any,
    job: Job,
    pieces: Sequence[Piece],
    model: ModelPackage,
    progress: bool = False,
) -> Summary:
    """Score every piece on the cluster behind ``client``; stop at the first failure.

    The model package goes to every worker once (a broadcast), and every task refers to that
    copy; a worker that joins later fetches it once from a peer.
    """
    from distributed import as_completed

    summary = Summary(files=len({p.path for p in pieces}), pieces=len(pieces))
    summary.model_uri = job.model_uri
    started = time.perf_counter()
    check_workers(client)
    shipped = client.scatter(model, broadcast=True, hash=False)
    futures = client.map(score_piece, list(pieces), job=job, model=shipped, pure=False)
    piece_of = {f.key: p for f, p in zip(futures, pieces, strict=True)}
    if progress:
        from distributed import progress as show_progress

        # A bar redrawn every 100 ms floods a log file; once a second is enough there.
        interval = "100ms" if sys.stdout.isatty() else "1s"
        show_progress(futures, notebook=False, interval=interval)  # type: ignore[no-untyped-call]
        print(file=sys.stderr)
    backends: dict[str, set[str]] = {}
    try:
        for future in as_completed(futures):  # type: ignore[no-untyped-call]
            try:
                result: PieceResult = future.result()  # raises the task's own error
            except BatchError:
                raise
            except Exception as exc:  # the worker died, or could not even start the task
                piece = piece_of[future.key]
                raise WorkerFailed(
                    f"piece {piece.index} ({piece.describe()}) failed on the cluster: {_cause(exc)}"
                ) from None
            summary.results.append(result)
            summary.rows += result.rows
            summary.scored += result.scored
            summary.rejected += result.rejected
            summary.resumed += int(result.skipped)
            if result.backend:
                backends.setdefault(result.backend, set()).add(result.worker)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        client.cancel([shipped])
    summary.seconds = time.perf_counter() - started
    summary.results.sort(key=lambda r: r.index)
    summary.backends = {b: sorted(w) for b, w in sorted(backends.items())}
    return summary


def finish(output: str, summary: Summary) -> None:
    totals = {k: v for k, v in asdict(summary).items() if k != "results"}
    fs, root = _fs(output)
    _put(fs, _join(root, SUCCESS_FILE), (json.dumps(totals, indent=2) + "\n").encode())


@dataclass(frozen=True)
class Prepared:
    """A checked plan, ready for a cluster: the job, its pieces, its output and the model."""

    job: Job
    pieces: list[Piece]
    output: str
    model: ModelPackage


def _output_url(output: str | Path) -> str:
    fs, path = _fs(str(output))
    return _url(fs, path.rstrip("/") or "/")


def prepare(
    model_uri: str,
    inputs: Sequence[str],
    output: str | Path,
    *,
    id_column: str = "ID_code",
    drop_columns: Sequence[str] = (),
    bad_rows: str = "fail",
    rows_per_piece: int = 100_000,
    csv_block_bytes: int = 64 << 20,
    predict_threads: int = 1,
    compiled: bool = True,
    compiled_cache_dir: str | None = None,
    overwrite: bool = False,
    allow_untrusted_models: bool = False,
    explain: int = 0,
) -> Prepared:
    """Pin and download the model, check every file's columns and plan the pieces, before any
    cluster starts. This is the only step that talks to the MLflow store.

    Raises:
        BatchError: a bad file or a foreign output folder.
        ModelLoadError: the model URI cannot be resolved or downloaded, or is an untrusted
            model (not LightGBM) without ``allow_untrusted_models``.
    """
    if bad_rows not in ("fail", "skip"):
        raise ValueError(f"bad_rows must be 'fail' or 'skip', not {bad_rows!r}")
    if explain < 0:
        raise ValueError(f"explain must be 0 or more reasons per row, not {explain}")
    uri = pin(model_uri)
    model = package_model(uri, LoadOptions(allow_untrusted=allow_untrusted_models))
    if explain and model.booster_text is None:
        raise BatchError(
            f"{uri}: a {model.flavor} model gives no per-feature contributions; --explain needs "
            "a LightGBM model (a Booster or an LGBMClassifier)"
        )
    out = _output_url(output)
    job = Job(
        model_uri=uri,
        features=model.features,
        output=out,
        id_column=id_column,
        drop_columns=tuple(drop_columns),
        bad_rows=bad_rows,
        predict_threads=predict_threads,
        compiled=compiled,
        compiled_cache_dir=compiled_cache_dir,
        explain=min(explain, len(model.features)),
    )
    files = expand_inputs(inputs)
    pieces = plan(files, job, rows_per_piece, csv_block_bytes)
    prepare_output(out, _manifest(job, files, pieces), overwrite)
    return Prepared(job, pieces, out, model)


def execute(client: Any, prepared: Prepared, progress: bool = False) -> Summary:
    """Score a prepared job on the cluster behind ``client`` and mark it done."""
    summary = run(client, prepared.job, prepared.pieces, prepared.model, progress)
    summary.files = len({p.path for p in prepared.pieces})
    finish(prepared.output, summary)
    return summary


def score_files(
    client: Any, model_uri: str, inputs: Sequence[str], output: str | Path, **options: Any
) -> Summary:
    """``prepare`` then ``execute``: score ``inputs`` into ``output`` on ``client``'s cluster.

    Raises:
        BatchError: a bad file, a bad row under ``bad_rows="fail"``, a foreign output folder, or
            a worker that could not do its part (``WorkerFailed``).
        ModelLoadError: the model URI cannot be resolved.
    """
    progress = bool(options.pop("progress", False))
    return execute(client, prepare(model_uri, inputs, output, **options), progress)
