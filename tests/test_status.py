"""The status panel's words and the history's episodes, on the pure functions with a fixed
clock (issue 14)."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest

from models import AlertState, CallRecord, Episode, LogEntry
from scout.dashboard import csv_safe
from scout.readings import PollFailure, Reading, Readings
from scout.status import alert_status, call_outcome, episodes, mask_phone, next_check, reading_status, status
from tests.conftest import make_user

NOW = 1_800_000_010.0  # 08:00:10 UTC
USER = make_user()


def test_the_next_check_is_the_next_half_minute() -> None:
    assert next_check(NOW) == NOW + 20
    assert next_check(NOW + 20) == NOW + 80  # exactly at :30, the next one is a minute on
    assert next_check(NOW + 25) == NOW + 80


def test_numbers_are_masked_to_their_last_four_digits() -> None:
    assert mask_phone("+14155552672") == "+1 •••• 2672"
    assert mask_phone("+442079460958") == "+44 •••• 0958"
    assert mask_phone("+123") == "•••"


def test_a_reading_is_judged_against_the_users_own_thresholds_and_freshness() -> None:
    low = reading_status(USER, Readings((Reading(54, NOW - 120, "SingleDown"),)), NOW)
    assert (low["value"], low["arrow"], low["ageMinutes"], low["range"]) == ("54", "↓", 2, "urgent-low")
    assert low["judgement"] == "below your 70, an urgent low"
    mmol = reading_status(replace(USER, units="mmol/L"), Readings((Reading(250, NOW - 60),)), NOW)
    assert (mmol["value"], mmol["judgement"]) == ("13.9", "above your 13.3")
    stale = reading_status(USER, Readings((Reading(54, NOW - 40 * 60),)), NOW)
    assert not stale["fresh"] and "so Scout would not call for it" in stale["judgement"]


def test_low_and_high_are_named_by_the_readings_own_limit_not_by_its_number() -> None:
    """A Dexcom 39 is 'below 40' and its 401 'above 400' (parse_entry sets `limit`); another
    CGM's 39 or 401 is a plain value, judged as one."""
    def shown(value: float, limit: str, units: str = "mg/dL") -> str:
        reading = Reading(value, NOW - 60, key=f"k{value}", limit=limit)
        return str(reading_status(replace(USER, units=units), Readings((reading,)), NOW)["value"])

    assert shown(39, "below") == "LOW (below 40 mg/dL)" and shown(401, "above") == "HIGH (above 400 mg/dL)"
    assert shown(39, "below", "mmol/L") == "LOW (below 2.2 mmol/L)"
    assert shown(39, "") == "39" and shown(401, "") == "401" and shown(38.5, "") == "38.5"


def test_a_site_answering_html_is_named_plainly_never_shown() -> None:
    problem = reading_status(USER, PollFailure("not_json", "answer starts with '<!doctype html><title>'"), NOW)["problem"]
    assert "answered with a web page, not Nightscout data" in problem and "<" not in problem
    problem = reading_status(USER, PollFailure("not_json", "the answer is text/html, 900 bytes, not JSON"), NOW)["problem"]
    assert "answered with a web page, not Nightscout data" in problem


def test_not_watching_says_every_reason() -> None:
    user = replace(USER, phone="", paused_until=NOW + 3600)
    state = AlertState(failed_polls=3, failing_since=NOW - 180)
    shown = status(user, state, [], None, None, NOW)
    assert shown["headline"] == "Paused" and not shown["watching"]
    reasons = [r["text"] for r in shown["reasons"]]
    assert reasons == ["No phone number is saved", "Nightscout failing since", "Paused until"]
    assert shown["reasons"][1]["at"] == NOW - 180
    assert "an urgent low (below 55 mg/dL) still calls" in shown["reasons"][2]["note"]


def test_the_alert_under_way_moves_from_calling_to_acknowledged_to_all_clear() -> None:
    ep = Episode(id="low-1", kind="low", started_at=NOW - 300, calls=1, last_call_at=NOW - 240,
                 call=CallRecord(key="k", placed_at=NOW - 240))
    assert (alert_status(USER, AlertState(episode=ep), [], NOW) or {})["state"] == "calling"
    ep.call = CallRecord(key="k", placed_at=NOW - 240, outcome="acknowledged")
    ep.acknowledged_at = NOW - 200
    shown = alert_status(USER, AlertState(episode=ep), [], NOW) or {}
    assert shown["state"] == "acknowledged" and [s["text"] for s in shown["steps"]] == [
        "Out of range (low)", "Called you (call 1)", "You pressed 1"]
    clear = LogEntry("u:low-1:all_clear:+1", "sub-ana", "sms", "all_clear", "+1", "", NOW - 60)
    assert (alert_status(USER, AlertState(), [clear], NOW) or {})["state"] == "all-clear"
    assert alert_status(USER, AlertState(), [replace(clear, created_at=NOW - 7200)], NOW) is None


