"""The compiled predictor: equal to LightGBM, checked at load, with a fallback for every failure."""

from __future__ import annotations

import builtins
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from scoring import compiled
from scoring.compiled import TOLERANCE, FewRows, compile_booster, is_cached, probe_rows
from scoring.predictors import BoosterPredictor
from tests.helpers import FEATURES, PROJECT_DIR, make_frame


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    x, y = make_frame(800, seed=21)
    return lgb.train(
        {"objective": "binary", "num_leaves": 13, "verbose": -1, "seed": 21},
        lgb.Dataset(x, y),
        num_boost_round=40,
    )


def test_compiled_trees_match_lightgbm(booster: lgb.Booster, tmp_path: Path) -> None:
    forest, note = compile_booster(booster, tmp_path)
    assert forest is not None, note
    assert forest.max_abs_diff <= TOLERANCE
    rows, _ = make_frame(300, seed=22)
    x = rows.to_numpy(copy=True)
    x[5, 3] = np.nan
    x[6, 4] = 1e-40  # LightGBM reads this as zero
    got = forest.predict(np.ascontiguousarray(x), threads=2)
    np.testing.assert_allclose(got, booster.predict(x), rtol=0, atol=TOLERANCE)


def test_a_few_rows_score_the_same_by_every_call_and_from_every_thread(
    booster: lgb.Booster, tmp_path: Path
) -> None:
    """A few rows go through ``FewRows`` (the GIL kept, buffers per thread, lleaves' code); more
    rows, or more threads, through ``_score_rows`` (the four-row code): LightGBM's answers
    either way (the two sum the trees in another order: equal to ~1e-16), from several threads
    at once (each its own buffers), and never an answer left over from an earlier call."""
    forest, note = compile_booster(booster, tmp_path)
    assert forest is not None, note
    rows, _ = make_frame(FewRows.ROWS + 1, seed=23)
    x = rows.to_numpy(copy=True)
    x[0, 3] = np.nan
    x[1, 4] = 1e-40
    expected = booster.predict(x)
    for n in (1, 2, FewRows.ROWS, FewRows.ROWS + 1):
        part = np.ascontiguousarray(x[:n])
        one_thread = forest.predict(part, threads=1)
        assert one_thread.shape == (n,)
        np.testing.assert_allclose(one_thread, expected[:n], rtol=0, atol=TOLERANCE)
        two_threads = forest.predict(part, threads=2)
        np.testing.assert_allclose(two_threads, expected[:n], rtol=0, atol=TOLERANCE)
    assert forest._few is not None  # the few-rows call was really taken

    def score(start: int) -> bool:
        ok = True
        for i in range(200):
            n = 1 + (start + i) % 7
            first = (start * 3 + i) % (len(x) - n)
            got = forest.predict(np.ascontiguousarray(x[first : first + n]), threads=1)
            ok &= bool(np.allclose(got, expected[first : first + n], rtol=0, atol=TOLERANCE))
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(score, range(8)))


