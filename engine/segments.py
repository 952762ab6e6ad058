"""Choosing a segmentation automatically: greedy by the value of acting per segment.

Cells are stored per finest segment, so any ordered list of attributes is a sum over them. The
greedy step adds the attribute whose split raises most the value of choosing the best experience
separately in each child instead of once in the parent. Child estimates shrink toward the parent
(``SHRINK`` pseudo-results), so a split earns only what its evidence supports.
"""

from __future__ import annotations

import numpy as np
from sqlmodel import Session

from engine.catalog import Catalog
from engine.models import utcnow
from engine.stats import CellTable, load_cell_table

SHRINK = 20.0
MAX_DEPTH = 4


def choose_segmentation(*, session: Session, catalog: Catalog) -> list[str]:
    if catalog.scale is None or not catalog.specs:
        return []
    table = load_cell_table(session, catalog=catalog, now=utcnow())
    return greedy_order(table, catalog)


def _level_net(catalog: Catalog, table: CellTable, keys: list[str]) -> np.ndarray:
    """Customer-free net value per experience and level: shape (K, L)."""
    assert catalog.scale is not None
    labels = catalog.scale.labels
    net = np.zeros((len(keys), len(labels)))
    for k, key in enumerate(keys):
        info = catalog.experiences[key]
        for i, level in enumerate(catalog.scale.levels):
            rows = (table.experiences == key) & (table.levels == level.label)
            weight = table.value_weights[rows].sum()
            learned = table.value_sums[rows].sum() / weight if weight > 0 else 0.0
            value = level.value if level.value is not None else learned
            incurred = info.cost_on is None or level.label in info.cost_on
            net[k, i] = value - (info.cost if incurred else 0.0)
    return net


def greedy_order(table: CellTable, catalog: Catalog) -> list[str]:
    assert catalog.scale is not None
    if table.size == 0:
        return []
    keys = sorted(set(table.experiences.tolist()))
    labels = catalog.scale.labels
    net = _level_net(catalog, table, keys)
    segment_names = sorted(set(table.segments.tolist()))
    parsed = [dict(part.split("=", 1) for part in s.split("|") if part) for s in segment_names]
    segment_row = {s: i for i, s in enumerate(segment_names)}
    seg_idx = np.array([segment_row[s] for s in table.segments])
    exp_idx = np.array([keys.index(e) for e in table.experiences])
    lvl_idx = np.array([labels.index(x) if x in labels else -1 for x in table.levels])
    ok = lvl_idx >= 0
    counts = np.zeros((len(segment_names), len(keys), len(labels)))
    np.add.at(counts, (seg_idx[ok], exp_idx[ok], lvl_idx[ok]), table.counts[ok])

    order: list[str] = []
    groups = np.zeros(len(segment_names), dtype=np.int64)
    for _ in range(min(MAX_DEPTH, len(catalog.specs))):
        base = _value_of_groups(counts, groups, net)
        best_gain, best_name = 0.0, None
        for name in sorted(set(catalog.specs) - set(order)):
            levels = [p.get(name, "unknown") for p in parsed]
            codes = {lv: i for i, lv in enumerate(sorted(set(levels)))}
            split = groups * (len(codes) + 1) + np.array([codes[lv] for lv in levels])
            gain = _value_of_groups(counts, split, net, parent=groups) - base
            if gain > best_gain + 1e-9:
                best_gain, best_name = gain, name
        if best_name is None:
            break
        order.append(best_name)
        levels = [p.get(best_name, "unknown") for p in parsed]
        codes = {lv: i for i, lv in enumerate(sorted(set(levels)))}
        groups = groups * (len(codes) + 1) + np.array([codes[lv] for lv in levels])
    return order


def _value_of_groups(
    counts: np.ndarray, groups: np.ndarray, net: np.ndarray, parent: np.ndarray | None = None
) -> float:
    """Sum over groups of n_group x max_k (net value of k in the group, shrunk to the parent)."""
    _, inverse = np.unique(groups, return_inverse=True)
    grouped = np.zeros((inverse.max() + 1, *counts.shape[1:]))
    np.add.at(grouped, inverse, counts)
    if parent is not None:
        _, parent_inverse = np.unique(parent, return_inverse=True)
        parent_counts = np.zeros((parent_inverse.max() + 1, *counts.shape[1:]))
        np.add.at(parent_counts, parent_inverse, counts)
        group_parent = np.zeros(grouped.shape[0], dtype=np.int64)
        group_parent[inverse] = parent_inverse
        prior_counts = parent_counts[group_parent]
    else:
        prior_counts = grouped
    prior = prior_counts / np.maximum(prior_counts.sum(axis=-1, keepdims=True), 1e-12)
    alpha = grouped + SHRINK * prior + 1e-9
    means = ((alpha / alpha.sum(axis=-1, keepdims=True)) * net[None]).sum(axis=-1)
    n = grouped.sum(axis=(1, 2))
    return float((n * means.max(axis=1)).sum())