def test_the_status_names_the_contact_being_called_and_the_one_who_pressed_1() -> None:
    from models import Contact

    user = replace(USER, emergency_contact=Contact("+14155552672", "sms", "Bo"))
    ep = Episode(id="low-1", kind="low", started_at=NOW - 300, calls=1, last_call_at=NOW - 240,
                 call=CallRecord(key="k", placed_at=NOW - 240, outcome="unplaced", detail="refused"),
                 ladder_round=1, ladder_step=1, ladder_active=True,
                 ladder_call=CallRecord(key="l", placed_at=NOW - 200, to="+14155552672"))
    shown = alert_status(user, AlertState(episode=ep), [], NOW) or {}
    assert shown["headline"] == "No 1 pressed: Scout is calling Bo, your contact, waiting for a 1"
    assert "Called Bo, your contact" in [s["text"] for s in shown["steps"]]
    # Bo pressed 1 (Ana's call was never placed, so its record stays "unplaced"): acknowledged
    ep.acknowledged_at, ep.acknowledged_by, ep.ladder_active = NOW - 100, "Bo", False
    ep.ladder_call = CallRecord(key="l", placed_at=NOW - 200, to="+14155552672", outcome="acknowledged")
    shown = alert_status(user, AlertState(episode=ep), [], NOW) or {}
    assert shown["state"] == "acknowledged"
    assert shown["headline"] == "Bo pressed 1: if you are still out of range, Scout calls again in 15 minutes"
    ladder = LogEntry("dev:ana@example.com:low-1:ladder:1:1", "dev:ana@example.com", "call", "ladder",
                      "+14155552672", "Hello Bo.", NOW - 200)
    alert = replace(ladder, key="dev:ana@example.com:low-1:call:1", purpose="alert", created_at=NOW - 240)
    assert [len(g.entries) for g in episodes([ladder, alert])] == [2]  # the contact's call is in the episode


def call(key: str, at: float, **changes: object) -> LogEntry:
    entry = LogEntry(key, "dev:ana@example.com", "call", "alert", "+14155552671",
                     "Ana, your blood glucose is 54 milligrams per deciliter and falling.", at, status="sent")
    return replace(entry, **changes)  # type: ignore[arg-type]


def test_call_outcomes_read_as_people_say_them() -> None:
    assert call_outcome(call("k", NOW, outcome="acknowledged")) == "pressed 1"
    assert call_outcome(call("k", NOW, outcome="unanswered: no-answer")) == "no answer"
    assert call_outcome(call("k", NOW, outcome="unanswered: busy")) == "no answer (busy)"
    assert call_outcome(call("k", NOW, outcome="unanswered: machine_start")) == "voicemail"
    assert call_outcome(call("k", NOW, status="permanent", error="21211: invalid number")).startswith("could not be placed")


def test_the_log_is_grouped_by_episode_newest_first_whatever_its_order() -> None:
    user = "dev:ana@example.com"  # a user id with ':' in it must not confuse the grouping
    entries = [
        call(f"{user}:low-100:call:1", 100, body="Ana, your blood glucose is 62 milligrams"),
        call(f"{user}:low-100:call:2", 220, body="Ana, your blood glucose is 51 milligrams"),
        LogEntry(f"{user}:low-100:contacts:1:+14155552672", user, "sms", "contacts", "+14155552672", "x", 230),
        LogEntry(f"{user}:low-100:all_clear:+14155552672", user, "sms", "all_clear", "+14155552672", "x", 900),
        call(f"{user}:high-2000:call:1", 2000, body="Ana, your blood glucose is 250 milligrams"),
        LogEntry(f"{user}:outage:1500", user, "sms", "outage", "+14155552671", "x", 1500),
    ]
    random.Random(3).shuffle(entries)
    grouped = episodes(entries)
    assert [(g.id, g.kind) for g in grouped] == [("high-2000", "high"), (f"notice-{user}:outage:1500", "other"),
                                                 ("low-100", "low")]
    low = grouped[2]
    assert (low.started_at, low.ended_at, low.extreme, len(low.entries)) == (100, 900, "51", 4)
    assert [e.created_at for e in low.entries] == [100, 220, 230, 900]
    assert grouped[0].extreme == "250" and grouped[0].ended_at is None


@pytest.mark.parametrize("cell", ["=1+1", "+15551234567", "-2", "@SUM(A1)", "\t=1+1", "\r=1+1"])
def test_a_csv_cell_a_spreadsheet_would_run_as_a_formula_is_quoted(cell: str) -> None:
    assert csv_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["call", "62 mg/dL", "", "Ana's phone"])
def test_an_ordinary_csv_cell_is_left_as_it_is(cell: str) -> None:
    assert csv_safe(cell) == cell
