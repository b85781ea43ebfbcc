"""Forest code that scores four rows at once without a branch per split: the compiled trees'
code for batches, generated beside lleaves' own (``scoring.compiled``) into the same object.

lleaves turns each tree into nested branches, one per split on the row's path. On rows that
differ, the processor guesses those branches wrong about as often as right, and each wrong
guess costs more than the comparison. Here every tree is evaluated for four rows at once with
vector instructions (AVX2 holds four doubles), and every split of the tree is compared, none
skipped: a comparison that sends the rows right rules out the leaves under the split's left
child. Each tree's leaves are numbered left to right as bits of a mask; a split's mask keeps every
bit but its left subtree's, and the exit leaf is the lowest bit left after all the masks of the
splits that went right are and-ed together (QuickScorer: Lucchese et al., SIGIR 2015). No branch
depends on the data, so the four lanes' work overlaps freely.

Evaluating every split pays only while trees are small: on the 1000-tree, 13-leaf benchmark
forest 10,000 rows on one thread took 33-50 ms against lleaves' 80-103 (AMD EPYC, in turn in one
process), with 31 leaves both took 46-47 ms (300 trees), with 63 leaves this took 82 against 52.
So a forest gets this code only when its trees have at most ``MAX_MEAN_LEAVES`` leaves on
average (and at most ``MAX_LEAVES``, the mask's bits). For one row lleaves' branches are
faster still (40 us against 67 for the benchmark forest): a few rows keep lleaves' code.

Each block of ``ROWS_PER_BLOCK`` rows is first copied column-major into a buffer on the stack,
so that a split's feature for four rows is one vector load; the copy reads the caller's matrix
in place, row-major or column-major (a Parquet or Arrow body's columns stack column-major
faster) or any slice, and reads values of at most LightGBM's zero threshold as 0.0 on the way.
The trees run in blocks of ``TREES_PER_BLOCK`` over the block's rows (the code of a few trees
stays in the instruction cache while it serves all the rows). A split's test is lleaves' own,
written for vectors: the same ordered or unordered comparison, so missing values (NaN, and
zeros where the model reads them as missing) go where LightGBM sends them. The sum runs tree
by tree in the model's order, as LightGBM's does, and the model's objective (the sigmoid, for a
binary model) is lleaves' code for it.

Generated only for models lleaves supports and this code can (``unsupported`` says why not):
one output (no multiclass), numerical splits only (no categorical), small trees (above), at most
``MAX_FEATURES`` features. The caller compares the result with LightGBM on probe rows before
using it, as for lleaves' code.
"""

from __future__ import annotations

from typing import Any

from lleaves.compiler.codegen.codegen import _populate_objective_func_block
from lleaves.compiler.utils import MissingType
from llvmlite import ir

LANES = 4
ROWS_PER_BLOCK = 32
"""Rows copied column-major at a time: 51 KB of 200 features, within a core's L2 cache. 16 to
64 did as well on the benchmark forest; 128 was 40% slower."""
TREES_PER_BLOCK = 16
"""Trees run over a block's rows before the next trees (10 to 34 did as well)."""
MAX_LEAVES = 64
MAX_MEAN_LEAVES = 24
MAX_FEATURES = 1024
"""The block's columns live on the calling thread's stack: 1024 features of 32 rows take 256 KB
(a thread's stack is megabytes; wider models keep lleaves' code rather than risk it)."""

_D = ir.DoubleType()
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VD = ir.VectorType(_D, LANES)
_VI = ir.VectorType(_I64, LANES)


def unsupported(forest: Any) -> str | None:
    """Why this code cannot (or should not) score ``forest`` (lleaves' parsed model), or
    ``None``."""
    if forest.n_classes != 1:
        return "more than one output"
    if forest.n_args > MAX_FEATURES:
        return f"more than {MAX_FEATURES} features"
    leaves_per_tree = []
    for tree in forest.trees:
        count = 0
        stack = [tree.root_node]
        while stack:
            node = stack.pop()
            if node.is_leaf:
                count += 1
            elif node.decision_type.is_categorical:
                return "categorical splits"
            else:
                stack += (node.left, node.right)
        leaves_per_tree.append(count)
    if max(leaves_per_tree, default=0) > MAX_LEAVES:
        return f"trees of more than {MAX_LEAVES} leaves"
    if sum(leaves_per_tree) > MAX_MEAN_LEAVES * max(1, len(leaves_per_tree)):
        return f"trees of more than {MAX_MEAN_LEAVES} leaves on average"
    return None


