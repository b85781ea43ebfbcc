"""Score whole tables (CSV or Parquet, one file or many, larger than memory) on a Dask cluster.

``python -m batch --model-uri URI --input PATH_OR_GLOB --output DIR`` cuts the inputs into
pieces (a run of Parquet row groups, or a byte range of a CSV file cut at a line end), and each
Dask task reads one piece, checks it with the core's ``scoring.contract.decode.from_table`` (the
checks behind ``/invocations``), scores it with the core's own predictors (``scoring``) and writes
one Parquet part ``DIR/part-NNNNN.parquet`` holding the row id next to the probability.

Why it is safe to re-run: a piece's output name depends only on the inputs, each part is written
to a temporary name and renamed into place, and a part that exists is not scored again. So an
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

Runs on a new ``LocalCluster`` unless ``--scheduler tcp://host:8786`` names an existing one;
workers there need this package and ``MLFLOW_TRACKING_URI`` pointing at the same store.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scoring.contract.decode import CSV_NULLS, check_columns, csv_header, from_table, is_numeric
from scoring.errors import InvalidInput, ServiceError, quote_name
from scoring.loading import load_model, model_features
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


@dataclass
class PieceResult:
    index: int
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    skipped: bool = False  # already written by an earlier run
    seconds: float = 0.0


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
    results: list[PieceResult] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by paths, globs or folders (their CSV and Parquet files), sorted, unique."""
    found: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matches = [
                str(p)
                for p in sorted(Path(pattern).rglob("*"))
                if p.is_file() and p.name.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)
            ]
        else:
            matches = sorted(glob.glob(pattern, recursive=True)) or (
                [pattern] if os.path.exists(pattern) else []
            )
        if not matches:
            raise BatchError(f"{pattern}: no such file, and no file matches it")
        found.extend(os.path.abspath(m) for m in matches)
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
        if kind == "parquet":
            try:
                meta = pq.ParquetFile(path).metadata
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
            with open(path, "rb") as f:
                header_line = f.readline()
            header = tuple(csv_header(header_line))
            check_file_columns(path, header, job)
            size = os.path.getsize(path)
            for start in range(0, max(size, 1), csv_block_bytes):
                stop = min(start + csv_block_bytes, size)
                pieces.append(Piece(len(pieces), path, kind, start, stop, header=header))
    return pieces


# --- one piece: read, check, score, write -------------------------------------------------------

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def _predictor(uri: str) -> Any:
    """The model, loaded once per worker process (threads of a worker share it)."""
    with _models_lock:
        if uri not in _models:
            _models[uri] = load_model(uri).predictor
        return _models[uri]


def _csv_block(piece: Piece) -> tuple[int, bytes]:
    """The lines that begin in ``[start, stop)``, and the byte offset of the first one."""
    with open(piece.path, "rb") as f:
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
    with open(path, "rb") as f:
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
        table = pq.ParquetFile(piece.path).read_row_groups(list(range(piece.start, piece.stop)))
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


