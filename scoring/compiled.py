"""Trees compiled to machine code (lleaves), used only where they give LightGBM's own answers.

``Booster.predict`` walks every tree through LightGBM's generic node arrays; lleaves turns each
tree into straight branches with LLVM, several times faster on big batches (the 1000-tree,
13-leaf benchmark model: ~0.1 s instead of ~0.3 s for 10,000 rows on two cores, see
``bench/results/``). Compiling a big forest takes tens of seconds, so the object code is kept on
disk under a key of the model text, the lleaves and llvmlite versions and the host CPU (the code
is built for this CPU's instruction set and never reused on another), and a file lock makes
the workers of one server compile once between them.

The compiling itself runs in a child process (``python -m scoring.compiled``) that writes the object
code to the cache and exits; the serving process only loads that object. LLVM keeps much of what
it allocates while compiling (hundreds of MB for the benchmark forest) until its process exits,
so a server that compiled in-process carried that for its whole life. Each forest's entry point
is named after its cache key, and each loaded forest has its own LLVM execution engine, so any
number of forests can live in one process (one per model swap) and each is freed with its
``CompiledForest``.

Code generation is LLVM's slowest step (~15 of the benchmark forest's ~35 s at LLVM's default
level 2). A server that must compile in the background therefore compiles twice, like a tiered
JIT: first *quick* code (``QUICK_CODEGEN``: LLVM's instruction selection without its level-2
code generation, after the same IR optimisation; ~15 s, scoring ~20-30% slower than the
optimized code, still several times faster than LightGBM), which takes over at once, then the
optimized code, which replaces it. Each tier has its own cache entry; a start that finds the
optimized object skips the quick one.

The optimized tier's object holds a second entry point beside lleaves': ``scoring.lanes``' code,
which scores four rows at once without a branch per split, for forests of small trees (the
benchmark forest: 10,000 rows about twice as fast on one thread). Batches use it; a few rows
(``FewRows``) keep lleaves' branches, faster for one row. Each entry point is checked on its own.

Nothing compiled is trusted blindly: before use, its output is compared with ``Booster.predict``
on probe rows built from the model's own split thresholds (exactly at, just below and just above
each, plus missing, zero and out-of-range values), and any difference above ``TOLERANCE`` (or
lleaves missing, or any compile error) means ``compile_booster`` returns ``None`` and the caller
keeps LightGBM.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scoring.parallel import Helpers, shares

log = logging.getLogger(__name__)

TOLERANCE = 1e-9
PROBE_ROWS = 1024
ZERO_THRESHOLD = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (1e-35f)
COMPILE_TIMEOUT_S = 3600.0  # the 1000-tree benchmark forest: about two minutes on two busy cores
# Bumped whenever the object code changes shape (entry symbol named after the key: 2; the
# batch entry of ``scoring.lanes`` beside it: 3; that entry reading strided matrices: 4), so an
# object left in the cache by an older build is never loaded under a symbol it lacks, nor
# called by another signature, nor kept without the code a newer one adds.
_CACHE_FORMAT = "4"
OPTIMIZED_CODEGEN = 2  # LLVM's default code generation level, lleaves' own
QUICK_CODEGEN = 0
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "santander-serving-lleaves"
CHUNK_BYTES = 1 << 20
"""Rows handed to the compiled code at a time, in bytes of rows. lleaves' code walks the rows
once per block of trees (34 trees), so a batch bigger than the core's caches is read from memory
some thirty times; in pieces of about 1 MiB each piece stays cached for all its blocks. 10,000
rows of the 1000-tree benchmark forest on an AMD EPYC (median of 7-9, in turn in one process):
one thread 108 -> 82 ms, two threads 54 -> 46 ms (lleaves' ``predict`` gives each thread one
piece of half the rows); pieces of 500 to 2,000 rows all did as well (bench/results/)."""
MIN_ROWS_PER_THREAD = 64
"""Fewer rows per thread than this are not worth a thread's wake-up (64 rows of the benchmark's
1000 trees: ~1 ms)."""

LLEAVES_BLOCK_SIZE = 34  # lleaves' trees per block (its ``fblocksize`` default)
LANES_SUFFIX = "_lanes"
"""The batch entry point's name after the forest's own (``scoring.lanes``)."""

_DOUBLE_P = ctypes.POINTER(ctypes.c_double)
_LANES_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, *(ctypes.c_int64,) * 4
)  # (x, out, start, end, row step, column step): ``scoring.lanes.gen_forest``


@dataclass
class CompiledForest:
    """A compiled model that matched LightGBM on the probe rows."""

    model: Any
    max_abs_diff: float
    probe_rows: int
    compile_seconds: float
    from_cache: bool
    backend: str = "lleaves"
    quick: bool = False
    """The quick tier's code (see the module's docstring)."""
    lanes: Any = None
    """``scoring.lanes``' entry point for batches, or ``None``: then lleaves' code scores
    batches too."""

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        """Score a float64 matrix in the booster's feature order (any layout: the four-row
        code reads it in place; lleaves' code gets contiguous rows)."""
        n = len(x)
        if threads <= 1 and n <= FewRows.ROWS:
            few = self._few
            if few is None and self._entry is not None:
                few = self._few = FewRows(self._entry)
            if few is not None:
                return few.predict(x)
        entry = self._entry
        if entry is None and self.lanes is None:
            x = _zero_tiny(x)
            return np.asarray(self.model.predict(x, n_jobs=max(1, threads)), dtype=np.float64)
        # The compiled functions themselves, on ``threads`` threads: lleaves' ``predict``
        # wraps its code in checks and copies that cost more than scoring a few rows, and
        # hands each thread all its rows at once.
        width = self.model.num_feature()
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"expected rows of {width} features, got {x.shape}")
        out = np.empty(n, dtype=np.float64)
        parts = max(1, min(threads, n // MIN_ROWS_PER_THREAD))
        if self.lanes is not None:
            if x.dtype != np.float64 or any(s < 0 or s % 8 for s in x.strides):
                x = np.ascontiguousarray(x, dtype=np.float64)
            steps = (x.strides[0] // 8, x.strides[1] // 8)
            jobs = [(self.lanes, x, out, rows, steps) for rows in shares(n, parts)]
            _helpers.run(_score_lanes, jobs)
            return out
        x = np.ascontiguousarray(x, dtype=np.float64)
        step = max(1, CHUNK_BYTES // (8 * width))
        _helpers.run(_score_rows, [(entry, x, out, rows, step) for rows in shares(n, parts)])
        return out

    _few: FewRows | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def _entry(self) -> Any:
        """lleaves' compiled entry point, ``f(rows, out, start, end)``, when it scores float64
        rows into one value per row; else ``None`` (then lleaves' own ``predict``)."""
        model = self.model
        if getattr(model, "use_fp64", False) and getattr(model, "_n_classes", 0) == 1:
            return getattr(model, "_c_entry_func", None)
        return None

    def describe(self) -> str:
        source = "cached object code" if self.from_cache else "compiled now"
        tier = "quick code, " if self.quick else ""
        batches = "batches four rows at a time, " if self.lanes is not None else ""
        return (
            f"lleaves ({tier}{batches}{source}, {self.compile_seconds:.1f}s) matches LightGBM to "
            f"{self.max_abs_diff:.1e} on {self.probe_rows} probe rows"
        )


_helpers = Helpers("compiled-trees")


def _score_rows(
    entry: Any, x: np.ndarray, out: np.ndarray, rows: tuple[int, int], step: int
) -> None:
    """Rows ``start:end`` (``rows``) of ``x`` scored into ``out`` by the compiled ``entry``,
    ``step`` rows at a time (it lets go of the GIL while it runs, and so do numpy's loops over
    a piece: all of this runs on as many cores as there are threads)."""
    start, end = rows
    for first in range(start, end, step):
        last = min(end, first + step)
        piece = _zero_tiny(x[first:last])
        entry(piece.ctypes.data_as(_DOUBLE_P), out[first:].ctypes.data_as(_DOUBLE_P), 0, len(piece))


def _score_lanes(
    lanes: Any, x: np.ndarray, out: np.ndarray, rows: tuple[int, int], steps: tuple[int, int]
) -> None:
    """Rows ``start:end`` (``rows``) of ``x`` scored into ``out`` by the four-row code, which
    reads ``x`` in place by its ``steps`` (strides in values) and zeroes tiny values itself; it
    lets go of the GIL while it runs."""
    lanes(x.ctypes.data, out.ctypes.data, *rows, *steps)


def _zero_tiny(x: np.ndarray) -> np.ndarray:
    """``x``, or a copy of it with every ``|value| <= ZERO_THRESHOLD`` made exactly 0.

    LightGBM reads such values as 0 before walking the trees (its dense-row reader drops them
    as zeros); lleaves compares them as they are, which differs at a split on zero. A few
    milliseconds for 10,000 rows buys equal answers."""
    tiny = np.abs(x) <= ZERO_THRESHOLD
    if np.count_nonzero(tiny):  # (``tiny.any()`` goes through Python: ~2 us more)
        return np.where(tiny, 0.0, x)
    return x


class FewRows:
    """The compiled entry point called for a few rows, as cheaply as ctypes allows.

    lleaves calls its code through a ``CFUNCTYPE``, which lets go of the GIL for the call: for
    one row (~10 us of code) the release and the wait to take it back cost as much again, and
    on a busy worker the wait can last a thread switch interval. Here the same code is called
    through a ``PYFUNCTYPE`` (the GIL kept: at most ``ROWS`` rows, well under a millisecond)
    with plain addresses of buffers kept per thread, so that no ctypes pointer object is made
    per call either.
    """

    ROWS = 64

    def __init__(self, entry: Any) -> None:
        address = ctypes.cast(entry, ctypes.c_void_p).value
        assert address is not None
        prototype = ctypes.PYFUNCTYPE(
            None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32
        )
        self._call = prototype(address)
        self._entry = entry  # keeps the code's owner referenced while this is used
        self._local = threading.local()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P for each of at most ``ROWS`` rows of a float64 matrix in the booster's order."""
        n, width = x.shape
        local = self._local
        rows: np.ndarray | None = getattr(local, "rows", None)
        if rows is None or rows.shape[1] != width:
            rows = local.rows = np.zeros((self.ROWS, width), dtype=np.float64)
            local.out = np.zeros(self.ROWS, dtype=np.float64)
            local.addresses = (rows.ctypes.data, local.out.ctypes.data)
        piece = rows[:n]
        np.copyto(piece, x)
        tiny = np.abs(piece) <= ZERO_THRESHOLD  # as ``_zero_tiny``, in this thread's copy
        if np.count_nonzero(tiny):
            piece[tiny] = 0.0
        self._call(*local.addresses, 0, n)
        out: np.ndarray = local.out[:n].copy()
        return out


def compile_booster(
    booster: Any,
    cache_dir: str | Path | None = None,
    probe: np.ndarray | None = None,
    *,
    quick: bool = False,
) -> tuple[CompiledForest | None, str]:
    """Compile ``booster`` with lleaves and check it against LightGBM.

    Args:
        booster: a ``lightgbm.Booster``.
        cache_dir: where compiled object code is kept between starts (default: a folder under
            the system's temporary directory).
        probe: rows to check on, in the booster's feature order (default: ``probe_rows``).
        quick: the quick tier's code (faster to build, slower to run) instead of the optimized.

    Returns:
        The compiled forest (or ``None`` when it cannot be used) and one line saying why.
    """
    try:
        # Optional: a missing compiler only means LightGBM scores.
        lleaves = importlib.import_module("lleaves")
        llvmlite = importlib.import_module("llvmlite")
        llvm = importlib.import_module("llvmlite.binding")
    except ImportError as exc:
        return None, f"{exc.name} is not installed; scoring with LightGBM"

    started = time.perf_counter()
    try:
        text = booster.model_to_string()
        directory = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        key = _cache_key(text, lleaves_version(), llvmlite.__version__, llvm, quick=quick)
        target = directory / f"{key}.o"
        with _locked(directory / f"{key}.lock"):
            from_cache = target.is_file() and target.stat().st_size > 0
            codegen = QUICK_CODEGEN if quick else OPTIMIZED_CODEGEN
            model, lanes = _compile(
                lleaves, text, directory, target, from_cache, codegen=codegen, lanes=not quick
            )
    except Exception as exc:  # any failure of an optional accelerator means: use LightGBM
        log.warning("lleaves could not compile the model: %s", exc, exc_info=True)
        return None, f"lleaves failed to compile the model ({type(exc).__name__}); using LightGBM"

    rows = probe if probe is not None else probe_rows(booster)
    try:
        expected = np.asarray(booster.predict(rows, num_threads=1), dtype=np.float64)
        seconds = time.perf_counter() - started
        forest = CompiledForest(model, np.inf, len(rows), seconds, from_cache, quick=quick)
        diff = _difference(expected, forest.predict(rows, 1))  # lleaves' code
        if lanes is not None:
            forest.lanes = lanes
            lanes_diff = _difference(expected, forest.predict(rows, 1))
            if not lanes_diff <= TOLERANCE:  # (never seen) lleaves' code scores batches too
                log.warning("the four-row code differs from LightGBM by %.1e", lanes_diff)
                forest.lanes = None
            diff = max(diff, lanes_diff) if forest.lanes is not None else diff
    except Exception as exc:
        log.warning("lleaves could not score the probe rows: %s", exc, exc_info=True)
        return None, f"lleaves failed on the probe rows ({type(exc).__name__}); using LightGBM"
    if not diff <= TOLERANCE:  # also catches NaN
        return None, (
            f"lleaves differs from LightGBM by {diff:.1e} (> {TOLERANCE:.0e}) on the probe rows; "
            "using LightGBM"
        )
    forest.max_abs_diff = diff
    return forest, forest.describe()


def _difference(expected: np.ndarray, got: np.ndarray) -> float:
    return float(np.max(np.abs(expected - got))) if expected.shape == got.shape else np.inf


def is_cached(booster: Any, cache_dir: str | Path | None = None) -> bool:
    """Whether ``booster``'s optimized object code is in the cache already (then a start needs
    no quick tier)."""
    try:
        llvmlite = importlib.import_module("llvmlite")
        llvm = importlib.import_module("llvmlite.binding")
    except ImportError:
        return False
    key = _cache_key(booster.model_to_string(), lleaves_version(), llvmlite.__version__, llvm)
    target = (Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR) / f"{key}.o"
    return target.is_file() and target.stat().st_size > 0


def lleaves_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lleaves")
    except PackageNotFoundError:
        return "unknown"


def _cache_key(
    text: str, lleaves_ver: str, llvmlite_ver: str, llvm: Any, *, quick: bool = False
) -> str:
    """Object code is only reusable for the same model, compiler, CPU and tier."""
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    digest = hashlib.sha256()
    for part in (_CACHE_FORMAT, text, lleaves_ver, llvmlite_ver, llvm.get_process_triple()):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(llvm.get_host_cpu_name().encode() + b"\0" + features.encode())
    if quick:
        digest.update(b"\0quick")
    return digest.hexdigest()[:32]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``: the workers of one server compile a model once."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def entry_symbol(key: str) -> str:
    """The forest's entry point in its object code: one name per model, never two alike."""
    return f"forest_{key}"


def _compile(
    lleaves: Any,
    text: str,
    directory: Path,
    target: Path,
    from_cache: bool,
    *,
    codegen: int,
    lanes: bool,
) -> tuple[Any, Any]:
    """lleaves' model with the object code at ``target`` (compiled first unless
    ``from_cache``), and the batch entry point of ``scoring.lanes`` in it (``None`` when the
    object has none)."""
    symbol = entry_symbol(target.stem)  # the cache key
    with tempfile.TemporaryDirectory(dir=directory, prefix="build-") as tmp:
        model_file = Path(tmp) / "model.txt"
        model_file.write_text(text)
        if not from_cache:
            # The object file is written by a child; publish it only once complete.
            partial = Path(tmp) / "model.o"
            _compile_in_child(model_file, partial, symbol, codegen, lanes)
            os.replace(partial, target)
        model = lleaves.Model(model_file=str(model_file))
        # With an existing cache file lleaves loads that object code and compiles nothing.
        model.compile(cache=str(target), froot_func_name=symbol)
    # lleaves takes the entry's address without checking it: an object without this symbol
    # would give address 0 and crash the first call instead of failing here.
    engine = model._execution_engine
    if not engine.get_function_address(symbol):
        raise RuntimeError(f"{target.name} has no entry point {symbol}")
    address = engine.get_function_address(symbol + LANES_SUFFIX) if lanes else 0
    entry = _LANES_TYPE(address) if address else None
    return model, entry


def _compile_in_child(model_file: Path, out: Path, symbol: str, codegen: int, lanes: bool) -> None:
    """Run ``python -m`` this module to compile ``model_file`` into object code at ``out``."""
    command = [
        sys.executable,
        "-m",
        __name__,
        str(model_file),
        str(out),
        symbol,
        str(codegen),
        "1" if lanes else "0",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
    )
    if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"the compiler process exited with {done.returncode}: {tail}")


def _compile_object(model_file: str, out: str, symbol: str, codegen: str, lanes: str) -> None:
    """In the child: lleaves' IR for the forest (and, with ``lanes`` "1" and a forest it fits,
    ``scoring.lanes``' batch code beside it, at ``symbol + LANES_SUFFIX``), optimized by
    lleaves' passes, then object code for this CPU at LLVM code generation level ``codegen``,
    written to ``out`` (lleaves' own ``compile`` generates at LLVM's default level and loads
    it here; this only writes it)."""
    ast = importlib.import_module("lleaves.compiler.ast")
    codegen_ir = importlib.import_module("lleaves.compiler.codegen")
    ir = importlib.import_module("llvmlite.ir")
    llvm = importlib.import_module("llvmlite.binding")
    llvm.initialize()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    # lleaves' ``compile_to_module``, with a second function in the module.
    forest = ast.parse_to_ast(model_file)
    forest.raw_score = False
    module_ir = ir.Module(name="forest")
    codegen_ir.gen_forest(forest, module_ir, LLEAVES_BLOCK_SIZE, symbol, True)
    if lanes == "1":
        from scoring import lanes as lanes_code

        if lanes_code.unsupported(forest) is None:
            lanes_code.gen_forest(forest, module_ir, symbol + LANES_SUFFIX, ZERO_THRESHOLD)
    module_ir.triple = llvm.get_process_triple()
    module = llvm.parse_assembly(str(module_ir))
    module.verify()
    passes = llvm.PassManagerBuilder()
    passes.opt_level = 3
    passes.inlining_threshold = 1  # lleaves': any threshold makes LLVM inline the trees
    manager = llvm.ModulePassManager()
    passes.populate(manager)
    manager.run(module)
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    machine = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
        cpu=llvm.get_host_cpu_name(),
        features=features,
        reloc="pic",
        codemodel="large",  # lleaves' choice: big forests need it
        opt=int(codegen),
    )
    module.data_layout = str(machine.target_data)
    Path(out).write_bytes(machine.emit_object(module))


def probe_rows(
    booster: Any, n: int = PROBE_ROWS, seed: int = 0, dump: dict[str, Any] | None = None
) -> np.ndarray:
    """Rows that take every kind of branch: values at, just below and just above each split
    threshold, plus missing values, zeros, tiny values and values beyond every threshold.
    ``dump`` is ``booster.dump_model()`` where the caller has it already."""
    rng = np.random.default_rng(seed)
    n_features = booster.num_feature()
    thresholds: list[list[float]] = [[] for _ in range(n_features)]
    for tree in (dump or booster.dump_model())["tree_info"]:
        _collect(tree["tree_structure"], thresholds)
    rows = np.empty((n, n_features), dtype=np.float64)
    for j in range(n_features):
        known = np.asarray(thresholds[j], dtype=np.float64)
        if known.size:
            candidates = np.concatenate(
                [
                    known,
                    np.nextafter(known, -np.inf),
                    np.nextafter(known, np.inf),
                    [known.min() - 1.0, known.max() + 1.0],
                ]
            )
        else:
            candidates = rng.normal(size=8)
        column = rng.choice(candidates, size=n)
        special = rng.random(n)
        column[special < 0.04] = np.nan
        column[(special >= 0.04) & (special < 0.07)] = 0.0
        column[(special >= 0.07) & (special < 0.08)] = 1e-36
        column[(special >= 0.08) & (special < 0.09)] = -ZERO_THRESHOLD
        rows[:, j] = column
    return rows


def _collect(node: dict[str, Any], thresholds: list[list[float]]) -> None:
    stack = [node]
    while stack:
        current = stack.pop()
        if "split_feature" not in current:
            continue
        value = current.get("threshold")
        feature = int(current["split_feature"])
        if isinstance(value, int | float):
            thresholds[feature].append(float(value))
        elif isinstance(value, str):  # categorical: "1||3||7"
            for part in value.split("||"):
                with contextlib.suppress(ValueError):
                    thresholds[feature].append(float(part))
        stack.extend(current[k] for k in ("left_child", "right_child") if k in current)


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(
            f"usage: python -m {__spec__.name if __spec__ else 'compiled'} "
            "MODEL_TXT OUT_O SYMBOL CODEGEN_LEVEL LANES(0|1)"
        )
    _compile_object(*sys.argv[1:])
