"""The status page in a real browser (issue 14): Playwright driving Debian's Chromium
against the app served on a local port, with the real poller, the real Twilio SDK
talking to the local fake Twilio, and the built-in simulated Nightscout. axe-core
checks every page at 360 and 1280 px; screenshots land in test-artifacts/."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from models import LogEntry
from scout.config import Config, load_config
from scout.poller import Poller
from scout.store.sqlite import SqliteStore
from scout.web import create_app
from tests.fake_providers import FakeProviders, callbacks_for
from tests.telephony_setup import twilio_env

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SCOUT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
AXE = Path(__file__).resolve().parent / "browser_deps" / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = (360, 1280)
USER_ID = "dev:ana@example.com"


class LiveScout:
    """The web app on a free 127.0.0.1 port (dev mode, Twilio against the local fake) and a
    poller on the same SQLite file, as `make run` deploys them."""

    def __init__(self, config: Config, fake: FakeProviders) -> None:
        self.config, self.fake = config, fake
        self.store = SqliteStore(config.db_path)
        self.server = make_server("127.0.0.1", 0, create_app(config, self.store), threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def scenario(self, name: str) -> str:
        return f"{self.base}/dev/nightscout/{name}"

    def poll(self) -> None:
        """One poll cycle, in a thread of its own as in the poller process (the poller runs
        its own asyncio loop, and Playwright's sync API holds one in this thread)."""
        done: list[Any] = []
        worker = threading.Thread(target=lambda: done.append(
            Poller(self.config, store=self.store, workers=2).run_cycle(use_lease=False)))
        worker.start()
        worker.join(timeout=60)
        assert done and not done[0].error, done

    def press_1(self) -> None:
        """Twilio reports the last call: the callee pressed 1 (signed webhooks, over HTTP)."""
        for callback in callbacks_for(self.fake.last_call(), "completed", "1",
                                      auth_token=self.config.get("TWILIO_AUTH_TOKEN")):
            answer = requests.post(self.base + callback.path_and_query, data=callback.form,
                                   headers=callback.headers, timeout=10)
            assert answer.status_code < 300, answer.text

    def log(self) -> list[LogEntry]:
        return self.store.user_log(USER_ID, 200)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)
        self.store.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveScout]:
    fake = FakeProviders().start()
    scout = LiveScout(load_config(twilio_env(tmp_path, fake, WAIT_AFTER_CALL="1",
                                             SCOUT_OPERATOR_NAME="Scout Friends Cooperative",
                                             SCOUT_SUPPORT_EMAIL="help@scout.example.org")), fake)
    yield scout
    scout.close()
    fake.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        pytest.fail(f"Chromium is missing at {CHROMIUM}: run `bash scripts/test-deps.sh`.")
    if not AXE.exists():
        pytest.fail(f"axe-core is missing at {AXE}: run `bash scripts/test-deps.sh` (npm ci in tests/browser_deps).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=path, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 360, "height": 800}, device_scale_factor=1, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    tab.console_errors = []
    tab.on("console", lambda m: m.type == "error" and tab.console_errors.append(m.text))
    yield tab
    context.close()


def sign_in_and_save(page: Any, live: LiveScout, scenario: str = "low") -> None:
    page.goto(live.base + "/")
    page.get_by_label("Email").fill("ana@example.com")
    page.get_by_label("Name").fill("Ana")
    page.get_by_role("button", name="Sign in").click()
    page.locator("#status-headline").wait_for()
    page.get_by_label("Nightscout address").fill(live.scenario(scenario))
    for label in ("Your phone number (Scout calls it)", "Emergency contact (alerted first if you do not answer)"):
        field = page.get_by_label(label)
        field.fill(field.get_attribute("placeholder"))  # the page's own examples must be accepted
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Saved.").wait_for()
    status_ready(page)


def change_scenario(page: Any, live: LiveScout, scenario: str) -> None:
    page.get_by_label("Nightscout address").fill(live.scenario(scenario))
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Saved.").wait_for()
    status_ready(page)


def status_ready(page: Any) -> None:
    """The page is drawn without waiting for Nightscout; wait until its script has the reading."""
    page.locator("#status-reading .reading-value, #status-reading .status-problem").wait_for()


def next_status(page: Any) -> str:
    """Let the page's 30-second timer fire (on the browser's own clock) and wait for the new status."""
    before = page.locator("#status-panel").get_attribute("data-updated")
    page.clock.run_for(31_000)
    page.locator(f"#status-panel[data-updated]:not([data-updated='{before}'])").wait_for()
    return str(page.locator("#status-panel").inner_text())


def check_accessibility(page: Any, name: str) -> None:
    """axe-core (WCAG 2.1 A and AA rules) finds nothing on this page at 360 and at 1280 px;
    a full-page screenshot of each width goes to test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        page.wait_for_timeout(150)  # the chart redraws on resize
        if page.evaluate("typeof axe") == "undefined":
            page.evaluate(AXE.read_text())
        result = page.evaluate("axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})")
        violations = [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:5]) for v in result["violations"]]
        assert violations == [], f"{name} at {width} px: {json.dumps(violations, indent=1)}"
        assert result["passes"], "axe checked nothing"
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} sticks out sideways at {width} px"
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}px.png"), full_page=True)
    page.set_viewport_size({"width": 360, "height": 800})


def test_status_before_and_after_a_poll_during_an_episode_after_pressing_1_and_at_the_all_clear(
    page: Any, live: LiveScout
) -> None:
    page.clock.install()
    sign_in_and_save(page, live, "low")
    panel = page.locator("#status-panel")
    text = panel.inner_text()
    assert "Watching" in text and "not yet" in text  # before the first poll
    assert "54 mg/dL" in text and "below your 70, an urgent low" in text
    assert page.locator("#not-medical").is_visible()

    live.poll()  # the poller calls through the fake Twilio; the call is ringing
    text = next_status(page)
    assert "Calling you: waiting for you to press 1" in text
    assert "Last check" in text and "not yet" not in text
    assert [e.purpose for e in live.log()] == ["alert"]

    live.press_1()
    text = next_status(page)
    assert "You pressed 1" in text and "Calling you" not in text
    check_accessibility(page, "status-episode")

    page.get_by_role("button", name="3 h").click()
    call = page.locator(".chart-marker.marker-call").first
    call.wait_for()
    assert "Alert call to you: pressed 1" in str(call.get_attribute("aria-label"))
    call.hover()
    assert "Alert call to you: pressed 1" in page.locator("#marker-detail").inner_text()
    page.locator(".chart-marker.marker-ack").first.click()
    assert "You pressed 1" in page.locator("#marker-detail").inner_text()
    assert int(page.locator("#chart").get_attribute("data-points") or 0) >= 30  # 3 h of 5-minute readings

    change_scenario(page, live, "steady")
    live.poll()
    text = next_status(page)
    assert "All clear" in text and "110 mg/dL" in text and "in your range" in text
    page.get_by_role("button", name="6 h").click()
    page.locator(".chart-marker.marker-all-clear").first.wait_for()
    assert "All clear sent" in page.locator("#chart-events").inner_text()
    assert page.console_errors == []


def test_a_pause_holds_a_low_but_an_urgent_low_still_calls_and_the_page_says_so(page: Any, live: LiveScout) -> None:
    sign_in_and_save(page, live, "mild-low")
    assert "still calls you" in page.locator("#urgent-note").inner_text()
    page.get_by_role("button", name="Pause 2 h").click()
    page.get_by_text("Alerts paused for 2 hours").wait_for()
    status_ready(page)
    status = page.locator("#status-panel").inner_text()
    assert "Paused" in status and "an urgent low (below 55 mg/dL) still calls" in status
    assert page.get_by_role("button", name="Resume alerts now").is_visible()

    live.poll()  # 62 mg/dL: below 70 but above the urgent low, so the pause holds the call
    assert live.log() == [] and live.fake.received("twilio.calls") == []
    change_scenario(page, live, "low")
    live.poll()  # 54 mg/dL: an urgent low calls even during the pause
    assert [e.purpose for e in live.log()] == ["alert"]
    assert len(live.fake.received("twilio.calls")) == 1
    check_accessibility(page, "status-paused")

    page.get_by_role("button", name="Resume alerts now").click()
    page.get_by_text("Pause ended").wait_for()
    status_ready(page)
    assert "Watching" in page.locator("#status-headline").inner_text()


def test_the_test_text_reaches_every_contact_once_and_is_rate_limited(page: Any, live: LiveScout) -> None:
    sign_in_and_save(page, live, "steady")
    page.get_by_label("Emergency contact's name").fill("Sam")
    page.get_by_role("button", name="Add a contact").click()
    page.get_by_label("Contact 1 name").fill("Bo")
    page.get_by_label("Contact 1 phone").fill("+44 20 7946 0958")
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Saved.").wait_for()
    assert page.get_by_label("Contact 1 phone").input_value() == "+44 20 7946 0958"  # readable, not E.164
    assert page.get_by_label("Your phone number (Scout calls it)").input_value() == "+1 201-555-0123"

    page.get_by_role("button", name="Send a test text to my contacts").click()
    result = page.locator("#check-result")
    assert "Test text sent to 2 contacts" in result.inner_text()
    assert "Ana" in result.inner_text() and "Scout Friends Cooperative" in result.inner_text()
    sent = sorted(r.field("To") for r in live.fake.answered("twilio.messages"))
    assert sent == ["+12025550143", "+442079460958"]
    bodies = {r.field("To"): r.field("Body") for r in live.fake.answered("twilio.messages")}
    assert bodies["+12025550143"].startswith("Hi Sam, this is a test from Scout, run by Scout Friends Cooperative")
    assert bodies["+442079460958"].startswith("Hi Bo, this is a test from Scout")
    assert all("If Ana does not answer an alert call" in body for body in bodies.values())

    page.get_by_role("button", name="Send a test text to my contacts").click()
    assert "Try again in 10 minutes" in page.locator("#check-result").inner_text()
    assert len(live.fake.answered("twilio.messages")) == 2  # nothing more was sent
    page.locator("#what-happens summary").click()
    assert "every 2 minutes" in page.locator("#what-happens").inner_text()


def test_a_refused_save_moves_focus_to_the_first_field_to_correct(page: Any, live: LiveScout) -> None:
    sign_in_and_save(page, live, "steady")
    page.get_by_label("Your phone number (Scout calls it)").fill("call me maybe")
    page.locator("#urgent_low").fill("80")
    page.get_by_role("button", name="Save settings").click()
    page.locator("#phone-error").wait_for()
    assert page.evaluate("document.activeElement.id") == "phone"
    assert "between 40 mg/dL and your low threshold, 70 mg/dL" in page.locator("#urgent_low-error").inner_text()
    check_accessibility(page, "settings-errors")


def test_history_by_episode_pages_and_downloads_as_csv(page: Any, live: LiveScout) -> None:
    sign_in_and_save(page, live, "low")
    live.poll()
    for callback in callbacks_for(live.fake.last_call(), "no-answer", auth_token=live.config.get("TWILIO_AUTH_TOKEN")):
        requests.post(live.base + callback.path_and_query, data=callback.form, headers=callback.headers, timeout=10)
    change_scenario(page, live, "steady")
    live.poll()
    # older episodes, shuffled in, so the history needs two pages
    now = time.time()
    old = [LogEntry(key=f"{USER_ID}:high-{int(now) - 3600 * i}:call:1", user_id=USER_ID, kind="call", purpose="alert",
                    recipient="+12015550123", body=f"Ana, your blood glucose is {250 + i} milligrams per deciliter.",
                    created_at=now - 3600 * i, status="sent", outcome="acknowledged") for i in range(2, 14)]
    for entry in sorted(old, key=lambda e: hash(e.key)):
        live.store.commit(USER_ID, None, 0, [entry])

    page.get_by_role("link", name="History").click()
    page.get_by_role("heading", name="Your alert history").wait_for()
    first = page.locator("article.episode").first.inner_text()
    assert "Low episode, lowest value called about 54 mg/dL" in first
    assert "Alert call to you: no answer" in first
    assert "Text to a contact by SMS to +1 •••• 0143" in first and "+12025550143" not in first
    assert "All clear" in first
    assert page.locator("article.episode").count() == 10
    check_accessibility(page, "history")
    page.get_by_role("link", name="Older").click()
    assert "Page 2" in page.locator(".pager").inner_text() and page.locator("#older").count() == 0  # the last page
    assert "High episode, highest value called about" in page.locator("article.episode").first.inner_text()

    with page.expect_download() as download:
        page.get_by_role("link", name="Download my history (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    purposes = sorted(row["what"] for row in rows)
    assert purposes.count("Alert call") == 13 and "All clear" in purposes and "Text to a contact" in purposes
    assert {row["to"] for row in rows if row["what"] == "Text to a contact"} == {"+12025550143"}


def test_the_sign_in_privacy_and_delete_pages_pass_axe_and_name_the_operator(page: Any, live: LiveScout) -> None:
    page.goto(live.base + "/")
    check_accessibility(page, "signin")
    page.get_by_role("link", name="Privacy: what Scout keeps and for how long").click()
    text = page.locator("main").inner_text()
    assert "Scout Friends Cooperative" in text and "help@scout.example.org" in text and "90 days" in text
    assert "not a medical device" in text
    check_accessibility(page, "privacy")
    sign_in_and_save(page, live, "steady")
    page.get_by_role("link", name="Delete my data…").click()
    check_accessibility(page, "delete")


def test_the_chart_is_loaded_again_only_when_the_status_says_it_changed(
    page: Any, live: LiveScout, threaded_httpserver: Any
) -> None:
    """Each chart reads the alert log of its hours: the page's script reloads it when the
    status's chartMark changes (a new reading, a call or text), not on every 30-second refresh."""
    now = time.time()
    entries = [{"_id": f"r{i}", "type": "sgv", "sgv": 120, "date": int((now - 120 - i * 300) * 1000),
                "direction": "Flat"} for i in range(40)]  # a steady site: no new reading during the test
    threaded_httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries)
    charts: list[str] = []
    page.on("request", lambda request: charts.extend([request.url] if "/chart.json" in request.url else []))
    page.clock.install()
    sign_in_and_save(page, live, "steady")
    page.get_by_label("Nightscout address").fill(threaded_httpserver.url_for("/"))
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Saved.").wait_for()
    status_ready(page)
    page.locator("#chart[data-points='40']").wait_for()  # this site's readings, all in the 6 hours shown
    loaded = len(charts)
    next_status(page)
    next_status(page)
    assert len(charts) == loaded, "nothing changed, yet the chart was loaded again"

    live.store.commit(USER_ID, None, 0, [LogEntry(f"{USER_ID}:outage:{now:.0f}", USER_ID, "sms", "outage",
                                                  "+12015550123", "x", time.time(), status="sent")])
    with page.expect_request("**/chart.json*"):
        next_status(page)
    page.locator("#chart-events").get_by_text("Nightscout down notice").wait_for()
