"""Per-process state of a worker: the database engine, the random generator and the caches.

Workers share nothing but the database. Each keeps a snapshot of the catalog (reloaded when
``EngineState.catalog_version`` moves) and of the cell statistics (reloaded at most every
``stats_refresh_seconds``, and at once after this worker's own writes), so a decision reads a few
small rows, never the event log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, select

from engine.catalog import Catalog, engine_state, load_catalog
from engine.config import Settings
from engine.db import make_engine
from engine.errors import InvalidInput
from engine.hierarchy import TreePosterior, fit_tree
from engine.models import EngineState, utcnow
from engine.stats import EXPOSURE_BUCKETS, CellTable, load_cell_table

Predicate = Callable[[Mapping[str, Any]], bool]
log = logging.getLogger("nextbest.runtime")

if TYPE_CHECKING:
    from rules.active import ActiveRules
    from rules.guardrails import Guardrails
    from rules.runtime import RuleRuntime


@dataclass(frozen=True)
class ExperienceStats:
    """Decayed statistics of one experience summed over a set of cells.

    counts: shape (B, L) per exposure bucket and level; value_weights, value_sums: shape (L,).
    """

    counts: np.ndarray
    value_weights: np.ndarray
    value_sums: np.ndarray


@dataclass(frozen=True)
class StatsSnapshot:
    table: CellTable
    by_experience: Mapping[str, ExperienceStats]
    tree: TreePosterior
    catalog_version: int
    loaded_at: float

    def experience(self, key: str, n_levels: int) -> ExperienceStats:
        found = self.by_experience.get(key)
        if found is not None:
            return found
        zeros = np.zeros(n_levels)
        return ExperienceStats(np.zeros((EXPOSURE_BUCKETS, n_levels)), zeros, zeros)


def aggregate_by_experience(
    table: CellTable, labels: tuple[str, ...]
) -> dict[str, ExperienceStats]:
    """Sum the cells over segments: experience -> counts (B, L) and realised-value sums (L,)."""
    level_index = {label: i for i, label in enumerate(labels)}
    out: dict[str, ExperienceStats] = {}
    for key in set(table.experiences.tolist()):
        rows = np.nonzero(table.experiences == key)[0]
        levels = np.array([level_index.get(x, -1) for x in table.levels[rows]], dtype=np.int64)
        keep = levels >= 0
        rows, levels = rows[keep], levels[keep]
        counts = np.zeros((EXPOSURE_BUCKETS, len(labels)))
        np.add.at(counts, (table.buckets[rows], levels), table.counts[rows])
        value_weights = np.bincount(levels, table.value_weights[rows], minlength=len(labels))
        value_sums = np.bincount(levels, table.value_sums[rows], minlength=len(labels))
        out[key] = ExperienceStats(counts, value_weights, value_sums)
    return out


def fit_snapshot_tree(table: CellTable, catalog: Catalog) -> TreePosterior:
    """The hierarchical posterior of the stored cells along the catalog's segmentation; the control
    experience (the first by key if several are marked) anchors the fatigue of repeats."""
    labels = catalog.scale.labels if catalog.scale else ()
    segments, segment_index = np.unique(table.segments.astype(str), return_inverse=True)
    experiences, experience_index = np.unique(table.experiences.astype(str), return_inverse=True)
    level_of = {label: i for i, label in enumerate(labels)}
    level_index = np.array([level_of.get(x, -1) for x in table.levels], dtype=np.int64)
    keep = level_index >= 0
    parsed = [dict(p.split("=", 1) for p in s.split("|") if p) for s in segments.tolist()]
    return fit_tree(
        parsed,
        segment_index[keep],
        experiences.tolist(),
        experience_index[keep],
        table.buckets[keep],
        level_index[keep],
        table.counts[keep],
        order=catalog.segmentation,
        n_levels=len(labels),
        n_buckets=EXPOSURE_BUCKETS,
        control=min((k for k, e in catalog.experiences.items() if e.is_control), default=None),
    )


class Runtime:
    """What one worker process holds between requests."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine if engine is not None else make_engine(settings.database_url)
        self.rng = np.random.default_rng(settings.seed)
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._predicates: dict[str, Predicate] = {}
        self._stats: StatsSnapshot | None = None
        self._stats_dirty = True
        self._rules: tuple[int, ActiveRules | None] | None = None
        self._rules_lock = threading.Lock()
        self._rule_runtime: RuleRuntime | None = None
        self._guardrails: tuple[int, Guardrails] | None = None

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def catalog(self, session: Session) -> Catalog:
        version = session.exec(select(EngineState.catalog_version)).first()
        if version is None:
            engine_state(session)
            version = 0
        with self._lock:
            cached = self._catalog
        if cached is not None and cached.version == version:
            return cached
        catalog = load_catalog(session)
        with self._lock:
            self._catalog = catalog
            self._predicates = {}
            self._stats_dirty = True
        return catalog

    def rules(self, session: Session, catalog: Catalog) -> ActiveRules | None:
        """The active rule-set version (reloaded when the catalog version moves: activating a
        version bumps it)."""
        with self._lock:
            cached = self._rules
        if cached is not None and cached[0] == catalog.version:
            return cached[1]
        from rules.active import load_active

        names = {key: info.name for key, info in catalog.experiences.items()}
        active = load_active(session, names)
        if active is not None and self.settings.rule_runtime == "durable":
            active = self._in_durable_rules(active)
        with self._lock:
            self._rules = (catalog.version, active)
        return active

    def _in_durable_rules(self, active: ActiveRules) -> ActiveRules:
        """``active`` run by this worker's durable-rules host (started on first use); if
        durable-rules cannot load it, the Python evaluator answers (logged)."""
        from rules.runtime import DurableRulesError, RuleRuntime

        with self._rules_lock:
            if self._rule_runtime is None:
                self._rule_runtime = RuleRuntime()
            if self._rule_runtime.active_version != active.version:
                try:
                    self._rule_runtime.activate(active.version, active.specs())
                except (DurableRulesError, InvalidInput):
                    log.exception("durable-rules cannot run version %s", active.version)
                    return active
        return dataclasses.replace(active, runtime=self._rule_runtime)

    def rule_counters(self) -> dict[str, int] | None:
        """The durable-rules host's counters (evaluations, fallbacks, errors, ...), if started."""
        with self._rules_lock:
            return None if self._rule_runtime is None else self._rule_runtime.counters()

    def close(self) -> None:
        """Stop what the worker started (the rule runtime); the engine is the caller's."""
        with self._rules_lock:
            if self._rule_runtime is not None:
                self._rule_runtime.close()
                self._rule_runtime = None

    def guardrails(self, session: Session, catalog: Catalog) -> Guardrails:
        """The active guardrails (reloaded when the catalog version moves: creating or
        deactivating one bumps it)."""
        with self._lock:
            cached = self._guardrails
        if cached is not None and cached[0] == catalog.version:
            return cached[1]
        from rules.guardrails import Guardrails, list_guardrails

        loaded = Guardrails(catalog, list_guardrails(session=session, active=True))
        with self._lock:
            self._guardrails = (catalog.version, loaded)
        return loaded

    def eligibility(self, catalog: Catalog, key: str) -> Predicate | None:
        """The compiled eligibility rule of an experience (None: everyone is eligible)."""
        text = catalog.experiences[key].eligibility
        if not text:
            return None
        with self._lock:
            predicate = self._predicates.get(key)
        if predicate is None:
            from rules.language import compile_predicate, parse_rule

            predicate = compile_predicate(parse_rule(text, catalog.specs))
            with self._lock:
                self._predicates[key] = predicate
        return predicate

    def stats(
        self, session: Session, catalog: Catalog, now: dt.datetime | None = None
    ) -> StatsSnapshot:
        with self._lock:
            cached, dirty = self._stats, self._stats_dirty
        fresh = (
            cached is not None
            and not dirty
            and cached.catalog_version == catalog.version
            and time.monotonic() - cached.loaded_at < self.settings.stats_refresh_seconds
        )
        if fresh:
            assert cached is not None
            return cached
        table = load_cell_table(session, catalog=catalog, now=now or utcnow())
        labels = catalog.scale.labels if catalog.scale else ()
        snapshot = StatsSnapshot(
            table=table,
            by_experience=aggregate_by_experience(table, labels),
            tree=fit_snapshot_tree(table, catalog),
            catalog_version=catalog.version,
            loaded_at=time.monotonic(),
        )
        with self._lock:
            self._stats = snapshot
            self._stats_dirty = False
        return snapshot

    def wrote_stats(self) -> None:
        """This worker changed the statistics: the next read reloads them."""
        with self._lock:
            self._stats_dirty = True
