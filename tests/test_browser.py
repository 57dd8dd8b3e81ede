"""The settings page in a real browser: Playwright driving Debian's Chromium against the
app served for real on a local port.

These tests never skip: without Chromium they fail and say how to install it, because a
page nobody has clicked through is a page nobody can trust.
"""
from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from scout.config import load_config
from scout.store.sqlite import SqliteStore
from scout.web import create_app
from tests.conftest import dev_env

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SCOUT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
XSS = '"><img src=x onerror=alert(1)><script>alert(2)</script>'


@pytest.fixture
def live_app(tmp_path: Any) -> Iterator[tuple[str, SqliteStore]]:
    """The app in dev mode on a free 127.0.0.1 port, in a thread, with its own SQLite file."""
    config = load_config(dev_env(tmp_path))
    store = SqliteStore(config.db_path)
    server = make_server("127.0.0.1", 0, create_app(config, store), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", store
    server.shutdown()
    thread.join(timeout=5)
    store.close()


@pytest.fixture
def page(live_app: tuple[str, SqliteStore]) -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.fail(f"Chromium is missing at {CHROMIUM}: run `bash scripts/test-deps.sh` "
                    "(it apt-installs Debian's chromium), or set SCOUT_CHROMIUM to its path.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        context = browser.new_context(viewport={"width": 360, "height": 800}, device_scale_factor=1)
        tab = context.new_page()
        tab.set_default_timeout(10_000)
        tab.dialogs_seen = []  # type: ignore[attr-defined]
        tab.console_errors = []  # type: ignore[attr-defined]

        def on_dialog(dialog: Any) -> None:
            tab.dialogs_seen.append(dialog.message)  # type: ignore[attr-defined]
            dialog.dismiss()

        def on_console(message: Any) -> None:
            if message.type == "error":
                tab.console_errors.append(message.text)  # type: ignore[attr-defined]

        tab.on("dialog", on_dialog)
        tab.on("console", on_console)
        yield tab
        context.close()
        browser.close()


def sign_in(page: Any, base: str, email: str = "ana@example.com") -> None:
    page.goto(base + "/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Name").fill("Ana")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Your alert settings").wait_for()


def contact_phones(page: Any) -> list[str]:
    return [field.input_value() for field in page.locator("input[name=extra_contacts]").all()]


def test_a_person_fills_everything_manages_five_contacts_and_the_saved_page_shows_exactly_them(
    page: Any, live_app: tuple[str, SqliteStore]
) -> None:
    base, store = live_app
    sign_in(page, base)
    page.get_by_label("Nightscout address").fill(f"{base}/dev/nightscout/steady")
    page.get_by_label("Access token (optional)").fill("reader-token-x7")
    page.get_by_label("Your phone number (Scout calls it)").fill("+1 415 555 2671")
    page.get_by_label("Emergency contact (alerted first if you do not answer)").fill("+1 415 555 2672")
    page.locator("#emergency_channel").select_option("whatsapp")

    for i in range(5):
        page.get_by_role("button", name="Add a contact").click()
        page.get_by_label(f"Contact {i + 1} phone").fill(f"+1 415 555 268{i}")
    page.locator("#extra-channel-2").select_option("whatsapp")
    page.get_by_role("button", name="Add a contact").click()
    refusal = page.locator("#extra_contacts-error")
    assert refusal.is_visible() and "at most 5 extra contacts" in refusal.inner_text()
    assert page.locator("input[name=extra_contacts]").count() == 5

    page.get_by_role("button", name="Delete contact 3").click()
    assert contact_phones(page) == ["+1 415 555 2680", "+1 415 555 2681", "+1 415 555 2683", "+1 415 555 2684"]
    assert page.get_by_label("Contact 3 phone").input_value() == "+1 415 555 2683"  # labels follow the rows

    page.locator("#units").select_option("mmol/L")
    assert (page.locator("#low").input_value(), page.locator("#high").input_value()) == ("3.9", "13.3")
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Saved.").wait_for()

    page.reload()
    # shown back as people write numbers, not as raw E.164 (issue 14)
    assert contact_phones(page) == ["+1 415-555-2680", "+1 415-555-2681", "+1 415-555-2683", "+1 415-555-2684"]
    assert page.locator("#extra-channel-2").input_value() == "whatsapp"
    assert "ends in …x7" in page.locator("#token-hint").inner_text()
    assert page.locator("#nightscout_token").input_value() == ""  # the token is never sent back
    user = store.get_user("dev:ana@example.com")
    assert user is not None
    assert [(c.phone, c.channel) for c in user.extra_contacts] == [
        ("+14155552680", "sms"), ("+14155552681", "whatsapp"), ("+14155552683", "sms"), ("+14155552684", "sms")]
    assert (user.units, user.low_mgdl, user.high_mgdl, user.nightscout_token) == ("mmol/L", 70, 239, "reader-token-x7")

    page.get_by_role("button", name="Check my Nightscout").click()
    assert "Nightscout works: 6.1 mmol/L →" in page.locator("#check-result").inner_text()

    page.get_by_role("button", name="Send me a test call").click()
    assert "Test call placed to +1 415-555-2671" in page.locator("#check-result").inner_text()
    assert "Test call" in page.locator("#recent-alerts").inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "settings-360px.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing sticks out sideways
    assert page.console_errors == []  # no CSP violation, no script error


def test_a_bad_phone_number_shows_next_to_its_field_and_an_xss_payload_never_runs(
    page: Any, live_app: tuple[str, SqliteStore]
) -> None:
    base, store = live_app
    sign_in(page, base, email="bo@example.com")
    page.get_by_label("Nightscout address").fill(f"{base}/dev/nightscout/steady")
    page.get_by_label("Your phone number (Scout calls it)").fill("call me maybe")
    page.get_by_label("Emergency contact (alerted first if you do not answer)").fill(XSS)
    page.get_by_role("button", name="Add a contact").click()
    page.get_by_label("Contact 1 phone").fill(XSS)
    page.get_by_role("button", name="Save settings").click()

    page.locator("#phone-error").wait_for()
    assert "is not a phone number" in page.locator("#phone-error").inner_text()
    assert page.get_by_label("Your phone number (Scout calls it)").input_value() == "call me maybe"  # kept
    assert page.get_by_label("Emergency contact (alerted first if you do not answer)").input_value() == XSS
    assert page.get_by_label("Contact 1 phone").input_value() == XSS
    assert page.locator("#settings img, #settings-card script").count() == 0  # rendered as text only
    page.wait_for_timeout(300)
    assert page.dialogs_seen == []
    user = store.get_user("dev:bo@example.com")
    assert user is not None and user.phone == "" and user.nightscout_url == ""  # nothing saved

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "settings-errors-360px.png"), full_page=True)


def test_the_google_sign_in_page_says_plainly_when_googles_button_cannot_load(tmp_path: Any, page: Any) -> None:
    """Google's script is blocked here (the test never reaches out to Google): the page must
    say so instead of showing an empty card."""
    config = load_config(dev_env(tmp_path, GOOGLE_CLIENT_ID="1234-scout.apps.googleusercontent.com",
                                 SCOUT_DB=str(tmp_path / "google.sqlite3")))
    server = make_server("127.0.0.1", 0, create_app(config), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        requested: list[str] = []
        def refuse(route: Any) -> None:
            requested.append(route.request.url)
            route.abort()

        page.route("https://accounts.google.com/**", refuse)
        page.goto(f"http://127.0.0.1:{server.server_port}/")
        page.get_by_text("Google's sign-in button could not load").wait_for()
        assert requested == ["https://accounts.google.com/gsi/client"]
        assert page.locator("#google-signin").get_attribute("data-width") is not None
        assert page.locator("#dev-signin").count() == 0
    finally:
        server.shutdown()
        thread.join(timeout=5)
