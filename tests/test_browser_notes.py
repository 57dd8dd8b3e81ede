"""The Nightscout notes option in a real browser (Playwright driving Debian's Chromium)."""
from __future__ import annotations

from typing import Any

import pytest

from scout.store.sqlite import SqliteStore
from tests.test_browser import ARTIFACTS, live_app, page, sign_in

__all__ = ["live_app", "page"]  # fixtures imported for the tests below

pytestmark = pytest.mark.browser


def test_notes_need_a_token_the_error_sits_by_the_option_and_the_page_says_what_it_knows(
    page: Any, live_app: tuple[str, SqliteStore]
) -> None:
    base, store = live_app
    sign_in(page, base, email="cy@example.com")
    page.get_by_label("Nightscout address").fill(f"{base}/dev/nightscout/steady")
    page.get_by_label("Your phone number (Scout calls it)").fill("+1 415 555 2671")
    page.get_by_label("Emergency contact (alerted first if you do not answer)").fill("+1 415 555 2672")
    option = page.get_by_label("Note Scout's calls, texts to contacts, acknowledgements and all-clears on my Nightscout chart")
    option.check(force=True)  # Materialize draws the box over the input
    page.get_by_role("button", name="Save settings").click()

    error = page.locator("#nightscout_notes-error")
    error.wait_for()
    assert "careportal" in error.inner_text()
    assert option.is_checked()  # the choice is kept while the person fixes it
    assert option.get_attribute("aria-invalid") == "true"
    assert "nightscout_notes-error" in (option.get_attribute("aria-describedby") or "")
    user = store.get_user("dev:cy@example.com")
    assert user is not None and not user.nightscout_notes

    page.get_by_label("Access token (optional)").fill("scout-careportal-x9")
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Saved.").wait_for()
    page.console_errors.clear()  # the refused save's 400 was expected
    page.reload()
    assert page.get_by_label("Note Scout's calls, texts to contacts, acknowledgements and all-clears on my "
                             "Nightscout chart").is_checked()
    assert "No note written yet" in page.locator("#notes-status").inner_text()
    user = store.get_user("dev:cy@example.com")
    assert user is not None and user.nightscout_notes

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "settings-notes-360px.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert page.console_errors == []
