"""Prometheus metrics: what the operator watches (decisions, outcomes, latency, errors, staleness).

Why prometheus-client in multiprocess mode rather than a hand-written exposition: with
``nextbest serve --workers N`` a scrape reaches one worker, and it must answer for all of them.
Each worker writes its samples to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (set by
``nextbest serve`` and emptied before the workers start), and the worker that is
scraped sums the files. That is what the library's multiprocess mode does; writing it again by hand
would mean another file format and its locking. Without the directory (tests, one process embedding
the app) the metrics live in the process and the exposition reads them directly.

Names and labels (every label has a bounded set of values):

- ``nextbest_decisions_total{source}``: decisions logged, by source (rule, thompson, explore,
  exploit, experiment, ...);
- ``nextbest_outcomes_total{result}``: outcomes of decisions recorded through the API (a replay
  is not counted), by result level; ``nextbest_triples_total{source}``: every result stored in
  the log (``event``: historical triples, ``decision``: outcomes, ``settled``: defaults), counted
  when written in the request's transaction;
- ``nextbest_http_request_duration_seconds{method,route}``: latency per route template (a path
  that matches no route is ``route="unmatched"``); ``nextbest_http_requests_total{method,route,
  status}``;
- ``nextbest_errors_total{code}``: error answers by their ``error.code`` (``internal`` for an
  unhandled exception);
- ``nextbest_stats_snapshot_age_seconds``: age of the statistics snapshot each decision used
  (histogram: the staleness decisions actually saw); ``nextbest_stats_snapshot_timestamp_seconds
  {pid}``: when each worker's snapshot was read (Unix time; ``time() - it`` is its age now);
- ``nextbest_active_ruleset_version{pid}``: the rule-set version each worker serves (0: none);
- ``nextbest_experiment_assignments_total{experiment,arm}``: ``count_assignment``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: a decision takes about a millisecond of work; queueing under load adds tens."""
AGE_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
"""Seconds: the default bound on a snapshot's age is 2 s (``stats_refresh_seconds``)."""

DECISIONS = Counter("nextbest_decisions", "Decisions logged, by source", ["source"])
OUTCOMES = Counter("nextbest_outcomes", "Outcomes of decisions stored, by result", ["result"])
TRIPLES = Counter(
    "nextbest_triples", "Results stored (the log), by source: event, decision, settled", ["source"]
)
REQUESTS = Counter(
    "nextbest_http_requests", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "nextbest_http_request_duration_seconds",
    "Time from request to the end of the response, per route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
ERRORS = Counter("nextbest_errors", "Error answers, by error code", ["code"])
SNAPSHOT_AGE = Histogram(
    "nextbest_stats_snapshot_age_seconds",
    "Age of the statistics snapshot a decision used (since its cells were read)",
    buckets=AGE_BUCKETS,
)
SNAPSHOT_TIME = Gauge(
    "nextbest_stats_snapshot_timestamp_seconds",
    "Unix time at which this worker's statistics snapshot was read",
    multiprocess_mode="liveall",
)
RULESET_VERSION = Gauge(
    "nextbest_active_ruleset_version",
    "Rule-set version this worker's decisions follow (0: none active)",
    multiprocess_mode="liveall",
)
ASSIGNMENTS = Counter(
    "nextbest_experiment_assignments",
    "Customers assigned to an experiment's arm",
    ["experiment", "arm"],
)


# What the engine calls ---------------------------------------------------------------------------


def count_decision(source: str) -> None:
    DECISIONS.labels(source).inc()


def count_outcome(result: str) -> None:
    OUTCOMES.labels(result).inc()


def count_triples(source: str, n: int) -> None:
    TRIPLES.labels(source).inc(n)


def count_assignment(experiment: str, arm: str) -> None:
    """One customer assigned to ``arm`` of ``experiment`` (call once per assignment made, not per
    sticky re-read)."""
    ASSIGNMENTS.labels(experiment, arm).inc()


def observe_snapshot_age(seconds: float) -> None:
    SNAPSHOT_AGE.observe(max(seconds, 0.0))


def snapshot_read(unix_time: float) -> None:
    SNAPSHOT_TIME.set(unix_time)


def ruleset_version(version: int | None) -> None:
    RULESET_VERSION.set(version or 0)


# Exposition and the worker's life ----------------------------------------------------------------


def exposition() -> bytes:
    """The text format of every metric: summed over the workers' files in multiprocess mode."""
    directory = os.environ.get(ENV)
    if not directory:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def worker_started() -> None:
    """Drop the per-worker gauges of workers that died (a killed worker is restarted with a new
    pid; its gauge files would otherwise be reported as if it still ran). Counters and histograms
    of dead workers stay: they are totals of work that was done."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    for path in Path(directory).glob("gauge_live*.db"):
        found = _LIVE_FILE.search(path.name)
        if found and not _alive(int(found.group(1))):
            multiprocess.mark_process_dead(int(found.group(1)), directory)  # type: ignore[no-untyped-call]


def worker_stopped() -> None:
    directory = os.environ.get(ENV)
    if directory:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# HTTP --------------------------------------------------------------------------------------------


class HttpMetrics:
    """ASGI middleware: latency and count per route template, and error answers by code.

    The route is the template (``/v1/decisions/{decision_id}/override``), so label values stay
    bounded; the error code is read from the ``{"error": {"code": ...}}`` body of answers of 400
    and above, which are small and buffered only for that.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        error_body: list[bytes] | None = None

        async def observe(message: Message) -> None:
            nonlocal status, error_body
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status >= 400:
                    error_body = []
            elif message["type"] == "http.response.body" and error_body is not None:
                error_body.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        except BaseException:
            status = 500
            ERRORS.labels("internal").inc()
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            LATENCY.labels(method, template).observe(time.perf_counter() - start)
            REQUESTS.labels(method, template, str(status)).inc()
        if error_body is not None:
            ERRORS.labels(_error_code(b"".join(error_body), status)).inc()


def _error_code(body: bytes, status: int) -> str:
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "internal" if status >= 500 else f"http_{status}"
    return str(code)[:40]


__all__ = [
    "CONTENT_TYPE",
    "ENV",
    "HttpMetrics",
    "count_assignment",
    "count_decision",
    "count_outcome",
    "count_triples",
    "exposition",
    "observe_snapshot_age",
    "ruleset_version",
    "snapshot_read",
    "worker_started",
    "worker_stopped",
]
