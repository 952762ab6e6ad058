"""A real server on a free local port, for the browser tests, the page benchmark and the
screenshots: ``nextbest`` served by uvicorn in a child process over a given database.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def live_server(
    database_url: str, *, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> Iterator[str]:
    """Serve ``database_url`` on 127.0.0.1 and yield the base URL; stop the server on exit.

    The child gets a fixed session secret unless ``env`` names one, no background settling and
    the repository root on its path; its log goes to stderr.
    """
    port = free_port()
    child_env = {
        **os.environ,
        "NEXTBEST_DATABASE_URL": database_url,
        "NEXTBEST_MAINTENANCE_SECONDS": "0",
        "NEXTBEST_SESSION_SECRET": os.urandom(16).hex(),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    command = [
        sys.executable, "-m", "uvicorn", "api:app_from_env", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=child_env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base, process, timeout)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def seed_demo_database(database_url: str, **sizes: Any) -> None:
    """Migrate ``database_url`` and load the demo business into it (engine.demo.seed_demo;
    ``sizes`` passes n_customers, n_triples, decisions, agent_decisions)."""
    from engine.db import make_engine, migrate
    from engine.demo import seed_demo

    engine = make_engine(database_url)
    try:
        migrate(engine)
        seed_demo(engine=engine, **sizes)
    finally:
        engine.dispose()


def _wait(base: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not answer on {base} within {timeout:.0f} s")


__all__ = ["free_port", "live_server", "seed_demo_database"]
