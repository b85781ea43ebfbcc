"""Batch scoring on a 2-worker LocalCluster: same answers as the service, bad input located,
re-runs that resume without duplicating anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client

from batch.job import BadRows, BatchError, score_files
from tests.batch.conftest import Scored
from tests.conftest import LoggedModel
from tests.helpers import PROJECT_DIR

pytestmark = pytest.mark.timeout(120)


def _write_inputs(frame: pd.DataFrame, folder: Path) -> None:
    """Three Parquet files (several row groups each) and two CSV files."""
    folder.mkdir()
    parts = np.array_split(np.arange(len(frame)), 5)
    for k, rows in enumerate(parts[:3]):
        pq.write_table(
            pa.Table.from_pandas(frame.iloc[rows], preserve_index=False),
            folder / f"day{k}.parquet",
            row_group_size=70,
        )
    for k, rows in enumerate(parts[3:]):
        frame.iloc[rows].to_csv(folder / f"late{k}.csv", index=False)


def _read_output(output: Path) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(p) for p in sorted(output.glob("part-*.parquet")))


def _assert_matches_service(out: pd.DataFrame, scored: Scored) -> None:
    assert list(out.columns) == ["ID_code", "probability"]
    assert out["ID_code"].is_unique
    expected = out["ID_code"].map(scored.service).to_numpy()
    np.testing.assert_allclose(out["probability"].to_numpy(), expected, rtol=0, atol=1e-12)


def test_parquet_and_csv_score_like_the_service(
    dask_client: Client, booster_model: LoggedModel, scored_rows: Scored, tmp_path: Path
) -> None:
    _write_inputs(scored_rows.frame, tmp_path / "in")
    summary = score_files(
        dask_client,
        "models:/santander@champion",
        [str(tmp_path / "in" / "*.parquet"), str(tmp_path / "in" / "*.csv")],
        tmp_path / "out",
        rows_per_piece=100,  # several pieces per Parquet file
        csv_block_bytes=64 << 10,  # several byte ranges per CSV file
    )
    assert summary.files == 5
    assert summary.pieces > 5
    assert summary.rows == summary.scored == len(scored_rows.frame)
    assert summary.model_uri == f"models:/santander/{booster_model.version}"  # alias pinned
    out = _read_output(tmp_path / "out")
    assert set(out["ID_code"]) == set(scored_rows.frame["ID_code"])
    _assert_matches_service(out, scored_rows)
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_rerun_resumes_without_duplicates(
    dask_client: Client,
    booster_model: LoggedModel,
    classifier_model: LoggedModel,
    scored_rows: Scored,
    tmp_path: Path,
) -> None:
    _write_inputs(scored_rows.frame, tmp_path / "in")
    args = (dask_client, booster_model.model_uri, [str(tmp_path / "in")], tmp_path / "out")
    first = score_files(*args, rows_per_piece=100)
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    # An interrupted run: some parts never written, one left half-written under a temp name.
    for p in parts[::2]:
        p.unlink()
    (tmp_path / "out" / f".{parts[0].name}.123.456.tmp").write_bytes(b"PAR1 truncated")
    (tmp_path / "out" / "_SUCCESS").unlink()

    second = score_files(*args, rows_per_piece=100)
    assert second.resumed == len(parts) - len(parts[::2])
    assert second.scored == sum(r.scored for r in first.results if r.index % 2 == 0)
    out = _read_output(tmp_path / "out")
    assert len(out) == len(scored_rows.frame)
    _assert_matches_service(out, scored_rows)
    assert not list((tmp_path / "out").glob(".*.tmp"))

    with pytest.raises(BatchError, match=r"different job.*model_uri"):
        score_files(dask_client, classifier_model.model_uri, *args[2:], rows_per_piece=100)


def test_bad_file_is_named(
    dask_client: Client, booster_model: LoggedModel, scored_rows: Scored, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    _write_inputs(scored_rows.frame, folder)
    scored_rows.frame.drop(columns=["var_7"]).head(5).to_csv(folder / "broken.csv", index=False)
    with pytest.raises(BatchError) as caught:
        score_files(dask_client, booster_model.model_uri, [str(folder)], tmp_path / "out")
    assert "broken.csv" in str(caught.value)
    assert "MISSING_COLUMNS" in str(caught.value) and "'var_7'" in str(caught.value)
    assert not list((tmp_path / "out").glob("part-*"))  # nothing scored before the check

    (folder / "broken.csv").unlink()
    typed = pa.Table.from_pandas(scored_rows.frame.head(5), preserve_index=False)
    typed = typed.set_column(3, "var_2", pa.array(["x"] * 5))
    pq.write_table(typed, folder / "texty.parquet")
    with pytest.raises(BatchError, match=r"texty\.parquet: INVALID_VALUE: column 'var_2'"):
        score_files(dask_client, booster_model.model_uri, [str(folder)], tmp_path / "out2")


def _with_bad_rows(frame: pd.DataFrame, folder: Path) -> Path:
    """A CSV with text in one row, an infinity in another, and a line with too few fields."""
    folder.mkdir()
    path = folder / "rows.csv"
    lines = frame.head(300).to_csv(index=False).splitlines()
    cells = lines[41].split(",")  # data row 41 (line 1 is the header)
    cells[10] = "abc"
    lines[41] = ",".join(cells)
    cells = lines[250].split(",")
    cells[3] = "inf"
    lines[250] = ",".join(cells)
    lines[120] = ",".join(lines[120].split(",")[:50])
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_row_fails_with_its_location(
    dask_client: Client, booster_model: LoggedModel, scored_rows: Scored, tmp_path: Path
) -> None:
    path = _with_bad_rows(scored_rows.frame, tmp_path / "in")
    with pytest.raises(BadRows) as caught:
        score_files(
            dask_client,
            booster_model.model_uri,
            [str(path)],
            tmp_path / "out",
            csv_block_bytes=16 << 10,
        )
    message = str(caught.value)
    assert "rows.csv, row" in message
    # Whichever piece failed first, its row number and id agree with the file.
    row = int(message.split(", row ", 1)[1].split(maxsplit=1)[0].rstrip(":"))
    assert row in (41, 120, 250)
    if row != 120:
        assert f"(test_{row - 1})" in message


def test_skip_writes_rejects_and_scores_the_rest(
    dask_client: Client, booster_model: LoggedModel, scored_rows: Scored, tmp_path: Path
) -> None:
    path = _with_bad_rows(scored_rows.frame, tmp_path / "in")
    summary = score_files(
        dask_client,
        booster_model.model_uri,
        [str(path)],
        tmp_path / "out",
        bad_rows="skip",
        csv_block_bytes=16 << 10,
    )
    assert summary.rejected == 3
    assert summary.scored == 297
    rejects = pd.concat(
        pd.read_parquet(p) for p in sorted((tmp_path / "out" / "rejects").glob("*.parquet"))
    ).sort_values("source_row")
    assert rejects["source_row"].tolist() == [41, 120, 250]
    assert rejects["ID_code"].tolist()[0::2] == ["test_40", "test_249"]
    assert rejects["error_code"].tolist() == ["INVALID_VALUE", "MALFORMED_REQUEST", "INVALID_VALUE"]
    assert "'var_9'" in rejects["reason"].iloc[0] and "'var_2'" in rejects["reason"].iloc[2]
    assert rejects["var_9"].iloc[0] == "abc"
    out = _read_output(tmp_path / "out")
    assert set(out["ID_code"]) == {f"test_{i}" for i in range(300)} - {
        "test_40",
        "test_119",
        "test_249",
    }
    _assert_matches_service(out, scored_rows)


@pytest.mark.timeout(300)  # spawns two worker processes that each import MLflow and the model
def test_command_line_on_its_own_local_cluster(
    booster_model: LoggedModel, scored_rows: Scored, tmp_path: Path
) -> None:
    _write_inputs(scored_rows.frame, tmp_path / "in")
    command = [
        sys.executable, "-m", "batch", "--model-uri", booster_model.model_uri,
        "--input", str(tmp_path / "in" / "*.parquet"), "--input", str(tmp_path / "in" / "*.csv"),
        "--output", str(tmp_path / "out"), "--workers", "2",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"scored {len(scored_rows.frame)} of {len(scored_rows.frame)} rows" in done.stdout
    assert "100% Completed" in done.stdout  # Dask's progress bar
    _assert_matches_service(_read_output(tmp_path / "out"), scored_rows)

    (tmp_path / "in" / "day1.parquet").write_bytes(b"not parquet")
    done = subprocess.run(
        [*command[:-4], "--output", str(tmp_path / "out2")],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert done.returncode == 2  # found before any cluster starts
    assert "day1.parquet: not a readable Parquet file" in done.stderr


def test_memory_filesystem_urls_in_and_out(
    dask_client: Client, booster_model: LoggedModel, scored_rows: Scored
) -> None:
    """Input and output through fsspec URLs, on its in-memory filesystem. memory:// lives in one
    process, so this runs on the in-process cluster (``processes=False``); the local-disk URLs
    run on a real cluster of processes in ``test_cluster.py``."""
    import fsspec

    fs = fsspec.filesystem("memory")
    frame = scored_rows.frame
    for k, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        with fs.open(f"/batch-in/day{k}.parquet", "wb") as f:
            pq.write_table(
                pa.Table.from_pandas(frame.iloc[rows], preserve_index=False), f, row_group_size=90
            )
    fs.pipe_file("/batch-in/late.csv", frame.head(150).to_csv(index=False).encode())
    try:
        summary = score_files(
            dask_client,
            booster_model.model_uri,
            ["memory://batch-in/*.parquet", "memory://batch-in/late.csv"],
            "memory://batch-out",
            rows_per_piece=100,
            csv_block_bytes=32 << 10,
        )
        assert summary.files == 4 and summary.pieces > 4
        assert summary.scored == len(frame) + 150
        parts = sorted(fs.glob("/batch-out/part-*.parquet"))
        assert len(parts) == summary.pieces
        assert fs.exists("/batch-out/_SUCCESS") and fs.exists("/batch-out/_job.json")
        out = pd.concat(pd.read_parquet(fs.open(p, "rb")) for p in parts)
        expected = out["ID_code"].map(scored_rows.service).to_numpy()
        np.testing.assert_allclose(out["probability"].to_numpy(), expected, rtol=0, atol=1e-12)
        assert len(out) == len(frame) + 150  # the CSV repeats the first 150 ids: 2 rows each

        # Resume on an object store: no rename there, parts are written whole; gone ones redone.
        for p in parts[::3]:
            fs.rm_file(p)
        again = score_files(
            dask_client,
            booster_model.model_uri,
            ["memory://batch-in/*.parquet", "memory://batch-in/late.csv"],
            "memory://batch-out",
            rows_per_piece=100,
            csv_block_bytes=32 << 10,
        )
        assert again.resumed == len(parts) - len(parts[::3])
        assert len(fs.glob("/batch-out/part-*.parquet")) == len(parts)
        assert not fs.glob("/batch-out/.*")
    finally:
        fs.rm("/batch-in", recursive=True)
        if fs.exists("/batch-out"):
            fs.rm("/batch-out", recursive=True)
