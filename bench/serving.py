"""`nextbest serve --workers N` of this checkout for the benchmarks: started, awaited, stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if not children.exists():
        return []
    out = []
    for child in children.read_text().split():
        try:
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(int(child))
        except OSError:
            continue
    return out


@contextmanager
def server(
    url: str, workers: int, *, factory: str | None = None, env: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """``nextbest serve --workers N``: yields its port and the pids of its worker processes.

    factory: instead, uvicorn with this application factory ("module:function", importable from
    the checkout) in one worker process; env: more environment for the server.
    """
    import httpx

    port = free_port()
    environment = {
        **os.environ,
        "NEXTBEST_DATABASE_URL": url,
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if factory is None:
        command = [sys.executable, str(ROOT / "cli.py"), "serve", "--workers", str(workers)]
    else:
        if workers != 1:
            raise ValueError("an application factory runs in one worker")
        command = [sys.executable, "-m", "uvicorn", factory, "--factory", "--log-level", "warning"]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the workers can be ended with it
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            pids = workers_of(process.pid) if workers > 1 else [process.pid]
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                up = False
            if up and len(pids) == workers:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        yield {"port": port, "pids": pids}
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # not stopped in a minute: end it and its workers
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
