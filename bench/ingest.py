"""Ingest benchmark: triples/s through POST /v1/events:batch and `nextbest import`, and peak memory.

Prints one JSON object. Every figure comes from this run on this machine: the CSV import is run as
a real `nextbest import` subprocess (its peak RSS read from the kernel's rusage), the batch API
through a real uvicorn server on loopback. Databases are scratch files / scratch PostgreSQL
databases, dropped afterwards.

    python bench/ingest.py                  # SQLite and PostgreSQL (if reachable), 100k and 1M
    python bench/ingest.py --quick          # 20k rows, SQLite only
    python bench/ingest.py --repeat 3       # each figure the median of three runs (shared machine)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.db import make_engine, migrate  # noqa: E402
from engine.demo import DEMO_KEYS, seed_demo  # noqa: E402
from engine.simulate import make_world  # noqa: E402

PG_SERVER = os.environ.get("NEXTBEST_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NEXTBEST = str(Path(sys.executable).with_name("nextbest"))


def write_events(path: Path, n: int, seed: int = 3) -> None:
    """n triples from the simulator's world, as an events CSV with six attribute columns."""
    world = make_world(seed)
    rng = np.random.default_rng(seed)
    names = [spec.name for spec in world.attributes]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["customer_id", "experience", "result", "occurred_at", *names])
        chunk = 100_000
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            people, triples = world.historical_log(max(size // 10, 1), size, rng)
            attrs = {p["customer_id"]: p["attributes"] for p in people}
            for t in triples:
                a = attrs[t["customer_id"]]
                writer.writerow(
                    [
                        f"{t['customer_id']}-{start}",
                        t["experience"],
                        t["result"],
                        t["occurred_at"].isoformat().replace("+00:00", "Z"),
                        *(_cell(a.get(name)) for name in names),
                    ]
                )


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh database holding the demo catalog (no triples): SQLite file or PostgreSQL db."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.db'}"
        _prepare(url)
        yield url
        return
    server = make_url(PG_SERVER)
    name = f"nextbest_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        _prepare(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _prepare(url: str) -> None:
    engine = make_engine(url)
    migrate(engine)
    seed_demo(engine=engine, n_customers=1, n_triples=1)
    engine.dispose()


# Runs `nextbest import` in a child that reports its own peak RSS (RUSAGE_SELF) when it exits:
# RUSAGE_CHILDREN in this process would give the maximum over every child so far.
_IMPORT_WITH_PEAK = """
import resource, sys
from cli import main
sys.argv = ["nextbest", "import", *sys.argv[1:]]
try:
    main()
finally:
    print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, with every run's rate and load average beside it."""
    ordered = sorted(runs, key=lambda run: run["triples_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        chosen["runs_triples_per_s"] = [run["triples_per_s"] for run in runs]
        chosen["runs_load_1min"] = [run["load_1min"] for run in runs]
    return chosen


def csv_import(url: str, path: Path, rows: int) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_PEAK, str(path), "--db", url, "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr or done.stdout)
    peak_kib = int(done.stderr.rsplit("peak_kib", 1)[1].split()[0])
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "triples_per_s": round(rows / seconds),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "load_1min": _load(),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(url: str) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "NEXTBEST_DATABASE_URL": url}
    process = subprocess.Popen(
        [NEXTBEST, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def batch_api(url: str, path: Path, rows: int, batch: int = 5000) -> dict[str, Any]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fixed = {"customer_id", "experience", "result", "occurred_at"}
        events = []
        for row in reader:
            attrs = {k: v for k, v in row.items() if k not in fixed and v != ""}
            events.append({**{k: row[k] for k in fixed}, "attributes": _typed(attrs)})
            if len(events) >= rows:
                break
    headers = {"Authorization": f"Bearer {DEMO_KEYS['service']}"}
    per_batch = []
    with server(url) as base, httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        start = time.perf_counter()
        for i in range(0, len(events), batch):
            t = time.perf_counter()
            response = client.post("/v1/events:batch", json={"events": events[i : i + batch]})
            response.raise_for_status()
            per_batch.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
    return {
        "rows": len(events),
        "batch_size": batch,
        "seconds": round(seconds, 2),
        "triples_per_s": round(len(events) / seconds),
        "median_batch_seconds": round(statistics.median(per_batch), 3),
        "load_1min": _load(),
    }


def _typed(attrs: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value in ("true", "false"):
            out[key] = value == "true"
        else:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20k rows on SQLite only")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each measurement; the median is reported"
    )
    args = parser.parse_args()
    sizes = [20_000] if args.quick else [100_000, 1_000_000]
    kinds = ["sqlite"] if args.quick else ["sqlite", "postgresql"]
    if "postgresql" in kinds:
        try:
            create_engine(PG_SERVER).connect().close()
        except Exception:  # no PostgreSQL server here: report SQLite only
            kinds = ["sqlite"]
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "csv_import": {},
        "batch_api": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        files = {}
        for n in sizes:
            files[n] = workdir / f"events-{n}.csv"
            write_events(files[n], n)
        for kind in kinds:
            for n in sizes:
                runs = []
                for _ in range(args.repeat):
                    with database(kind, workdir) as url:
                        runs.append(csv_import(url, files[n], n))
                result["csv_import"][f"{kind}_{n}"] = median_run(runs)
            runs = []
            for _ in range(args.repeat):
                with database(kind, workdir) as url:
                    runs.append(batch_api(url, files[sizes[0]], min(sizes[0], 50_000)))
            result["batch_api"][kind] = median_run(runs)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
