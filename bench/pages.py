"""Page speed of the consoles: p50 and p95 of every page over the demo business.

Seeds the demo (5,000 customers, 50,000 historical triples, as ``make run``) into a scratch
SQLite database (or uses ``--db URL``, seeding it when empty), serves it with one uvicorn worker
on a free local port, signs in with the demo admin key and times each page ``--repeat`` times
after one warm-up request (the first request after a change of statistics scores the worklist
and fits the tree; the figures are for the pages people reload). Prints JSON; the target is a
p95 under 300 ms.

    python bench/pages.py [--repeat 20] [--db URL] [--out bench/results/pages.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.demo import DEMO_KEYS  # noqa: E402
from web.live import live_server, seed_demo_database  # noqa: E402

PAGES = [
    "/agent",
    "/agent?where=plan%20%3D%3D%20%22basic%22%20and%20complaints_90d%20%3E%3D%201",
    "/agent?offset=100",
    "/agent/customers?q=Ada",
    "/agent/customers/c-00042",
    "/marketer",
    "/marketer/catalog",
    "/marketer/rules",
    "/marketer/rules/1",
    "/marketer/rules/diff?a=1&b=2",
    "/marketer/rules/2/activate",
    "/marketer/segments",
    "/marketer/overrides",
    "/marketer/value",
    "/marketer/no-good-action",
    "/marketer/experiments",
    "/marketer/experiments/winter-save",
]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def measure(base: str, repeat: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=60, follow_redirects=True) as client:
        token = CSRF.search(client.get("/signin").text).group(1)  # type: ignore[union-attr]
        signed = client.post("/signin", data={"key": DEMO_KEYS["admin"], "csrf_token": token})
        assert signed.status_code == 200, signed.status_code
        token = CSRF.search(client.get("/marketer/rules").text).group(1)  # type: ignore[union-attr]
        compiled = client.post("/marketer/rules/compile", data={"csrf_token": token})
        assert compiled.status_code == 200, compiled.text[:300]
        for path in PAGES:
            assert client.get(path).status_code == 200, path  # warm-up
            samples = []
            for _ in range(repeat):
                started = time.perf_counter()
                response = client.get(path)
                samples.append(1000 * (time.perf_counter() - started))
                assert response.status_code == 200, (path, response.status_code)
            results[path] = _summary(samples)
        samples = []
        for i in range(repeat):  # the next best action: a real decision, logged
            started = time.perf_counter()
            response = client.post(
                f"/agent/customers/c-{i + 1:05d}/decide",
                data={"csrf_token": token, "channel": "phone"},
            )
            samples.append(1000 * (time.perf_counter() - started))
            assert response.status_code == 200, response.text[:300]
        results["POST /agent/customers/{id}/decide"] = _summary(samples)
    return results


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples), 1),
        "p95_ms": round(percentile(samples, 0.95), 1),
        "max_ms": round(max(samples), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--db", default=None, help="database URL (default: a scratch SQLite file)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = args.db or f"sqlite:///{scratch}/demo.db"
        started = time.monotonic()
        seed_demo_database(url)
        seeded = time.monotonic() - started
        with live_server(url) as base:
            pages = measure(base, args.repeat)
    worst = max(p["p95_ms"] for p in pages.values())
    report = {
        "benchmark": "console pages over the demo business (5,000 customers, 50,000 triples)",
        "database": url.split(":", 1)[0] if args.db else "sqlite (scratch file)",
        "repeat": args.repeat,
        "seed_seconds": round(seeded, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "target_p95_ms": 300,
        "worst_p95_ms": worst,
        "pages": pages,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
