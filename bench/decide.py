"""Decision benchmark: decisions/s and latency, in-process and over HTTP, at 10k and 1M events.

Prints one JSON object. Every figure comes from this run on this machine:

- in_process: what one worker does for a decision, without HTTP: a ``Runtime`` (catalog,
  eligibility and statistics caches, refreshed as in a server) and ``engine.decisions.decide``,
  each decision logged and committed before the next starts. Latency p50/p99 at 10k and at 1M
  logged events, measured in alternating blocks so that noise from other processes on the machine
  hits both alike, and the ratio 1M / 10k.
- http: ``nextbest serve --workers 2`` on loopback under a closed-loop load generator in this
  process (asyncio, keep-alive connections, one request in flight on each). Decisions/s, p50/p99,
  and the logging check: the decisions table grew by exactly the number of 201 answers.

The business is the demo's (6 attributes, 8 experiences, 3 result levels) with a segment tree of
depth 4. Events come from the simulator's world (bench/ingest.py writes them) through a real
``nextbest import``, about ten per customer. Decisions are asked for stored customers picked at
random, by id, on the phone channel. Databases are scratch files / scratch PostgreSQL databases,
dropped afterwards.

    python bench/decide.py                  # SQLite and PostgreSQL (if reachable), 10k and 1M
    python bench/decide.py --quick          # 10k and 100k events, SQLite only, short runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text
from sqlmodel import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import serving  # noqa: E402
from bench.ingest import PG_SERVER, csv_import, database, write_events  # noqa: E402
from engine import catalog  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.db import make_engine  # noqa: E402
from engine.decisions import decide  # noqa: E402
from engine.demo import DEMO_KEYS  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.schemas import DecisionIn, SegmentationIn  # noqa: E402

TREE = ["plan", "tenure_months", "complaints_90d", "region"]
"""The segmentation: a tree of depth 4 (3 x 3 x 3 x 4 = 108 leaves)."""
CHANNEL = "phone"


@contextmanager
def prepare(kind: str, workdir: Path, events: Path, rows: int) -> Iterator[dict[str, Any]]:
    """A fresh database with the demo catalog, the depth-4 tree and ``rows`` imported events."""
    with database(kind, workdir) as url:
        engine = make_engine(url)
        with Session(engine) as session:
            catalog.put_segmentation(
                session=session,
                segmentation_in=SegmentationIn(attributes=TREE),
                actor="bench",
            )
            session.commit()
        engine.dispose()
        seeded = csv_import(url, events, rows)
        yield {"url": url, "events": rows, "import_seconds": seeded["seconds"]}


def customer_ids(url: str, n: int = 20_000, seed: int = 5) -> list[str]:
    """Up to ``n`` stored customers, picked at random (seeded)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        ids = sorted(connection.execute(text("SELECT id FROM customers")).scalars())
    engine.dispose()
    rng = np.random.default_rng(seed)
    return [ids[i] for i in rng.choice(len(ids), size=min(n, len(ids)), replace=False)]


