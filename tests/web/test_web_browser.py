"""The consoles in a real headless Chromium (Debian's, never a downloaded browser) against a real
uvicorn server over its own database (SQLite, or PostgreSQL when NEXTBEST_TEST_DATABASE_URL is
set), seeded with a small demo business: the agent's flow end to end and the marketer's rule-set
flow and experiment flow, with no browser console error."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.demo import DEMO_KEYS
from tests.conftest import scratch_database
from web.live import live_server, seed_demo_database

CHROMIUM = os.environ.get("NEXTBEST_CHROMIUM", "/usr/bin/chromium")

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)

Page = playwright_api.Page
expect = playwright_api.expect


@pytest.fixture(scope="module")
def web_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of the browser tests' own, so that the server's data outlives other tests."""
    with scratch_database(tmp_path_factory.mktemp("web"), "nextbest_web") as url:
        yield url


@pytest.fixture(scope="module")
def base_url(web_database: str) -> Iterator[str]:
    seed_demo_database(
        web_database, n_customers=200, n_triples=2000, decisions=40, agent_decisions=40
    )
    with live_server(web_database) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: object) -> Iterator[Page]:
    """A fresh browser context (no cookies) whose console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)  # fmt: skip
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert errors == [], errors


def sign_in(page: Page, base_url: str, role: str) -> None:
    page.goto(f"{base_url}/signin")
    page.fill("#key", DEMO_KEYS[role])
    page.press("#key", "Enter")


def test_agent_flow(page: Page, base_url: str) -> None:
    sign_in(page, base_url, "agent")
    expect(page).to_have_url(f"{base_url}/agent")
    expect(page.locator("h1")).to_contain_text("Worklist")
    expect(page.locator("table.worklist tbody tr")).to_have_count(25)
    # Find a customer from the keyboard: the search has the focus ("/" brings it back), Enter
    # submits.
    expect(page.locator("#find-q")).to_be_focused()
    page.locator("h1").click()
    page.keyboard.press("/")
    expect(page.locator("#find-q")).to_be_focused()
    page.keyboard.type("c-00005")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{base_url}/agent/customers/c-00005")
    expect(page.locator("h2", has_text="Customer value")).to_be_visible()
    # The decide button has the focus: Enter asks for the next best action.
    expect(page.locator("button", has_text="Get the next best action")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_contain_text("Next best action")
    expect(page).to_have_url(re.compile(r"/agent/customers/c-00005\?decision=[0-9a-f-]+$"))
    expect(page.locator("figure.dist svg rect")).to_have_count(3)  # churned, retained, upgraded
    expect(page.locator(".recommendation .rule")).to_be_visible()
    expect(page.locator("text=Ranked alternatives")).to_be_visible()
    expect(page.locator("text=Suppressed by guardrails")).to_be_visible()
    recommended = page.locator("#rec-h").inner_text()
    # Override: another experience, a reason code and the required note.
    override = page.locator("form.override-form")
    choice = override.locator("select[name=experience] option").nth(1).inner_text()
    override.locator("select[name=experience]").select_option(label=choice)
    override.locator("select[name=reason_code]").select_option("customer_request")
    override.locator("button", has_text="Save override").click()
    expect(page.locator("textarea[name=note]:invalid")).to_have_count(1)  # required: not sent
    override.locator("textarea[name=note]").fill("Asked for this one on the phone")
    override.locator("button", has_text="Save override").click()
    expect(page.locator(".flash")).to_contain_text("Override recorded")
    card = page.locator("article.decision").first
    expect(card).to_contain_text(f"Engine: {recommended}")
    expect(card).to_contain_text(f"to {choice}")
    expect(card).to_contain_text("Asked for this one on the phone")
    # Record the result; it shows in the history.
    card.locator("select[name=result]").select_option("retained")
    card.locator("button", has_text="Record result").click()
    expect(page.locator(".flash")).to_contain_text("Result recorded")
    card = page.locator("article.decision").first
    expect(card).to_contain_text("Result: retained")
    expect(card).to_contain_text(f"with {choice}")
    expect(card.locator("form")).to_have_count(0)  # closed: nothing left to record


def test_agent_console_fits_a_phone(page: Page, base_url: str) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, base_url, "agent")
    page.goto(f"{base_url}/agent/customers/c-00009")
    page.locator("button", has_text="Get the next best action").click()
    expect(page.locator("h1")).to_contain_text("Next best action")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px phone"


def test_marketer_rule_set_flow(page: Page, base_url: str) -> None:
    sign_in(page, base_url, "marketer")
    expect(page).to_have_url(f"{base_url}/marketer")
    page.click("nav >> text=Rule sets")
    page.fill("#budget", "8")
    page.click("button:has-text('Compile')")
    expect(page.locator(".flash")).to_contain_text("compiled")
    expect(page.locator("h1")).to_contain_text("Rule set version 2")
    expect(page.locator(".markdown ol li").first).to_be_visible()
    page.select_option("#diff-a", "1")
    page.click("button:has-text('Show the diff')")
    expect(page.locator("h1")).to_contain_text("Rule set 1 → 2")
    expect(page.locator("#added-h")).to_be_visible()
    page.get_by_role("link", name="Version 2", exact=True).click()
    page.click("text=Activate version 2…")
    expect(page.locator("h1")).to_contain_text("Activate version 2?")
    page.click("button:has-text('Yes, activate version 2')")
    expect(page.locator(".flash")).to_contain_text("now active")
    expect(page.locator("h1 .tag")).to_have_text("active")
    page.click("nav >> text=Segments")
    node = page.locator("details.node details.node").first
    node.locator("> summary").click()
    expect(node.locator("> .table-wrap table")).to_be_visible()
    for link in ("Overrides", "Customer value", "No good action", "Catalog"):
        page.click(f"nav >> text={link}")
        expect(page.locator("h1")).to_contain_text(link if link != "Catalog" else "Catalog")


def test_marketer_experiment_flow(page: Page, base_url: str) -> None:
    sign_in(page, base_url, "marketer")
    page.click("nav >> text=Experiments")
    expect(page.locator("h1")).to_contain_text("Experiments")
    expect(page.locator("table.experiments")).to_contain_text("winter-save")
    page.click("text=New experiment")
    # (A refused form answers 422, which Chromium logs as a console error: the inline errors
    # are tested in test_web_experiments.py.)
    page.fill("#f-key", "browser-save")
    page.fill("#f-name", "Browser save")
    page.fill("#f-hypothesis", "A discount is enough")
    page.fill("#f-eligibility", 'plan == "basic"')
    page.check("input[name=arms][value=discount_10]")
    page.check("input[name=arms][value=free_month]")
    page.fill("#f-burn_in", "20")
    page.select_option("#f-allocation", "adaptive")
    page.click("button:has-text('Create the experiment')")
    expect(page.locator(".flash")).to_contain_text("Experiment created as a draft")
    expect(page.locator("h1")).to_contain_text("Browser save")
    expect(page.locator("h1 .tag")).to_have_text("draft")
    page.click("button:has-text('Start the experiment')")
    expect(page.locator(".flash")).to_contain_text("is running")
    expect(page.locator("h1 .tag")).to_have_text("running")
    expect(page.locator("button:has-text('Pause the experiment')")).to_be_visible()
    # The running demo experiment's report: arms, stopping rule and its three plots (SVG images
    # served under the session cookie, each loaded and drawn).
    page.click("nav >> text=Experiments")
    page.click("a[href='/marketer/experiments/winter-save']")
    expect(page.locator("h1")).to_contain_text("Winter save offers")
    expect(page.locator("table.arms tbody tr")).to_have_count(3)
    expect(page.locator("#stop-h")).to_be_visible()
    plots = page.locator(".plots img")
    expect(plots).to_have_count(3)
    # Each plot is a matplotlib render on the server: allow a loaded machine its time.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.plots img')]"
        ".every(img => img.complete && img.naturalWidth > 0)",
        timeout=60_000,
    )
    for i in range(3):
        plot = plots.nth(i)
        source = page.request.get(base_url + str(plot.get_attribute("src")))
        assert source.headers["content-type"] == "image/svg+xml"
        assert "<svg" in source.text()