@pytest.mark.parametrize("code", ["four rows", "lleaves"])
def test_a_batch_scored_on_several_threads_is_lightgbm_s_answer(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bigger batches go to the compiled code on several threads, the threads' shares cut
    anywhere: every row scored once, by the right code, with tiny values read as zeros, whatever
    the row count, the thread count and the matrix's layout. The four-row code reads the matrix
    in place (row-major, column-major, every other row, every other column) and zeroes tiny
    values as it copies them; lleaves' code gets contiguous rows in pieces of ``CHUNK_BYTES``
    (here 7 rows, so that the pieces end anywhere), tiny values zeroed in each piece."""
    x, y = make_frame(800, seed=24)
    train = x.to_numpy(copy=True)
    train[::3, :3] = 0.0  # zeros where it splits: read as missing
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 15, "zero_as_missing": True, "verbose": -1},
        lgb.Dataset(train, y),
        num_boost_round=20,
    )
    forest, note = compile_booster(booster, tmp_path)
    assert forest is not None and forest.lanes is not None, note
    if code == "lleaves":
        forest.lanes = None
    monkeypatch.setattr(compiled, "CHUNK_BYTES", 7 * 8 * len(FEATURES))
    monkeypatch.setattr(compiled, "MIN_ROWS_PER_THREAD", 5)
    x = train[:403].copy()
    x[::5, :3] = -compiled.ZERO_THRESHOLD / 2  # LightGBM reads these as zero, lleaves does not
    x[1::5, :3] = compiled.ZERO_THRESHOLD
    x[0, 3] = np.nan
    expected = booster.predict(x)
    assert not np.allclose(forest.model.predict(x), expected, rtol=0, atol=TOLERANCE)
    for n in (5, FewRows.ROWS, FewRows.ROWS + 1, 70, 71, 402, 403):
        for threads in (1, 2, 3):
            got = forest.predict(np.ascontiguousarray(x[:n]), threads=threads)
            np.testing.assert_allclose(got, expected[:n], rtol=0, atol=TOLERANCE)
    for layout in (np.asfortranarray(x), x[::2], np.asfortranarray(x)[1::2]):
        expected_rows = booster.predict(np.ascontiguousarray(layout))
        np.testing.assert_allclose(forest.predict(layout, 2), expected_rows, atol=TOLERANCE)
    wide = np.zeros((len(x), 2 * len(FEATURES)))
    wide[:, ::2] = x
    np.testing.assert_allclose(forest.predict(wide[:, ::2], 2), expected, atol=TOLERANCE)
    assert compiled._helpers.size > 0, "no batch was shared among threads"
    with pytest.raises(ValueError, match="features"):
        forest.predict(np.ascontiguousarray(x[:, :-1]), threads=2)


def _trained(params: dict[str, object], dataset: lgb.Dataset, rounds: int = 30) -> lgb.Booster:
    return lgb.train({"objective": "binary", "verbose": -1, **params}, dataset, rounds)


def _splits(booster: lgb.Booster) -> list[dict[str, object]]:
    found, stack = [], [t["tree_structure"] for t in booster.dump_model()["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_feature" in node:
            found.append(node)
            stack += (node["left_child"], node["right_child"])
    return found


@pytest.mark.parametrize("missing", ["NaN", "Zero", "None"])
def test_batches_scored_four_rows_at_a_time_send_missing_values_where_lightgbm_does(
    missing: str, tmp_path: Path
) -> None:
    """Batches go to the four-row code (``scoring.lanes``), which tests every split for four
    rows at once: rows at, just below and just above each threshold, NaN, zeros and tiny values
    go where LightGBM sends them, for each kind of split LightGBM makes (missing values as NaN,
    zeros as missing, none: NaN read as 0.0), both default directions and thresholds of both
    signs, and for any count of rows (a group of four part empty, a block of 32 part full)."""
    frame, y = make_frame(1500, seed=31)
    x = frame.to_numpy(copy=True)
    params: dict[str, object] = {"num_leaves": 13, "min_data_in_leaf": 5}
    if missing == "Zero":
        x[::3, :8] = 0.0
        params["zero_as_missing"] = True
    else:
        x[::3, :8] = np.nan
        params["use_missing"] = missing == "NaN"
    booster = _trained(params, lgb.Dataset(x, y))
    splits = [s for s in _splits(booster) if s["missing_type"] == missing]
    if missing != "None":  # (with none missing, NaN goes where 0.0 goes: the threshold's sign)
        assert {bool(s["default_left"]) for s in splits} == {True, False}
    assert {float(str(s["threshold"])) < 0 for s in splits} == {True, False}
    forest, note = compile_booster(booster, tmp_path)
    assert forest is not None and forest.lanes is not None, note
    assert "four rows at a time" in note
    rows = probe_rows(booster, n=403, seed=5)
    rows[:: len(rows) // 7, :8] = np.nan if missing != "Zero" else 0.0
    expected = booster.predict(rows)
    for n in (1, 3, 4, 5, 31, 32, 33, 100, 403):
        for threads in (2, 3):  # (more than one thread: the batch code even for one row)
            got = forest.predict(np.ascontiguousarray(rows[:n]), threads)
            np.testing.assert_allclose(got, expected[:n], rtol=0, atol=TOLERANCE)


def test_forests_the_four_row_code_does_not_fit_score_batches_with_lleaves_code(
    tmp_path: Path,
) -> None:
    """Categorical splits, trees of more than 64 leaves (a mask's bits), or of more than 24 on
    average (every split tested costs more than the branches save), more features than the
    stack should hold a block of: lleaves' code scores batches, and says nothing of four rows."""
    from lleaves.compiler.ast import parse_to_ast

    from scoring import lanes

    frame, y = make_frame(1500, seed=32)
    x = frame.to_numpy(copy=True)
    x[:, 5] = np.random.default_rng(1).integers(0, 8, len(x))
    by_category = np.isin(x[:, 5], (2, 5)).astype(int)
    boosters = {
        "categorical splits": _trained(
            {"num_leaves": 7}, lgb.Dataset(x, by_category, categorical_feature=[5]), rounds=10
        ),
        "more than 64 leaves": _trained(
            {"num_leaves": 80, "min_data_in_leaf": 2}, lgb.Dataset(x, y), rounds=2
        ),
        "more than 24 leaves on average": _trained(
            {"num_leaves": 31, "min_data_in_leaf": 2}, lgb.Dataset(x, y), rounds=4
        ),
    }
    wide = np.random.default_rng(2).normal(size=(300, lanes.MAX_FEATURES + 1))
    boosters[f"more than {lanes.MAX_FEATURES} features"] = _trained(
        {"num_leaves": 4}, lgb.Dataset(wide, wide[:, 0] > 0), rounds=2
    )
    for why, booster in boosters.items():
        model_file = tmp_path / "model.txt"
        booster.save_model(model_file)
        assert why in str(lanes.unsupported(parse_to_ast(str(model_file))))
        forest, note = compile_booster(booster, tmp_path)
        assert forest is not None and forest.lanes is None and "four rows" not in note, why
        rows = wide if booster.num_feature() == wide.shape[1] else x[:300]
        got = forest.predict(np.ascontiguousarray(rows), 2)
        np.testing.assert_allclose(got, booster.predict(rows), rtol=0, atol=TOLERANCE)
    small = _trained({"num_leaves": 13}, lgb.Dataset(x, y), rounds=3)
    small.save_model(tmp_path / "small.txt")
    assert lanes.unsupported(parse_to_ast(str(tmp_path / "small.txt"))) is None


def test_four_row_code_that_differs_from_lightgbm_is_left_unused(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe rows check the four-row code apart from lleaves': code that answers wrong
    is dropped, and lleaves' code scores batches too."""
    real = compiled._compile

    def wrong_lanes(*args: object, **kwargs: object) -> tuple[object, object]:
        model, lanes = real(*args, **kwargs)  # type: ignore[arg-type]
        assert lanes is not None
        return model, compiled._LANES_TYPE(lambda *_: None)  # scores nothing

    monkeypatch.setattr(compiled, "_compile", wrong_lanes)
    forest, note = compile_booster(booster, tmp_path)
    assert forest is not None and forest.lanes is None and "four rows" not in note, note
    x = make_frame(300, seed=25)[0].to_numpy()
    np.testing.assert_allclose(forest.predict(x, 2), booster.predict(x), rtol=0, atol=TOLERANCE)


def test_compiled_code_is_cached_between_starts(booster: lgb.Booster, tmp_path: Path) -> None:
    first, note = compile_booster(booster, tmp_path)
    assert first is not None and not first.from_cache, note
    again, note = compile_booster(booster, tmp_path)
    assert again is not None and again.from_cache, note


def test_quick_code_matches_lightgbm_and_is_cached_apart(
    booster: lgb.Booster, tmp_path: Path
) -> None:
    quick, note = compile_booster(booster, tmp_path, quick=True)
    assert quick is not None and quick.quick and "quick code" in note, note
    assert quick.lanes is None  # the four-row code only comes with the optimized
    rows, _ = make_frame(300, seed=23)
    x = rows.to_numpy(copy=True)
    x[7, 2] = np.nan
    for threads in (1, 2):
        got = quick.predict(np.ascontiguousarray(x), threads)
        np.testing.assert_allclose(got, booster.predict(x), rtol=0, atol=TOLERANCE)
    assert not is_cached(booster, tmp_path)  # the quick object is not the optimized one
    optimized, note = compile_booster(booster, tmp_path)
    assert optimized is not None and not optimized.quick and not optimized.from_cache, note
    assert optimized.lanes is not None
    assert is_cached(booster, tmp_path) and len(list(tmp_path.glob("*.o"))) == 2


def _tiers_compiled(monkeypatch: pytest.MonkeyPatch, fail_optimized: bool = False) -> list[bool]:
    """Record each compile of ``BoosterPredictor`` as quick (True) or optimized (False)."""
    calls: list[bool] = []

    def recording(booster: lgb.Booster, cache_dir: str | None, *, quick: bool = False) -> object:
        calls.append(quick)
        if fail_optimized and not quick:
            return None, "the optimized compile failed here"
        return compile_booster(booster, cache_dir, quick=quick)

    monkeypatch.setattr("scoring.predictors.compile_booster", recording)
    return calls


def test_a_background_compile_serves_quick_code_until_the_optimized_is_ready(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _tiers_compiled(monkeypatch)
    predictor = BoosterPredictor(booster, FEATURES, True, str(tmp_path), background=True)
    assert predictor.wait_compiled(300)
    assert calls == [True, False]
    assert not predictor._compiled.quick and "quick" not in predictor.backend_note
    # A start that finds the optimized code cached takes it and compiles nothing quick.
    calls.clear()
    again = BoosterPredictor(booster, FEATURES, True, str(tmp_path), background=True)
    assert again.wait_compiled(300) and calls == [False]
    # Not in the background, the optimized code alone (nothing serves while it compiles).
    calls.clear()
    BoosterPredictor(booster, FEATURES, True, str(tmp_path / "cold"))
    assert calls == [False]


def test_quick_code_keeps_serving_when_the_optimized_fails(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tiers_compiled(monkeypatch, fail_optimized=True)
    predictor = BoosterPredictor(booster, FEATURES, True, str(tmp_path), background=True)
    assert predictor.wait_compiled(300) and predictor._compiled.quick
    assert predictor.backend == "lleaves"
    assert "the optimized code failed: the optimized compile failed here" in predictor.backend_note
    x = make_frame(50, seed=24)[0].to_numpy(copy=True)
    np.testing.assert_allclose(predictor.predict(x, 1), booster.predict(x), rtol=0, atol=TOLERANCE)


def _other_booster(seed: int, rounds: int) -> lgb.Booster:
    x, y = make_frame(600, seed=seed)
    return lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": seed},
        lgb.Dataset(x, y),
        num_boost_round=rounds,
    )


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_each_forest_of_one_process_answers_with_its_own_trees(
    booster: lgb.Booster, tmp_path: Path, cache: str
) -> None:
    """A model swap compiles a second forest into the serving process; both stay right."""
    second_booster = _other_booster(31, 25)
    if cache == "warm":  # both objects already on disk, as after a restart
        for b in (booster, second_booster):
            assert compile_booster(b, tmp_path)[0] is not None
    x = np.ascontiguousarray(make_frame(200, seed=32)[0].to_numpy())
    assert np.max(np.abs(booster.predict(x) - second_booster.predict(x))) > 0.1  # they differ

    first, note = compile_booster(booster, tmp_path)
    assert first is not None, note
    second, note = compile_booster(second_booster, tmp_path)
    assert second is not None, note
    assert first.from_cache == second.from_cache == (cache == "warm")
    np.testing.assert_allclose(second.predict(x, 2), second_booster.predict(x), rtol=0, atol=1e-9)
    np.testing.assert_allclose(first.predict(x, 2), booster.predict(x), rtol=0, atol=1e-9)


def test_the_serving_process_only_loads_object_code(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold cache is filled by a child process: LLVM never compiles in this one."""
    import lleaves.lleaves

    def no_compiling_here(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled in the serving process")

    monkeypatch.setattr(lleaves.lleaves.compiler, "compile_to_module", no_compiling_here)
    forest, note = compile_booster(booster, tmp_path)
    assert forest is not None and not forest.from_cache, note
    assert len(list(tmp_path.glob("*.o"))) == 1


def test_a_compiler_process_that_fails_leaves_lightgbm_and_no_object(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scoring.compiled.COMPILE_TIMEOUT_S", 0.01)  # killed before it can finish
    forest, note = compile_booster(booster, tmp_path)
    assert forest is None and "TimeoutExpired" in note and "using LightGBM" in note
    assert not list(tmp_path.glob("*.o")) and not list(tmp_path.glob("build-*"))
    monkeypatch.undo()
    forest, note = compile_booster(booster, tmp_path)  # the next try compiles
    assert forest is not None and not forest.from_cache, note


def test_an_object_without_this_models_entry_point_is_refused(
    booster: lgb.Booster, tmp_path: Path
) -> None:
    """An object under the right key but another entry symbol must fail, not crash on call."""
    import lleaves

    forest, note = compile_booster(booster, tmp_path)
    assert forest is not None, note
    (target,) = tmp_path.glob("*.o")
    model_file = tmp_path / "model.txt"
    booster.save_model(str(model_file))
    target.unlink()
    lleaves.Model(model_file=str(model_file)).compile(cache=str(target))  # "forest_root"
    forest, note = compile_booster(booster, tmp_path)
    assert forest is None and "failed to compile" in note, note


def _run_python(code: str, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


_WORKER = """
    import sys
    import lightgbm as lgb
    from scoring.compiled import compile_booster
    booster = lgb.Booster(model_file=sys.argv[1])
    forest, note = compile_booster(booster, sys.argv[2])
    assert forest is not None, note
    print("cache" if forest.from_cache else "compiled")
"""


def test_workers_compile_a_model_once_between_them(booster: lgb.Booster, tmp_path: Path) -> None:
    model_file = tmp_path / "model.txt"
    booster.save_model(str(model_file))
    cache = tmp_path / "cache"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_WORKER), str(model_file), str(cache)],
            cwd=PROJECT_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    answers = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        answers.append(out.strip())
    assert sorted(answers) == ["cache", "cache", "compiled"]


_SWAPS = """
    import gc, sys, tempfile
    import lightgbm as lgb
    import numpy as np
    import psutil
    from scoring.compiled import compile_booster
    base = lgb.Booster(model_file=sys.argv[1])
    rows = np.random.default_rng(0).normal(size=(100, base.num_feature()))
    rss = []
    with tempfile.TemporaryDirectory() as cache:
        for i in range(10):  # ten swaps, each to a forest never compiled before
            booster = lgb.Booster(model_str=base.model_to_string(num_iteration=40 - i))
            forest, note = compile_booster(booster, cache)
            assert forest is not None and not forest.from_cache, note
            assert np.max(np.abs(forest.predict(rows, 1) - booster.predict(rows))) <= 1e-9
            del forest, booster
            gc.collect()
            rss.append(psutil.Process().memory_info().rss)
    print(rss[0], rss[-1])
"""


def test_ten_swaps_release_the_previous_forests(booster: lgb.Booster, tmp_path: Path) -> None:
    model_file = tmp_path / "model.txt"
    booster.save_model(str(model_file))
    first, last = map(int, _run_python(_SWAPS, str(model_file)).split())
    assert last <= 1.2 * first, (first, last)


def test_probe_rows_cover_the_split_thresholds(booster: lgb.Booster) -> None:
    rows = probe_rows(booster)
    assert rows.shape[1] == len(FEATURES)
    assert np.isnan(rows).any() and (rows == 0).any()


def test_a_failed_check_falls_back_to_lightgbm(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scoring.compiled.TOLERANCE", -1.0)  # nothing can pass
    forest, note = compile_booster(booster, tmp_path)
    assert forest is None and "using LightGBM" in note
    predictor = BoosterPredictor(booster, tuple(FEATURES), compiled=True, cache_dir=str(tmp_path))
    assert predictor.backend == "lightgbm"
    x = make_frame(10, seed=23)[0].to_numpy()
    np.testing.assert_array_equal(predictor.predict(x, 1), booster.predict(x, num_threads=1))


def test_a_missing_compiler_falls_back_to_lightgbm(
    booster: lgb.Booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_lleaves(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("lleaves"):
            raise ImportError("No module named 'lleaves'", name="lleaves")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "lleaves", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_lleaves)
    monkeypatch.setattr("importlib.import_module", no_lleaves)
    forest, note = compile_booster(booster, tmp_path)
    assert forest is None and "lleaves is not installed" in note


def test_background_compilation_serves_at_once_then_switches(
    booster: lgb.Booster, tmp_path: Path
) -> None:
    predictor = BoosterPredictor(
        booster, tuple(FEATURES), compiled=True, cache_dir=str(tmp_path / "fresh"), background=True
    )
    x = make_frame(20, seed=24)[0].to_numpy()
    first = predictor.predict(x, 1)  # answers while compiling, whichever backend is on
    assert predictor.wait_compiled(timeout=300)
    assert predictor.backend == "lleaves"
    np.testing.assert_allclose(predictor.predict(x, 1), first, rtol=0, atol=TOLERANCE)
