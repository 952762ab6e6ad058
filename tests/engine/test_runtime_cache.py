"""The worker's caches: the tree fitted on rows summed per leaf, one reload at a time, posterior
draws kept per snapshot."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import numpy as np
import pytest

from engine import runtime as runtime_module
from engine.attributes import AttributeSpec
from engine.catalog import Catalog, Level, Scale
from engine.hierarchy import fit_tree
from engine.models import CellStat
from engine.runtime import CellDraws, Runtime, aggregate_by_experience, fit_snapshot_tree
from engine.stats import EXPOSURE_BUCKETS, CellTable

LABELS = ("churned", "retained", "upgraded")
SPECS = {
    "plan": AttributeSpec("plan", "categorical", levels=("basic", "plus", "premium")),
    "region": AttributeSpec("region", "categorical", levels=("north", "south")),
    "paperless": AttributeSpec("paperless", "boolean"),
}


def catalog(segmentation: tuple[str, ...] = ("plan", "region"), version: int = 1) -> Catalog:
    return Catalog(
        version=version,
        specs=SPECS,
        scale=Scale(tuple(Level(x, None) for x in LABELS), 30.0, "churned"),
        experiences={},
        segmentation=segmentation,
        epoch=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        half_life_days=90.0,
        _spec_order=tuple(sorted(SPECS)),
    )


def random_table(rng: np.random.Generator, n: int = 400) -> CellTable:
    plans, regions = ["basic", "plus", "premium"], ["north", "south"]
    segments = [
        f"paperless={rng.choice(['true', 'false'])}|plan={rng.choice(plans)}"
        + f"|region={rng.choice(regions)}"
        for _ in range(n)
    ]
    return CellTable(
        segments=np.array(segments, dtype=object),
        experiences=np.array(rng.choice(["a", "b", "c"], n), dtype=object),
        buckets=rng.integers(0, 3, n),
        levels=np.array(rng.choice([*LABELS, "gone"], n), dtype=object),
        counts=rng.gamma(2.0, 3.0, n),
        value_weights=rng.gamma(1.0, 1.0, n),
        value_sums=rng.gamma(1.0, 50.0, n),
        cost_weights=np.zeros(n),
        cost_sums=np.zeros(n),
        as_of=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    )


def test_tree_fitted_on_leaf_sums_equals_the_fit_on_every_cell() -> None:
    table = random_table(np.random.default_rng(3))
    shop = catalog()
    snapshot_tree = fit_snapshot_tree(table, shop)
    segments, segment_index = np.unique(table.segments.astype(str), return_inverse=True)
    experiences, experience_index = np.unique(table.experiences.astype(str), return_inverse=True)
    level_index = np.array([LABELS.index(x) if x in LABELS else -1 for x in table.levels])
    keep = level_index >= 0
    reference = fit_tree(
        [dict(p.split("=", 1) for p in s.split("|")) for s in segments.tolist()],
        segment_index[keep],
        experiences.tolist(),
        experience_index[keep],
        table.buckets[keep],
        level_index[keep],
        table.counts[keep],
        order=("plan", "region"),
        n_levels=3,
        n_buckets=EXPOSURE_BUCKETS,
        control=min((k for k, e in shop.experiences.items() if e.is_control), default=None),
    )
    assert set(snapshot_tree.alpha) == set(reference.alpha)
    for key, alpha in reference.alpha.items():
        assert snapshot_tree.alpha[key] == pytest.approx(alpha, rel=1e-6)
    assert snapshot_tree.kappas == pytest.approx(reference.kappas, rel=1e-6)


def test_experience_sums_skip_unknown_levels() -> None:
    table = random_table(np.random.default_rng(4))
    by_experience = aggregate_by_experience(table, LABELS)
    for key, stats in by_experience.items():
        rows = (table.experiences == key) & (table.levels != "gone")
        assert stats.counts.sum() == pytest.approx(table.counts[rows].sum())
        assert stats.value_sums.sum() == pytest.approx(table.value_sums[rows].sum())
        level = LABELS.index("retained")
        in_bucket = rows & (table.levels == "retained") & (table.buckets == 1)
        assert stats.counts[1, level] == pytest.approx(table.counts[in_bucket].sum())


def test_a_new_snapshot_keeps_the_draws_of_cells_that_barely_moved() -> None:
    alpha = np.array([200.0, 500.0, 300.0])
    old = CellDraws(500, np.random.default_rng(1))
    same, nudged, moved = ("a", "x", 0), ("b", "x", 0), ("c", "x", 0)
    kept = [old.get(cell, alpha) for cell in (same, nudged, moved)]
    new = CellDraws(500, np.random.default_rng(2), previous=old)
    assert new.get(same, alpha) is kept[0]
    assert new.get(nudged, alpha * 1.0001) is kept[1]  # a refit moved it by 1e-4: KL ~ 1e-6
    assert new.get(moved, alpha + np.array([1.0, 0.0, 0.0])) is not kept[2]  # one more result
    assert new.kept == 2
    # Drift does not accumulate: the next snapshot compares with the alpha actually drawn from.
    newer = CellDraws(500, np.random.default_rng(3), previous=new)
    assert newer.get(nudged, alpha * 1.02) is not kept[1]


def test_cell_draws_are_kept_per_snapshot_within_the_budget() -> None:
    alpha = np.array([2.0, 5.0, 3.0])
    draws = CellDraws(500, np.random.default_rng(1))
    first = draws.get(("plan=basic", "a", 0), alpha)
    assert first.shape == (500, 3) and first.dtype == np.float32
    assert np.allclose(first.sum(axis=1), 1.0, atol=1e-5)
    assert draws.get(("plan=basic", "a", 0), alpha) is first
    assert draws.get(("plan=basic", "a", 1), alpha) is not first
    assert len(draws) == 2
    tight = CellDraws(500, np.random.default_rng(1), budget_bytes=first.nbytes)
    kept = tight.get(("", "a", 0), alpha)
    assert tight.get(("", "a", 0), alpha) is kept
    assert tight.get(("", "b", 0), alpha) is not tight.get(("", "b", 0), alpha)
    assert len(tight) == 1


def test_a_cells_interval_is_remembered_per_net_value_and_equals_the_draws_quantiles() -> None:
    alpha = np.array([20.0, 50.0, 30.0])
    cell = ("plan=basic", "a", 0)
    draws = CellDraws(2000, np.random.default_rng(4))
    sample = draws.get(cell, alpha)
    for net in (np.array([0.0, 100.0, 160.0]), np.array([-10.0, 90.0, 150.0])):
        net32 = net.astype(np.float32)
        values = sample @ net32
        low, high = draws.interval(cell, net32, values)
        assert (low, high) == pytest.approx(np.quantile(values, [0.05, 0.95]), rel=1e-6)
        # Remembered: the same answer without looking at the values again.
        assert draws.interval(cell, net32, np.zeros_like(values)) == (low, high)
    # A cell whose draws are not shared (over the budget) is never remembered.
    tight = CellDraws(2000, np.random.default_rng(4), budget_bytes=0)
    net32 = np.array([0.0, 100.0, 160.0], dtype=np.float32)
    values = tight.get(cell, alpha) @ net32
    assert tight.interval(cell, net32, values) != tight.interval(cell, net32, values + 1.0)


@pytest.fixture
def slow_loads(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every statistics load takes 0.5 s; returns the start times of the loads."""
    started: list[float] = []
    load = runtime_module.load_cell_table

    def slow(*args: Any, **kwargs: Any) -> CellTable:
        started.append(time.monotonic())
        time.sleep(0.5)
        return load(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "load_cell_table", slow)
    return started


