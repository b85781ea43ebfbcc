"""numba kernels of ``scoring.treeshap``: the weight tables and the per-row sums.

Kept apart so that importing them is the one step that can fail (numba missing, or no writable
place for its on-disk cache): ``scoring.treeshap`` imports this module inside a ``try`` and falls
back to LightGBM. ``cache=True`` keeps the machine code on disk (numba's ``__pycache__`` next to
this file, or ``NUMBA_CACHE_DIR``), so only the first process on a machine pays the compile.
``nogil=True`` lets Python threads run ``explain_rows`` on disjoint row ranges in parallel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MISSING_NONE = 0
MISSING_ZERO = 1
MISSING_NAN = 2
ZERO_THRESHOLD = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (1e-35f)
ROW_BLOCK = 64  # rows walked together per tree, so a tree's table stays in cache


@njit(cache=True, nogil=True)
def fill_tables(  # noqa: PLR0917 (numba takes no keyword-only arguments)
    leaf_slot_start: np.ndarray,
    slot_zero: np.ndarray,
    leaf_value: np.ndarray,
    leaf_table_start: np.ndarray,
    table: np.ndarray,
    unsatisfied: np.ndarray,
) -> None:
    """For every leaf and every pattern ``p`` of its path's distinct features (bit ``j`` set
    where a row follows all the path's splits on feature ``j``), the table entry::

        v * sum_{S <= sat(p)} |S|! (d-1-|S|)! / d! * prod_{j in sat(p) - S} z_j

    with ``v`` the leaf value, ``d`` the path's distinct features and ``z_j`` the share of the
    cover that follows the path's splits on ``j``. The leaf's share of the SHAP value of feature
    ``i`` (Lundberg's sum over the subsets of the path) is then, with ``Z(p)`` the product of
    ``z`` over the features not in ``p``::

        i not in p:  -Z(p) * entry[p]
        i in p:      (1 - z_i) * Z(p) * entry[p - i]

    so a leaf needs ``2^d`` entries (Fast TreeSHAP v2's table, ``d`` times smaller than one entry
    per feature). The sum over ``S`` goes by size, through the elementary symmetric polynomials
    of the ``z`` in ``p``. ``unsatisfied`` gets ``Z(p)`` at the same places, so that a row does
    not multiply it out leaf by leaf.
    """
    for leaf in range(len(leaf_value)):
        first = leaf_slot_start[leaf]
        d = leaf_slot_start[leaf + 1] - first
        if d == 0:
            continue
        z = slot_zero[first : first + d]
        weight = np.empty(d)  # |S|! (d-1-|S|)! / d!
        for s in range(d):
            w = 1.0 / d
            for k in range(1, s + 1):
                w *= k / (d - k)
            weight[s] = w
        poly = np.empty(d + 1)
        base = leaf_table_start[leaf]
        for p in range(1 << d):
            poly[0] = 1.0
            size = 0
            for j in range(d):
                if (p >> j) & 1:
                    # multiply the polynomial by (t + z_j): t marks "in S"
                    poly[size + 1] = poly[size]
                    for k in range(size, 0, -1):
                        poly[k] = poly[k - 1] + z[j] * poly[k]
                    poly[0] = z[j] * poly[0]
                    size += 1
            total = 0.0
            for s in range(min(size + 1, d)):  # |S| = d only when i is in S: never counted
                total += weight[s] * poly[s]
            table[base + p] = leaf_value[leaf] * total
            product = 1.0
            for j in range(d):
                if not (p >> j) & 1:
                    product *= z[j]
            unsatisfied[base + p] = product


@njit(cache=True, nogil=True)
def _goes_left(value: float, threshold: float, missing: int, default_left: bool) -> bool:
    """LightGBM's ``NumericalDecision`` for a value already read as LightGBM reads it."""
    if np.isnan(value) and missing != MISSING_NAN:
        value = 0.0
    if (missing == MISSING_ZERO and -ZERO_THRESHOLD <= value <= ZERO_THRESHOLD) or (
        missing == MISSING_NAN and np.isnan(value)
    ):
        return default_left
    return value <= threshold


@njit(cache=True, nogil=True, inline="always")
def _decide(  # noqa: PLR0917
    x: np.ndarray,
    r: int,
    first_split: int,
    n_splits: int,
    split_feature: np.ndarray,
    split_threshold: np.ndarray,
    split_missing: np.ndarray,
    split_default_left: np.ndarray,
    left: np.ndarray,
) -> None:
    """Row ``r``'s decision at each of a tree's splits, into ``left``."""
    for k in range(n_splits):
        s = first_split + k
        value = x[r, split_feature[s]]
        if -ZERO_THRESHOLD <= value <= ZERO_THRESHOLD:
            value = 0.0  # LightGBM's dense-row reader keeps tiny values as zeros
        left[k] = _goes_left(value, split_threshold[s], split_missing[s], split_default_left[s])


@njit(cache=True, nogil=True, inline="always")
def _patterns(  # noqa: PLR0917
    first_node: int,
    n_nodes: int,
    node_parent: np.ndarray,
    node_parent_split: np.ndarray,
    node_slot: np.ndarray,
    node_left: np.ndarray,
    left: np.ndarray,
    pattern_of: np.ndarray,
) -> None:
    """Down a tree, each node's pattern: its parent's, less the parent's feature where the
    decisions in ``left`` went the other way."""
    pattern_of[0] = -1  # all features followed
    for k in range(1, n_nodes):
        node = first_node + k
        missed = np.int64(left[node_parent_split[node]] != node_left[node])
        pattern_of[k] = pattern_of[node_parent[node]] & ~(missed << node_slot[node])


@njit(cache=True, nogil=True)
def fill_groups(  # noqa: PLR0917
    scratch: np.ndarray,
    tree_node_start: np.ndarray,
    node_parent: np.ndarray,
    node_parent_split: np.ndarray,
    node_slot: np.ndarray,
    node_left: np.ndarray,
    leaf_node: np.ndarray,
    leaf_slot_start: np.ndarray,
    slot_feature: np.ndarray,
    slot_follow: np.ndarray,
    leaf_table_start: np.ndarray,
    table: np.ndarray,
    unsatisfied: np.ndarray,
    tree_group_start: np.ndarray,
    group_split_start: np.ndarray,
    group_split: np.ndarray,
    group_leaf_start: np.ndarray,
    group_leaf: np.ndarray,
    group_feature_start: np.ndarray,
    group_feature: np.ndarray,
    group_table_start: np.ndarray,
    group_table: np.ndarray,
) -> None:
    """For every group of leaves (a subtree, see ``scoring.treeshap``) and every ``key``, a
    setting of the decisions at the ``b`` splits its leaves depend on (bit ``j`` set where the
    row goes left at ``group_split[j]``): the sum of its leaves' shares (``_add_leaf``) of each
    of its features, at ``group_table[start + key * F + column]``. A row then costs a group
    its key and ``F`` additions instead of every leaf's patterns and table look-ups.
    ``scratch`` is one zeroed row of contributions."""
    widest = 1
    for t in range(len(tree_node_start) - 1):
        widest = max(widest, tree_node_start[t + 1] - tree_node_start[t])
    left = np.zeros(widest, dtype=np.bool_)
    pattern_of = np.empty(widest, dtype=np.int64)
    for t in range(len(tree_group_start) - 1):
        first_node = tree_node_start[t]
        n_nodes = tree_node_start[t + 1] - first_node
        for g in range(tree_group_start[t], tree_group_start[t + 1]):
            first_split = group_split_start[g]
            bits = group_split_start[g + 1] - first_split
            first_feature = group_feature_start[g]
            width = group_feature_start[g + 1] - first_feature
            for key in range(1 << bits):
                for j in range(bits):
                    left[group_split[first_split + j]] = (key >> j) & 1
                _patterns(
                    first_node, n_nodes, node_parent, node_parent_split, node_slot, node_left,
                    left, pattern_of,
                )  # fmt: skip
                for q in range(group_leaf_start[g], group_leaf_start[g + 1]):
                    leaf = group_leaf[q]
                    _add_leaf(
                        scratch, 0, leaf, pattern_of[leaf_node[leaf]], leaf_slot_start,
                        slot_feature, slot_follow, leaf_table_start, table, unsatisfied,
                    )  # fmt: skip
                row = group_table_start[g] + key * width
                for c in range(width):
                    feature = group_feature[first_feature + c]
                    group_table[row + c] = scratch[0, feature]
                    scratch[0, feature] = 0.0


@njit(cache=True, nogil=True)
def explain_rows(  # noqa: PLR0917 (numba takes no keyword-only arguments)
    x: np.ndarray,
    out: np.ndarray,
    start: int,
    stop: int,
    first_tree: int,
    stop_tree: int,
    tree_split_start: np.ndarray,
    split_feature: np.ndarray,
    split_threshold: np.ndarray,
    split_missing: np.ndarray,
    split_default_left: np.ndarray,
    tree_node_start: np.ndarray,
    node_parent: np.ndarray,
    node_parent_split: np.ndarray,
    node_slot: np.ndarray,
    node_left: np.ndarray,
    leaf_node: np.ndarray,
    leaf_slot_start: np.ndarray,
    slot_feature: np.ndarray,
    slot_follow: np.ndarray,
    leaf_table_start: np.ndarray,
    table: np.ndarray,
    unsatisfied: np.ndarray,
    tree_rest_start: np.ndarray,
    rest_leaf: np.ndarray,
    tree_upper_start: np.ndarray,
    upper_node: np.ndarray,
    tree_group_start: np.ndarray,
    group_root: np.ndarray,
    group_inner: np.ndarray,
    group_first_split: np.ndarray,
    group_feature_start: np.ndarray,
    group_feature: np.ndarray,
    group_table_start: np.ndarray,
    group_table: np.ndarray,
) -> None:
    """Add the contributions of trees ``first_tree:stop_tree`` to rows ``start:stop`` of ``x``
    into ``out`` (zeroed by the caller; the base value column is left alone). Per tree and row:
    the decision at each split; down to each group's root, the decisions above it as bits
    (``upper``, one bit per level, nearest lowest); per group of leaves (``fill_groups``) its
    key (its own decisions, then those bits above them) and its row of sums; the leaves in no
    group (deep in the tree) one by one: each node's pattern, then per leaf its share of each
    path feature from the tables (see ``fill_tables``; ``slot_follow`` is ``1 - z``). Rows go
    in blocks so that a tree's tables stay in cache across the block."""
    widest = 1
    for t in range(first_tree, stop_tree):
        widest = max(widest, tree_node_start[t + 1] - tree_node_start[t])
    left = np.empty(widest, dtype=np.bool_)
    pattern_of = np.empty(widest, dtype=np.int64)
    upper = np.zeros(widest, dtype=np.int64)
    for block in range(start, stop, ROW_BLOCK):
        block_stop = min(block + ROW_BLOCK, stop)
        for t in range(first_tree, stop_tree):
            first_split = tree_split_start[t]
            n_splits = tree_split_start[t + 1] - first_split
            first_node = tree_node_start[t]
            n_nodes = tree_node_start[t + 1] - first_node
            first_rest = tree_rest_start[t]
            stop_rest = tree_rest_start[t + 1]
            for r in range(block, block_stop):
                _decide(
                    x, r, first_split, n_splits, split_feature, split_threshold, split_missing,
                    split_default_left, left,
                )  # fmt: skip
                for q in range(tree_upper_start[t], tree_upper_start[t + 1]):
                    k = upper_node[q]
                    node = first_node + k
                    bit = np.int64(left[node_parent_split[node]])
                    upper[k] = (upper[node_parent[node]] << 1) | bit
                for g in range(tree_group_start[t], tree_group_start[t + 1]):
                    inner = group_inner[g]
                    key = upper[group_root[g]] << inner
                    first_bit = group_first_split[g]
                    for j in range(inner):
                        key |= np.int64(left[first_bit + j]) << j
                    first_feature = group_feature_start[g]
                    width = group_feature_start[g + 1] - first_feature
                    row = group_table_start[g] + key * width
                    for c in range(width):
                        out[r, group_feature[first_feature + c]] += group_table[row + c]
                if first_rest == stop_rest:
                    continue
                _patterns(
                    first_node, n_nodes, node_parent, node_parent_split, node_slot, node_left,
                    left, pattern_of,
                )  # fmt: skip
                for q in range(first_rest, stop_rest):
                    leaf = rest_leaf[q]
                    _add_leaf(
                        out, r, leaf, pattern_of[leaf_node[leaf]], leaf_slot_start,
                        slot_feature, slot_follow, leaf_table_start, table, unsatisfied,
                    )  # fmt: skip


@njit(cache=True, nogil=True, inline="always")
def _add_leaf(  # noqa: PLR0917
    out: np.ndarray,
    r: int,
    leaf: int,
    pattern: int,
    leaf_slot_start: np.ndarray,
    slot_feature: np.ndarray,
    slot_follow: np.ndarray,
    leaf_table_start: np.ndarray,
    table: np.ndarray,
    unsatisfied: np.ndarray,
) -> None:
    """Add one leaf's shares to row ``r`` (see ``fill_tables``), without data-dependent
    branches: both cases are computed and one is kept by multiplying by 1 or 0 (exact)."""
    first_slot = leaf_slot_start[leaf]
    d = leaf_slot_start[leaf + 1] - first_slot
    pattern &= (1 << d) - 1
    entries = leaf_table_start[leaf]
    z = unsatisfied[entries + pattern]  # Z(pattern)
    missed = -z * table[entries + pattern]
    for i in range(d):
        slot = first_slot + i
        bit = (pattern >> i) & 1
        followed = slot_follow[slot] * z * table[entries + (pattern ^ (1 << i))]
        out[r, slot_feature[slot]] += followed * bit + missed * (1 - bit)
