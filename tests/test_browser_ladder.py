"""Each contact's "Call and text" / "Text only" choice in a real browser (Playwright driving
Debian's Chromium, axe-core on the page), saved, reloaded and refused field by field."""
from __future__ import annotations

from typing import Any

import pytest

from tests.test_page_browser import LiveScout, browser, check_accessibility, live, page, sign_in_and_save

__all__ = ["browser", "live", "page"]  # fixtures imported for the tests below

pytestmark = pytest.mark.browser


def test_a_contact_set_to_text_only_is_saved_shown_after_a_reload_and_left_off_the_ladder(
    page: Any, live: LiveScout
) -> None:
    sign_in_and_save(page, live)
    emergency_mode = page.get_by_label("Emergency contact: if you do not answer")
    assert emergency_mode.input_value() == "call"  # waking someone is the point: calls by default
    assert "one at a time in this order" in page.locator("#contact-mode-help").inner_text()
    for phone in ("+1 415 555 2680", "+1 415 555 2681"):
        page.get_by_role("button", name="Add a contact").click()
        rows = page.locator("input[name=extra_contacts]")
        rows.nth(rows.count() - 1).fill(phone)
    assert page.get_by_label("Contact 2: if you do not answer").input_value() == "call"
    emergency_mode.select_option(label="Text only")
    page.get_by_label("Contact 2: if you do not answer").select_option(label="Text only")
    # deleting the first extra row renumbers the choice with its row
    page.get_by_role("button", name="Add a contact").click()
    page.locator("input[name=extra_contacts]").nth(2).fill("+1 415 555 2682")
    page.get_by_role("button", name="Delete contact 1").click()
    assert page.get_by_label("Contact 1: if you do not answer").input_value() == "text"
    assert page.get_by_label("Contact 2: if you do not answer").input_value() == "call"
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Saved.").wait_for()

    page.reload()
    assert page.get_by_label("Emergency contact: if you do not answer").input_value() == "text"
    assert page.get_by_label("Contact 1: if you do not answer").input_value() == "text"
    assert page.get_by_label("Contact 2: if you do not answer").input_value() == "call"
    user = live.store.get_user("dev:ana@example.com")
    assert user is not None and user.emergency_contact is not None
    assert user.emergency_contact.mode == "text"
    assert [(c.phone, c.mode) for c in user.extra_contacts] == [("+14155552681", "text"), ("+14155552682", "call")]
    assert [c.phone for c in user.ladder] == ["+14155552682"]  # only he is called
    check_accessibility(page, "settings-contact-modes")
    assert page.console_errors == []


def test_a_mode_the_page_never_offers_is_refused_next_to_its_contact(page: Any, live: LiveScout) -> None:
    sign_in_and_save(page, live)
    # a forged value (an old bookmark, a tampered form): the error sits by the choice
    page.locator("#emergency_mode").evaluate("select => { select.options[1].value = 'page-me'; }")
    page.locator("#emergency_mode").select_option("page-me")
    page.get_by_role("button", name="Save settings").click()
    error = page.locator("#emergency_mode-error")
    error.wait_for()
    assert "Call and text" in error.inner_text() and "Text only" in error.inner_text()
    assert page.locator("#emergency_mode").get_attribute("aria-invalid") == "true"
    assert "emergency_mode-error" in (page.locator("#emergency_mode").get_attribute("aria-describedby") or "")
    user = live.store.get_user("dev:ana@example.com")
    assert user is not None and user.emergency_contact is not None and user.emergency_contact.mode == "call"
    page.console_errors.clear()  # the refused save's 400 was expected
    check_accessibility(page, "settings-contact-mode-refused")
