"""Several workers over one database: they share nothing else, a result stored through one counts in
the others' decisions within the staleness bound, and a decision answered 201 is never lost, even
when its worker is killed (kill -9) under load."""

from __future__ import annotations

import datetime as dt
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, bindparam, select

from api import create_app
from engine.config import Settings
from engine.models import Decision
from engine.runtime import WORKER_YOUNG_COLLECTION, Runtime
from tests.conftest import repo_root
from tests.engine.test_metrics import value

Headers = dict[str, dict[str, str]]
CUSTOMER = {"plan": "plus", "tenure_months": 7, "monthly_spend": 50}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def events(n: int, experience: str, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": f"{prefix}-{i}",
            "experience": experience,
            "result": "retained",
            "occurred_at": dt.datetime.now(dt.UTC).isoformat(),
            "attributes": CUSTOMER,
        }
        for i in range(n)
    ]


def evidence(body: dict[str, Any], experience: str) -> float:
    (found,) = [e for e in body["explanation"]["evidence"] if e["experience"] == experience]
    return float(found["n"])


def test_a_result_stored_through_one_worker_counts_in_another_within_the_bound(
    client: TestClient, keys: Headers, business: Any, database_url: str
) -> None:
    """Worker A (``client``) stores results; worker B (its own runtime and connection pool, with
    a clock the test moves) decides. B may serve its snapshot until the bound, never after."""
    client.post(
        "/v1/events:batch", json={"events": events(20, "no_offer", "a")}, headers=keys["service"]
    )
    clock = Clock()
    worker_b = Runtime(
        Settings(database_url=database_url, seed=3, stats_refresh_seconds=2.0), clock=clock
    )
    try:
        with TestClient(create_app(runtime=worker_b)) as b:

            def decide_on_b() -> float:
                response = b.post(
                    "/v1/decisions",
                    json={"customer_id": "c-new", "attributes": CUSTOMER},
                    headers=keys["agent"],
                )
                assert response.status_code == 201, response.text
                return evidence(response.json(), "no_offer")

            before = decide_on_b()
            assert before == pytest.approx(20, rel=1e-3)
            response = client.post(
                "/v1/events:batch",
                json={"events": events(5, "no_offer", "b")},
                headers=keys["service"],
            )
            assert response.status_code == 201
            clock.now += 1.0
            assert decide_on_b() == before  # within the bound B may serve what it has
            clock.now += 1.0
            assert decide_on_b() == pytest.approx(25, rel=1e-3)  # at the bound it must not
    finally:
        worker_b.close()


# A real server, killed under load --------------------------------------------------------------


SERVE = [sys.executable, str(repo_root() / "cli.py"), "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(database_url: str, business: Any, keys: Headers) -> Iterator[tuple[int, int]]:
    """``nextbest serve --workers 2`` on the test database: yields (port, pid of the master)."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(repo_root()),
        "NEXTBEST_DATABASE_URL": database_url,
        "NEXTBEST_MAINTENANCE_SECONDS": "0",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [*SERVE, "--port", str(port), "--workers", "2"],
        env=env,
        cwd=repo_root(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(workers_of(process.pid)) < 2 or not answers(port):
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def workers_of(pid: int) -> list[int]:
    """The worker processes uvicorn started (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if not children.exists():
        return []
    out = []
    for child in children.read_text().split():
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in command:
            out.append(int(child))
    return out


def connections(pid: int, port: int) -> int:
    """Established TCP connections to ``port`` held by process ``pid`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                n += 1
    return n


def test_no_decision_answered_201_is_lost_when_a_worker_is_killed(
    server: tuple[int, int], keys: Headers, sql_engine: Engine
) -> None:
    port, master = server
    answered: list[str] = []
    failed = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def load(i: int) -> None:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                response = client.post(
                    "/v1/decisions",
                    json={"customer_id": f"k-{i}-{n % 7}", "attributes": CUSTOMER},
                    headers=keys["service"],
                )
            except httpx.HTTPError:  # the worker died under this connection
                with lock:
                    failed[0] += 1
                client.close()
                client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
                continue
            if response.status_code == 201:
                with lock:
                    answered.append(response.json()["decision_id"])
        client.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(answered) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The worker holding the most client connections: requests are in flight on it.
        victim = max(workers_of(master), key=lambda pid: connections(pid, port))
        assert connections(victim, port) > 0
        os.kill(victim, signal.SIGKILL)
        at_kill = len(answered)
        deadline = time.monotonic() + 60
        while len(answered) < at_kill + 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=keys["service"], timeout=10)

    assert failed[0] > 0  # the kill cut connections with requests in flight
    assert len(answered) >= at_kill + 200  # the server went on answering after the kill
    assert len(set(answered)) == len(answered)
    statement = select(Decision.id).where(Decision.id.in_(bindparam("ids", expanding=True)))  # type: ignore[attr-defined]
    with sql_engine.connect() as connection:
        stored = set(connection.execute(statement, {"ids": answered}).scalars())
    assert stored == set(answered)
    # Counted once committed and before the answer: at least every 201, the killed worker's too.
    assert scraped.status_code == 200
    counted = sum(
        value(scraped.text, "nextbest_decisions_total", source=source)
        for source in ("thompson", "explore", "rule", "exploit")
    )
    assert counted >= len(answered)


@pytest.mark.skipif(bool(os.environ.get("NEXTBEST_TEST_DATABASE_URL")), reason="SQLite's lock")
def test_reads_answer_while_another_process_holds_the_sqlite_write_lock(
    client: TestClient, business: Any, keys: Headers, database_url: str
) -> None:
    """Requests that only read (GET, and a decision's own reads and reloads) take no write lock:
    they answer at once while a writer elsewhere holds it (before, a GET began IMMEDIATE and
    waited out the busy timeout, 30 s)."""
    import sqlite3

    path = database_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        for url in ("/v1/experiences", "/v1/outcome-scale", "/v1/audit", "/healthz"):
            response = client.get(url, headers=keys["admin"])
            assert response.status_code == 200, (url, response.text)
        # The held lock blocks writes only: a decision waits for its commit, not for its reads.
        assert time.monotonic() - started < 10
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_serving_worker_collects_garbage_rarely_and_restores_the_thresholds(
    runtime: Runtime,
) -> None:
    """While the application runs, young collections are rare (engine.runtime's
    WORKER_YOUNG_COLLECTION); the process's own thresholds come back when it stops."""
    before = gc.get_threshold()
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.get("/livez").status_code == 200
        assert gc.get_threshold() == (max(before[0], WORKER_YOUNG_COLLECTION), *before[1:])
    assert gc.get_threshold() == before
