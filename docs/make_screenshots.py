"""Screenshots of every console page, from a real server over the demo business.

Seeds the demo (as ``make run`` does) into a scratch SQLite database, serves it on a free local
port, drives Debian's Chromium headless through Playwright (never a downloaded browser) and
saves docs/screenshots/<page>.png at 1280 px wide, plus two at phone width (390 px). Fails if a
page logs a browser console error.

    python docs/make_screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from engine.demo import DEMO_KEYS  # noqa: E402
from web.live import live_server, seed_demo_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/demo.db"
        started = time.monotonic()
        seed_demo_database(url)
        print(f"demo seeded in {time.monotonic() - started:.0f} s", file=sys.stderr)
        with live_server(url) as base, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
            errors: list[str] = []
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            shoot_everything(page, base, args.out)
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            phone.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            shoot_phone(phone, base, args.out)
            browser.close()
    if errors:
        raise SystemExit("browser console errors:\n" + "\n".join(errors))
    print(f"screenshots in {args.out}", file=sys.stderr)


def sign_in(page: Page, base: str, key: str) -> None:
    page.goto(f"{base}/signin")
    page.fill("#key", key)
    page.press("#key", "Enter")
    page.wait_for_load_state()


def shot(page: Page, out: Path, name: str) -> None:
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    print(f"  {name}.png", file=sys.stderr)


def shoot_everything(page: Page, base: str, out: Path) -> None:
    page.goto(f"{base}/signin")
    shot(page, out, "signin")
    sign_in(page, base, DEMO_KEYS["admin"])
    page.goto(f"{base}/agent")
    shot(page, out, "agent-worklist")
    top = page.locator("table.worklist tbody a").first
    customer = top.get_attribute("href") or "/agent/customers/c-00001"
    page.goto(f"{base}{customer}")
    page.click("text=Get the next best action")
    page.wait_for_load_state()
    shot(page, out, "agent-decision")
    page.select_option("select[name=reason_code]", "customer_request")
    page.fill("textarea[name=note]", "Asked for a call back from someone senior")
    page.click("text=Save override")
    page.wait_for_load_state()
    shot(page, out, "agent-customer")
    page.goto(f"{base}/agent/customers?q=Ada")
    shot(page, out, "agent-find")
    for path, name in [
        ("/marketer", "marketer-overview"),
        ("/marketer/catalog", "marketer-catalog"),
        ("/marketer/segments?depth=1", "marketer-segments"),
        ("/marketer/overrides", "marketer-overrides"),
        ("/marketer/value", "marketer-value"),
        ("/marketer/no-good-action", "marketer-no-good-action"),
        ("/marketer/experiments", "marketer-experiments"),
        ("/marketer/experiments/new", "marketer-experiment-new"),
        ("/marketer/experiments/winter-save", "marketer-experiment-report"),
    ]:
        page.goto(f"{base}{path}")
        shot(page, out, name)
    page.goto(f"{base}/marketer/rules")
    page.fill("#budget", "12")
    page.click("button:has-text('Compile')")
    page.wait_for_load_state()
    shot(page, out, "marketer-ruleset")
    page.click("button:has-text('Show the diff')")
    page.wait_for_load_state()
    shot(page, out, "marketer-diff")
    page.goto(f"{base}/marketer/rules/2/activate")
    shot(page, out, "marketer-activate")
    page.goto(f"{base}/marketer/rules")
    shot(page, out, "marketer-rules")


def shoot_phone(page: Page, base: str, out: Path) -> None:
    sign_in(page, base, DEMO_KEYS["agent"])
    page.goto(f"{base}/agent")
    shot(page, out, "phone-agent-worklist")
    page.goto(f"{base}/agent/customers/c-00001")
    page.click("text=Get the next best action")
    page.wait_for_load_state()
    shot(page, out, "phone-agent-decision")


if __name__ == "__main__":
    main()
