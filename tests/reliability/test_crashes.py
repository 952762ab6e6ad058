"""kill -9 in the middle of work: a CSV import, and a server under decision and outcome traffic.

After each crash: no batch is stored in part, everything acknowledged is stored, and the cell
statistics equal a replay of the log (`nextbest verify`). Then the work resumes and finishes.
"""

from __future__ import annotations

import json
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
from sqlmodel import Session, col, func, select

from engine.db import read_connection
from engine.integrity import verify
from engine.models import Decision, ImportRun, Outcome
from engine.runtime import Runtime
from tests.conftest import repo_root
from tests.engine.test_csvio import write_events

Headers = dict[str, dict[str, str]]
CLI = [sys.executable, "-c", "import cli; cli.main()"]
ROWS, BATCH = 20_000, 500
KILLS = 3
ADMIN = "nb_crashadm_crash-admin-secret"


def _env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(repo_root()),
        "NEXTBEST_DATABASE_URL": database_url,
        "NEXTBEST_BOOTSTRAP_ADMIN_KEY": ADMIN,
        "NEXTBEST_MAINTENANCE_SECONDS": "0",
    }


def _count(runtime: Runtime, model: Any) -> int:
    with Session(runtime.engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def _assert_no_drift(runtime: Runtime) -> None:
    with Session(runtime.engine) as session:
        report = verify(session=session)
        session.rollback()
    assert report.ok, report.as_dict()


def _committed(runtime: Runtime) -> int:
    # Read outside a transaction: on SQLite a session would queue for the write lock between the
    # import's batches, and the import (a batch of 500 rows takes milliseconds) could finish
    # while the poll waits.
    with read_connection(runtime.engine) as connection:
        found = connection.execute(select(col(ImportRun.rows_committed))).first()
        return int(found[0]) if found is not None else 0


def test_kill_9_during_an_import_then_resume(
    business: Any, runtime: Runtime, database_url: str, tmp_path: Path
) -> None:
    path = write_events(tmp_path / "events.csv", ROWS)
    command = [*CLI, "import", str(path), "--batch-size", str(BATCH), "--quiet"]
    proc = subprocess.Popen(command, env=_env(database_url), cwd=repo_root())
    try:
        deadline = time.monotonic() + 120
        while _committed(runtime) < 3 * BATCH and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert proc.poll() is None, "the import finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    committed, stored = _committed(runtime), _count(runtime, Outcome)
    assert (
        stored == committed < ROWS
    )  # batches are whole: the rows and the progress commit together
    assert stored % BATCH == 0
    _assert_no_drift(runtime)

    resumed = subprocess.run(
        [*command], env=_env(database_url), cwd=repo_root(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _count(runtime, Outcome) == ROWS
    _assert_no_drift(runtime)
    print(json.dumps({"crash_import": {"killed_after_rows": committed, "rows": ROWS}}))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`nextbest serve` in its own process; ``start()`` (re)starts it, ``kill()`` kills -9."""
    port = _free_port()
    state: dict[str, Any] = {"url": f"http://127.0.0.1:{port}", "proc": None}

    def start() -> None:
        log = state["log"] = (tmp_path / "server.log").open("a")
        state["proc"] = subprocess.Popen(
            [*CLI, "serve", "--port", str(port)],
            env=_env(database_url),
            cwd=repo_root(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{state['url']}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError((tmp_path / "server.log").read_text()[-3000:])

    def kill() -> None:
        state["proc"].send_signal(signal.SIGKILL)
        state["proc"].wait()
        state["log"].close()

    state["start"], state["kill"] = start, kill
    try:
        yield state
    finally:
        if state["proc"] is not None and state["proc"].poll() is None:
            state["proc"].kill()
            state["proc"].wait()
        if state.get("log") is not None:
            state["log"].close()


def _traffic(
    url: str, headers: dict[str, str], stop: threading.Event, acked: dict[str, Any], n: int
) -> None:
    """Decide, then record the outcome; remember what the server acknowledged."""
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        i = 0
        while not stop.is_set():
            i += 1
            customer = f"load-{n}-{i % 50}"
            try:
                made = http.post(
                    "/v1/decisions",
                    json={
                        "customer_id": customer,
                        "attributes": {
                            "plan": ["basic", "plus", "premium"][i % 3],
                            "tenure_months": i % 40,
                        },
                    },
                )
                if made.status_code != 201:
                    continue
                decision = made.json()["decision_id"]
                acked["decisions"].add(decision)
                result = ["churned", "retained", "upgraded"][i % 3]
                done = http.post(
                    "/v1/outcomes",
                    json={
                        "decision_id": decision,
                        "result": result,
                        "idempotency_key": f"k-{decision}",
                    },
                )
                if done.status_code in (200, 201):
                    acked["outcomes"].add(decision)
            except httpx.TransportError:
                time.sleep(0.05)  # the server is down: wait for it to come back


def test_kill_9_under_decision_load(
    business: Any, runtime: Runtime, server: dict[str, Any]
) -> None:
    acked: dict[str, Any] = {"decisions": set(), "outcomes": set()}
    headers = {"Authorization": f"Bearer {ADMIN}"}
    for crash in range(KILLS):
        server["start"]()
        stop = threading.Event()
        threads = [
            threading.Thread(target=_traffic, args=(server["url"], headers, stop, acked, t))
            for t in range(4)
        ]
        for thread in threads:
            thread.start()
        target = (crash + 1) * 60
        deadline = time.monotonic() + 120
        while len(acked["outcomes"]) < target:
            assert time.monotonic() < deadline, acked
            time.sleep(0.01)
        server["kill"]()  # mid-traffic: requests are in flight
        stop.set()
        for thread in threads:
            thread.join()

        with Session(runtime.engine) as session:
            decisions = set(session.exec(select(Decision.id)).all())
            outcomes = set(
                session.exec(
                    select(Outcome.decision_id).where(col(Outcome.decision_id).is_not(None))
                ).all()
            )
        assert acked["decisions"] <= decisions  # acknowledged means committed
        assert acked["outcomes"] <= outcomes
        _assert_no_drift(runtime)

    server["start"]()  # it restarts on the database the crashes left
    response = httpx.post(
        f"{server['url']}/v1/decisions",
        json={"customer_id": "after", "attributes": {"plan": "basic"}},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    print(
        json.dumps(
            {
                "crash_server": {
                    "kills": KILLS,
                    "decisions": len(acked["decisions"]),
                    "outcomes": len(acked["outcomes"]),
                }
            }
        )
    )