def _write(table: Any, path: Path) -> None:
    """Write to a temporary name, then rename: a part that exists is a complete part."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def score_piece(piece: Piece, job: Job) -> PieceResult:
    """Read, check, score and write one piece; a no-op if its part already exists."""
    import pyarrow as pa

    started = time.perf_counter()
    out = Path(job.output) / piece.name
    if out.exists():
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
    probabilities = (
        _predictor(job.model_uri).predict(x, job.predict_threads)
        if x is not None
        else np.empty(0, dtype=np.float64)
    )
    if rejects:
        _write(
            _rejects_table(piece, read, rejects, table), Path(job.output) / "rejects" / piece.name
        )
    _write(pa.table({job.id_column: ids, PROBABILITY: pa.array(probabilities, pa.float64())}), out)
    return PieceResult(
        piece.index,
        rows=table.num_rows + len(read.malformed),
        scored=len(probabilities),
        rejected=len(rejects),
        seconds=time.perf_counter() - started,
    )


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
    stats = [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in files]
    shape = [(p.path, p.kind, p.start, p.stop) for p in pieces]
    return {
        "model_uri": job.model_uri,
        "id_column": job.id_column,
        "drop_columns": list(job.drop_columns),
        "bad_rows": job.bad_rows,
        "files": [{"path": f, "bytes": b, "mtime": m} for f, b, m in stats],
        "pieces": len(pieces),
        "plan_sha256": hashlib.sha256(json.dumps(shape).encode()).hexdigest(),
    }


def prepare_output(output: Path, manifest: dict[str, Any], overwrite: bool) -> int:
    """Start or resume a job folder. Returns how many parts an earlier run already wrote."""
    job_file = output / JOB_FILE
    if output.exists() and overwrite:
        shutil.rmtree(output)
    if job_file.exists():
        previous = json.loads(job_file.read_text())
        if previous != manifest:
            changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
            raise BatchError(
                f"{output} holds the output of a different job (it differs in: "
                f"{', '.join(changed)}); pass --overwrite to replace it, or another --output"
            )
    elif output.exists() and any(output.glob("part-*.parquet")):
        raise BatchError(f"{output} holds parts of unknown origin; pass --overwrite or empty it")
    output.mkdir(parents=True, exist_ok=True)
    (output / SUCCESS_FILE).unlink(missing_ok=True)
    job_file.write_text(json.dumps(manifest, indent=2) + "\n")
    for stale in output.rglob(".part-*.tmp"):
        stale.unlink()
    return len(list(output.glob("part-*.parquet")))


def run(
    client: Any,
    job: Job,
    pieces: Sequence[Piece],
    progress: bool = False,
) -> Summary:
    """Score every piece on the cluster behind ``client``; stop at the first failure."""
    from distributed import as_completed

    summary = Summary(files=len({p.path for p in pieces}), pieces=len(pieces))
    summary.model_uri = job.model_uri
    started = time.perf_counter()
    futures = client.map(score_piece, list(pieces), job=job, pure=False)
    if progress:
        from distributed import progress as show_progress

        # A bar redrawn every 100 ms floods a log file; once a second is enough there.
        interval = "100ms" if sys.stdout.isatty() else "1s"
        show_progress(futures, notebook=False, interval=interval)  # type: ignore[no-untyped-call]
        print(file=sys.stderr)
    try:
        for future in as_completed(futures):  # type: ignore[no-untyped-call]
            result: PieceResult = future.result()  # raises the task's own error
            summary.results.append(result)
            summary.rows += result.rows
            summary.scored += result.scored
            summary.rejected += result.rejected
            summary.resumed += int(result.skipped)
    except BaseException:
        client.cancel(futures)
        raise
    summary.seconds = time.perf_counter() - started
    summary.results.sort(key=lambda r: r.index)
    return summary


def finish(output: Path, summary: Summary) -> None:
    totals = {k: v for k, v in asdict(summary).items() if k != "results"}
    (output / SUCCESS_FILE).write_text(json.dumps(totals, indent=2) + "\n")


@dataclass(frozen=True)
class Prepared:
    """A checked plan, ready for a cluster: the job, its pieces, and its output folder."""

    job: Job
    pieces: list[Piece]
    output: Path


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
    overwrite: bool = False,
) -> Prepared:
    """Pin the model, check every file's columns and plan the pieces, before any cluster starts.

    Raises:
        BatchError: a bad file or a foreign output folder.
        ModelLoadError: the model URI cannot be resolved.
    """
    if bad_rows not in ("fail", "skip"):
        raise ValueError(f"bad_rows must be 'fail' or 'skip', not {bad_rows!r}")
    uri = pin(model_uri)
    out = Path(output).resolve()
    job = Job(
        model_uri=uri,
        features=model_features(uri),
        output=str(out),
        id_column=id_column,
        drop_columns=tuple(drop_columns),
        bad_rows=bad_rows,
        predict_threads=predict_threads,
    )
    files = expand_inputs(inputs)
    pieces = plan(files, job, rows_per_piece, csv_block_bytes)
    prepare_output(out, _manifest(job, files, pieces), overwrite)
    return Prepared(job, pieces, out)


def execute(client: Any, prepared: Prepared, progress: bool = False) -> Summary:
    """Score a prepared job on the cluster behind ``client`` and mark it done."""
    summary = run(client, prepared.job, prepared.pieces, progress)
    summary.files = len({p.path for p in prepared.pieces})
    finish(prepared.output, summary)
    return summary


def score_files(
    client: Any, model_uri: str, inputs: Sequence[str], output: str | Path, **options: Any
) -> Summary:
    """``prepare`` then ``execute``: score ``inputs`` into ``output`` on ``client``'s cluster.

    Raises:
        BatchError: a bad file, a bad row under ``bad_rows="fail"``, or a foreign output folder.
        ModelLoadError: the model URI cannot be resolved.
    """
    progress = bool(options.pop("progress", False))
    return execute(client, prepare(model_uri, inputs, output, **options), progress)
