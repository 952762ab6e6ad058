"""Where a decision's worker CPU goes over HTTP: the decisions route against routes that do less.

Prints one JSON object (and writes bench/results/http_floor.json). One worker process serves the
real application with three more routes added in front of the others (this module's ``factory``;
they exist only in this benchmark):

- ``tiny``: POST with the decision request's body, validated into DecisionIn; answers {"status":
  "ok"}. HTTP, routing, middleware and body validation.
- ``canned``: the same, answering a real decision's response (a DecisionPublic recorded from the
  service at the start of the run), so the response model's validation and JSON encoding are in.
- ``canned_auth``: the same with the decisions route's dependencies (the runtime and the API key
  check): everything the route does except the decision itself.

and GET /livez (the ceiling ``make bench`` reports against) and POST /v1/decisions itself. Each is
loaded by wrk (one thread, 32 keep-alive connections) in alternating rounds; per endpoint the
median over rounds of requests/s and of the worker's CPU per request (user + system time of the
worker process during the run over its requests; unlike requests/s it hardly depends on what else
the shared cores run). ``ratio_to_livez_cpu`` = livez CPU / endpoint CPU: the requests/s ratio the
endpoint would reach against /livez when both are CPU-bound, which is the upper bound the
decisions : /livez target of ``make bench`` meets for a route doing that much.

The database is the demo business (``nextbest demo --seed-only``: 5,000 customers, 50,000 results,
a running experiment) on SQLite.

    python bench/http_floor.py [--rounds 3] [--seconds 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import server  # noqa: E402
from bench.suite import load, lua_script, machine, measured, wrk  # noqa: E402
from engine.demo import DEMO_KEYS  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RESPONSE_ENV = "NEXTBEST_FLOOR_RESPONSE"
"""File holding the recorded decision response that the canned routes answer."""
FLOOR_ROUTES = {
    "tiny": "/bench/floor/tiny",
    "canned": "/bench/floor/canned",
    "canned_auth": "/bench/floor/canned-auth",
}


def factory() -> Any:
    """The service's application with the floor routes in front of its own. (This module does not
    postpone annotations: FastAPI reads the routes' annotations, which name local imports.)"""
    import api
    from engine.schemas import DecisionIn, DecisionPublic

    app = api.app_from_env()
    canned = DecisionPublic.model_validate_json(Path(os.environ[RESPONSE_ENV]).read_text())

    @app.post(FLOOR_ROUTES["tiny"], status_code=201)
    async def tiny(body: DecisionIn) -> dict[str, str]:
        return {"status": "ok"}

    @app.post(FLOOR_ROUTES["canned"], status_code=201)
    async def canned_route(body: DecisionIn) -> DecisionPublic:
        return canned

    @app.post(FLOOR_ROUTES["canned_auth"], status_code=201)
    async def canned_auth(
        body: DecisionIn, runtime: api.RuntimeDep, _: api.Decider
    ) -> DecisionPublic:
        return canned

    # Routes match in order: the new ones go first, so they pay for no other route's matching
    # (which flatters them against /livez and /v1/decisions, never the other way).
    routes = app.router.routes
    added = [routes.pop() for _ in FLOOR_ROUTES]
    routes[:0] = reversed(added)
    return app


def record_response(base: str, customer_id: str) -> str:
    import httpx

    answer = httpx.post(
        f"{base}/v1/decisions",
        json={"customer_id": customer_id, "channel": "phone"},
        headers={"Authorization": f"Bearer {DEMO_KEYS['service']}"},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nextbest-floor-") as tmp:
        workdir = Path(tmp)
        url = f"sqlite:///{workdir / 'demo.db'}"
        subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), "demo", "--seed-only", "--db", url],
            check=True,
            capture_output=True,
        )
        script = lua_script(workdir, url)
        response = workdir / "response.json"
        with server(url, 1) as running:
            response.write_text(record_response(f"http://127.0.0.1:{running['port']}", "c-00001"))
        endpoints: dict[str, tuple[str, Path | None]] = {
            "livez": ("/livez", None),
            **{name: (path, script) for name, path in FLOOR_ROUTES.items()},
            "decision": ("/v1/decisions", script),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
        load_at_start = load()
        with server(
            url, 1, factory="bench.http_floor:factory", env={RESPONSE_ENV: str(response)}
        ) as running:
            base = f"http://127.0.0.1:{running['port']}"
            for path, lua in endpoints.values():  # warm-up: caches, draws, connections
                wrk(f"{base}{path}", seconds=2, connections=32, script=lua)
            for _ in range(args.rounds):
                for name, (path, lua) in endpoints.items():
                    runs[name].append(
                        measured(
                            running["pids"],
                            lambda path=path, lua=lua: wrk(
                                f"{base}{path}",
                                seconds=args.seconds,
                                connections=32,
                                script=lua,
                            ),
                            database_cpu=False,
                        )
                    )
    livez_cpu = statistics.median(r["worker_cpu_ms_per_request"] for r in runs["livez"])
    table = {}
    for name, rounds in runs.items():
        cpu = statistics.median(r["worker_cpu_ms_per_request"] for r in rounds)
        table[name] = {
            "requests_per_s": round(statistics.median(r["requests_per_s"] for r in rounds)),
            "worker_cpu_ms_per_request": round(cpu, 3),
            "ratio_to_livez_cpu": round(livez_cpu / cpu, 3),
            "non_2xx": sum(r["non_2xx"] for r in rounds),
            "rounds": rounds,
        }
    failed = {name: row["non_2xx"] for name, row in table.items() if row["non_2xx"]}
    if failed:
        raise SystemExit(f"answers other than 2xx, so the figures are not comparable: {failed}")
    decision = table["decision"]["worker_cpu_ms_per_request"]
    around = table["canned_auth"]["worker_cpu_ms_per_request"]
    result = {
        "how": __doc__,
        "machine": machine(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": load(),
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "endpoints": table,
        "summary": {
            "livez_cpu_ms": round(livez_cpu, 3),
            "route_without_decision_cpu_ms": round(around, 3),
            "decision_cpu_ms": round(decision, 3),
            "decision_work_share": round((decision - around) / decision, 3),
            "best_ratio_without_decision_work": table["canned_auth"]["ratio_to_livez_cpu"],
            "decision_ratio": table["decision"]["ratio_to_livez_cpu"],
        },
        "seconds": round(time.perf_counter() - started),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http_floor.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "how"}, indent=2))


if __name__ == "__main__":
    main()