def in_threads(n: int, target: Any) -> list[Any]:
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        results[i] = target()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


class Clock:
    """A monotonic clock the test moves by hand (the runtime measures snapshot ages on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clocked(db: Any, settings: Any, clock: Clock) -> Runtime:
    return Runtime(settings, engine=db, clock=clock)


def test_one_refresh_at_a_time_and_nobody_waits_for_it_within_the_bound(
    clocked: Runtime, clock: Clock, slow_loads: list[float]
) -> None:
    clocked.settings.stats_refresh_seconds = 2.0
    shop = catalog()
    first = in_threads(4, lambda: clocked.stats(shop))
    assert len(slow_loads) == 1  # no snapshot yet: all four wait for one load
    assert all(s is first[0] for s in first)
    clock.now += 1.4
    assert clocked.stats(shop) is first[0]  # before the refresh is due (0.75 of the bound)
    assert len(slow_loads) == 1
    clock.now += 0.2
    add_cell(clocked)
    start = time.monotonic()
    stale = in_threads(4, lambda: (clocked.stats(shop), time.monotonic() - start))
    assert len(slow_loads) == 2  # one thread reloads ...
    fresh = [s for s, _ in stale if s is not first[0]]
    served_stale = [waited for s, waited in stale if s is first[0]]
    assert len(fresh) == 1 and len(served_stale) == 3  # ... the others keep deciding
    assert max(served_stale) < 0.25
    assert clocked.stats(shop) is fresh[0]


def test_at_the_bound_every_caller_waits_for_the_refresh(
    clocked: Runtime, clock: Clock, slow_loads: list[float]
) -> None:
    clocked.settings.stats_refresh_seconds = 2.0
    shop = catalog()
    first = clocked.stats(shop)
    add_cell(clocked)
    clock.now += 2.0
    got = in_threads(4, lambda: clocked.stats(shop))
    assert len(slow_loads) == 2  # one refresh, and nobody got the snapshot past its bound
    assert all(s is got[0] for s in got) and got[0] is not first
    assert got[0].fingerprint == (1, 1.0)
    assert clocked.age(got[0]) == 0.0


def test_an_unchanged_table_restarts_the_age_without_a_reload(
    clocked: Runtime, clock: Clock, slow_loads: list[float]
) -> None:
    clocked.settings.stats_refresh_seconds = 2.0
    shop = catalog()
    first = clocked.stats(shop)
    clock.now += 5.0
    kept = clocked.stats(shop)
    assert len(slow_loads) == 1 and kept.draws is first.draws
    assert clocked.age(kept) == 0.0


def add_cell(runtime: Runtime, weight: float = 1.0) -> None:
    with runtime.session() as session:
        session.add(
            CellStat(
                segment="plan=basic",
                experience_key="a",
                exposure_bucket=0,
                level="retained",
                weight=weight,
            )
        )
        session.commit()


def test_unchanged_cells_keep_the_snapshot_and_its_draws(
    runtime: Runtime, slow_loads: list[float]
) -> None:
    runtime.settings.stats_refresh_seconds = 0.0
    shop = catalog()
    first = runtime.stats(shop)
    kept = runtime.stats(shop)
    assert len(slow_loads) == 1
    assert kept is not first and kept.draws is first.draws and kept.tree is first.tree
    add_cell(runtime)
    changed = runtime.stats(shop)
    assert len(slow_loads) == 2 and changed.draws is not first.draws
    assert changed.fingerprint == (1, 1.0)


def test_a_new_catalog_waits_for_its_statistics(runtime: Runtime, slow_loads: list[float]) -> None:
    runtime.settings.stats_refresh_seconds = 60.0
    old = runtime.stats(catalog(version=1))
    new = runtime.stats(catalog(segmentation=("region",), version=2))
    assert new is not old and new.catalog_version == 2
    assert new.tree.depth == 1
    assert len(slow_loads) == 2


def test_own_writes_bring_the_reload_forward(runtime: Runtime, slow_loads: list[float]) -> None:
    runtime.settings.stats_refresh_seconds = 2.0
    shop = catalog()
    first = runtime.stats(shop)
    runtime.wrote_stats()
    assert runtime.stats(shop) is first  # not within half the interval
    time.sleep(1.0)
    assert runtime.stats(shop) is not first
    assert len(slow_loads) == 2
