"""Experiments over HTTP: definition, lifecycle, assignment in decisions, report and plots."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session
from typer.testing import CliRunner

from api import create_app
from cli import app as cli_app
from engine import stats
from engine.catalog import load_catalog
from engine.config import Settings
from engine.runtime import Runtime
from experiments.monitor import update_experiments

Headers = dict[str, dict[str, str]]

DEFINITION: dict[str, Any] = {
    "key": "winter-discount",
    "name": "Winter discount test",
    "hypothesis": "A 10% discount keeps basic customers better than a senior callback",
    "eligibility": 'plan == "basic"',
    "arms": [
        {"experience": "no_offer", "weight": 1},
        {"experience": "discount_10", "weight": 1},
        {"experience": "callback_senior", "weight": 2},
    ],
    "allocation": "fixed",
    "holdout_share": 0.1,
    "burn_in": 5,
    "stopping": {"p_best": 0.95, "expected_loss": 1.0, "on_stop": "pause"},
}


def customers(client: TestClient, keys: Headers, n: int, plan: str = "basic") -> list[str]:
    ids = []
    for i in range(n):
        cid = f"{plan}-{i:04d}"
        body = {"attributes": {"plan": plan, "tenure_months": 5, "monthly_spend": 40}}
        response = client.put(f"/v1/customers/{cid}", json=body, headers=keys["service"])
        assert response.status_code in (200, 201), response.text
        ids.append(cid)
    return ids


def test_lifecycle_assignment_and_report(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    marketer = keys["marketer"]
    created = client.post("/v1/experiments", json=DEFINITION, headers=marketer)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "draft"
    assert body["control"] == "no_offer"
    assert body["weights"] == pytest.approx(
        {"no_offer": 0.1 + 0.9 * 0.25, "discount_10": 0.9 * 0.25, "callback_senior": 0.9 * 0.5}
    )
    started = client.post("/v1/experiments/winter-discount:start", headers=marketer)
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "running"

    ids = customers(client, keys, 60) + customers(client, keys, 5, plan="premium")
    made = {}
    for cid in ids:
        response = client.post("/v1/decisions", json={"customer_id": cid}, headers=keys["agent"])
        assert response.status_code == 201, response.text
        made[cid] = response.json()
    for cid, decision in made.items():
        if cid.startswith("basic"):
            assert decision["source"] == "experiment"
            assert decision["experiment"]["key"] == "winter-discount"
            assert decision["experience"] == decision["experiment"]["arm"]
        else:
            assert decision["experiment"] is None
    # Sticky: a second decision gives the same arm.
    again = client.post("/v1/decisions", json={"customer_id": "basic-0001"}, headers=keys["agent"])
    assert again.json()["experiment"] == made["basic-0001"]["experiment"]
    for decision in made.values():
        result = "retained" if decision["experience"] == "discount_10" else "churned"
        response = client.post(
            "/v1/outcomes",
            json={"decision_id": decision["decision_id"], "result": result},
            headers=keys["agent"],
        )
        assert response.status_code == 201, response.text
    report = client.get("/v1/experiments/winter-discount/report", headers=marketer)
    assert report.status_code == 200, report.text
    data = report.json()
    arms = {arm["experience"]: arm for arm in data["arms"]}
    assert sum(arm["customers"] for arm in arms.values()) == 60
    assert arms["discount_10"]["distribution"]["retained"] == 1.0
    assert arms["discount_10"]["p_best"] > 0.9
    assert arms["discount_10"]["uplift"]["mean"] > 0
    for name in ("posterior", "allocation", "cumulative"):
        plot = client.get(f"/v1/experiments/winter-discount/plots/{name}.svg", headers=marketer)
        assert plot.status_code == 200, plot.text
        assert plot.headers["content-type"].startswith("image/svg+xml")
        assert plot.text.lstrip().startswith("<?xml")
    assert data["stopping"]["decisive"] and data["stopping"]["leader"] == "discount_10"
    assert data["sample_ratio"]["warning"] is None
    changes = update_experiments(runtime.engine)
    assert changes == [
        "winter-discount: paused (discount_10 is best with P(best) "
        f"{arms['discount_10']['p_best']:.3f} and expected loss "
        f"{arms['discount_10']['expected_loss']:.3f})"
    ]
    paused = client.get("/v1/experiments/winter-discount", headers=marketer).json()
    assert paused["status"] == "paused"
    assert paused["history"][-1]["by"] == "nextbest:stopping-rule"
    edit = client.patch("/v1/experiments/winter-discount", json={"name": "x"}, headers=marketer)
    assert edit.status_code == 409


def arms(*keys: str) -> list[dict[str, Any]]:
    return [{"experience": k} for k in keys]


BAD_DEFINITIONS = [
    ({"key": ""}, "key"),
    ({"key": "9lives"}, "key"),
    ({"key": "x" * 65}, "key"),
    ({"name": ""}, "name"),
    ({"hypothesis": "h" * 2001}, "hypothesis"),
    ({"arms": arms("no_offer")}, "arms"),
    ({"arms": arms(*["no_offer"] * 11)}, "arms"),
    ({"arms": arms("no_offer", "no_offer")}, "arms"),
    ({"arms": arms("no_offer", "mystery")}, "arms.1.experience"),
    ({"arms": [{"experience": "no_offer", "weight": 1}, {"experience": "discount_10"}]}, "arms"),
    ({"arms": [{"experience": "no_offer", "weight": -1}, {"experience": "x"}]}, "arms.0.weight"),
    ({"arms": [{"experience": "no_offer", "share": 1}, {"experience": "x"}]}, "arms.0.share"),
    ({"allocation": "random"}, "allocation"),
    ({"allocation": "adaptive"}, "arms"),  # weights given with adaptive allocation
    ({"arms": arms("discount_10", "callback_senior"), "holdout_share": 0.1}, "holdout_share"),
    ({"holdout_share": 0.9}, "holdout_share"),
    ({"min_share": -0.1}, "min_share"),
    (
        {
            "allocation": "adaptive",
            "arms": arms("no_offer", "discount_10", "callback_senior"),
            "min_share": 0.4,
        },
        "min_share",
    ),
    ({"burn_in": -1}, "burn_in"),
    ({"update_minutes": 0}, "update_minutes"),
    ({"priority": 5000}, "priority"),
    ({"start_at": "2027-01-02T00:00:00Z", "end_at": "2027-01-01T00:00:00Z"}, "end_at"),
    ({"end_at": "2020-01-01T00:00:00Z"}, "end_at"),
    ({"end_at": "2027-01-01T00:00:00"}, "end_at"),  # no time zone
    ({"stopping": {"p_best": 0.4}}, "stopping.p_best"),
    ({"stopping": {"expected_loss": -1}}, "stopping.expected_loss"),
    ({"stopping": {"max_sample": 0}}, "stopping.max_sample"),
    ({"stopping": {"on_stop": "explode"}}, "stopping.on_stop"),
    ({"guardrail": {"level": "lost"}}, "guardrail.level"),
    (
        {
            "guardrail": {"level": "churned"},
            "arms": arms("discount_10", "callback_senior"),
            "holdout_share": 0,
        },
        "guardrail",
    ),
    ({"guardrail": {"level": "churned", "probability": 1.5}}, "guardrail.probability"),
    ({"eligibility": 'plan == "gold"'}, "eligibility"),
    ({"eligibility": "plan =="}, "eligibility"),
    ({"eligibility": "shoe_size > 3"}, "eligibility"),
    ({"colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(("change", "field"), BAD_DEFINITIONS)
def test_bad_definitions_are_rejected_with_the_field(
    client: TestClient, keys: Headers, business: Any, change: dict[str, Any], field: str
) -> None:
    body = {**DEFINITION, **change}
    response = client.post("/v1/experiments", json=body, headers=keys["marketer"])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"]
    assert client.get("/v1/experiments", headers=keys["marketer"]).json()["data"] == []


def test_inactive_arm_duplicate_key_and_roles(
    client: TestClient, keys: Headers, business: Any
) -> None:
    marketer = keys["marketer"]
    client.post("/v1/experiences/callback_senior:deactivate", headers=marketer)
    response = client.post("/v1/experiments", json=DEFINITION, headers=marketer)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "arms.2.experience"
    client.post("/v1/experiences/callback_senior:activate", headers=marketer)
    assert client.post("/v1/experiments", json=DEFINITION, headers=keys["agent"]).status_code == 403
    assert client.post("/v1/experiments", json=DEFINITION, headers=marketer).status_code == 201
    again = client.post("/v1/experiments", json=DEFINITION, headers=marketer)
    assert again.status_code == 409 and again.json()["error"]["field"] == "key"


def test_only_drafts_change_and_transitions_follow_the_lifecycle(
    client: TestClient, keys: Headers, business: Any
) -> None:
    marketer = keys["marketer"]
    url = "/v1/experiments/winter-discount"
    client.post("/v1/experiments", json=DEFINITION, headers=marketer)
    edited = client.patch(url, json={"name": "Renamed", "holdout_share": 0.2}, headers=marketer)
    assert edited.status_code == 200 and edited.json()["name"] == "Renamed"
    bad_edit = client.patch(url, json={"allocation": "adaptive"}, headers=marketer)
    assert bad_edit.status_code == 422  # the merged definition is checked as a whole
    assert client.post(f"{url}:pause", headers=marketer).status_code == 409
    assert client.post(f"{url}:start", headers=marketer).json()["status"] == "running"
    before = client.get(url, headers=marketer).json()
    for change in ({"name": "x"}, {"arms": arms("no_offer", "discount_10")}, {"burn_in": 1}):
        response = client.patch(url, json=change, headers=marketer)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["field"] == "status"
    assert client.get(url, headers=marketer).json() == before
    assert client.post(f"{url}:start", headers=marketer).status_code == 409
    assert (
        client.post(f"{url}:pause", json={"reason": "holiday"}, headers=marketer).status_code == 200
    )
    assert client.post(f"{url}:start", headers=marketer).status_code == 200
    assert client.post(f"{url}:stop", headers=marketer).json()["status"] == "stopped"
    assert client.post(f"{url}:start", headers=marketer).status_code == 409
    no_note = client.post(f"{url}:conclude", json={"decision": "none"}, headers=marketer)
    assert no_note.status_code == 422 and no_note.json()["error"]["field"] == "note"
    not_an_arm = client.post(
        f"{url}:conclude",
        json={"decision": "winner", "winner": "loyalty", "note": "n"},
        headers=marketer,
    )
    assert not_an_arm.status_code == 422 and not_an_arm.json()["error"]["field"] == "winner"
    done = client.post(
        f"{url}:conclude", json={"decision": "none", "note": "inconclusive"}, headers=marketer
    )
    assert done.status_code == 200
    history = [h["status"] for h in done.json()["history"]]
    assert history == ["draft", "running", "paused", "running", "stopped", "concluded"]
    assert done.json()["conclusion"]["by"] == "marketer:test-marketer"
    audit = client.get("/v1/audit", params={"entity": "experiment"}, headers=keys["admin"])
    if audit.status_code == 200:  # the audit endpoint lists what was done
        actions = [e["action"] for e in audit.json()["data"]]
        assert {"create", "update", "start", "pause", "stop", "conclude"} <= set(actions)


def decide_all(client: TestClient, keys: Headers, ids: list[str]) -> dict[str, dict[str, Any]]:
    made = {}
    for cid in ids:
        response = client.post("/v1/decisions", json={"customer_id": cid}, headers=keys["agent"])
        assert response.status_code == 201, response.text
        made[cid] = response.json()
    return made


def test_assignment_is_sticky_across_workers_and_a_restart(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime, settings: Settings
) -> None:
    client.post("/v1/experiments", json=DEFINITION, headers=keys["marketer"])
    client.post("/v1/experiments/winter-discount:start", headers=keys["marketer"])
    ids = customers(client, keys, 40)
    first = decide_all(client, keys, ids[:20])  # worker A enrols the first half
    other = Runtime(settings, engine=runtime.engine)  # worker B: its own caches
    with TestClient(create_app(runtime=other)) as worker_b:
        second = decide_all(worker_b, keys, ids[20:])  # worker B enrols the second half
        again_b = decide_all(worker_b, keys, ids[:20])
    again_a = decide_all(client, keys, ids[20:])
    arm = {cid: d["experiment"]["arm"] for cid, d in {**first, **second}.items()}
    assert {cid: d["experiment"]["arm"] for cid, d in again_b.items()} == {
        cid: arm[cid] for cid in ids[:20]
    }
    assert {cid: d["experiment"]["arm"] for cid, d in again_a.items()} == {
        cid: arm[cid] for cid in ids[20:]
    }
    restarted = Runtime(settings, engine=runtime.engine)  # a restart: nothing cached
    with TestClient(create_app(runtime=restarted)) as worker_c:
        after = decide_all(worker_c, keys, ids)
    assert {cid: d["experiment"]["arm"] for cid, d in after.items()} == arm
    assert len(set(arm.values())) == 3
    assert all(d["source"] == "experiment" for d in after.values())
    assert all(0 < d["propensity"] <= 1 for d in after.values())


def test_dropped_results_of_one_arm_raise_the_sample_ratio_warning(
    client: TestClient, keys: Headers, business: Any, database_url: str, tmp_path: Any
) -> None:
    definition = {**DEFINITION, "holdout_share": 0, "burn_in": 10_000}
    client.post("/v1/experiments", json=definition, headers=keys["marketer"])
    client.post("/v1/experiments/winter-discount:start", headers=keys["marketer"])
    made = decide_all(client, keys, customers(client, keys, 240))
    for decision in made.values():
        if decision["experiment"]["arm"] == "callback_senior":
            continue  # a broken pipeline loses this arm's results
        client.post(
            "/v1/outcomes",
            json={"decision_id": decision["decision_id"], "result": "retained"},
            headers=keys["agent"],
        )
    report = client.get("/v1/experiments/winter-discount/report", headers=keys["marketer"]).json()
    ratio = report["sample_ratio"]
    assert ratio["assignments"]["mismatch"] is False
    assert ratio["results"]["mismatch"] is True
    assert "Sample ratio mismatch in results" in ratio["warning"]
    command = ["experiments", "report", "winter-discount", "--db", database_url]
    result = CliRunner().invoke(cli_app, [*command, "--plots", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "WARNING: Sample ratio mismatch" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"winter-discount-{name}.svg" for name in ("allocation", "cumulative", "posterior")
    ]
    listed = CliRunner().invoke(cli_app, ["experiments", "list", "--db", database_url])
    assert "winter-discount" in listed.output and "running" in listed.output


def test_an_isolated_experiment_trains_the_main_policy_only_once_concluded(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    definition = {**DEFINITION, "isolate": True, "burn_in": 10_000}
    client.post("/v1/experiments", json=definition, headers=keys["marketer"])
    client.post("/v1/experiments/winter-discount:start", headers=keys["marketer"])
    made = decide_all(client, keys, customers(client, keys, 30))
    for decision in made.values():
        client.post(
            "/v1/outcomes",
            json={"decision_id": decision["decision_id"], "result": "retained"},
            headers=keys["agent"],
        )

    def cells() -> tuple[dict[Any, list[float]], dict[Any, list[float]]]:
        with Session(runtime.engine) as session:
            catalog = load_catalog(session)
            return stats.stored_cells(session), stats.replay(session, catalog=catalog)

    stored, replayed = cells()
    assert stored == {} and replayed == {}  # held back: the main policy has not seen them
    concluded = client.post(
        "/v1/experiments/winter-discount:conclude",
        json={"decision": "winner", "winner": "discount_10", "note": "clear enough"},
        headers=keys["marketer"],
    )
    assert concluded.status_code == 200 and concluded.json()["released_at"] is not None
    stored, replayed = cells()
    assert sum(v[0] for v in stored.values()) > 0
    assert stats.drift(stored, replayed) == []


def test_a_concluded_winner_is_promoted_into_the_next_rule_set(
    client: TestClient, keys: Headers, business: Any
) -> None:
    marketer = keys["marketer"]
    client.post("/v1/experiments", json={**DEFINITION, "burn_in": 10_000}, headers=marketer)
    client.post("/v1/experiments/winter-discount:start", headers=marketer)
    made = decide_all(
        client, keys, customers(client, keys, 60) + customers(client, keys, 20, "plus")
    )
    for decision in made.values():
        result = "retained" if decision["experience"] == "discount_10" else "churned"
        client.post(
            "/v1/outcomes",
            json={"decision_id": decision["decision_id"], "result": result},
            headers=keys["agent"],
        )
    client.post(
        "/v1/experiments/winter-discount:conclude",
        json={"decision": "winner", "winner": "discount_10", "note": "kept more customers"},
        headers=marketer,
    )
    compiled = client.post("/v1/rulesets:compile", json={"min_support": 5}, headers=marketer)
    assert compiled.status_code == 201, compiled.text
    ruleset = compiled.json()
    first = ruleset["rules"][0]
    assert first["experiment"]["key"] == "winter-discount"
    assert first["experience"] == "discount_10" and first["condition_text"] == 'plan == "basic"'
    in_arm = [d for d in made.values() if (d["experiment"] or {}).get("arm") == "discount_10"]
    assert first["support"] == len(in_arm) > 0
    assert ruleset["metrics"]["promoted"] == ["winter-discount"]
    assert "experiment 'winter-discount', concluded by marketer:test-marketer" in ruleset["text"]
    version = ruleset["version"]
    assert client.post(f"/v1/rulesets/{version}:activate", headers=marketer).status_code == 200
    decision = client.post(
        "/v1/decisions", json={"customer_id": "basic-0003"}, headers=keys["agent"]
    ).json()
    assert decision["rule"]["id"] == first["rule_id"]
    assert decision["experiment"] is None  # the experiment is over


def test_concurrent_decisions_never_hold_the_pool_while_a_reload_waits(
    client: TestClient, keys: Headers, business: Any, database_url: str
) -> None:
    """Eight threads decide through a pool of three connections while every decision reloads
    the running experiments (refresh interval 0): a decision holds a connection only for one
    read at a time, never while it waits for another thread's reload (which needs a connection
    of its own), so the pool never runs dry (it did: 32 connections on a server deadlocked)."""
    import threading

    from engine.db import make_engine
    from engine.decisions import decide
    from engine.schemas import DecisionIn

    marketer = keys["marketer"]
    assert client.post("/v1/experiments", json=DEFINITION, headers=marketer).status_code == 201
    assert client.post("/v1/experiments/winter-discount:start", headers=marketer).status_code == 200
    ids = customers(client, keys, 16)
    small = make_engine(database_url, pool_size=3)
    runtime = Runtime(
        Settings(database_url=database_url, experiment_refresh_seconds=0, seed=5), engine=small
    )
    errors: list[BaseException] = []

    def decide_some(offset: int) -> None:
        try:
            for cid in ids[offset::2]:
                decide(runtime=runtime, decision_in=DecisionIn(customer_id=cid))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=decide_some, args=(i % 2,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    runtime.close(release_engine=False)
    small.dispose()
    assert errors == []
    assert all(not thread.is_alive() for thread in threads)