def gen_forest(forest: Any, module: Any, name: str, zero_threshold: float) -> None:
    """Add ``void name(double* x, double* out, i64 start, i64 end, i64 row_step,
    i64 column_step)`` to ``module``: rows ``start:end`` of the matrix at ``x`` scored into
    ``out[start:end]``, where value ``(i, j)`` is ``x[i * row_step + j * column_step]`` (a
    numpy array's strides in values: row-major, column-major and every slice of them read in
    place). Values with ``|v| <= zero_threshold`` (LightGBM's ``kZeroThreshold``) are read as
    0.0, as LightGBM reads them."""
    width = forest.n_args
    block = ROWS_PER_BLOCK
    arguments = (_D.as_pointer(), _D.as_pointer(), _I64, _I64, _I64, _I64)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), arguments), name)
    rows, out, start, end, row_step, column_step = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    columns = b.alloca(_D, width * block, name="columns")  # columns[j * block + i]
    sums = b.alloca(_D, block, name="sums")
    cttz = ir.Function(module, ir.FunctionType(_VI, [_VI, _I1]), name=f"llvm.cttz.v{LANES}i64")
    fabs = module.declare_intrinsic("llvm.fabs", [_D])

    def at(buffer: Any, *terms: Any) -> Any:
        index = terms[0]
        for term in terms[1:]:
            index = b.add(index, term)
        return b.gep(buffer, [index])

    def i64(value: int) -> Any:
        return ir.Constant(_I64, value)

    def copy(i: Any, j: Any) -> None:
        """Value (first + i, j) into the block's columns, tiny values as 0.0."""
        value = b.load(at(rows, b.mul(b.add(first, i), row_step), b.mul(j, column_step)))
        tiny = b.fcmp_ordered("<=", b.call(fabs, [value]), ir.Constant(_D, zero_threshold))
        value = b.select(tiny, ir.Constant(_D, 0.0), value)
        b.store(value, at(columns, b.mul(j, i64(block)), i))

    first_rows = _Loop(b, fn, start, end, step=block, name="block")
    first = first_rows.index
    left = b.sub(end, first)
    n = b.select(b.icmp_signed("<", left, i64(block)), left, i64(block))
    lanes_end = b.and_(b.add(n, i64(LANES - 1)), i64(-LANES))
    # The block's rows, column-major, read in the order they lie in memory; the last group of
    # four padded with zeros.
    with b.if_else(b.icmp_signed("==", column_step, i64(1))) as (by_rows, by_columns):
        with by_rows:
            i = _Loop(b, fn, i64(0), n, step=1, name="row")
            j = _Loop(b, fn, i64(0), i64(width), step=1, name="feature")
            copy(i.index, j.index)
            j.close()
            i.close()
        with by_columns:
            j = _Loop(b, fn, i64(0), i64(width), step=1, name="column")
            i = _Loop(b, fn, i64(0), n, step=1, name="value")
            copy(i.index, j.index)
            i.close()
            j.close()
    pad = _Loop(b, fn, n, lanes_end, step=1, name="pad")
    j = _Loop(b, fn, i64(0), i64(width), step=1, name="pad_feature")
    b.store(ir.Constant(_D, 0.0), at(columns, b.mul(j.index, i64(block)), pad.index))
    j.close()
    pad.close()
    zero = _Loop(b, fn, i64(0), lanes_end, step=1, name="sum")
    b.store(ir.Constant(_D, 0.0), at(sums, zero.index))
    zero.close()

    trees = forest.trees
    for t0 in range(0, len(trees), TREES_PER_BLOCK):
        group = _Loop(b, fn, i64(0), lanes_end, step=LANES, name=f"trees{t0}")
        lane0 = group.index

        def column(feature: int, lane0: Any = lane0) -> Any:
            return b.bitcast(at(columns, i64(feature * block), lane0), _VD.as_pointer())

        total_at = b.bitcast(at(sums, lane0), _VD.as_pointer())
        total = b.load(total_at, align=8)
        for tree in trees[t0 : t0 + TREES_PER_BLOCK]:
            total = b.fadd(total, _tree(b, module, tree, column, cttz))
        b.store(total, total_at, align=8)
        group.close()

    o = _Loop(b, fn, i64(0), n, step=1, name="out")
    raw = b.load(at(sums, o.index))
    (result,) = _populate_objective_func_block(
        b,
        [raw],
        forest.objective_func,
        forest.objective_func_config,
        forest.raw_score,
        forest.average_output,
        len(trees),
        True,
    )
    b.store(result, at(out, first, o.index))
    o.close()
    first_rows.close()
    b.ret_void()


