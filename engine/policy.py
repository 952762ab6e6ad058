"""The engine's decision policy, in memory, for simulation: hierarchical, exposure- and drift-aware
Thompson sampling with a minimum exploration share.

It keeps the same statistics the service keeps (decay-scaled counts per finest segment x
experience x exposure bucket x level), fits the same hierarchical posterior (engine.hierarchy)
every ``refit_every`` decisions, and chooses as engine.decisions does. Used by ``nextbest
simulate`` to measure regret against the simulator's oracle.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine import posterior
from engine.attributes import AttributeSpec, segment_path
from engine.hierarchy import TreePosterior, evidence_order, fit_tree
from engine.stats import EXPOSURE_BUCKETS, exposure_bucket


class HierarchicalThompson:
    """Thompson sampling over experiences on expected net value, posteriors pooled along the
    segment tree, per exposure bucket, with evidence halving every ``half_life_days``.

    order: the segmentation, or None to choose it from the data as the service's automatic
    segmentation does (engine.hierarchy.evidence_order), again whenever the results seen have
    doubled since the last choice. control: index of the experience that means doing nothing, the
    anchor of the fatigue model.
    """

    name = "nextbest"

    def __init__(
        self,
        *,
        specs: Sequence[AttributeSpec],
        experiences: Sequence[str],
        net_values: np.ndarray,
        order: Sequence[str] | None,
        control: int | None = None,
        half_life_days: float = 90.0,
        min_exploration: float = posterior.MIN_EXPLORATION,
        refit_every: int = 250,
    ) -> None:
        """net_values: shape (K, L), value of each level minus the cost incurred on it."""
        self._specs = {spec.name: spec for spec in specs}
        self._names = tuple(sorted(self._specs))
        self._experiences = list(experiences)
        self._keys = [str(k) for k in range(len(self._experiences))]
        self._net = np.asarray(net_values, dtype=float)
        self._automatic = order is None
        self._order: tuple[str, ...] = () if order is None else tuple(order)
        self._control = None if control is None else self._keys[control]
        self._half_life = half_life_days
        self._explore = min_exploration
        self._refit_every = refit_every
        self._weights: dict[tuple[str, int, int], np.ndarray] = defaultdict(
            lambda: np.zeros(self._net.shape[1])
        )
        self._since_fit = 0
        self._seen_at_order = 0.0
        self._tree: TreePosterior | None = None
        self._now = 0.0

    def _finest(self, attrs: Mapping[str, Any]) -> str:
        parts = []
        for name in self._names:
            spec = self._specs[name]
            parts.append(f"{name}={spec.bin(attrs.get(name))}")
        return "|".join(parts)

    def _fit(self) -> TreePosterior:
        segments = sorted({k[0] for k in self._weights})
        seg_index = {s: i for i, s in enumerate(segments)}
        parsed = [dict(p.split("=", 1) for p in s.split("|")) for s in segments]
        factor = 2.0 ** (-self._now / self._half_life)
        rows_s, rows_e, rows_b, rows_l, rows_n = [], [], [], [], []
        for (segment, e, b), w in self._weights.items():
            for level in np.flatnonzero(w):
                rows_s.append(seg_index[segment])
                rows_e.append(e)
                rows_b.append(b)
                rows_l.append(int(level))
                rows_n.append(float(w[level]) * factor)
        segment_index = np.array(rows_s, dtype=np.int64)
        experience_index = np.array(rows_e, dtype=np.int64)
        buckets = np.array(rows_b, dtype=np.int64)
        level_index = np.array(rows_l, dtype=np.int64)
        counts = np.array(rows_n, dtype=float)
        if self._automatic and counts.sum() >= 2.0 * self._seen_at_order:
            self._seen_at_order = float(counts.sum())
            fresh = np.zeros((len(segments), len(self._keys), self._net.shape[1]))
            keep = buckets == 0
            np.add.at(
                fresh,
                (segment_index[keep], experience_index[keep], level_index[keep]),
                counts[keep],
            )
            self._order = tuple(evidence_order(parsed, fresh, self._names))
        return fit_tree(
            parsed,
            segment_index,
            self._keys,
            experience_index,
            buckets,
            level_index,
            counts,
            order=self._order,
            n_levels=self._net.shape[1],
            n_buckets=EXPOSURE_BUCKETS,
            control=self._control,
        )

    def choose(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, rng: np.random.Generator
    ) -> int:
        self._now = t
        k = len(self._experiences)
        if rng.random() < self._explore:
            return int(rng.integers(k))
        if self._tree is None or self._since_fit >= self._refit_every:
            self._tree = self._fit()
            self._since_fit = 0
        path = segment_path(self._specs, self._order, attrs)
        alpha = np.array(
            [
                self._tree.cell(path, key, exposure_bucket(int(exposures[e])))[0]
                for e, key in enumerate(self._keys)
            ]
        )
        draws = posterior.dirichlet_draws(alpha, 1, rng)[0]
        return int(np.argmax((draws * self._net).sum(axis=1)))

    def update(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, chosen: int, level: int
    ) -> None:
        key = (self._finest(attrs), chosen, exposure_bucket(int(exposures[chosen])))
        self._weights[key][level] += 2.0 ** (t / self._half_life)
        self._since_fit += 1
