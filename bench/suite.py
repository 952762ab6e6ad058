"""The scaling benchmark (`make bench`): workers, ingest, rule compilation and memory, in one run.

Writes bench/results/scale.json (every figure, with how it was produced and the machine),
bench/results/scale.md (the tables) and bench/results/scale-*.png (the curves). Every figure comes
from this run on this machine; the machine is shared, so the load average is recorded at the start
of each phase. What is measured, and how:

1. Ingest. One events CSV of 1M triples from the simulator's world (bench/ingest.py's generator,
   ten per customer); its first 10k and 100k rows are the smaller files. Each is imported by a
   real `nextbest import` subprocess into a fresh SQLite database (10k, 100k, 1M) and the 100k
   file into a fresh PostgreSQL database (1M there would take two of the fifteen minutes; a
   decision's cost does not depend on the events logged): triples/s and peak RSS. Then 10k rows
   through POST /v1/events:batch on each database kind.
2. Decisions over HTTP. `nextbest serve --workers N` (N = 1, 2, 4) on the 1M-event SQLite and the
   100k-event PostgreSQL database, loaded on loopback by wrk (one thread, keep-alive connections, a
   Lua script that posts decisions for stored customers picked at random). In the same server
   configuration, right before, wrk on GET /livez (no database, no work: the ceiling of the HTTP
   stack; the target ratio is against it) and on GET /healthz (a session and a SELECT 1: a trivial
   endpoint that touches the database, reported beside it). Decisions/s, p50/p99 from wrk's latency
   distribution, the ratio decisions/s : /livez requests/s, the RSS of each worker afterwards, and
   the check that the decisions table grew by at least the number of 201 answers (every answered
   decision is stored; requests cut off when the warm-up run stopped may add a few). CPU per
   request: the user + system time the worker processes (and, on PostgreSQL, every postgres process
   of the machine, other users' included) spent during a wrk run, divided by its requests: unlike
   requests/s, it hardly depends on what else the shared cores run.
3. Rule compilation against events. Compile time (the statistics load, then rules.compiler) on
   the SQLite databases of 10k, 100k and 1M really imported events, and on a 10M-event database:
   10M events do not import in this time budget, so that database is a copy of the 1M one whose
   cell statistics receive the increments of 9M further simulated events, computed and written by
   the import's own code (engine.stats.increments and apply_increments) without storing the 9M
   outcome rows or their customers. Compilation reads only the cells and the customers, so it sees
   exactly the database those events would make, except that its customers are the 1M database's
   (100k). The bulk path is checked against the real import: for the 100k file it reproduces the
   imported cell table (the largest relative difference is reported).
4. Memory per worker against cells. `nextbest serve --workers 1` on each of those four databases,
   decisions under wrk for a few seconds (caches and posterior draws fill), then the worker's RSS.

    python bench/suite.py            # the full run (about 12 minutes on 2 cores)
    python bench/suite.py --quick    # 100k events at most, SQLite, short loads (about 2 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
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

import numpy as np
from sqlalchemy import create_engine, text
from sqlmodel import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.decide import TREE, customer_ids  # noqa: E402
from bench.ingest import PG_SERVER, batch_api, csv_import, database, write_events  # noqa: E402
from bench.serving import server  # noqa: E402
from engine import catalog as catalog_module  # noqa: E402
from engine import stats  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.db import make_engine  # noqa: E402
from engine.demo import DEMO_KEYS  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.schemas import SegmentationIn  # noqa: E402
from engine.simulate import make_world  # noqa: E402
from rules.compiler import Settings as CompileSettings  # noqa: E402
from rules.compiler import compile_rules  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PG_EVENTS = 100_000
"""PostgreSQL gets the 100k-event database in the full run: importing 1M rows there takes about two
minutes of the fifteen, and a decision's cost does not depend on the events logged (bench/decide.py
measures 1M against 10k: p50 ratio 1.04 on PostgreSQL)."""
LUA = ROOT / "bench" / "wrk" / "decide.lua"


# The machine -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    memory = re.search(r"MemTotal:\s*(\d+) kB", meminfo)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "cores": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "memory_gib": round(int(memory.group(1)) / 2**20, 1) if memory else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else None,
        "load_average_at_start": load(),
        "shared": "other people's test suites run on the same 2 cores: figures are noisy",
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# Databases -------------------------------------------------------------------------------------


def head(source: Path, rows: int, target: Path) -> Path:
    """The first ``rows`` events of ``source`` (the header and the first lines)."""
    with source.open() as handle, target.open("w") as out:
        for i, line in enumerate(handle):
            if i > rows:
                break
            out.write(line)
    return target


def set_tree(url: str) -> None:
    engine = make_engine(url)
    with Session(engine) as session:
        catalog_module.put_segmentation(
            session=session, segmentation_in=SegmentationIn(attributes=TREE), actor="bench"
        )
        session.commit()
    engine.dispose()


@contextmanager
def imported(kind: str, workdir: Path, path: Path, rows: int) -> Iterator[dict[str, Any]]:
    """A fresh database (demo catalog, depth-4 tree) with ``path`` imported by `nextbest import`."""
    with database(kind, workdir) as url:
        set_tree(url)
        before = cells(url)  # the demo catalog's seed stores a few results of its own
        result = csv_import(url, path, rows)
        yield {"url": url, "events": rows, "import": result, "cells_before": before}


def cells(url: str) -> dict[stats.CellKey, list[float]]:
    engine = make_engine(url)
    with Session(engine) as session:
        found = stats.stored_cells(session)
    engine.dispose()
    return found


def scalar(url: str, sql: str) -> Any:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(text(sql)).scalar_one()
    engine.dispose()
    return found


# Cells of simulated events through the import's increment code ----------------------------------

CHUNK = 100_000
"""Rows per chunk, as bench/ingest.py writes them (a tenth as many customers per chunk)."""


def simulated_cells(url: str, rows: int, *, seed: int) -> dict[stats.CellKey, list[float]]:
    """Cell increments of ``rows`` simulated events, exactly as an import would add them.

    The events are those bench/ingest.py writes for the same seed (same world, same chunks, a
    tenth as many customers per chunk, so a customer's earlier results are in its chunk); each
    becomes the TripleFacts an import stores (finest segment of the customer's attributes, the
    number of its earlier results with the experience) and engine.stats.increments sums them with
    the database's epoch and half-life."""
    engine = make_engine(url)
    with Session(engine) as session:
        shop = catalog_module.load_catalog(session)
    engine.dispose()
    world = make_world(3)
    rng = np.random.default_rng(seed)
    total: dict[stats.CellKey, list[float]] = {}
    for start in range(0, rows, CHUNK):
        size = min(CHUNK, rows - start)
        people, triples = world.historical_log(max(size // 10, 1), size, rng, truth=True)
        segment_of = {p["customer_id"]: shop.finest_segment(p["attributes"]) for p in people}
        facts = (
            stats.TripleFacts(
                segment=segment_of[t["customer_id"]],
                experience_key=t["experience"],
                exposure=t["exposures"],
                level=t["result"],
                occurred_at=t["occurred_at"],
                value=None,
                cost=None,
            )
            for t in triples
        )
        part = stats.increments(facts, epoch=shop.epoch, half_life_days=shop.half_life_days)
        for key, values in part.items():
            cell = total.setdefault(key, [0.0] * 5)
            for i, v in enumerate(values):
                cell[i] += v
    return total


def add_cells(url: str, sums: dict[stats.CellKey, list[float]]) -> None:
    """Add ``sums`` to the stored cells with the import's upsert (one transaction)."""
    engine = make_engine(url)
    with Session(engine) as session:
        stats.apply_increments(session, sums)
        session.commit()
    engine.dispose()


def bulk_path_check(db: dict[str, Any]) -> dict[str, Any]:
    """The bulk path against the real import of the same events: largest relative difference
    between the cells it computes and what the import added to the stored cells."""
    rows = db["events"]
    sums = simulated_cells(db["url"], rows, seed=3)
    before = db["cells_before"]
    stored = {}
    for key, values in cells(db["url"]).items():
        added = [v - b for v, b in zip(values, before.get(key, [0.0] * 5), strict=True)]
        if added[0] > 1e-9 * max(values[0], 1.0):
            stored[key] = added
    worst = 0.0
    for key in set(stored) | set(sums):
        a = stored.get(key, [0.0])[0]
        b = sums.get(key, [0.0])[0]
        worst = max(worst, abs(a - b) / max(abs(a), abs(b), 1e-300))
    return {
        "events": rows,
        "cells_imported": len(stored),
        "cells_bulk": len(sums),
        "max_relative_difference": float(f"{worst:.3g}"),
    }


# Compile time and statistics load ----------------------------------------------------------------


def compile_times(url: str, repeat: int) -> dict[str, Any]:
    """Median seconds of a statistics load (a fresh worker's) and of a compilation."""
    loads, compiles = [], []
    cells = tree_cells = 0
    for i in range(repeat):
        runtime = Runtime(Settings(database_url=url, rule_runtime="python"))
        try:
            with runtime.session() as session:
                shop = runtime.catalog(session)
                start = time.perf_counter()
                snapshot = runtime.stats(shop)
                loads.append(time.perf_counter() - start)
                start = time.perf_counter()
                compiled = compile_rules(
                    session=session,
                    catalog=shop,
                    snapshot=snapshot,
                    settings=CompileSettings(seed=i),
                )
                compiles.append(time.perf_counter() - start)
                cells, tree_cells = snapshot.table.size, len(snapshot.tree.counts)
        finally:
            runtime.close()
    return {
        "cells": cells,
        "tree_cells": tree_cells,
        "customers": int(scalar(url, "SELECT count(*) FROM customers")),
        "rules": compiled.metrics["rules"],
        "stats_load_s": round(statistics.median(loads), 3),
        "compile_s": round(statistics.median(compiles), 3),
        "compile_runs_s": [round(x, 3) for x in compiles],
    }


# Servers and wrk -------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s*(\d+) kB", status)
    return round(int(found.group(1)) / 1024, 1) if found else 0.0


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes ``pids`` so far (every thread)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on this machine (other users' sessions included)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def measured(pids: list[int], run: Any, *, database_cpu: bool) -> dict[str, Any]:
    """``run()`` (a wrk run) and the CPU its requests cost the workers (and PostgreSQL)."""
    pg = postgres_pids() if database_cpu else []
    pg_before = {pid: cpu_seconds_alive([pid]) for pid in pg}
    before = cpu_seconds_alive(pids)
    result: dict[str, Any] = run()
    used = cpu_seconds_alive(pids) - before
    # uvicorn restarts a worker that misses its health check (it happens on an overloaded machine):
    # the CPU of a worker that ended is lost, so the figure is then marked.
    result["workers_ended_during_run"] = sum(not Path(f"/proc/{pid}").exists() for pid in pids)
    result["worker_cpu_ms_per_request"] = round(1000 * used / max(result["requests"], 1), 3)
    if database_cpu:
        # Only processes that lived through the run: a session that ended took its CPU with it.
        lived = [pid for pid in pg if Path(f"/proc/{pid}").exists()]
        spent = cpu_seconds_alive(lived) - sum(pg_before[pid] for pid in lived)
        result["postgres_cpu_ms_per_request"] = round(1000 * spent / max(result["requests"], 1), 3)
    return result


def cpu_seconds_alive(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds([pid])
        except OSError:  # ended meanwhile
            continue
    return total


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(
    url: str, *, seconds: float, connections: int, script: Path | None = None
) -> dict[str, Any]:
    """One wrk run (one thread, keep-alive connections): requests/s, latency percentiles."""
    duration = f"-d{max(round(seconds), 1)}s"  # wrk takes whole seconds
    command = ["wrk", "-t1", f"-c{connections}", duration, "--latency", "--timeout", "10s"]
    if script is not None:
        command += ["-s", str(script)]
    env = {**os.environ, "NEXTBEST_BENCH_KEY": DEMO_KEYS["service"]}
    done = subprocess.run([*command, url], capture_output=True, text=True, check=True, env=env)
    out = done.stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    assert total is not None, out
    requests = int(total.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    percentiles = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)\s*$", out, re.M))
    return {
        "requests": requests,
        "requests_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))),  # type: ignore[union-attr]
        "p50_ms": round(_ms(percentiles["50"]), 2),
        "p99_ms": round(_ms(percentiles["99"]), 2),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


def lua_script(workdir: Path, url: str) -> Path:
    """The decisions script beside a table of 2000 stored customers picked at random."""
    folder = workdir / f"wrk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    shutil.copy(LUA, folder / "decide.lua")
    ids = customer_ids(url, n=2000)
    (folder / "ids.lua").write_text("return {" + ",".join(json.dumps(i) for i in ids) + "}\n")
    return folder / "decide.lua"


def http_run(
    db: dict[str, Any], workdir: Path, *, workers: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """The ceiling on /livez, then decisions, on one server configuration."""
    script = lua_script(workdir, db["url"])
    connections = 32
    with server(db["url"], workers) as running:
        base = f"http://127.0.0.1:{running['port']}"
        load_at_start = load()
        wrk(f"{base}/livez", seconds=max(warmup / 2, 1), connections=connections)
        pids, pg = running["pids"], db["url"].startswith("postgresql")
        trivial = measured(
            pids,
            lambda: wrk(f"{base}/livez", seconds=seconds, connections=connections),
            database_cpu=False,
        )
        healthz = measured(
            pids,
            lambda: wrk(f"{base}/healthz", seconds=seconds, connections=connections),
            database_cpu=False,
        )
        wrk(f"{base}/v1/decisions", seconds=warmup, connections=connections, script=script)
        before = int(scalar(db["url"], "SELECT count(*) FROM decisions"))
        decided = measured(
            pids,
            lambda: wrk(
                f"{base}/v1/decisions", seconds=seconds, connections=connections, script=script
            ),
            database_cpu=pg,
        )
        rss = [rss_mib(pid) for pid in running["pids"] if Path(f"/proc/{pid}").exists()]
    logged = int(scalar(db["url"], "SELECT count(*) FROM decisions")) - before
    ok = decided["requests"] - decided["non_2xx"]
    return {
        "workers": workers,
        "connections": connections,
        "load_average_at_start": load_at_start,
        "trivial_livez": trivial,
        "healthz": healthz,
        "decisions": decided,
        "decisions_per_s": decided["requests_per_s"],
        "ratio_to_trivial": round(decided["requests_per_s"] / trivial["requests_per_s"], 3),
        "ratio_to_healthz": round(decided["requests_per_s"] / healthz["requests_per_s"], 3),
        "worker_rss_mib": rss,
        "logged": logged,
        "all_logged": logged >= ok and decided["non_2xx"] == 0,
    }


def memory_run(db: dict[str, Any], workdir: Path, *, seconds: float) -> dict[str, Any]:
    """One worker: RSS idle after start, then after decisions under wrk."""
    script = lua_script(workdir, db["url"])
    with server(db["url"], 1) as running:
        pid = running["pids"][0]
        idle = rss_mib(pid)
        run = wrk(
            f"http://127.0.0.1:{running['port']}/v1/decisions",
            seconds=seconds,
            connections=8,
            script=script,
        )
        busy = rss_mib(pid)
    return {"rss_idle_mib": idle, "rss_after_decisions_mib": busy, "decisions": run["requests"]}


# Main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, SQLite, short loads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    began = time.monotonic()
    quick = args.quick
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    big = 1_000_000 if quick else 10_000_000
    kinds = ["sqlite"] if quick else ["sqlite", "postgresql"]
    if "postgresql" in kinds:
        try:
            create_engine(PG_SERVER).connect().close()
        except Exception:  # no PostgreSQL server here: report SQLite only
            kinds = ["sqlite"]
    seconds, warmup = (3.0, 1.0) if quick else (5.0, 2.0)
    result: dict[str, Any] = {
        "machine": machine(),
        "how": __doc__,
        "setup": {"experiences": 8, "tree_depth": len(TREE), "attributes": 6},
        "ingest": {},
        "http": {},
        "compile": {},
        "memory": {},
    }
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)
        print(f"[{phases[name]:7.1f} s] {name} (load {load()})", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        phase("events")
        largest = workdir / f"events-{sizes[-1]}.csv"
        write_events(largest, sizes[-1])
        files = {n: head(largest, n, workdir / f"events-{n}.csv") for n in sizes[:-1]}
        files[sizes[-1]] = largest
        with _databases(kinds, sizes, workdir, files, phase) as dbs:
            for name, db in dbs.items():
                result["ingest"][f"csv_{name}"] = db["import"]
            phase("batch api")
            for kind in kinds:
                with database(kind, workdir) as url:
                    result["ingest"][f"batch_api_{kind}"] = batch_api(
                        url, files[sizes[1]], 10_000 if not quick else 5_000
                    )
            phase("bulk path check")
            result["compile"]["bulk_path_check"] = bulk_path_check(dbs[f"sqlite_{sizes[1]}"])
            phase(f"{big} events")
            dbs[f"sqlite_{big}"] = _big_database(dbs[f"sqlite_{sizes[-1]}"], big, workdir)
            phase("compile")
            result["compile"]["load_average_at_start"] = load()
            for n in [*sizes, big]:
                result["compile"][str(n)] = {
                    "events": n,
                    "how": "imported" if n in sizes else dbs[f"sqlite_{big}"]["how"],
                    **compile_times(dbs[f"sqlite_{n}"]["url"], repeat=3),
                }
            phase("memory")
            result["memory"]["load_average_at_start"] = load()
            for n in [*sizes, big]:
                run = memory_run(dbs[f"sqlite_{n}"], workdir, seconds=seconds / 2)
                cells = result["compile"][str(n)]["cells"]
                result["memory"][str(n)] = {"events": n, "cells": cells, **run}
            for kind in kinds:
                for workers in (1, 2, 4):
                    phase(f"http {kind} {workers} workers")
                    events = sizes[-1] if kind == "sqlite" else min(PG_EVENTS, sizes[-1])
                    result["http"][f"{kind}_{workers}"] = http_run(
                        dbs[f"{kind}_{events}"],
                        workdir,
                        workers=workers,
                        seconds=seconds,
                        warmup=warmup,
                    )
                    result["http"][f"{kind}_{workers}"].update(kind=kind, events=events)
    result["summary"] = summary(result, sizes[-1], big)
    phase("done")
    result["machine"]["load_average_at_end"] = load()
    result["machine"]["seconds"] = round(time.monotonic() - began, 1)
    result["phases_s"] = phases
    out: Path = args.out if not quick else Path(tempfile.mkdtemp(prefix="nextbest-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "scale.md").write_text(report.markdown(result))
    report.plots(result, out)
    print(report.markdown(result))
    print(f"written to {out}", file=sys.stderr)


def summary(result: dict[str, Any], large: int, big: int) -> dict[str, Any]:
    """The two targets: decisions/s at 2 workers against the ceiling, compile time 10M : 1M."""
    out: dict[str, Any] = {}
    for key, run in result["http"].items():
        if run["workers"] == 2:
            out[f"{key} decisions/s : /livez req/s (target >= 0.5)"] = run["ratio_to_trivial"]
    a, b = result["compile"][str(large)], result["compile"][str(big)]
    out[f"compile {big:,} : {large:,} events (target <= 1.2)"] = round(
        b["compile_s"] / a["compile_s"], 3
    )
    out[f"statistics load {big:,} : {large:,} events"] = round(
        b["stats_load_s"] / a["stats_load_s"], 3
    )
    return out


@contextmanager
def _databases(
    kinds: list[str], sizes: list[int], workdir: Path, files: dict[int, Path], phase: Any
) -> Iterator[dict[str, dict[str, Any]]]:
    """SQLite databases of every size; PostgreSQL of the largest (one import each)."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        dbs: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            for n in sizes if kind == "sqlite" else [min(PG_EVENTS, sizes[-1])]:
                phase(f"import {kind} {n}")
                dbs[f"{kind}_{n}"] = stack.enter_context(imported(kind, workdir, files[n], n))
        yield dbs


def _big_database(source: dict[str, Any], events: int, workdir: Path) -> dict[str, Any]:
    """A copy of the SQLite database of ``source`` plus the cells of further simulated events."""
    path = Path(source["url"].removeprefix("sqlite:///"))
    target = workdir / f"bench-{events}.db"
    shutil.copy(path, target)
    for suffix in ("-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            shutil.copy(f"{path}{suffix}", f"{target}{suffix}")
    url = f"sqlite:///{target}"
    start = time.perf_counter()
    sums = simulated_cells(url, events - source["events"], seed=4)
    add_cells(url, sums)
    return {
        "url": url,
        "events": events,
        "how": (
            f"copy of the {source['events']}-event database plus the cell increments of "
            f"{events - source['events']} further simulated events (engine.stats.increments and "
            f"apply_increments, {time.perf_counter() - start:.0f} s); no outcome rows, the "
            "customers of the copy"
        ),
    }


if __name__ == "__main__":
    main()
