"""Exact TreeSHAP for LightGBM boosters, faster than ``Booster.predict(pred_contrib=True)``.

LightGBM's own TreeSHAP (Lundberg's Algorithm 2) walks every path of every tree for every row,
extending and unwinding a path of weights: ~1.7 s for 1,000 rows of the 1000-tree, 13-leaf
benchmark model on two cores. Fast TreeSHAP v2 (Yang 2021) moves that work to load time: a leaf's
share of a feature's SHAP value depends on the row only through which of its path's distinct
features the row follows (a bitmask), so for every leaf and every such pattern the shares are
computed once into a table (``_treeshap_kernels.fill_tables``), and explaining a row is the
splits' decisions, one pattern per leaf and a few table additions (``explain_rows``).

That still costs a row every leaf of every tree (~65 table look-ups and additions per tree of 13
leaves). So the leaves are also grouped by subtree: a subtree whose leaves depend on at most
``GROUP_SPLITS`` splits (its own and those above it) gets one more table, keyed by the decisions
at those splits, holding its leaves' summed shares per feature of the subtree
(``fill_groups``). A row then pays such a subtree a key of a few bits and one addition per
feature. Leaves deeper than that (LightGBM grows trees leaf-wise, so a few paths go deep) are
explained one by one as above.

The trees are read from ``Booster.dump_model()`` and decided exactly as LightGBM decides
(missing types None/Zero/NaN, default directions, values with ``|x| <= 1e-35`` read as zero), with
LightGBM's cover (``internal_count``/``leaf_count``). Only single-output models with numerical
splits and constant leaves are built; anything else, numba missing, paths of more than
``MAX_PATH_FEATURES`` distinct features or tables over ``MAX_TABLE_ENTRIES`` gives ``None`` and a
reason, and the caller keeps LightGBM. Like
``scoring.compiled`` the engine is trusted only after it matched ``pred_contrib`` to
``TOLERANCE`` on probe rows (``build_engine``), which also compiles (or loads from numba's disk
cache) the kernels, so no request pays for them.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from scoring.compiled import probe_rows
from scoring.parallel import Helpers, shares

log = logging.getLogger(__name__)

TOLERANCE = 1e-9
MAX_PATH_FEATURES = 16
"""A leaf whose path has ``d`` distinct features needs ``2^d`` table entries, each built in
``O(d^2)``: deeper paths (possible with many leaves per tree) are left to LightGBM."""
MAX_TABLE_ENTRIES = 1 << 25
"""The bound on all tables together (256 MiB of float64)."""
GROUP_SPLITS = 10
"""A subtree whose leaves depend on at most this many splits is explained by one table look-up
per feature: ``2^splits`` rows of its features' sums (at most 80 KiB). On the benchmark's 1000
trees of 13 leaves: 3.7 groups per tree, 70 of the 13,000 leaves in none, 52 MiB of tables; one
row 0.63 ms on one thread, against 0.97 ms with 8 splits (35 MiB) and 1.6-1.7 ms with no groups
(17 MiB), in turn in one process."""
MAX_GROUP_ENTRIES = 1 << 23
"""The bound on the groups' tables together (64 MiB); past it, trees keep their leaves apart."""
PROBE_ROWS = 256
"""Rows checked against ``pred_contrib`` at load (LightGBM's TreeSHAP is the slow part)."""
MIN_ROWS_PER_THREAD = 64
"""With fewer rows than this per thread, the threads split the trees rather than the rows."""
MIN_TREES_PER_THREAD = 64
"""Smaller forests are explained on the calling thread alone."""

_MISSING = {"None": 0, "Zero": 1, "NaN": 2}


class Unsupported(ValueError):
    """The model has something this engine does not explain (the message says what)."""


