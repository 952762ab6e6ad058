"""Group commit of decisions: every decision stored before its caller returns, concurrent ones in
shared transactions, a bad one failing alone."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from engine.decision_log import DecisionLog, DecisionWrite
from engine.models import Customer, Decision, Experience, utcnow
from engine.runtime import Runtime
from tests.test_api_triples import count


@pytest.fixture
def log(runtime: Runtime) -> DecisionLog:
    with runtime.session() as session:
        session.add(Experience(key="no_offer", name="No offer", channels=[]))
        session.add(Customer(id="c-1", attributes={}))
        session.commit()
    return DecisionLog(runtime.engine)


def decision(experience: str = "no_offer", customer: str = "c-1") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "customer_id": customer,
        "created_at": utcnow(),
        "channel": None,
        "agent_id": None,
        "attributes": {},
        "segment": "",
        "candidates": [],
        "experience_key": experience,
        "propensity": 1.0,
        "source": "exploit",
        "rule_id": None,
        "ruleset_version": None,
        "experiment_key": None,
        "arm": None,
        "overrides": {},
    }


def run_together(log: DecisionLog, writes: list[DecisionWrite]) -> list[BaseException | None]:
    """Log ``writes`` from one thread each while the first transaction is held open until all
    the others have queued, so that they must share the second one."""
    insert = log._insert
    writing, gate = threading.Event(), threading.Event()

    def slow_first(batch: Any) -> None:
        if not gate.is_set():
            writing.set()
            while len(log._queue) < len(writes) - 1:
                time.sleep(0.001)
            gate.set()
        insert(batch)

    log._insert = slow_first  # type: ignore[method-assign]
    errors: list[BaseException | None] = [None] * len(writes)

    def one(i: int) -> None:
        try:
            log.log(writes[i])
        except BaseException as error:
            errors[i] = error

    first = threading.Thread(target=one, args=(0,))
    first.start()
    assert writing.wait(timeout=30)
    others = [threading.Thread(target=one, args=(i,)) for i in range(1, len(writes))]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(timeout=30)
    return errors


def test_one_caller_commits_alone(log: DecisionLog, runtime: Runtime) -> None:
    log.log(DecisionWrite(decision()))
    assert (log.transactions, log.decisions) == (1, 1)
    assert count(runtime, Decision) == 1


def test_a_lone_caller_writes_in_its_own_thread_and_others_queue_meanwhile(
    log: DecisionLog, runtime: Runtime
) -> None:
    insert, writers = log._insert, []

    def record(batch: Any) -> None:
        writers.append(threading.current_thread().name)
        insert(batch)

    log._insert = record  # type: ignore[method-assign]
    log.log(DecisionWrite(decision()))
    assert writers == [threading.current_thread().name]
    assert run_together(log, [DecisionWrite(decision()) for _ in range(5)]) == [None] * 5
    assert writers[2:] == ["nextbest-decision-log"]  # the four queued behind the first
    assert count(runtime, Decision) == 6


def test_concurrent_decisions_share_a_transaction(log: DecisionLog, runtime: Runtime) -> None:
    errors = run_together(log, [DecisionWrite(decision()) for _ in range(12)])
    assert errors == [None] * 12
    assert count(runtime, Decision) == 12
    assert (log.transactions, log.decisions) == (2, 12)


def test_a_bad_decision_fails_alone(log: DecisionLog, runtime: Runtime) -> None:
    writes = [DecisionWrite(decision()) for _ in range(6)]
    writes[3] = DecisionWrite(decision(experience="yacht"))
    errors = run_together(log, writes)
    assert isinstance(errors[3], IntegrityError)
    assert [e for i, e in enumerate(errors) if i != 3] == [None] * 5
    assert count(runtime, Decision) == 5


def test_customer_rows_are_inserted_or_updated_first(log: DecisionLog, runtime: Runtime) -> None:
    now = utcnow()
    new = {"id": "c-2", "name": None, "attributes": {"plan": "basic"}}
    log.log(
        DecisionWrite(
            decision(customer="c-2"), customer={**new, "created_at": now, "updated_at": now}
        )
    )
    changed = {**new, "attributes": {"plan": "plus"}, "created_at": now, "updated_at": utcnow()}
    log.log(DecisionWrite(decision(customer="c-2"), customer=changed))
    with runtime.session() as session:
        row = session.get(Customer, "c-2")
        assert row is not None
        assert row.attributes == {"plan": "plus"} and row.updated_at == changed["updated_at"]
    assert count(runtime, Decision) == 2


def test_a_busy_database_fails_the_batch_without_retrying_each_row(log: DecisionLog) -> None:
    calls: list[int] = []

    def busy(batch: Any) -> None:
        calls.append(len(batch))
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    log._insert = busy  # type: ignore[method-assign]
    errors = run_together(log, [DecisionWrite(decision()) for _ in range(4)])
    assert all(isinstance(e, OperationalError) for e in errors)
    assert calls == [1, 3]


def test_closing_writes_what_is_queued_and_a_later_decision_starts_a_new_writer(
    log: DecisionLog, runtime: Runtime
) -> None:
    futures = [log.submit(DecisionWrite(decision())) for _ in range(5)]
    log.close()
    assert all(f.result(timeout=0) is None for f in futures)
    assert count(runtime, Decision) == 5
    log.log(DecisionWrite(decision()))
    assert count(runtime, Decision) == 6
    log.close()


def test_coroutines_await_their_commit_and_share_transactions(
    log: DecisionLog, runtime: Runtime
) -> None:
    insert, held = log._insert, threading.Event()

    def first_waits_for_the_others(batch: Any, **how: Any) -> None:
        if not held.is_set():  # the writer may have taken a few at once: wait for the rest
            held.set()
            while len(batch) + len(log._queue) < 20:
                time.sleep(0.001)
        insert(batch, **how)

    log._insert = first_waits_for_the_others  # type: ignore[method-assign]
    writes = [DecisionWrite(decision()) for _ in range(20)]

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(log.log_async(w) for w in writes), return_exceptions=True)

    assert asyncio.run(all_at_once()) == [None] * 20
    assert count(runtime, Decision) == 20
    # The first transaction held the writer until all 20 were queued: at most one more.
    assert log.transactions <= 2 and log.decisions == 20
    log.close()


def test_a_coroutines_bad_decision_fails_alone(log: DecisionLog, runtime: Runtime) -> None:
    writes = [DecisionWrite(decision()) for _ in range(8)]
    writes[5] = DecisionWrite(decision(experience="yacht"))

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(log.log_async(w) for w in writes), return_exceptions=True)

    results = asyncio.run(all_at_once())
    assert isinstance(results[5], IntegrityError)
    assert [r for i, r in enumerate(results) if i != 5] == [None] * 7
    assert count(runtime, Decision) == 7
    log.close()


sqlite_only = pytest.mark.skipif(
    bool(os.environ.get("NEXTBEST_TEST_DATABASE_URL")), reason="the loop writes only on SQLite"
)


@sqlite_only
def test_on_sqlite_a_loops_decisions_are_written_together_on_the_loop(
    log: DecisionLog, runtime: Runtime
) -> None:
    writes = [DecisionWrite(decision()) for _ in range(20)]

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(log.log_async(w) for w in writes), return_exceptions=True)

    assert asyncio.run(all_at_once()) == [None] * 20
    assert count(runtime, Decision) == 20
    assert (log.transactions, log.decisions) == (1, 20)
    assert log._writer is None  # no thread was needed


@sqlite_only
def test_on_sqlite_the_loop_never_waits_for_another_connections_write_lock(
    log: DecisionLog, runtime: Runtime
) -> None:
    """While another connection holds the write lock, the loop hands its decisions to the writer
    thread at once and goes on; they are answered once that thread could commit them."""
    holder = runtime.engine.raw_connection()
    holder.driver_connection.execute("BEGIN IMMEDIATE")
    writes = [DecisionWrite(decision()) for _ in range(5)]
    ticks, longest_pause = 0, 0.0

    async def decisions_and_a_ticker() -> list[Any]:
        async def ticker() -> None:
            nonlocal ticks, longest_pause
            while ticks < 20:
                before = time.monotonic()
                await asyncio.sleep(0.005)
                longest_pause = max(longest_pause, time.monotonic() - before)
                ticks += 1
            holder.driver_connection.execute("ROLLBACK")

        results = asyncio.gather(*(log.log_async(w) for w in writes), return_exceptions=True)
        await ticker()
        return await results

    try:
        assert asyncio.run(decisions_and_a_ticker()) == [None] * 5
    finally:
        holder.close()
    # The loop ran on while the lock was taken (waiting for it would block for the busy timeout,
    # 30 s, and the lock is released only by the ticker).
    assert ticks == 20 and longest_pause < 5
    assert count(runtime, Decision) == 5
    assert log._writer is not None  # the writer thread waited for the lock
    log.close()