def count_decisions(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        n = int(connection.execute(text("SELECT count(*) FROM decisions")).scalar_one())
    engine.dispose()
    return n


# In-process ------------------------------------------------------------------------------------


def _decide_once(runtime: Runtime, body: DecisionIn) -> None:
    """One decision as a worker makes it: decided, logged and committed."""
    decide(runtime=runtime, decision_in=body)


def _summary(latencies: list[float]) -> dict[str, Any]:
    seconds = np.asarray(latencies)
    return {
        "decisions": len(latencies),
        "decisions_per_s": round(len(latencies) / float(seconds.sum())),
        "p50_ms": round(float(np.percentile(seconds, 50)) * 1000, 3),
        "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 3),
        "max_ms": round(float(seconds.max()) * 1000, 3),
    }


def in_process(
    dbs: dict[str, dict[str, Any]], *, decisions: int, block: int, warmup: int
) -> dict[str, Any]:
    """Decisions one at a time against each database: ``warmup`` first (caches fill: catalog,
    statistics, the posterior draws of the cells met), then alternating blocks of ``block``."""
    runtimes = {label: Runtime(Settings(database_url=db["url"])) for label, db in dbs.items()}
    ids = {label: customer_ids(db["url"]) for label, db in dbs.items()}
    rng = np.random.default_rng(11)
    before = {label: count_decisions(db["url"]) for label, db in dbs.items()}

    def run(label: str, n: int) -> list[float]:
        runtime, pool, out = runtimes[label], ids[label], []
        for i in rng.integers(len(pool), size=n):
            body = DecisionIn(customer_id=pool[i], channel=CHANNEL)
            start = time.perf_counter()
            _decide_once(runtime, body)
            out.append(time.perf_counter() - start)
        return out

    cold = {label: run(label, warmup) for label in dbs}
    latencies: dict[str, list[float]] = {label: [] for label in dbs}
    labels = list(dbs)
    rounds = max(decisions // block, 1)
    for r in range(rounds):
        for label in labels if r % 2 else labels[::-1]:
            latencies[label] += run(label, block)
    out: dict[str, Any] = {}
    for label, db in dbs.items():
        runtime = runtimes[label]
        snapshot = runtime.snapshot
        logged = count_decisions(db["url"]) - before[label]
        out[label] = {
            "events": db["events"],
            **_summary(latencies[label]),
            "warmup": {k: v for k, v in _summary(cold[label]).items() if k != "decisions_per_s"},
            "cells": snapshot.table.size if snapshot else 0,
            "cells_with_draws": len(snapshot.draws) if snapshot else 0,
            "stats_refresh_ms": _refresh_ms(runtime),
            "all_logged": logged == warmup + rounds * block,
        }
        runtime.close()
    return out


def _refresh_ms(runtime: Runtime, repeat: int = 5) -> float:
    """Median time of a statistics refresh (what a worker pays every few seconds)."""
    times = []
    with runtime.session() as session:
        catalog = runtime.catalog(session)
    for _ in range(repeat):
        runtime.wrote_stats()
        time.sleep(runtime.settings.stats_refresh_seconds / 2)
        start = time.perf_counter()
        runtime.stats(catalog)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 1)


# HTTP ------------------------------------------------------------------------------------------


@contextmanager
def server(url: str, workers: int) -> Iterator[int]:
    """``nextbest serve --workers N`` of this checkout; yields its port once it answers."""
    with serving.server(url, workers) as running:
        yield running["port"]


async def _connection(
    port: int,
    requests: list[bytes],
    deadline: float,
    latencies: list[float],
    statuses: Counter[int],
) -> None:
    """One keep-alive connection, one request in flight, until ``deadline``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            status = int((await reader.readline()).split(b" ", 2)[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            statuses[status] += 1
    finally:
        writer.close()


async def _load(
    port: int, requests: list[bytes], *, concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _connection(port, requests[c::concurrency], start + seconds, latencies, statuses)
            for c in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "decisions_per_s": round(statuses[201] / elapsed),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def decision_requests(port: int, ids: list[str]) -> list[bytes]:
    """Raw HTTP/1.1 requests for POST /v1/decisions, one per customer."""
    head = (
        "POST /v1/decisions HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {DEMO_KEYS['service']}\r\n"
        "Content-Type: application/json\r\n"
    )
    out = []
    for customer in ids:
        body = json.dumps({"customer_id": customer, "channel": CHANNEL}).encode()
        out.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


def over_http(
    db: dict[str, Any], *, workers: int, concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Decisions/s over HTTP, and whether every 201 left one logged decision."""
    ids = customer_ids(db["url"])
    before = count_decisions(db["url"])
    with server(db["url"], workers) as port:
        requests = decision_requests(port, ids)
        warm = asyncio.run(_load(port, requests, concurrency=concurrency, seconds=warmup))
        result = asyncio.run(_load(port, requests, concurrency=concurrency, seconds=seconds))
    logged = count_decisions(db["url"]) - before
    answered = warm["statuses"].get("201", 0) + result["statuses"].get("201", 0)
    return {
        "events": db["events"],
        "workers": workers,
        "concurrency": concurrency,
        **result,
        "logged": logged,
        "all_logged": logged == answered,
    }


# Main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k and 100k events, SQLite only")
    parser.add_argument("--kinds", nargs="+", choices=["sqlite", "postgresql"], help="databases")
    parser.add_argument("--decisions", type=int, help="in-process decisions per database")
    parser.add_argument(
        "--warmup", type=int, default=3000, help="in-process decisions before measuring"
    )
    parser.add_argument("--seconds", type=float, help="HTTP measurement per database")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--concurrency", type=int, default=32, help="connections of the load")
    parser.add_argument(
        "--out", type=Path, help="write the JSON here (default: bench/results/decide.json)"
    )
    args = parser.parse_args()
    small, large = (10_000, 100_000) if args.quick else (10_000, 1_000_000)
    kinds = args.kinds or (["sqlite"] if args.quick else ["sqlite", "postgresql"])
    decisions = args.decisions or (1000 if args.quick else 4000)
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    if "postgresql" in kinds:
        try:
            create_engine(PG_SERVER).connect().close()
        except Exception:  # no PostgreSQL server here: report SQLite only
            kinds = [k for k in kinds if k != "postgresql"]
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "setup": {
            "experiences": 8,
            "tree_depth": len(TREE),
            "posterior_draws": Settings.model_fields["posterior_draws"].default,
        },
        "in_process": {},
        "http": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        files = {}
        for n in (small, large):
            files[n] = workdir / f"events-{n}.csv"
            write_events(files[n], n)
        for kind in kinds:
            with (
                prepare(kind, workdir, files[small], small) as few,
                prepare(kind, workdir, files[large], large) as many,
            ):
                measured = in_process(
                    {f"{kind}_{small}": few, f"{kind}_{large}": many},
                    decisions=decisions,
                    block=250,
                    warmup=args.warmup,
                )
                a, b = measured[f"{kind}_{small}"], measured[f"{kind}_{large}"]
                measured["ratio_large_to_small"] = {
                    "p50": round(b["p50_ms"] / a["p50_ms"], 3),
                    "p99": round(b["p99_ms"] / a["p99_ms"], 3),
                }
                result["in_process"][kind] = measured
                result["http"][kind] = over_http(
                    many,
                    workers=args.workers,
                    concurrency=args.concurrency,
                    seconds=seconds,
                    warmup=min(seconds / 3, 5.0),
                )
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    out = args.out or (None if args.quick else ROOT / "bench" / "results" / "decide.json")
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