@dataclass
class _Arrays:
    """The forest flattened for the kernels (see ``explain_rows``): ``tree_*_start`` delimit
    each tree's splits, nodes (splits and leaves, parents first), lone leaves, ``upper`` nodes
    and groups; split and node indices stored per node, leaf or group are local to its tree."""

    tree_split_start: np.ndarray
    split_feature: np.ndarray
    split_threshold: np.ndarray
    split_missing: np.ndarray
    split_default_left: np.ndarray
    tree_node_start: np.ndarray
    node_parent: np.ndarray
    node_parent_split: np.ndarray
    node_slot: np.ndarray
    """The slot, among the distinct features of the path to the node, of its parent's feature."""
    node_left: np.ndarray
    leaf_node: np.ndarray
    leaf_value: np.ndarray
    leaf_slot_start: np.ndarray
    slot_feature: np.ndarray
    slot_zero: np.ndarray
    """Per distinct feature of a leaf's path: the product of the cover shares of the path's
    splits on it (LightGBM's zero fraction)."""
    leaf_table_start: np.ndarray
    table: np.ndarray
    unsatisfied: np.ndarray
    """``Z(p)`` per table entry: the product of ``slot_zero`` over the features not in ``p``."""
    tree_rest_start: np.ndarray
    rest_leaf: np.ndarray
    """The leaves in no group, explained one by one."""
    tree_upper_start: np.ndarray
    upper_node: np.ndarray
    tree_group_start: np.ndarray
    group_root: np.ndarray
    group_inner: np.ndarray
    group_first_split: np.ndarray
    group_split_start: np.ndarray
    group_split: np.ndarray
    """Per group, the splits (local to the tree) its leaves depend on: bit ``j`` of its key
    (see ``_Group``)."""
    group_leaf_start: np.ndarray
    group_leaf: np.ndarray
    group_feature_start: np.ndarray
    group_feature: np.ndarray
    group_table_start: np.ndarray
    group_table: np.ndarray

    def node_arguments(self) -> tuple[np.ndarray, ...]:
        """The trees' nodes and the leaves' nodes, in the kernels' order."""
        return (
            self.tree_node_start,
            self.node_parent,
            self.node_parent_split,
            self.node_slot,
            self.node_left,
            self.leaf_node,
        )

    def leaf_arguments(self) -> tuple[np.ndarray, ...]:
        """What ``_add_leaf`` reads, in its order."""
        return (
            self.leaf_slot_start,
            self.slot_feature,
            1.0 - self.slot_zero,
            self.leaf_table_start,
            self.table,
            self.unsatisfied,
        )

    def fill(self, n_features: int, kernels: ModuleType) -> None:
        """Fill the tables (``fill_tables``, then ``fill_groups``), then keep only the entries
        of the leaves in no group."""
        kernels.fill_tables(
            self.leaf_slot_start,
            self.slot_zero,
            self.leaf_value,
            self.leaf_table_start,
            self.table,
            self.unsatisfied,
        )
        kernels.fill_groups(
            np.zeros((1, n_features + 1)),
            *self.node_arguments(),
            *self.leaf_arguments(),
            self.tree_group_start,
            self.group_split_start,
            self.group_split,
            self.group_leaf_start,
            self.group_leaf,
            self.group_feature_start,
            self.group_feature,
            self.group_table_start,
            self.group_table,
        )
        sizes = np.left_shift(1, np.diff(self.leaf_slot_start[: len(self.leaf_value) + 1]))
        kept = self.rest_leaf
        starts = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(sizes[kept], out=starts[1:])
        taken = np.repeat(self.leaf_table_start[kept] - starts[:-1], sizes[kept]) + np.arange(
            starts[-1]
        )
        self.table = self.table[taken]
        self.unsatisfied = self.unsatisfied[taken]
        self.leaf_table_start = np.zeros_like(self.leaf_table_start)
        self.leaf_table_start[kept] = starts[:-1]

    def kernel_arguments(self) -> tuple[np.ndarray, ...]:
        """``explain_rows``'s forest arguments, in its order."""
        return (
            self.tree_split_start,
            self.split_feature,
            self.split_threshold,
            self.split_missing,
            self.split_default_left,
            *self.node_arguments(),
            *self.leaf_arguments(),
            self.tree_rest_start,
            self.rest_leaf,
            self.tree_upper_start,
            self.upper_node,
            self.tree_group_start,
            self.group_root,
            self.group_inner,
            self.group_first_split,
            self.group_feature_start,
            self.group_feature,
            self.group_table_start,
            self.group_table,
        )

    def nbytes(self) -> int:
        """The tables' bytes."""
        return self.table.nbytes + self.unsatisfied.nbytes + self.group_table.nbytes