class _Loop:
    """``for index in range(low, high, step)``, its body where the builder stands until
    ``close``; the counter lives in a stack slot that LLVM's passes make a register."""

    def __init__(self, b: Any, fn: Any, low: Any, high: Any, *, step: int, name: str) -> None:
        self.b = b
        self.counter = b.alloca(_I64, name=name)
        self.step = step
        b.store(low, self.counter)
        test = fn.append_basic_block(f"{name}.test")
        body = fn.append_basic_block(f"{name}.body")
        self.after = fn.append_basic_block(f"{name}.after")
        self.test = test
        b.branch(test)
        b.position_at_end(test)
        b.cbranch(b.icmp_signed("<", b.load(self.counter), high), body, self.after)
        b.position_at_end(body)
        self.index = b.load(self.counter)

    def close(self) -> None:
        b = self.b
        b.store(b.add(b.load(self.counter), ir.Constant(_I64, self.step)), self.counter)
        b.branch(self.test)
        b.position_at_end(self.after)


def _tree(b: Any, module: Any, tree: Any, column: Any, cttz: Any) -> Any:
    """The four lanes' leaf values of ``tree``."""
    root = tree.root_node
    if root.is_leaf:
        return _splat(_VD, ir.Constant(_D, root.value))
    leaves: list[float] = []
    splits: list[tuple[Any, int]] = []

    def walk(node: Any) -> int:
        """Number the leaves under ``node`` left to right; the bits of those leaves."""
        if node.is_leaf:
            leaves.append(node.value)
            return 1 << (len(leaves) - 1)
        under_left = walk(node.left)
        splits.append((node, under_left))
        return under_left | walk(node.right)

    walk(root)
    everything = _splat(_VI, ir.Constant(_I64, -1))
    masks = []
    for node, under_left in splits:
        goes_left = _goes_left(b, node, b.load(column(node.split_feature), align=8))
        keep = _splat(_VI, ir.Constant(_I64, _signed(~under_left)))
        masks.append(b.select(goes_left, everything, keep))
    while len(masks) > 1:  # a balanced tree of ands, not a chain: the processor overlaps them
        pairs = [b.and_(masks[k], masks[k + 1]) for k in range(0, len(masks) - 1, 2)]
        masks = pairs + masks[len(masks) - len(masks) % 2 :]
    exit_leaf = b.call(cttz, [masks[0], ir.Constant(_I1, 1)])
    table_type = ir.ArrayType(_D, len(leaves))
    table = ir.GlobalVariable(module, table_type, name=f"leaves_{tree.idx}")
    table.global_constant = True
    table.linkage = "private"
    table.initializer = ir.Constant(table_type, [ir.Constant(_D, v) for v in leaves])
    values = _splat(_VD, ir.Constant(_D, 0.0))
    for lane in range(LANES):
        leaf = b.extract_element(exit_leaf, ir.Constant(_I32, lane))
        value = b.load(b.gep(table, [ir.Constant(_I64, 0), leaf], inbounds=True))
        values = b.insert_element(values, value, ir.Constant(_I32, lane))
    return values


def _goes_left(b: Any, node: Any, value: Any) -> Any:
    """lleaves' test of a numerical split (its ``_populate_numerical_node_block``), for four
    rows: true where a row goes left. LightGBM reads NaN as 0.0 unless missing values are NaN
    (then they go the default way); with zeros as missing, zeros and NaN go the default way."""
    threshold = _splat(_VD, ir.Constant(_D, node.threshold))
    zero = _splat(_VD, ir.Constant(_D, 0.0))
    missing = node.decision_type.missing_type
    if missing == MissingType.MNone:
        default_left = node.threshold >= 0.0  # NaN goes where 0.0 goes
    else:
        default_left = node.decision_type.is_default_left
    zero_is_missing = missing == MissingType.MZero
    if default_left:
        # unordered: NaN compares true, and goes left
        below = b.fcmp_unordered("<=", value, threshold)
        if zero_is_missing and node.threshold < 0.0:
            return b.or_(b.fcmp_unordered("==", value, zero), below)
        return below
    if zero_is_missing and node.threshold >= 0.0:
        missing_or_above = b.or_(
            b.fcmp_unordered("==", value, zero), b.fcmp_ordered(">", value, threshold)
        )
        return b.not_(missing_or_above)
    return b.fcmp_ordered("<=", value, threshold)  # ordered: NaN compares false, goes right


def _splat(vector: Any, scalar: Any) -> Any:
    return ir.Constant(vector, [scalar] * LANES)


def _signed(mask: int) -> int:
    """A 64-bit pattern as the signed value LLVM's constants take."""
    mask &= (1 << 64) - 1
    return mask - (1 << 64) if mask >= 1 << 63 else mask
