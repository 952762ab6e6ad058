"""Prometheus metrics: what /metrics exposes after real requests, who may read it, and the sums over
worker processes in multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from engine import metrics
from engine.config import Settings
from engine.runtime import Runtime
from tests.conftest import repo_root

Headers = dict[str, dict[str, str]]
CUSTOMER = {"plan": "plus", "tenure_months": 7, "monthly_spend": 50}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def scrape(client: TestClient, keys: Headers) -> str:
    response = client.get("/metrics", headers=keys["service"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_decisions_outcomes_latency_errors_and_staleness_are_counted(
    client: TestClient, keys: Headers, business: Any
) -> None:
    before = scrape(client, keys)
    decided = client.post(
        "/v1/decisions",
        json={"customer_id": "c-1", "attributes": CUSTOMER},
        headers=keys["agent"],
    ).json()
    client.post(
        "/v1/outcomes",
        json={"decision_id": decided["decision_id"], "result": "retained"},
        headers=keys["agent"],
    )
    client.post(  # a replay of the same outcome is not counted again
        "/v1/outcomes",
        json={"decision_id": decided["decision_id"], "result": "retained"},
        headers=keys["agent"],
    )
    assert client.get("/v1/customers/nobody", headers=keys["agent"]).status_code == 404
    assert client.get("/v1/customers", headers={}).status_code == 401
    after = scrape(client, keys)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("nextbest_decisions_total", source=decided["source"]) == 1
    assert delta("nextbest_outcomes_total", result="retained") == 1
    assert delta("nextbest_triples_total", source="decision") == 1
    assert delta("nextbest_errors_total", code="not_found") == 1
    assert delta("nextbest_errors_total", code="unauthenticated") == 1
    assert (
        delta(
            "nextbest_http_requests_total",
            method="POST",
            route="/v1/outcomes",
            status="200",
        )
        == 1
    )
    assert (
        delta(
            "nextbest_http_request_duration_seconds_count",
            method="POST",
            route="/v1/decisions",
        )
        == 1
    )
    # a path that matches no route is one label value, not one per path
    assert delta("nextbest_http_requests_total", method="GET", route="unmatched", status="404") == 0
    client.get("/no/such/path/42")
    final = scrape(client, keys)
    assert value(
        final, "nextbest_http_requests_total", method="GET", route="unmatched", status="404"
    ) == (
        value(after, "nextbest_http_requests_total", method="GET", route="unmatched", status="404")
        + 1
    )
    assert delta("nextbest_stats_snapshot_age_seconds_count") == 1
    assert value(after, "nextbest_stats_snapshot_timestamp_seconds") > 1.6e9


def test_active_ruleset_version_and_experiment_assignments(
    client: TestClient, keys: Headers, business: Any
) -> None:
    events = [
        {
            "customer_id": f"h-{i}",
            "experience": ["no_offer", "discount_10", "callback_senior"][i % 3],
            "result": ["churned", "retained"][i % 2],
            "occurred_at": "2026-10-01T10:00:00Z",
            "attributes": CUSTOMER,
        }
        for i in range(90)
    ]
    client.post("/v1/events:batch", json={"events": events}, headers=keys["service"])
    version = client.post("/v1/rulesets:compile", json={}, headers=keys["marketer"]).json()
    client.post(f"/v1/rulesets/{version['version']}:activate", headers=keys["marketer"])
    client.post(
        "/v1/decisions", json={"customer_id": "h-1", "attributes": CUSTOMER}, headers=keys["agent"]
    )
    before = scrape(client, keys)
    metrics.count_assignment("spring_offer", "treatment")
    metrics.count_assignment("spring_offer", "treatment")
    metrics.count_assignment("spring_offer", "control")
    after = scrape(client, keys)
    assert value(after, "nextbest_active_ruleset_version") == version["version"]
    assert value(after, "nextbest_triples_total", source="event") >= 90
    for arm, n in (("treatment", 2), ("control", 1)):
        labels = {"experiment": "spring_offer", "arm": arm}
        assert (
            value(after, "nextbest_experiment_assignments_total", **labels)
            - value(before, "nextbest_experiment_assignments_total", **labels)
            == n
        )


@pytest.mark.parametrize(
    ("role", "public", "status"),
    [
        (None, False, 401),
        ("agent", False, 403),
        ("marketer", False, 403),
        ("service", False, 200),
        ("admin", False, 200),
        (None, True, 200),
    ],
)
def test_who_may_read_metrics(
    runtime: Runtime, keys: Headers, role: str | None, public: bool, status: int
) -> None:
    runtime.settings.metrics_public = public
    with TestClient(create_app(runtime=runtime)) as client:
        response = client.get("/metrics", headers=keys[role] if role else {})
    assert response.status_code == status, response.text
    if status == 200:
        assert "nextbest_decisions_total" in response.text or "# HELP" in response.text


def test_livez_answers_without_the_database(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}


def test_settings_read_the_metrics_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTBEST_METRICS_PUBLIC", "true")
    assert Settings().metrics_public is True


# Multiprocess mode -------------------------------------------------------------------------------

_WORKER = """
import sys
from engine import metrics
for _ in range(int(sys.argv[1])):
    metrics.count_assignment("exp", "a")
metrics.count_decision("rule")
metrics.ruleset_version(int(sys.argv[2]))
if sys.argv[3] == "expose":
    sys.stdout.write(metrics.exposition().decode())
"""


def run_worker(directory: Path, *args: Any) -> str:
    env = {**os.environ, metrics.ENV: str(directory), "PYTHONPATH": str(repo_root())}
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=repo_root(),
    )
    return done.stdout


def test_multiprocess_exposition_sums_the_workers_and_drops_dead_gauges(tmp_path: Path) -> None:
    run_worker(tmp_path, 3, 7, "quiet")  # a worker that has exited: its counters stay ...
    text = run_worker(tmp_path, 2, 8, "expose")
    assert value(text, "nextbest_experiment_assignments_total", experiment="exp", arm="a") == 5
    assert value(text, "nextbest_decisions_total", source="rule") == 2
    versions = [
        v for (name, _), v in samples(text).items() if name == "nextbest_active_ruleset_version"
    ]
    assert sorted(versions) == [7, 8]  # ... and so do its gauges, until a worker starts
    env_before = os.environ.get(metrics.ENV)
    os.environ[metrics.ENV] = str(tmp_path)
    try:
        metrics.worker_started()  # both pids have exited: their per-worker gauges go
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
        left = generate_latest(registry).decode()
    finally:
        if env_before is None:
            del os.environ[metrics.ENV]
        else:
            os.environ[metrics.ENV] = env_before
    assert value(left, "nextbest_experiment_assignments_total", experiment="exp", arm="a") == 5
    assert not [n for (n, _) in samples(left) if n == "nextbest_active_ruleset_version"]


def test_healthz_reads_the_database_without_holding_the_write_lock(
    client: TestClient, runtime: Runtime
) -> None:
    with runtime.engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")  # begins a transaction: on SQLite, the write lock
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == runtime.engine.dialect.name