class TreeShapEngine:
    """Exact contributions of a LightGBM booster's rows, in the booster's feature order."""

    def __init__(self, kernels: ModuleType, arrays: _Arrays, n_features: int, base: float):
        self._kernels = kernels
        self._forest = arrays.kernel_arguments()
        self._trees = len(arrays.tree_split_start) - 1
        self.n_features = n_features
        self.base_value = base
        self._helpers = Helpers("treeshap")

    def contributions(self, x: np.ndarray, threads: int) -> np.ndarray:
        """``(n, n_features + 1)``: each feature's contribution, then the base value, like
        LightGBM's ``pred_contrib`` for a float64 matrix in the booster's feature order.

        With ``threads > 1``, enough rows are split among the threads; fewer rows (one row is
        ~0.5 ms on the benchmark's 1000 trees) split the trees instead, each thread adding into
        its own matrix, summed at the end."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got {x.shape}")
        n = len(x)
        out = np.zeros((n, self.n_features + 1), dtype=np.float64)
        workers = max(1, min(threads, self._trees // MIN_TREES_PER_THREAD))
        if workers == 1 or n == 0:
            self._explain(x, out, (0, n), (0, self._trees))
        elif n >= MIN_ROWS_PER_THREAD * workers:
            jobs = [(x, out, rows, (0, self._trees)) for rows in shares(n, workers)]
            self._helpers.run(self._explain, jobs)
        else:
            parts = [out, *(np.zeros_like(out) for _ in range(workers - 1))]
            tree_shares = shares(self._trees, workers)
            jobs = [
                (x, part, (0, n), trees) for part, trees in zip(parts, tree_shares, strict=True)
            ]
            self._helpers.run(self._explain, jobs)
            for part in parts[1:]:
                out += part
        out[:, -1] = self.base_value
        return out

    def _explain(
        self, x: np.ndarray, out: np.ndarray, rows: tuple[int, int], trees: tuple[int, int]
    ) -> None:
        self._kernels.explain_rows(x, out, *rows, *trees, *self._forest)


def build_engine(
    booster: Any, probe: np.ndarray | None = None
) -> tuple[TreeShapEngine | None, str]:
    """The fast engine for ``booster`` if it matches ``pred_contrib`` to ``TOLERANCE`` on
    ``probe`` (default: ``scoring.compiled.probe_rows``), else ``None``; and one line saying
    which engine explains and why."""
    started = time.perf_counter()
    try:
        kernels = importlib.import_module("scoring._treeshap_kernels")
    except Exception as exc:  # numba missing or unable to cache: LightGBM explains
        return None, f"LightGBM pred_contrib explains (fast TreeSHAP unavailable: {exc})"
    try:
        dump = booster.dump_model()
        arrays, base = _flatten(dump)
        arrays.fill(booster.num_feature(), kernels)
    except Unsupported as exc:
        return None, f"LightGBM pred_contrib explains (fast TreeSHAP: {exc})"
    except Exception as exc:  # any failure of an optional accelerator means: LightGBM explains
        log.warning("fast TreeSHAP could not read the model: %s", exc, exc_info=True)
        return None, f"LightGBM pred_contrib explains (fast TreeSHAP failed: {exc!r})"
    engine = TreeShapEngine(kernels, arrays, booster.num_feature(), base)
    rows = probe if probe is not None else probe_rows(booster, n=PROBE_ROWS, dump=dump)
    try:
        expected = np.asarray(booster.predict(rows, pred_contrib=True), dtype=np.float64)
        got = engine.contributions(rows, 1)
        engine.contributions(_read_only(rows[:1]), 1)  # numba compiles read-only input apart
        diff = float(np.max(np.abs(expected - got))) if expected.shape == got.shape else np.inf
    except Exception as exc:
        log.warning("fast TreeSHAP failed on the probe rows: %s", exc, exc_info=True)
        return None, f"LightGBM pred_contrib explains (fast TreeSHAP failed: {exc})"
    seconds = time.perf_counter() - started
    if not diff <= TOLERANCE:  # also catches NaN
        return None, (
            f"LightGBM pred_contrib explains (fast TreeSHAP differs by {diff:.1e} > "
            f"{TOLERANCE:.0e} on {len(rows)} probe rows)"
        )
    return engine, (
        f"fast TreeSHAP explains (matches pred_contrib to {diff:.1e} on {len(rows)} probe rows; "
        f"built in {seconds:.2f}s, {arrays.nbytes() / 2**20:.0f} MiB of tables)"
    )


def _read_only(x: np.ndarray) -> np.ndarray:
    view = x.view()
    view.flags.writeable = False
    return view


def _trees(dump: dict[str, Any]) -> list[dict[str, Any]]:
    """The dump's trees, once it is known this engine explains the model."""
    if int(dump.get("num_class", 1)) != 1 or int(dump.get("num_tree_per_iteration", 1)) != 1:
        raise Unsupported("only single-output models, not multiclass")
    if dump.get("average_output"):
        raise Unsupported("averaged (random forest) output is not supported")
    return list(dump["tree_info"])


