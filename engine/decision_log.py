"""The decision log: a decision is committed before its answer goes out, and the decisions that one
worker makes at the same time share one transaction (group commit).

A transaction per decision costs a commit per decision: a WAL flush on PostgreSQL, and on SQLite
the database-wide write lock, which worker processes would otherwise pass back and forth (a writer
that finds it taken sleeps a millisecond or more). Here one writer thread per worker stores what
``submit`` queues: it takes everything queued, writes it in one transaction, and resolves each
decision's waiter once that transaction has committed; decisions queued meanwhile go into the
next one. (A thread calling ``log`` while nothing is being written or queued writes its decision
itself; on SQLite, the decisions an event loop makes in one pass are written on the loop, unless
that would wait: ``log_async``.) A caller answers only after its decision committed (``log``
returns then; the API awaits it on the event loop, engine.decisions.decide_async), so nothing is
answered before it is stored.
A batch that fails on a row (an integrity error) is retried one decision per transaction, so that
a bad row fails its own request only; one that fails because the database is busy or unreachable
fails as a whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Insert, Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from engine import prepared
from engine.models import Customer, Decision

log = logging.getLogger(__name__)

DECISIONS: Table = Decision.__table__  # type: ignore[attr-defined]
CUSTOMERS: Table = Customer.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DecisionWrite:
    """What one decision stores: its row, and first its customer's row when the decision creates
    the customer or changes its attributes (inserted, or updated on conflict)."""

    decision: dict[str, Any]
    customer: dict[str, Any] | None = None


class _Entry:
    """A queued decision and who waits for its commit: a thread (``future``) or a coroutine
    (``waiter``, an asyncio future of ``loop``)."""

    __slots__ = ("future", "loop", "waiter", "write")

    def __init__(
        self,
        write: DecisionWrite,
        future: Future[None] | None = None,
        waiter: asyncio.Future[None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.write, self.future, self.waiter, self.loop = write, future, waiter, loop


_STOP = _Entry(DecisionWrite({}))
"""Queued by ``close``: the writer stops after the batch it is in."""


class DecisionLog:
    """Group commit of one worker's decisions (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._upsert = _customer_upsert(engine)
        self._insert_decision = prepared.Prepared.compile(
            insert(DECISIONS), engine, [c.name for c in DECISIONS.columns]
        )
        self._wake = threading.Condition()
        self._queue: list[_Entry] = []
        self._sqlite = engine.dialect.name == "sqlite"
        self._pending: dict[asyncio.AbstractEventLoop, list[_Entry]] = {}
        """SQLite: the decisions each loop made in its current pass, written after it (_flush)."""
        self._writer: threading.Thread | None = None
        self._idle = False
        """The writer waits for work: only then does a new entry need to wake it."""
        self._busy = False
        """A transaction is being written (by the writer, or by a thread in ``log``)."""
        self._pid = os.getpid()
        self.transactions = 0
        self.decisions = 0

    def submit(self, write: DecisionWrite) -> Future[None]:
        """Queue ``write``; the future resolves once it is committed (or with what storing it
        raised)."""
        future: Future[None] = Future()
        self._enqueue([_Entry(write, future=future)])
        return future

    def log(self, write: DecisionWrite) -> None:
        """Store ``write``; returns once committed, raises what storing it raised.

        When nothing is being written or queued, the calling thread writes it at once (no hand-off
        to the writer, whose wake-up would be most of a lone decision's latency); otherwise it
        queues for the writer's next transaction."""
        with self._wake:
            inline = not self._busy and not self._queue and self._pid == os.getpid()
            self._busy = self._busy or inline
        if not inline:
            self.submit(write).result()
            return
        try:
            (error,) = self._write([write])
        finally:
            self._done_inline()
        if error is not None:
            raise error

    def _done_inline(self) -> None:
        """A write outside the writer thread has ended: wake the writer if work queued meanwhile."""
        with self._wake:
            self._busy = False
            if self._queue and self._idle:
                self._wake.notify()

    async def log_async(self, write: DecisionWrite) -> None:
        """``log`` for a coroutine: the event loop goes on while the write waits for its commit.

        On PostgreSQL the writer thread writes it (a commit is a network round trip, which the
        loop should spend on other requests), and resolves a whole batch's waiters of a loop with
        one call into it. On SQLite, where a commit is a local write of a fraction of a
        millisecond, handing each decision to a thread costs more than writing it (the two
        threads pass the interpreter lock back and forth at every call into SQLite): the
        decisions a loop makes in one pass are written together on the loop, right after that
        pass (``_flush``), unless another connection holds the write lock, in which case they go
        to the writer thread, which waits for it."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = _Entry(write, waiter=waiter, loop=loop)
        if self._sqlite:
            pending = self._pending.setdefault(loop, [])
            pending.append(entry)
            if len(pending) == 1:
                loop.call_soon(self._flush, loop)
        else:
            self._enqueue([entry])
        await waiter

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write the decisions ``loop`` queued in its last pass in one transaction, on the loop,
        if this needs no waiting: no write of this worker under way or queued (they go first, so
        that a customer's newer attributes are written last), and the write lock free. Otherwise,
        or if the transaction fails (a bad row, which the writer isolates), the writer thread
        writes them."""
        batch = self._pending.pop(loop, [])
        with self._wake:
            inline = not self._busy and not self._queue and self._pid == os.getpid()
            self._busy = self._busy or inline
        if not inline:
            self._enqueue(batch)
            return
        try:
            self._insert([entry.write for entry in batch], wait=False)
        except Exception:
            committed = False
        else:
            committed = True
        finally:
            self._done_inline()
        if committed:
            _wake_waiters([(entry.waiter, None) for entry in batch if entry.waiter is not None])
        else:
            self._enqueue(batch)

    def _enqueue(self, entries: Sequence[_Entry]) -> None:
        """Queue ``entries`` for the writer thread; starts it when none runs (first use, after
        ``close``, or in a forked child, which does not inherit its parent's thread)."""
        with self._wake:
            if self._pid != os.getpid():
                self._pid, self._writer, self._queue = os.getpid(), None, []
            self._queue.extend(entries)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run, name="nextbest-decision-log", daemon=True
                )
                self._idle = False
                self._writer.start()
            elif self._idle:
                self._wake.notify()

    def close(self) -> None:
        """Stop the writer once it has written what is queued (a later ``submit`` starts a new
        one)."""
        with self._wake:
            writer, self._writer = self._writer, None
            if writer is None or self._pid != os.getpid():
                return
            self._queue.append(_STOP)
            self._wake.notify()
        writer.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue or self._busy:
                    self._idle = True
                    self._wake.wait()
                self._idle, self._busy = False, True
                stop = _STOP in self._queue
                batch = [entry for entry in self._queue if entry is not _STOP]
                self._queue = []
            try:
                errors = self._write([entry.write for entry in batch])
            except BaseException as error:  # never leave a caller waiting for ever
                log.exception("decision log: a batch of %d failed", len(batch))
                errors = [error] * len(batch)
            finally:
                with self._wake:
                    self._busy = False
            _settle(batch, errors)
            if stop:
                return

    def _write(self, writes: Sequence[DecisionWrite]) -> list[BaseException | None]:
        """What storing each of ``writes`` raised (None: committed)."""
        try:
            self._insert(writes)
        except Exception as error:
            if len(writes) == 1 or isinstance(error, OperationalError):
                # The database is busy or gone: trying each row again would only wait again.
                return [error] * len(writes)
            errors: list[BaseException | None] = []
            for write in writes:
                try:
                    self._insert([write])
                except Exception as single:
                    errors.append(single)
                else:
                    errors.append(None)
            return errors
        return [None] * len(writes)

    def _insert(self, writes: Sequence[DecisionWrite], *, wait: bool = True) -> None:
        """One transaction; wait=False: raise prepared.LockTaken rather than wait for the lock."""
        # A later decision in the batch carries the newer attributes; ids in order so that
        # concurrent transactions lock customer rows in the same order.
        customers = {w.customer["id"]: w.customer for w in writes if w.customer is not None}
        with prepared.cursor(self.engine, write=True, wait=wait) as cursor:
            if customers:
                cursor.executemany(
                    self._upsert.sql,
                    [self._upsert.parameters(customers[i]) for i in sorted(customers)],
                )
            cursor.executemany(
                self._insert_decision.sql,
                [self._insert_decision.parameters(w.decision) for w in writes],
            )
        self.transactions += 1
        self.decisions += len(writes)


def _settle(batch: Sequence[_Entry], errors: Sequence[BaseException | None]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Any]]] = {}
    for entry, error in zip(batch, errors, strict=True):
        if entry.future is not None:
            if error is None:
                entry.future.set_result(None)
            else:
                entry.future.set_exception(error)
        elif entry.waiter is not None and entry.loop is not None:
            by_loop.setdefault(entry.loop, []).append((entry.waiter, error))
    for loop, waiters in by_loop.items():
        with suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_wake_waiters, waiters)


def _wake_waiters(waiters: Sequence[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for waiter, error in waiters:
        if waiter.done():  # the request was cancelled
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


def _customer_upsert(engine: Engine) -> prepared.Prepared:
    """INSERT a customer, or on conflict replace its attributes (SQLite and PostgreSQL)."""
    module: Any = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = module.insert(CUSTOMERS)
    upsert: Insert = statement.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "attributes": statement.excluded.attributes,
            "updated_at": statement.excluded.updated_at,
        },
    )
    return prepared.Prepared.compile(upsert, engine, CUSTOMER_COLUMNS)


CUSTOMER_COLUMNS = ("id", "name", "attributes", "created_at", "updated_at")


__all__ = ["DecisionLog", "DecisionWrite"]
