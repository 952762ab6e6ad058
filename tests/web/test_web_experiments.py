"""The marketer console's experiment pages (TestClient over the demo business, whose
``winter-save`` experiment is running): the list, the create form with its inline errors, the
report with its plots, the lifecycle buttons and the conclude form; roles and CSRF."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from engine.runtime import Runtime
from experiments.models import Experiment, ExperimentAllocation
from experiments.report import build_report
from tests.web.test_web_pages import csrf, sign_in

GOOD = {
    "key": "spring-save",
    "name": "Spring save",
    "hypothesis": "A free month beats a discount in spring",
    "eligibility": 'plan == "basic"',
    "arms": ["no_offer", "discount_10", "free_month"],
    "allocation": "fixed",
    "weight.no_offer": "1",
    "weight.discount_10": "1",
    "weight.free_month": "2",
    "holdout_share": "0",
    "min_share": "0.05",
    "burn_in": "50",
    "update_minutes": "30",
    "priority": "5",
    "stopping.p_best": "0.9",
    "stopping.expected_loss": "0.5",
    "stopping.max_sample": "5000",
    "stopping.on_stop": "conclude",
    "guardrail.level": "churned",
    "guardrail.margin": "0.05",
    "guardrail.probability": "0.95",
    "isolate": "on",
}


def experiment(runtime: Runtime, key: str) -> Experiment | None:
    with runtime.session() as session:
        return session.get(Experiment, key)


def error_for(page: str, field: str) -> str:
    """The inline message shown next to ``field`` in a form."""
    found = re.search(rf'id="err-{re.escape(field)}"[^>]*>([^<]*)<', page)
    assert found, f"no error next to {field}"
    return found.group(1)


def test_list_page_links_the_reports(web: TestClient) -> None:
    sign_in(web, "marketer")
    overview = web.get("/marketer")
    assert 'href="/marketer/experiments"' in overview.text  # in the marketer navigation
    page = web.get("/marketer/experiments")
    assert page.status_code == 200
    for text in ("winter-save", "Winter save offers", "running", "adaptive", "no_offer", "%"):
        assert text in page.text, text
    assert 'href="/marketer/experiments/winter-save"' in page.text
    assert 'aria-current="page"' in page.text


def test_report_page_shows_arms_stopping_plots_and_buttons(web: TestClient) -> None:
    sign_in(web, "marketer")
    page = web.get("/marketer/experiments/winter-save")
    assert page.status_code == 200, page.text[:2000]
    for text in (
        "Winter save offers",
        "Expected net value (90% CI)",
        "Uplift over control",
        "P(best)",
        "Expected loss",
        "Stopping rule",
        "Burn-in",
        "Pause the experiment",
        "Stop the experiment",
        "Conclude the experiment",
        "control",
    ):
        assert text in page.text, text
    assert "Start the experiment" not in page.text  # running: start is not offered
    for name in ("posterior", "allocation", "cumulative"):
        src = f"/marketer/experiments/winter-save/plots/{name}.svg"
        assert f'src="{src}"' in page.text
        plot = web.get(src)
        assert plot.status_code == 200
        assert plot.headers["content-type"] == "image/svg+xml"
        assert "<svg" in plot.text
    assert web.get("/marketer/experiments/winter-save/plots/other.svg").status_code == 422
    missing = web.get("/marketer/experiments/no-such")
    assert missing.status_code == 404
    assert "no experiment" in missing.text


def test_sample_ratio_warning_is_a_banner(web: TestClient, runtime: Runtime) -> None:
    sign_in(web, "marketer")
    assert 'id="srm-warning"' not in web.get("/marketer/experiments/winter-save").text
    # Record an allocation far from what was assigned (half the traffic to the arm that got the
    # fewest customers): the sample-ratio test must flag it and the page must say so.
    with runtime.session() as session:
        row = session.get(Experiment, "winter-save")
        assert row is not None
        report = build_report(session=session, catalog=runtime.catalog(session), row=row)
    observed = report.sample_ratio["assignments"]["observed"]
    assert sum(observed) >= 20  # enough customers for the test to run
    arms = [arm["experience"] for arm in report.arms]
    fewest = arms[observed.index(min(observed))]
    skewed = {a: 0.5 if a == fewest else 0.5 / (len(arms) - 1) for a in arms}
    original = set_allocations(runtime, "winter-save", lambda _: skewed)
    try:
        page = web.get("/marketer/experiments/winter-save")
        assert 'id="srm-warning"' in page.text
        assert "Sample ratio mismatch" in page.text
    finally:
        set_allocations(runtime, "winter-save", lambda i: original[i])
    assert 'id="srm-warning"' not in web.get("/marketer/experiments/winter-save").text


def set_allocations(
    runtime: Runtime, key: str, weights: Callable[[int], dict[str, float]]
) -> dict[int, dict[str, float]]:
    """Replace each recorded allocation of ``key`` with ``weights(its id)``; returns the old."""
    before = {}
    with runtime.session() as session:
        rows = session.exec(
            select(ExperimentAllocation).where(col(ExperimentAllocation.experiment_key) == key)
        )
        for row in rows:
            assert row.id is not None
            before[row.id] = dict(row.weights)
            row.weights = weights(row.id)
            session.add(row)
        session.commit()
    return before


def test_create_form_makes_a_draft(web: TestClient, runtime: Runtime) -> None:
    sign_in(web, "marketer")
    form = web.get("/marketer/experiments/new")
    assert form.status_code == 200
    for text in (
        'name="arms" value="free_month"',
        'name="stopping.p_best"',
        'name="guardrail.level"',
        "churned",
    ):
        assert text in form.text, text
    token = csrf(web, "/marketer/experiments/new")
    created = web.post(
        "/marketer/experiments", data={**GOOD, "csrf_token": token}, follow_redirects=False
    )
    assert created.status_code == 303, created.text[:2000]
    assert (
        created.headers["location"] == "/marketer/experiments/spring-save?done=experiment_created"
    )
    row = experiment(runtime, "spring-save")
    assert row is not None
    assert row.status == "draft"
    assert row.created_by == "marketer:demo-marketer"
    assert [a["experience"] for a in row.arms] == ["no_offer", "discount_10", "free_month"]
    assert [a["weight"] for a in row.arms] == [1.0, 1.0, 2.0]
    assert (row.burn_in, row.update_minutes, row.priority, row.isolate) == (50, 30.0, 5, True)
    assert row.stopping == {
        "p_best": 0.9,
        "expected_loss": 0.5,
        "max_sample": 5000,
        "on_stop": "conclude",
    }
    assert row.guardrail == {"level": "churned", "margin": 0.05, "probability": 0.95}
    page = web.get(created.headers["location"])
    assert "Experiment created as a draft" in page.text
    assert "Start the experiment" in page.text
    assert "Pause the experiment" not in page.text
    assert "Start the experiment first" in page.text  # a draft is not concluded


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"eligibility": "plan == "}, "eligibility", ""),
        ({"eligibility": 'plan == "gold"'}, "eligibility", "&#39;gold&#39; is not a level of plan"),
        ({"arms": ["no_offer"]}, "arms", "at least 2 items"),
        ({"weight.free_month": ""}, "arms", "give every arm a weight, or none"),
        ({"stopping.p_best": "1.5"}, "stopping-p_best", "less than 1"),
        ({"holdout_share": "lots"}, "holdout_share", "valid number"),
        ({"guardrail.level": "lost"}, "guardrail-level", "lost"),
        ({"key": "9bad"}, "key", ""),
        ({"key": "winter-save"}, "key", "exists already"),
        ({"name": ""}, "name", "at least 1 character"),
    ],
)
def test_create_form_shows_each_error_next_to_its_field(
    web: TestClient, runtime: Runtime, change: dict[str, Any], field: str, message: str
) -> None:
    sign_in(web, "marketer")
    token = csrf(web, "/marketer/experiments/new")
    data = {**GOOD, "key": "bad-one", **change, "csrf_token": token}
    page = web.post("/marketer/experiments", data=data)
    assert page.status_code == 422, page.text[:2000]
    assert message in error_for(page.text, field)
    assert (
        'value="A free month beats a discount in spring"' in page.text
        or "A free month beats a discount in spring</textarea>" in page.text
    )
    assert 'value="Spring save"' in page.text or change.get("name") == ""
    assert 'value="free_month" checked' in page.text or change.get("arms")
    if change.get("key") != "winter-save":
        assert experiment(runtime, str(data["key"])) is None


def test_lifecycle_buttons_and_conclude_form(web: TestClient, runtime: Runtime) -> None:
    sign_in(web, "marketer")
    token = csrf(web, "/marketer/experiments/new")
    data = {**GOOD, "key": "autumn-save", "csrf_token": token}
    assert web.post("/marketer/experiments", data=data, follow_redirects=False).status_code == 303
    base = "/marketer/experiments/autumn-save"
    for action, status, flash in (
        ("start", "running", "The experiment is running"),
        ("pause", "paused", "The experiment is paused"),
        ("start", "running", "The experiment is running"),
        ("stop", "stopped", "The experiment is stopped"),
    ):
        done = web.post(f"{base}/{action}", data={"csrf_token": token}, follow_redirects=False)
        assert done.status_code == 303, (action, done.text[:500])
        assert experiment(runtime, "autumn-save").status == status  # type: ignore[union-attr]
        assert flash in web.get(done.headers["location"]).text
    refused = web.post(f"{base}/pause", data={"csrf_token": token})  # stopped: cannot pause
    assert refused.status_code == 409
    no_note = web.post(
        f"{base}/conclude",
        data={"csrf_token": token, "decision": "winner", "winner": "free_month", "note": ""},
    )
    assert no_note.status_code == 422
    assert "at least 1 character" in error_for(no_note.text, "c-note")
    bad_where = web.post(
        f"{base}/conclude",
        data={
            "csrf_token": token,
            "decision": "segment_winners",
            "where": "plan ==",
            "segment_experience": "free_month",
            "note": "n",
        },
    )
    assert bad_where.status_code == 422
    assert error_for(bad_where.text, "c-where")
    assert 'value="plan =="' in bad_where.text
    concluded = web.post(
        f"{base}/conclude",
        data={
            "csrf_token": token,
            "decision": "winner",
            "winner": "free_month",
            "note": "Free month wins",
            "promote": "on",
        },
        follow_redirects=False,
    )
    assert concluded.status_code == 303
    row = experiment(runtime, "autumn-save")
    assert row is not None and row.status == "concluded"
    assert row.conclusion is not None and row.conclusion["winner"] == "free_month"
    page = web.get(concluded.headers["location"])
    for text in (
        "concluded with your decision",
        "Free month wins",
        "marketer:demo-marketer",
        "winner",
    ):
        assert text in page.text, text
    assert "Conclude the experiment" not in page.text
    assert "the experiment</button>" not in page.text  # no lifecycle button left


def test_roles_and_csrf(web: TestClient, runtime: Runtime) -> None:
    anonymous = web.get("/marketer/experiments", follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/signin?next=%2Fmarketer%2Fexperiments"
    sign_in(web, "agent")
    for path in (
        "/marketer/experiments",
        "/marketer/experiments/new",
        "/marketer/experiments/winter-save",
        "/marketer/experiments/winter-save/plots/posterior.svg",
    ):
        assert web.get(path).status_code == 403, path
    token = csrf(web, "/agent")
    agent_post = web.post("/marketer/experiments/winter-save/pause", data={"csrf_token": token})
    assert agent_post.status_code == 403
    assert experiment(runtime, "winter-save").status == "running"  # type: ignore[union-attr]
    sign_in(web, "admin")
    assert web.get("/marketer/experiments").status_code == 200
    posts = {
        "/marketer/experiments": {**GOOD, "key": "forged"},
        "/marketer/experiments/winter-save/pause": {},
        "/marketer/experiments/winter-save/stop": {},
        "/marketer/experiments/winter-save/conclude": {"decision": "none", "note": "x"},
    }
    for path, data in posts.items():
        response = web.post(path, data={**data, "csrf_token": "forged"})
        assert response.status_code == 403, path
        assert "out of date" in response.text
    assert experiment(runtime, "forged") is None
    assert experiment(runtime, "winter-save").status == "running"  # type: ignore[union-attr]