@dataclass
class _Tree:
    """One tree's splits and nodes (parents first), its leaves' values and paths."""

    splits: list[dict[str, Any]]
    node_parent: list[int]
    node_parent_split: list[int]
    node_slot: list[int]
    node_left: list[bool]
    leaf_node: list[int]
    leaf_value: list[float]
    leaf_features: list[list[int]]
    leaf_zero: list[list[float]]


def _walk(tree: dict[str, Any]) -> _Tree:
    """Flatten one dumped tree, depth first (a one-leaf tree has no leaf here: its value is
    all in the base value)."""
    out = _Tree([], [], [], [], [], [], [], [], [])
    root = tree["tree_structure"]
    if "split_feature" not in root:
        return out
    # (node, parent node, parent split, goes left, distinct path features, their zero fractions)
    stack: list[tuple[dict[str, Any], int, int, bool, list[int], list[float]]]
    stack = [(root, -1, -1, False, [], [])]
    while stack:
        node, parent, parent_split, goes_left, features, zero = stack.pop()
        index = len(out.node_parent)
        out.node_parent.append(parent)
        out.node_parent_split.append(parent_split)
        out.node_left.append(goes_left)
        if parent >= 0:
            feature = int(out.splits[parent_split]["split_feature"])
            slot = features.index(feature)
            out.node_slot.append(slot)
            zero = zero.copy()
            zero[slot] *= _count(node) / float(out.splits[parent_split]["internal_count"])
        else:
            out.node_slot.append(0)
        if "split_feature" not in node:
            if "leaf_coeff" in node or "leaf_features" in node:
                raise Unsupported("linear trees are not supported")
            out.leaf_node.append(index)
            out.leaf_value.append(float(node["leaf_value"]))
            out.leaf_features.append(features)
            out.leaf_zero.append(zero)
            continue
        if node.get("decision_type") != "<=":
            raise Unsupported(f"{node.get('decision_type')!r} (categorical) splits")
        if str(node.get("missing_type", "None")) not in _MISSING:
            raise Unsupported(f"missing type {node.get('missing_type')!r}")
        split = len(out.splits)
        out.splits.append(node)
        feature = int(node["split_feature"])
        below = features if feature in features else [*features, feature]
        below_zero = zero if feature in features else [*zero, 1.0]
        for child, left in ((node["right_child"], False), (node["left_child"], True)):
            stack.append((child, index, split, left, below, below_zero))
    return out


