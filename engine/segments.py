"""Choosing a segmentation automatically: greedy by the evidence for each split.

Cells are stored per finest segment, so any ordered list of attributes is a sum over them. The
choice is engine.hierarchy.evidence_order on the fresh (bucket-0) results: the same model that
serves decisions decides which splits its data supports. The simulator's policy chooses its
segmentation with the same function.
"""

from __future__ import annotations

import numpy as np
from sqlmodel import Session

from engine.catalog import Catalog
from engine.hierarchy import evidence_order
from engine.models import utcnow
from engine.stats import CellTable, load_cell_table


def choose_segmentation(*, session: Session, catalog: Catalog) -> list[str]:
    if catalog.scale is None or not catalog.specs:
        return []
    table = load_cell_table(session, catalog=catalog, now=utcnow())
    return greedy_order(table, catalog)


def greedy_order(table: CellTable, catalog: Catalog) -> list[str]:
    """The segmentation the stored cells support (empty without fresh results)."""
    assert catalog.scale is not None
    labels = catalog.scale.labels
    level_of = {label: i for i, label in enumerate(labels)}
    levels = np.array([level_of.get(x, -1) for x in table.levels], dtype=np.int64)
    keep = (levels >= 0) & (table.buckets == 0) & (table.counts > 0)
    if not keep.any():
        return []
    segments, segment_index = np.unique(table.segments[keep].astype(str), return_inverse=True)
    experiences, experience_index = np.unique(
        table.experiences[keep].astype(str), return_inverse=True
    )
    counts = np.zeros((len(segments), len(experiences), len(labels)))
    np.add.at(counts, (segment_index, experience_index, levels[keep]), table.counts[keep])
    parsed = [dict(p.split("=", 1) for p in s.split("|") if p) for s in segments.tolist()]
    return evidence_order(parsed, counts, sorted(catalog.specs))
