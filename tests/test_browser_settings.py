"""The alert settings in a real browser (Playwright driving Debian's Chromium, axe-core):
the early warnings, the night thresholds with the time zone, and the cadence of highs.
Each is filled, saved and seen again after a reload; a wrong value shows its error tied to
its field, and axe finds no violation with the errors shown."""
from __future__ import annotations

from typing import Any

import pytest

from tests.test_page_browser import USER_ID, LiveScout, browser, check_accessibility, live, page, sign_in_and_save

__all__ = ["browser", "live", "page"]  # fixtures, for the tests below

pytestmark = pytest.mark.browser


def save(page: Any) -> None:
    page.get_by_role("button", name="Save settings").click()


def saved(page: Any) -> None:
    save(page)
    page.get_by_text("Saved.").wait_for()


def tick(page: Any, label: str) -> None:
    page.get_by_label(label).check(force=True)  # Materialize draws the box over the input


def error_of(page: Any, field_id: str) -> str:
    """The field's error, found the way a screen reader finds it: through aria-describedby."""
    field = page.locator(f"#{field_id}")
    assert field.get_attribute("aria-invalid") == "true", field_id
    described = (field.get_attribute("aria-describedby") or "").split()
    assert f"{field_id}-error" in described, described
    return str(page.locator(f"#{field_id}-error").inner_text())


def test_early_warnings_are_filled_saved_and_shown_after_a_reload_and_a_bad_rate_is_refused_by_its_field(
    page: Any, live: LiveScout
) -> None:
    sign_in_and_save(page, live, "steady")
    tick(page, "Call me when a low is predicted")
    page.get_by_label("Within how many minutes (5 to 30)").fill("25")
    tick(page, "Call me on a fast drop")
    page.locator("#fast_drop_rate").fill("0.5")  # below 1 mg/dL a minute
    page.get_by_label("Over (minutes)").fill("20")
    save(page)
    assert "between 1 and 10 mg/dL a minute" in error_of(page, "fast_drop_rate")
    assert page.locator("#predict_low_minutes").input_value() == "25"  # what was typed is kept
    user = live.store.get_user(USER_ID)
    assert user is not None and not user.predict_low_minutes and not user.fast_drop  # nothing saved
    page.console_errors.clear()  # the refused save's 400 was expected
    check_accessibility(page, "settings-early-warning-error")

    page.locator("#fast_drop_rate").fill("2.5")
    saved(page)
    page.reload()
    assert page.get_by_label("Call me when a low is predicted").is_checked()
    assert page.get_by_label("Call me on a fast drop").is_checked()
    assert (page.locator("#predict_low_minutes").input_value(), page.locator("#fast_drop_rate").input_value(),
            page.locator("#fast_drop_minutes").input_value()) == ("25", "2.5", "20")
    user = live.store.get_user(USER_ID)
    assert user is not None
    assert (user.predict_low_minutes, user.fast_drop, user.fast_drop_rate_mgdl, user.fast_drop_minutes) == (
        25, True, 2.5, 20)
    assert page.console_errors == []