@dataclass
class _Group:
    """The leaves of the subtree under ``root`` (a node, local), the splits (local) they depend
    on, and their features. The splits are in the order of the key's bits: the subtree's own
    (consecutive: ``_walk`` numbers splits depth first), then those above it, nearest first.
    That is how ``explain_rows`` builds a key: the decisions above, one bit per level, carried
    down the tree once for all groups (``upper``), then the subtree's own decisions below
    them."""

    root: int
    inner: int
    """How many of ``splits`` are the subtree's own."""
    splits: list[int]
    leaves: list[int]
    features: list[int]

    @property
    def entries(self) -> int:
        return len(self.features) << len(self.splits)


def _groups(tree: _Tree) -> tuple[list[_Group], list[int], list[int]]:
    """``tree``'s leaves (positions in ``tree.leaf_node``) cut into groups, each the leaves of
    the highest subtree whose leaves depend on at most ``GROUP_SPLITS`` splits; the leaves in
    none (deeper than that); and the nodes (local, parents first) from the one under the root
    down to each group's root, whose keys of the decisions above them a row builds."""
    n = len(tree.node_parent)
    children: list[list[int]] = [[] for _ in range(n)]
    split_of = [-1] * n
    for node in range(1, n):
        children[tree.node_parent[node]].append(node)
        split_of[tree.node_parent[node]] = tree.node_parent_split[node]
    leaf_of = {node: position for position, node in enumerate(tree.leaf_node)}
    below: list[list[int]] = [[] for _ in range(n)]  # the splits under a node, itself first
    leaves: list[list[int]] = [[] for _ in range(n)]
    for node in reversed(range(n)):  # parents come first: children are done before them
        if node in leaf_of:
            leaves[node] = [leaf_of[node]]
            continue
        below[node] = [split_of[node]]
        for child in children[node]:
            below[node] += below[child]
            leaves[node] += leaves[child]
    groups: list[_Group] = []
    rest: list[int] = []
    stack = [(0, list[int]())] if n else []
    while stack:
        node, above = stack.pop()
        splits = above + below[node]
        if len(splits) <= GROUP_SPLITS:
            features = sorted({f for leaf in leaves[node] for f in tree.leaf_features[leaf]})
            order = below[node] + above[::-1]
            groups.append(_Group(node, len(below[node]), order, leaves[node], features))
        elif node in leaf_of:
            rest.append(leaf_of[node])
        else:
            stack += [(child, [*above, split_of[node]]) for child in children[node]]
    upper: set[int] = set()
    for group in groups:
        node = group.root
        while node > 0 and node not in upper:
            upper.add(node)
            node = tree.node_parent[node]
    return groups, sorted(rest), sorted(upper)


def _count(node: dict[str, Any]) -> float:
    return float(node["internal_count"] if "split_feature" in node else node["leaf_count"])


def _expected_value(tree: dict[str, Any]) -> float:
    """LightGBM's ``Tree::ExpectedValue``: the cover-weighted mean of the leaf values, added in
    leaf index order as LightGBM adds it (so the base value is LightGBM's to the last bit)."""
    root = tree["tree_structure"]
    if "split_feature" not in root:
        return float(root["leaf_value"])
    total = float(root["internal_count"])
    leaves: list[dict[str, Any]] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if "split_feature" in node:
            stack.extend((node["left_child"], node["right_child"]))
        else:
            leaves.append(node)
    value = 0.0
    for leaf in sorted(leaves, key=lambda leaf: int(leaf["leaf_index"])):
        value += (float(leaf["leaf_count"]) / total) * float(leaf["leaf_value"])
    return value


