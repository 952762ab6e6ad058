"""Per-process state of a worker: the database engine, the random generator and the caches.

Workers share nothing but the database. Each keeps, so that a decision reads a few small rows and
never the event log:

- the catalog, reloaded when ``EngineState.catalog_version`` moves (a decision reads the version
  with its customer), with the compiled eligibility rules and the candidates of each channel;
- a snapshot of the cell statistics and its fitted tree. Its staleness is bounded: no decision
  uses a snapshot whose cells were read more than ``stats_refresh_seconds`` (default 2 s) before
  it, so a result stored through any worker counts in every worker's decisions within that bound.
  The refresh is due at ``REFRESH_DUE`` of the bound (half of it after this worker's own writes):
  one thread refreshes while the others go on deciding on the snapshot they have; only once the
  bound is reached (or the catalog changed) do they wait for the refresh. A refresh first reads a
  one-row aggregate of the cells; if no cell changed, the snapshot (and its draws) serves on,
  re-read in full at least every ``KEEP_UNCHANGED_SECONDS``;
- per snapshot, the posterior draws of the cells that decisions asked for (``CellDraws``);
- the API keys it checked in the last ``auth_cache_seconds`` (``engine.auth.KeyCache``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import numpy as np
from scipy.special import digamma, gammaln
from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, select

from engine import metrics, posterior
from engine.attributes import segment_path
from engine.auth import KeyCache
from engine.catalog import Catalog, engine_state, load_catalog
from engine.config import Settings
from engine.db import WalCheckpointer, is_sqlite, make_engine, read_connection, read_session
from engine.decision_log import DecisionLog
from engine.errors import InvalidInput
from engine.hierarchy import NodeKey, TreePosterior, fit_tree
from engine.models import CellStat, EngineState, utcnow
from engine.stats import EXPOSURE_BUCKETS, CellTable, load_cell_table

Predicate = Callable[[Mapping[str, Any]], bool]
_FINGERPRINT = sa_select(func.count(), func.coalesce(func.sum(CellStat.weight), 0.0)).select_from(
    CellStat
)
CellKey = tuple[NodeKey | None, str, int]
"""(node of the segment tree, or None for the experience's pooled root; experience; bucket)."""

WORKER_YOUNG_COLLECTION = 20_000
"""A serving worker runs the cyclic garbage collector's youngest generation every this many
allocations (Python's default: 700). Under load, each young collection finds the objects of the
requests in flight alive and promotes them; they die soon after, but they have made the old
generation grow, and every full collection walks the whole heap (the statistics snapshot
included: about 0.1 s each). At the default, one worker under 32 concurrent decisions spent 1.9 s
of 25 in the collector (14 full collections); at 20,000, 0.15 s (none), with p99 latency 100 ms
instead of 160 ms. A decision creates no reference cycles: reference counting frees its objects."""


@contextmanager
def few_collections(*, young: int, oldest: int | None = None) -> Iterator[None]:
    """Run the cyclic garbage collector less often while the block runs (its youngest generation
    every ``young`` allocations at least; the oldest after ``oldest`` younger collections), for
    work that allocates many short-lived objects while a large heap stays alive. The thresholds
    come back afterwards."""
    thresholds = gc.get_threshold()
    gc.set_threshold(
        max(thresholds[0], young), thresholds[1], max(thresholds[2], oldest or thresholds[2])
    )
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


REFRESH_DUE = 0.75
"""Share of ``stats_refresh_seconds`` after which one thread refreshes in the background of the
others: the rest of the interval is the time a refresh has to finish before decisions would wait
for it (a full reload takes about 0.2 s at 25,000 cells; the check of an unchanged table a few
milliseconds)."""
KEEP_UNCHANGED_SECONDS = 60.0
"""Longest a snapshot serves while no cell changes: its counts were decayed to its load time, and
a minute of decay moves them by 2^(-1 / (90 x 1440)), five parts in a million."""
CELL_DRAWS_BUDGET = 64 * 2**20
"""Bytes of posterior draws a worker keeps per snapshot; cells beyond it are drawn per decision."""
MEMO_SIZE = 100_000

log = logging.getLogger("nextbest.runtime")

if TYPE_CHECKING:
    from experiments.assign import RunningExperiments
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


class CellDraws:
    """Posterior draws of the cells of one statistics snapshot, each taken when a decision first
    needs it and kept while the snapshot serves.

    A decision's joint draws are its candidates' cell draws side by side. A candidate is one
    experience and a cell belongs to one experience, so the columns are independent draws of the
    candidates' posteriors, exactly as fresh draws would be. What sharing changes: decisions on
    the same cells during one snapshot see the same Monte Carlo sample, so they report the same
    P(best) and intervals. Each decision still chooses at random (a uniformly picked joint draw),
    and its logged propensity is the exact probability of that choice given the sample. Drawing
    is most of the cost of a decision (S x K x L gamma variates), and a worker meets the same few
    thousand cells again and again.

    A new snapshot takes over the previous one's draws of a cell whose posterior barely moved
    (KL divergence below ``KEEP_DRAWS_KL``, a difference no summary of a few thousand draws can
    see): when results arrive, a reload refits every cell of the tree a little, and redrawing all
    of them each time would cost more than the decisions. Cells that gained results are drawn
    afresh.
    """

    def __init__(
        self,
        n_draws: int,
        rng: np.random.Generator,
        budget_bytes: int = CELL_DRAWS_BUDGET,
        previous: CellDraws | None = None,
    ) -> None:
        self.n_draws = n_draws
        self._rng = rng
        self._budget = budget_bytes
        self._lock = threading.Lock()
        self._draws: dict[CellKey, tuple[np.ndarray, np.ndarray]] = {}
        self._previous = previous._draws if previous is not None else {}
        self._bytes = 0
        self._intervals: dict[tuple[CellKey, bytes], tuple[float, float]] = {}
        self.kept = 0
        """Cells whose draws came from the previous snapshot."""

    def get(self, key: CellKey, alpha: np.ndarray) -> np.ndarray:
        """Draws of the cell ``key`` whose posterior is Dirichlet(alpha): shape (S, L)."""
        found = self._draws.get(key)
        if found is not None:
            return found[1]
        old = self._previous.get(key)
        if old is not None and old[1].shape[0] == self.n_draws and _close(old[0], alpha):
            alpha, draws = old
            self.kept += 1
        else:
            draws = posterior.cell_draws(alpha, self.n_draws, self._rng)
        with self._lock:
            found = self._draws.get(key)
            if found is not None:
                return found[1]
            if self._bytes + draws.nbytes <= self._budget:
                self._draws[key] = (alpha, draws)
                self._bytes += draws.nbytes
        return draws

    def interval(self, key: CellKey, net: np.ndarray, values: np.ndarray) -> tuple[float, float]:
        """The 90% interval of ``values`` = the cell's draws times ``net`` (per level), remembered
        for the cell's shared draws and that net value (a sort of S draws per candidate was a
        fifth of a decision's cost). ``values`` must come from ``get(key, ...)``."""
        memo = (key, net.tobytes())
        found = self._intervals.get(memo)
        if found is None:
            low, high = posterior.quantiles(values[None, :], (0.05, 0.95))
            found = (float(low[0]), float(high[0]))
            if key in self._draws and len(self._intervals) < MAX_INTERVALS:
                self._intervals[memo] = found
        return found

    def __len__(self) -> int:
        return len(self._draws)


MAX_INTERVALS = 100_000
"""Intervals a snapshot remembers (cell x net values; about 200 bytes each)."""


RULE_MEMO_ENTRIES = 4096
"""durable-rules answers a worker remembers per rule-set version, by message (rules.runtime)."""

KEEP_DRAWS_KL = 1e-4
"""Largest KL(new || old) between a cell's posteriors for its old draws to stand for the new one:
total variation at most sqrt(KL / 2) = 0.007, against a Monte Carlo error of about 0.011 on
P(best) from 2000 draws."""


def _close(old: np.ndarray, new: np.ndarray) -> bool:
    """KL(Dir(new) || Dir(old)) < KEEP_DRAWS_KL (shapes (L,))."""
    if old.shape != new.shape:
        return False
    if np.array_equal(old, new):
        return True
    n0, o0 = new.sum(), old.sum()
    kl = (
        gammaln(n0)
        - gammaln(new).sum()
        - gammaln(o0)
        + gammaln(old).sum()
        + ((new - old) * (digamma(new) - digamma(n0))).sum()
    )
    return bool(kl < KEEP_DRAWS_KL)


_MISSING = object()
T = TypeVar("T")


def _total(counts: np.ndarray | None) -> float:
    return round(float(counts.sum()), 2) if counts is not None else 0.0


@dataclass(frozen=True)
class StatsSnapshot:
    table: CellTable
    by_experience: Mapping[str, ExperienceStats]
    tree: TreePosterior
    catalog_version: int
    loaded_at: float
    """When (on the runtime's clock) the cells were read or last found unchanged: a result
    committed before it is in the snapshot."""
    draws: CellDraws
    learned: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Per experience, the mean realised value of each level (0 where none was reported): (L,)."""
    fingerprint: tuple[int, float] | None = None
    """Number of stored cells and sum of their weights when this snapshot was read: each result
    adds a positive weight, so any new result changes it."""
    read_at: float = 0.0
    """When the cells were last read in full (``loaded_at`` moves on while they stay
    unchanged)."""
    _memo: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)

    def experience(self, key: str, n_levels: int) -> ExperienceStats:
        found = self.by_experience.get(key)
        if found is not None:
            return found
        zeros = np.zeros(n_levels)
        return ExperienceStats(np.zeros((EXPOSURE_BUCKETS, n_levels)), zeros, zeros)

    def learned_values(self, key: str, n_levels: int) -> np.ndarray:
        found = self.learned.get(key)
        return found if found is not None else np.zeros(n_levels)

    def cell_total(self, cell: CellKey) -> float:
        """Decayed number of results behind a cell (0 for an experience's pooled root)."""
        node, key, bucket = cell
        if node is None:
            return 0.0
        return self.memo(cell, lambda: _total(self.tree.counts.get((node, key, bucket))))

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, once per snapshot and ``key``: values derived from these statistics
        alone (a cell's total, an experience's net value per level when no customer changes
        it)."""
        found = self._memo.get(key, _MISSING)
        if found is _MISSING:
            found = self._memo[key] = compute()
        return found  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Codes:
    """The cell table's rows as integer codes (levels the scale lacks are dropped)."""

    segments: list[str]
    segment_index: np.ndarray
    experiences: list[str]
    experience_index: np.ndarray
    buckets: np.ndarray
    level_index: np.ndarray
    rows: np.ndarray
    """Positions in the table of the rows kept: shape (n,)."""


def _factorize(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct values in order of first appearance and each row's index into them."""
    items = values.tolist()
    distinct = list(dict.fromkeys(items))
    index = {v: i for i, v in enumerate(distinct)}
    return distinct, np.fromiter(map(index.__getitem__, items), dtype=np.int64, count=len(items))


def _codes(table: CellTable, labels: Sequence[str]) -> _Codes:
    segments, segment_index = _factorize(table.segments)
    experiences, experience_index = _factorize(table.experiences)
    level_names, level_codes = _factorize(table.levels)
    level_of = {label: i for i, label in enumerate(labels)}
    level_map = np.array([level_of.get(x, -1) for x in level_names] or [-1], dtype=np.int64)
    level_index = level_map[level_codes] if table.size else level_codes
    rows = np.flatnonzero(level_index >= 0)
    return _Codes(
        segments,
        segment_index[rows],
        experiences,
        experience_index[rows],
        table.buckets[rows],
        level_index[rows],
        rows,
    )


def aggregate_by_experience(
    table: CellTable, labels: tuple[str, ...], codes: _Codes | None = None
) -> dict[str, ExperienceStats]:
    """Sum the cells over segments: experience -> counts (B, L) and realised-value sums (L,)."""
    codes = codes or _codes(table, labels)
    n_levels, n_experiences = len(labels), len(codes.experiences)
    flat = (codes.experience_index * EXPOSURE_BUCKETS + codes.buckets) * n_levels
    flat += codes.level_index
    size = n_experiences * EXPOSURE_BUCKETS * n_levels
    counts = np.bincount(flat, table.counts[codes.rows], minlength=size)
    per_level = codes.experience_index * n_levels + codes.level_index
    weights = np.bincount(per_level, table.value_weights[codes.rows], minlength=size)
    sums = np.bincount(per_level, table.value_sums[codes.rows], minlength=size)
    counts = counts.reshape(n_experiences, EXPOSURE_BUCKETS, n_levels)
    weights = weights[: n_experiences * n_levels].reshape(n_experiences, n_levels)
    sums = sums[: n_experiences * n_levels].reshape(n_experiences, n_levels)
    present = np.bincount(codes.experience_index, minlength=n_experiences) > 0
    return {
        key: ExperienceStats(counts[e], weights[e], sums[e])
        for e, key in enumerate(codes.experiences)
        if present[e]
    }


def fit_snapshot_tree(
    table: CellTable, catalog: Catalog, codes: _Codes | None = None
) -> TreePosterior:
    """The hierarchical posterior of the stored cells along the catalog's segmentation; the control
    experience (the first by key if several are marked) anchors the fatigue of repeats.

    Cells are stored per finest segment (every declared attribute) while the tree splits on the
    segmentation's attributes only, so the rows are first summed per leaf of the tree: the fit
    then walks at most leaves x experiences x buckets x levels rows, however many finest segments
    the data fills.
    """
    labels = catalog.scale.labels if catalog.scale else ()
    order = catalog.segmentation
    codes = codes or _codes(table, labels)
    leaf_of: dict[tuple[str, ...], int] = {}
    segment_leaf = np.empty(len(codes.segments), dtype=np.int64)
    for i, segment in enumerate(codes.segments):
        levels = dict(p.split("=", 1) for p in segment.split("|") if p)
        leaf = tuple(levels.get(name, "unknown") for name in order)
        segment_leaf[i] = leaf_of.setdefault(leaf, len(leaf_of))
    n_levels, n_experiences = max(len(labels), 1), max(len(codes.experiences), 1)
    flat = segment_leaf[codes.segment_index] * n_experiences + codes.experience_index
    flat = (flat * EXPOSURE_BUCKETS + codes.buckets) * n_levels + codes.level_index
    cells, inverse = np.unique(flat, return_inverse=True)
    counts = np.bincount(inverse, table.counts[codes.rows], minlength=len(cells))
    rest, level_index = np.divmod(cells, n_levels)
    rest, buckets = np.divmod(rest, EXPOSURE_BUCKETS)
    leaf_index, experience_index = np.divmod(rest, n_experiences)
    return fit_tree(
        [dict(zip(order, leaf, strict=True)) for leaf in leaf_of],
        leaf_index,
        codes.experiences,
        experience_index,
        buckets,
        level_index,
        counts,
        order=order,
        n_levels=len(labels),
        n_buckets=EXPOSURE_BUCKETS,
        control=min((k for k, e in catalog.experiences.items() if e.is_control), default=None),
    )


def learned_values(by_experience: Mapping[str, ExperienceStats]) -> dict[str, np.ndarray]:
    """Mean realised value per level of each experience (0 where no value was reported)."""
    out = {}
    for key, s in by_experience.items():
        out[key] = np.divide(
            s.value_sums,
            s.value_weights,
            out=np.zeros(s.value_sums.shape[0]),
            where=s.value_weights > 0,
        )
    return out


class Runtime:
    """What one worker process holds between requests."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        """Seconds, monotonic: the ages of statistics snapshots are measured on it."""
        self.checkpointer: WalCheckpointer | None = None
        self._owns_engine = engine is None
        if engine is None:
            engine = make_engine(settings.database_url)
            if is_sqlite(engine) and engine.url.database not in (None, "", ":memory:"):
                self.checkpointer = WalCheckpointer(engine)
                self.checkpointer.start()
        self.engine = engine
        self.rng = np.random.default_rng(settings.seed)
        self.keys = KeyCache(ttl_seconds=settings.auth_cache_seconds)
        self._lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._predicates: dict[str, Predicate] = {}
        self._candidates: dict[str | None, list[tuple[str, Predicate | None]]] = {}
        self._paths: dict[tuple[Any, ...], list[str]] = {}
        self._stats: StatsSnapshot | None = None
        self._stats_dirty = True
        self.decision_log = DecisionLog(self.engine)
        self._rules: tuple[int, ActiveRules | None] | None = None
        self._rules_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._rule_runtime: RuleRuntime | None = None
        self._guardrails: tuple[int, Guardrails] | None = None
        self._experiments: tuple[int, RunningExperiments] | None = None
        self._decision_slots: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, anyio.CapacityLimiter
        ] = weakref.WeakKeyDictionary()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def read_session(self) -> AbstractContextManager[Session]:
        """A session that only reads: no write lock on SQLite (engine.db.read_session)."""
        return read_session(self.engine)

    # Catalog -----------------------------------------------------------------------------------

    def catalog(self, session: Session) -> Catalog:
        version = session.exec(select(EngineState.catalog_version)).first()
        if version is None:
            engine_state(session)
            version = 0
        cached = self._catalog
        if cached is not None and cached.version == version:
            return cached
        return self._install(load_catalog(session))

    def catalog_at(self, version: int | None) -> Catalog:
        """The catalog at ``version`` (read by the caller, e.g. with a decision's customer):
        the cached one, or reloaded once when the version moved (None: not initialised yet)."""
        cached = self._catalog
        if cached is not None and cached.version == version:
            return cached
        with self._catalog_lock:
            cached = self._catalog
            if cached is not None and version is not None and cached.version >= version:
                return cached
            with self.session() as session:
                engine_state(session)
                catalog = load_catalog(session)
                session.commit()
            return self._install(catalog)

    def _install(self, catalog: Catalog) -> Catalog:
        with self._lock:
            self._catalog = catalog
            self._predicates = {}
            self._candidates = {}
            self._paths = {}
            self._stats_dirty = True
        return catalog

    def rules(self, session: Session | None, catalog: Catalog) -> ActiveRules | None:
        """The active rule-set version (reloaded when the catalog version moves: activating a
        version bumps it). Without ``session``, a short-lived one is opened for the reload only;
        one thread reloads while the others wait for its result."""
        with self._lock:
            cached = self._rules
        if cached is not None and cached[0] == catalog.version:
            return cached[1]
        with self._reload_lock:
            with self._lock:
                cached = self._rules
            if cached is not None and cached[0] == catalog.version:
                return cached[1]
            from rules.active import load_active

            names = {key: info.name for key, info in catalog.experiences.items()}
            if session is None:
                with self.read_session() as own:
                    active = load_active(own, names)
            else:
                active = load_active(session, names)
            if active is not None and self.settings.rule_runtime == "durable":
                active = self._in_durable_rules(active)
            with self._lock:
                self._rules = (catalog.version, active)
            metrics.ruleset_version(active.version if active is not None else None)
            return active

    def _in_durable_rules(self, active: ActiveRules) -> ActiveRules:
        """``active`` run by this worker's durable-rules host (started on first use); if
        durable-rules cannot load it, the Python evaluator answers (logged)."""
        from rules.runtime import DurableRulesError, RuleRuntime

        with self._rules_lock:
            if self._rule_runtime is None:
                self._rule_runtime = RuleRuntime(memo_entries=RULE_MEMO_ENTRIES)
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

    def close(self, *, release_engine: bool = True) -> None:
        """Stop what the worker started: the rule runtime, the decision log's writer (after it
        wrote what is queued) and, when ``release_engine`` and this
        runtime made its engine, the SQLite checkpointer and the connections (an engine passed
        in is the caller's)."""
        with self._rules_lock:
            if self._rule_runtime is not None:
                self._rule_runtime.close()
                self._rule_runtime = None
        with self._lock:
            self._rules = None  # its evaluator may be the host just closed
        self.decision_log.close()
        if release_engine and self._owns_engine:
            if self.checkpointer is not None:
                self.checkpointer.stop()
                self.checkpointer = None
            self.engine.dispose()

    def guardrails(self, session: Session | None, catalog: Catalog) -> Guardrails:
        """The active guardrails (reloaded when the catalog version moves: creating or
        deactivating one bumps it). Without ``session``, a short-lived one is opened for the
        reload only; one thread reloads while the others wait for its result."""
        with self._lock:
            cached = self._guardrails
        if cached is not None and cached[0] == catalog.version:
            return cached[1]
        with self._reload_lock:
            return self._load_guardrails(session, catalog)

    def _load_guardrails(self, session: Session | None, catalog: Catalog) -> Guardrails:
        with self._lock:
            cached = self._guardrails
        if cached is not None and cached[0] == catalog.version:
            return cached[1]
        from rules.guardrails import Guardrails, list_guardrails

        if session is None:
            with self.read_session() as own:
                rows = list_guardrails(session=own, active=True)
        else:
            rows = list_guardrails(session=session, active=True)
        loaded = Guardrails(catalog, rows)
        with self._lock:
            self._guardrails = (catalog.version, loaded)
        return loaded

    def experiments(self, catalog: Catalog) -> RunningExperiments:
        """The running experiments, reloaded every ``experiment_refresh_seconds`` and after this
        worker changes one (``experiments_changed``); one thread reloads, the others wait."""
        with self._lock:
            cached = self._experiments
        if self._fresh_experiments(cached, catalog):
            return cached[1]  # type: ignore[index]
        with self._reload_lock:
            with self._lock:
                cached = self._experiments
            if self._fresh_experiments(cached, catalog):
                return cached[1]  # type: ignore[index]
            from experiments.assign import load_running

            with self.read_session() as session:
                loaded = load_running(session, catalog, time.monotonic())
            with self._lock:
                self._experiments = (catalog.version, loaded)
            return loaded

    def _fresh_experiments(
        self, cached: tuple[int, RunningExperiments] | None, catalog: Catalog
    ) -> bool:
        return (
            cached is not None
            and cached[0] == catalog.version
            and time.monotonic() - cached[1].loaded_at < self.settings.experiment_refresh_seconds
        )

    def running_keys(self) -> tuple[str, ...]:
        """The keys of the running experiments as last loaded (for any catalog version): the
        enrolments a decision will most likely need, read with its customer in one round trip."""
        cached = self._experiments
        return tuple(e.key for e in cached[1].experiments) if cached is not None else ()

    def experiments_changed(self) -> None:
        with self._lock:
            self._experiments = None

    def eligibility(self, catalog: Catalog, key: str) -> Predicate | None:
        """The compiled eligibility rule of an experience (None: everyone is eligible)."""
        text = catalog.experiences[key].eligibility
        if not text:
            return None
        predicate = self._predicates.get(key)
        if predicate is None:
            from rules.language import compile_predicate, parse_rule

            predicate = compile_predicate(parse_rule(text, catalog.specs))
            with self._lock:
                self._predicates[key] = predicate
        return predicate

    def candidates(
        self, catalog: Catalog, channel: str | None
    ) -> list[tuple[str, Predicate | None]]:
        """Active experiences offered on ``channel`` (all channels: None), in key order, with their
        eligibility rules still to be applied to the customer."""
        found = self._candidates.get(channel)
        if found is not None and self._catalog is catalog:
            return found
        found = [
            (key, self.eligibility(catalog, key))
            for key, info in catalog.experiences.items()
            if info.active and not (channel and info.channels and channel not in info.channels)
        ]
        with self._lock:
            if self._catalog is catalog:
                self._candidates[channel] = found
        return found

    def segment_path(self, catalog: Catalog, attributes: Mapping[str, Any]) -> list[str]:
        """The customer's nodes from the root down the segment tree (memoised: customers share a
        few hundred paths)."""
        values = tuple(attributes.get(name) for name in catalog.segmentation)
        found = self._paths.get(values)
        if found is None:
            found = segment_path(catalog.specs, catalog.segmentation, attributes)
            with self._lock:
                if self._catalog is catalog:
                    if len(self._paths) >= MEMO_SIZE:
                        self._paths = {}
                    self._paths[values] = found
        return found

    @property
    def snapshot(self) -> StatsSnapshot | None:
        """The statistics snapshot decisions use now (None before the first decision)."""
        return self._stats

    # Statistics --------------------------------------------------------------------------------

    def stats(
        self,
        catalog: Catalog | Session,
        *rest: Catalog,
        now: dt.datetime | None = None,
    ) -> StatsSnapshot:
        """The statistics snapshot for ``catalog``, read at most ``stats_refresh_seconds`` ago.

        ``stats(session, catalog)`` is accepted too (callers that hold a session); the snapshot
        is read on the runtime's own connections either way, from committed data.

        Younger than the refresh point (``REFRESH_DUE`` of the bound, half the bound after this
        worker's own writes): returned as is. Past it but within the bound: this thread refreshes
        it, unless another one is doing so already, in which case this one keeps the snapshot it
        has. At the bound, or made for another catalog, or none yet: this thread waits for the
        refresh (its own or the one under way), so no caller ever gets an older snapshot.
        """
        if isinstance(catalog, Session):
            (catalog,) = rest
        cached = self._stats
        if cached is not None and cached.catalog_version == catalog.version:
            age = self.age(cached)
            if age < self._refresh_due():
                return cached
            if age < self.settings.stats_refresh_seconds:
                if not self._refresh_lock.acquire(blocking=False):
                    return cached
            else:
                self._refresh_lock.acquire()
        else:
            self._refresh_lock.acquire()
        try:
            seen, cached = cached, self._stats
            if cached is None or cached.catalog_version != catalog.version:
                return self._reload(catalog, now)
            if cached is not seen or self.age(cached) < self._refresh_due():
                # Refreshed by another thread while this one waited: read after this call began.
                return cached
            started = self.clock()
            if not self._stats_dirty and started - cached.read_at < KEEP_UNCHANGED_SECONDS:
                wall = time.time()
                if self._fingerprint() == cached.fingerprint:
                    kept = replace(cached, loaded_at=started)
                    self._stats = kept
                    metrics.snapshot_read(wall)
                    return kept
            return self._reload(catalog, now)
        finally:
            self._refresh_lock.release()

    def decision_slots(self) -> anyio.CapacityLimiter:
        """How many decisions of this event loop may run on threads at once: the connection pool's
        size less two (the decision log's writer, and a statistics reload or another request).

        A decision on a thread takes a pooled connection for each of its reads; with more threads
        than pooled connections the pool opens overflow connections and closes them again on
        return, which on PostgreSQL (a server process per connection) cost more than the
        decisions: under 32 concurrent requests one worker opened a connection every four
        decisions. Decisions beyond the limit wait on the loop instead, holding nothing."""
        loop = asyncio.get_running_loop()
        slots = self._decision_slots.get(loop)
        if slots is None:
            size = getattr(self.engine.pool, "size", None)
            slots = anyio.CapacityLimiter(max(size() - 2, 1) if callable(size) else 1)
            self._decision_slots[loop] = slots
        return slots

    @property
    def reads_block(self) -> bool:
        """Whether a read waits on a network round trip (PostgreSQL), rather than reading a local
        file (SQLite): the event loop should not wait for it."""
        return not is_sqlite(self.engine)

    def stats_due(self) -> bool:
        """Whether ``stats`` may read the statistics now (none yet, or past the refresh point),
        which takes up to a few hundred milliseconds: a caller that must not block (the event
        loop, engine.decisions.decide_async) hands such a decision to a thread."""
        cached = self._stats
        return cached is None or self.age(cached) >= self._refresh_due()

    def age(self, snapshot: StatsSnapshot) -> float:
        """Seconds since the cells of ``snapshot`` were read (or found unchanged)."""
        return self.clock() - snapshot.loaded_at

    def _fingerprint(self) -> tuple[int, float]:
        with read_connection(self.engine) as connection:
            n, total = connection.execute(_FINGERPRINT).one()
        return int(n), float(total)

    def _refresh_due(self) -> float:
        bound = self.settings.stats_refresh_seconds
        return bound * (0.5 if self._stats_dirty else REFRESH_DUE)

    def _reload(self, catalog: Catalog, now: dt.datetime | None) -> StatsSnapshot:
        self._stats_dirty = False  # writes from here on are not in this load: they mark it again
        started, wall = self.clock(), time.time()
        # Before the read: a change that lands in between makes the next check reload again.
        fingerprint = self._fingerprint()
        # A single read: on SQLite it must not wait for the write lock, which a caller might hold.
        with read_connection(self.engine) as connection, Session(bind=connection) as session:
            table = load_cell_table(session, catalog=catalog, now=now or utcnow())
        labels = catalog.scale.labels if catalog.scale else ()
        codes = _codes(table, labels)
        by_experience = aggregate_by_experience(table, labels, codes)
        snapshot = StatsSnapshot(
            table=table,
            by_experience=by_experience,
            tree=fit_snapshot_tree(table, catalog, codes),
            catalog_version=catalog.version,
            loaded_at=started,
            draws=CellDraws(
                self.settings.posterior_draws,
                self.rng,
                previous=self._stats.draws if self._stats is not None else None,
            ),
            learned=learned_values(by_experience),
            fingerprint=fingerprint,
            read_at=started,
        )
        self._stats = snapshot
        metrics.snapshot_read(wall)
        return snapshot

    def wrote_stats(self) -> None:
        """This worker changed the statistics: the next read reloads them."""
        self._stats_dirty = True
