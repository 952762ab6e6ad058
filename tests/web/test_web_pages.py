"""The consoles served in-process (TestClient) over a small demo business: sign-in and the
session cookie, CSRF, roles, and the data every page shows."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import func, select

from api import create_app
from engine.demo import DEMO_KEYS
from engine.models import ApiKey, Decision, DecisionOverride, Experience, Outcome
from engine.runtime import Runtime
from rules.models import RuleSetVersion
from web.session import COOKIE

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf(client: TestClient, path: str = "/signin") -> str:
    response = client.get(path)
    found = CSRF.search(response.text)
    assert found, response.text[:500]
    return found.group(1)


def sign_in(client: TestClient, role: str, next_path: str = "") -> Any:
    return client.post(
        "/signin",
        data={"key": DEMO_KEYS[role], "csrf_token": csrf(client), "next": next_path},
        follow_redirects=False,
    )


def count(runtime: Runtime, model: Any) -> int:
    with runtime.session() as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


# Sign-in, cookie, CSRF, roles ------------------------------------------------------------------


def test_sign_in_sets_a_signed_http_only_cookie_and_never_echoes_the_key(web: TestClient) -> None:
    wrong = web.post(
        "/signin",
        data={"key": "nb_nothere_secret-value-123", "csrf_token": csrf(web)},
        follow_redirects=False,
    )
    assert wrong.status_code == 401
    assert "unknown or revoked" in wrong.text
    assert "secret-value-123" not in wrong.text
    response = sign_in(web, "agent")
    assert response.status_code == 303
    assert response.headers["location"] == "/agent"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http here
    assert DEMO_KEYS["agent"] not in cookie
    page = web.get("/agent")
    assert page.status_code == 200
    assert DEMO_KEYS["agent"] not in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["cache-control"] == "no-store"


def test_cookie_is_secure_over_https(runtime: Runtime) -> None:
    with TestClient(create_app(runtime=runtime), base_url="https://testserver") as client:
        response = sign_in(client, "marketer")
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


def test_every_post_checks_the_csrf_token(web: TestClient, runtime: Runtime) -> None:
    no_token = web.post("/signin", data={"key": DEMO_KEYS["agent"]}, follow_redirects=False)
    assert no_token.status_code == 403
    assert "out of date" in no_token.text
    assert sign_in(web, "admin").status_code == 303
    decisions = count(runtime, Decision)
    posts = {
        "/agent/customers/c-00001/decide": {"channel": "phone"},
        "/marketer/rules/compile": {"budget": "5"},
        "/marketer/rules/1/activate": {},
        "/marketer/experiences": {"key": "csrf_probe", "name": "x"},
        "/signout": {},
    }
    for path, data in posts.items():
        response = web.post(path, data={**data, "csrf_token": "forged"}, follow_redirects=False)
        assert response.status_code == 403, path
    assert count(runtime, Decision) == decisions
    with runtime.session() as session:
        assert session.get(Experience, "csrf_probe") is None
    assert web.get("/agent").status_code == 200  # still signed in: the sign-out was refused


def test_roles_decide_what_is_shown(web: TestClient, runtime: Runtime) -> None:
    anonymous = web.get("/marketer/rules", follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/signin?next=%2Fmarketer%2Frules"
    service = sign_in(web, "service")
    assert service.status_code == 401
    assert "has no console" in service.text
    assert sign_in(web, "agent").status_code == 303
    assert web.get("/marketer").status_code == 403
    agent_page = web.get("/agent")
    assert 'href="/marketer"' not in agent_page.text
    assert sign_in(web, "marketer", next_path="/agent").headers["location"] == "/marketer"
    assert web.get("/agent", follow_redirects=False).status_code == 403
    admin = sign_in(web, "admin", next_path="/marketer/catalog")
    assert admin.headers["location"] == "/marketer/catalog"
    home = web.get("/agent")
    assert 'href="/marketer"' in home.text
    assert web.get("/marketer").status_code == 200
    evil = sign_in(web, "admin", next_path="//evil.example/x")
    assert evil.headers["location"] == "/marketer"


def test_forged_expired_and_revoked_sessions_sign_out(web: TestClient, runtime: Runtime) -> None:
    assert sign_in(web, "agent").status_code == 303
    good = web.cookies[COOKIE]
    body, _, mac = good.partition(".")
    web.cookies.clear()
    web.cookies.set(COOKIE, body + "." + mac[::-1])
    assert web.get("/agent", follow_redirects=False).status_code == 303
    web.cookies.clear()
    web.cookies.set(COOKIE, good)
    assert web.get("/agent").status_code == 200
    with runtime.session() as session:
        key = session.exec(select(ApiKey).where(ApiKey.name == "demo-agent")).one()
        key.revoked_at = key.created_at
        session.add(key)
        session.commit()
    try:
        assert web.get("/agent", follow_redirects=False).status_code == 303
    finally:
        with runtime.session() as session:
            key = session.exec(select(ApiKey).where(ApiKey.name == "demo-agent")).one()
            key.revoked_at = None
            session.add(key)
            session.commit()


def test_sign_out(web: TestClient) -> None:
    sign_in(web, "agent")
    token = csrf(web, "/agent")
    response = web.post("/signout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert web.get("/agent", follow_redirects=False).status_code == 303
    assert "You are signed out" in web.get("/signin?done=signed_out").text


# Agent console ---------------------------------------------------------------------------------


def test_worklist_page(web: TestClient) -> None:
    sign_in(web, "agent")
    page = web.get("/agent")
    assert page.status_code == 200
    assert "200 customers match" in page.text
    assert page.text.count('href="/agent/customers/c-') == 25
    basic = web.get("/agent", params={"where": 'plan == "basic"'})
    matched = int(re.search(r"(\d+) customers match", basic.text).group(1))  # type: ignore[union-attr]
    assert 0 < matched < 200
    bad = web.get("/agent", params={"where": "plan ==="})
    assert bad.status_code == 422
    assert "where:" in bad.text
    second = web.get("/agent", params={"offset": 25})
    assert "showing 26 to 50" in second.text


def test_find_a_customer(web: TestClient) -> None:
    sign_in(web, "agent")
    exact = web.get("/agent/customers", params={"q": "c-00007"}, follow_redirects=False)
    assert exact.headers["location"] == "/agent/customers/c-00007"
    by_name = web.get("/agent/customers", params={"q": "Ada"})
    assert by_name.status_code == 200
    assert "Ada Adams" in by_name.text
    missing = web.get("/agent/customers", params={"q": "zz-nobody"})
    assert "No customer found" in missing.text
    assert web.get("/agent/customers/zz-nobody").status_code == 404


def test_decide_override_and_record_the_result(web: TestClient, runtime: Runtime) -> None:
    sign_in(web, "agent")
    profile = web.get("/agent/customers/c-00003")
    assert profile.status_code == 200
    for text in ("Customer value", "Gain from acting", "tenure_months", "Get the next best action"):
        assert text in profile.text
    token = CSRF.search(profile.text).group(1)  # type: ignore[union-attr]
    page = web.post(
        "/agent/customers/c-00003/decide", data={"csrf_token": token, "channel": "phone"}
    )
    assert page.status_code == 200
    for text in ("Recommended", "Expected results", "Ranked alternatives", "Suppressed by guardrails", "90% CI"):  # fmt: skip
        assert text in page.text
    assert "IF " in page.text or "OTHERWISE" in page.text or "Exploring" in page.text
    assert page.text.count("<tr") >= 8  # every candidate ranked
    decision_id = re.search(r'action="/agent/decisions/([0-9a-f-]+)/override"', page.text).group(1)  # type: ignore[union-attr]
    with runtime.session() as session:
        decision = session.get(Decision, decision_id)
        assert decision is not None
        assert decision.agent_id == "demo-agent"
        engine_pick = decision.experience_key
    other = "callback_senior" if engine_pick != "callback_senior" else "no_offer"
    url = f"/agent/decisions/{decision_id}"
    blank = web.post(
        f"{url}/override",
        data={"csrf_token": token, "customer_id": "c-00003", "experience": other, "reason_code": "customer_request", "note": "   "},
    )  # fmt: skip
    assert blank.status_code == 422
    assert "a note is required" in blank.text
    with runtime.session() as session:
        assert session.get(DecisionOverride, decision_id) is None
    done = web.post(
        f"{url}/override",
        data={"csrf_token": token, "customer_id": "c-00003", "experience": other, "reason_code": "customer_request", "note": "Wants to talk it through"},
        follow_redirects=False,
    )  # fmt: skip
    assert done.status_code == 303
    assert done.headers["location"].startswith("/agent/customers/c-00003?decision=")
    after = web.get(done.headers["location"])
    assert "Override recorded" in after.text
    assert "Wants to talk it through" in after.text
    reacted = web.post(
        f"{url}/reaction",
        data={"csrf_token": token, "customer_id": "c-00003", "reaction": "declined"},
        follow_redirects=False,
    )
    assert reacted.status_code == 303
    result = web.post(
        f"{url}/outcome",
        data={"csrf_token": token, "customer_id": "c-00003", "result": "retained"},
        follow_redirects=False,
    )
    assert result.status_code == 303
    final = web.get(result.headers["location"])
    assert "Result: <strong>retained</strong>" in final.text
    assert "Customer's answer: <strong>declined</strong>" in final.text
    with runtime.session() as session:
        outcome = session.exec(select(Outcome).where(Outcome.decision_id == decision_id)).one()
    assert outcome.experience_key == other  # the override was delivered and trained
    again = web.post(
        f"{url}/outcome",
        data={"csrf_token": token, "customer_id": "c-00003", "result": "churned"},
    )
    assert again.status_code == 422
    assert "has an outcome already" in again.text


# Marketer console ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "texts"),
    [
        ("/marketer", ["Active rule set", "Version 1", "8 experiences"]),
        (
            "/marketer/catalog",
            [
                "Experiences and costs",
                "no_offer",
                "control",
                "Outcome scale",
                "upgraded",
                "Segmentation",
                "plan → tenure_months → complaints_90d",
                "Guardrails",
            ],
        ),
        ("/marketer/rules", ["Compile a new version", "Version 1", "active"]),
        ("/marketer/rules/1", ["Rule set version 1", "<ol>", "value loss", "Rules"]),
        ("/marketer/segments", ["Segment tree", "Everyone", "plan basic", "P(best)", "90% CI"]),
        ("/marketer/segments?depth=0&exposure=1", ["Everyone"]),
        ("/marketer/overrides", ["Observational", "Override rate", "By agent", "a-3", "By reason"]),
        (
            "/marketer/value",
            ["Concentration", "of the value comes from the top 20%", "By segment", "plan basic"],
        ),
        ("/marketer/no-good-action", ["No good action", "Doing nothing"]),
    ],
)
def test_marketer_pages(web: TestClient, path: str, texts: list[str]) -> None:
    sign_in(web, "marketer")
    page = web.get(path)
    assert page.status_code == 200, page.text[:2000]
    for text in texts:
        assert text in page.text, text
    assert 'href="/marketer/experiments"' in page.text  # in the navigation of every page


def test_compile_diff_activate_and_roll_back(web: TestClient, runtime: Runtime) -> None:
    sign_in(web, "marketer")
    token = csrf(web, "/marketer/rules")
    compiled = web.post(
        "/marketer/rules/compile",
        data={"csrf_token": token, "budget": "6", "min_support": "30"},
        follow_redirects=False,
    )
    assert compiled.status_code == 303
    version = int(re.search(r"/marketer/rules/(\d+)", compiled.headers["location"]).group(1))  # type: ignore[union-attr]
    page = web.get(compiled.headers["location"])
    assert "A new rule-set version is compiled" in page.text
    assert f"Activate version {version}" in page.text
    diff = web.get("/marketer/rules/diff", params={"a": 1, "b": version})
    assert diff.status_code == 200
    assert "Added" in diff.text and "Removed" in diff.text
    confirm = web.get(f"/marketer/rules/{version}/activate")
    assert f"Yes, activate version {version}" in confirm.text
    activated = web.post(f"/marketer/rules/{version}/activate", data={"csrf_token": token}, follow_redirects=False)  # fmt: skip
    assert activated.status_code == 303
    with runtime.session() as session:
        assert session.get(RuleSetVersion, version).active  # type: ignore[union-attr]
    rollback = web.get("/marketer/rules/1/activate")
    assert "Roll back to version 1?" in rollback.text
    web.post("/marketer/rules/1/activate", data={"csrf_token": token})
    with runtime.session() as session:
        assert session.get(RuleSetVersion, 1).active  # type: ignore[union-attr]
    bad = web.post("/marketer/rules/compile", data={"csrf_token": token, "budget": "0"})
    assert bad.status_code == 422
    assert web.get("/marketer/rules/999").status_code == 404


def test_catalog_forms(web: TestClient, runtime: Runtime) -> None:
    sign_in(web, "marketer")
    token = csrf(web, "/marketer/catalog")
    created = web.post(
        "/marketer/experiences",
        data={"csrf_token": token, "key": "gift_card", "name": "Gift card", "cost": "7.5", "cost_on": ["retained", "upgraded"], "eligibility": 'plan == "premium"'},
        follow_redirects=False,
    )  # fmt: skip
    assert created.status_code == 303
    with runtime.session() as session:
        row = session.get(Experience, "gift_card")
        assert row is not None
        assert (row.cost, row.cost_on, row.eligibility) == (7.5, ["retained", "upgraded"], 'plan == "premium"')  # fmt: skip
    bad_rule = web.post(
        "/marketer/experiences",
        data={"csrf_token": token, "key": "bad_rule", "name": "x", "eligibility": 'plan == "gold"'},
    )
    assert bad_rule.status_code == 422
    assert "&#39;gold&#39; is not a level of plan" in bad_rule.text
    bad_key = web.post(
        "/marketer/experiences", data={"csrf_token": token, "key": "9x", "name": "x"}
    )
    assert bad_key.status_code == 422
    assert "key:" in bad_key.text
    off = web.post(
        "/marketer/experiences/gift_card/active",
        data={"csrf_token": token, "active": "false"},
        follow_redirects=False,
    )
    assert off.status_code == 303
    with runtime.session() as session:
        assert session.get(Experience, "gift_card").active is False  # type: ignore[union-attr]
    seg = web.post(
        "/marketer/segmentation",
        data={"csrf_token": token, "attributes": "plan, colour"},
    )
    assert seg.status_code == 422