def _flatten(dump: dict[str, Any]) -> tuple[_Arrays, float]:
    """The forest's arrays (tables still zero) and its base value, the sum of the trees'
    expected values in tree order as LightGBM adds them."""
    columns: dict[str, list[Any]] = {
        name: []
        for name in [
            "split_feature",
            "split_threshold",
            "split_missing",
            "split_default_left",
            "node_parent",
            "node_parent_split",
            "node_slot",
            "node_left",
            "leaf_node",
            "leaf_value",
            "slot_feature",
            "slot_zero",
            "leaf_table_start",
            "rest_leaf",
            "upper_node",
            "group_root",
            "group_inner",
            "group_first_split",
            "group_split",
            "group_leaf",
            "group_feature",
            "group_table_start",
        ]
    }
    starts: dict[str, list[int]] = {
        name: [0]
        for name in (
            "tree_split",
            "tree_node",
            "leaf_slot",
            "tree_rest",
            "tree_upper",
            "tree_group",
            "group_split",
            "group_leaf",
            "group_feature",
        )
    }
    entries = 0
    group_entries = 0
    base = 0.0
    for dumped in _trees(dump):
        base += _expected_value(dumped)
        tree = _walk(dumped)
        first_leaf = len(columns["leaf_node"])
        groups, rest, upper = _groups(tree)
        if group_entries + sum(group.entries for group in groups) > MAX_GROUP_ENTRIES:
            groups, rest, upper = [], list(range(len(tree.leaf_node))), []
        columns["upper_node"] += upper
        starts["tree_upper"].append(len(columns["upper_node"]))
        for group in groups:
            columns["group_root"].append(group.root)
            columns["group_inner"].append(group.inner)
            columns["group_first_split"].append(group.splits[0] if group.inner else 0)
            columns["group_split"] += group.splits
            columns["group_leaf"] += [first_leaf + leaf for leaf in group.leaves]
            columns["group_feature"] += group.features
            columns["group_table_start"].append(group_entries)
            group_entries += group.entries
            for name in ("group_split", "group_leaf", "group_feature"):
                starts[name].append(len(columns[name]))
        columns["rest_leaf"] += [first_leaf + leaf for leaf in rest]
        for node in tree.splits:
            columns["split_feature"].append(int(node["split_feature"]))
            columns["split_threshold"].append(float(node["threshold"]))
            columns["split_missing"].append(_MISSING[str(node.get("missing_type", "None"))])
            columns["split_default_left"].append(bool(node["default_left"]))
        columns["node_parent"] += tree.node_parent
        columns["node_parent_split"] += tree.node_parent_split
        columns["node_slot"] += tree.node_slot
        columns["node_left"] += tree.node_left
        columns["leaf_node"] += tree.leaf_node
        columns["leaf_value"] += tree.leaf_value
        for features, zero in zip(tree.leaf_features, tree.leaf_zero, strict=True):
            if len(features) > MAX_PATH_FEATURES:
                raise Unsupported(
                    f"a path with {len(features)} distinct features (over {MAX_PATH_FEATURES})"
                )
            columns["slot_feature"] += features
            columns["slot_zero"] += zero
            starts["leaf_slot"].append(len(columns["slot_feature"]))
            columns["leaf_table_start"].append(entries)
            entries += 1 << len(features)
            if entries > MAX_TABLE_ENTRIES:
                raise Unsupported(f"trees too deep: tables over {MAX_TABLE_ENTRIES:,} entries")
        starts["tree_split"].append(len(columns["split_feature"]))
        starts["tree_node"].append(len(columns["node_parent"]))
        starts["tree_rest"].append(len(columns["rest_leaf"]))
        starts["tree_group"].append(len(columns["group_table_start"]))
    floats = ("split_threshold", "leaf_value", "slot_zero")
    bools = ("split_default_left", "node_left")
    arrays = {
        name: np.array(
            values,
            dtype=np.float64 if name in floats else np.bool_ if name in bools else np.int32,
        )
        for name, values in columns.items()
    }
    arrays |= {f"{name}_start": np.array(values, dtype=np.int32) for name, values in starts.items()}
    arrays["group_table_start"] = arrays["group_table_start"].astype(np.int64)
    tables = {name: np.zeros(entries, dtype=np.float64) for name in ("table", "unsatisfied")}
    tables["group_table"] = np.zeros(group_entries, dtype=np.float64)
    return _Arrays(**arrays, **tables), base