def test_night_thresholds_and_a_time_zone_are_saved_and_a_bad_window_is_refused_by_its_field(
    page: Any, live: LiveScout
) -> None:
    sign_in_and_save(page, live, "steady")
    page.get_by_label("Your time zone").select_option("Pacific/Auckland")
    tick(page, "Use other thresholds at night")
    page.get_by_label("Night starts at").fill("22:30")
    page.get_by_label("Night ends at").fill("22:30")  # the same as the start: no window
    page.get_by_label("At night, call when below (mg/dL)").fill("85")
    page.get_by_label("At night, call when above (mg/dL)").fill("90")  # below the night low
    save(page)
    assert "must end at another time than it starts" in error_of(page, "night_end")
    assert "between 120 and 400 mg/dL" in error_of(page, "night_high")
    assert page.locator("#night_end").evaluate("el => el === document.activeElement")  # the first to fix
    page.console_errors.clear()
    check_accessibility(page, "settings-night-error")

    page.get_by_label("Night ends at").fill("06:45")
    page.get_by_label("At night, call when above (mg/dL)").fill("200")
    saved(page)
    page.reload()
    assert page.get_by_label("Your time zone").input_value() == "Pacific/Auckland"
    assert page.get_by_label("Use other thresholds at night").is_checked()
    assert (page.locator("#night_start").input_value(), page.locator("#night_end").input_value(),
            page.locator("#night_low").input_value(), page.locator("#night_high").input_value()) == (
        "22:30", "06:45", "85", "200")
    user = live.store.get_user(USER_ID)
    assert user is not None and (user.time_zone, user.night_start, user.night_end, user.night_low_mgdl,
                                 user.night_high_mgdl) == ("Pacific/Auckland", "22:30", "06:45", 85.0, 200.0)

    page.locator("#units").select_option("mmol/L")  # the night values follow the units, as the day ones
    assert (page.locator("#night_low").input_value(), page.locator("#night_high").input_value()) == ("4.7", "11.1")
    assert page.console_errors == []


def test_the_high_cadence_is_saved_and_an_urgent_high_under_the_high_is_refused_by_its_field(
    page: Any, live: LiveScout
) -> None:
    sign_in_and_save(page, live, "steady")
    page.get_by_label("Call again about a high every (minutes)").fill("3")  # faster than Scout allows
    page.get_by_label("After you press 1, wait (minutes)").fill("90")
    page.get_by_label("Tell my contacts of a high above (mg/dL)").fill("230")  # under the high of 240
    page.get_by_label("Lasting at least (minutes)").fill("20")
    save(page)
    assert "whole minutes between 5 and 240" in error_of(page, "high_repeat_minutes")
    assert "must be above your high threshold (240 mg/dL)" in error_of(page, "urgent_high")
    page.console_errors.clear()
    check_accessibility(page, "settings-highs-error")

    page.get_by_label("Call again about a high every (minutes)").fill("20")
    page.get_by_label("Tell my contacts of a high above (mg/dL)").fill("280")
    saved(page)
    page.reload()
    assert [page.locator(f"#{name}").input_value() for name in (
        "high_repeat_minutes", "high_snooze_minutes", "urgent_high", "urgent_high_minutes")] == ["20", "90", "280", "20"]
    assert "every 20 minutes, and after you press 1 waits 90 minutes" in page.locator("#what-happens").text_content()
    user = live.store.get_user(USER_ID)
    assert user is not None and (user.high_repeat_minutes, user.high_snooze_minutes, user.urgent_high_mgdl,
                                 user.urgent_high_minutes) == (20, 90, 280.0, 20)
    check_accessibility(page, "settings-saved")
    assert page.console_errors == []


def test_the_page_offers_the_devices_own_time_zone_and_chooses_it_only_when_asked(
    browser: Any, live: LiveScout
) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 800}, timezone_id="Europe/Paris")
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    tab.console_errors = []
    tab.on("console", lambda m: m.type == "error" and tab.console_errors.append(m.text))
    try:
        sign_in_and_save(tab, live, "steady")
        assert tab.get_by_label("Your time zone").input_value() == "UTC"  # nothing chosen behind the person's back
        hint = tab.locator("#browser-zone")
        assert hint.is_visible() and "This device's clocks are set to Europe/Paris." in hint.inner_text()
        tab.get_by_role("button", name="Use Europe/Paris").click()
        assert tab.get_by_label("Your time zone").input_value() == "Europe/Paris" and not hint.is_visible()
        saved(tab)
        tab.reload()
        assert tab.get_by_label("Your time zone").input_value() == "Europe/Paris"
        assert not tab.locator("#browser-zone").is_visible()  # the device agrees: nothing to offer
        user = live.store.get_user(USER_ID)
        assert user is not None and user.time_zone == "Europe/Paris"
        assert tab.console_errors == []
    finally:
        context.close()
