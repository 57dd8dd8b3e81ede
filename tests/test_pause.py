"""Pausing alerts (issue 14): a pause holds calls and contact texts for out-of-range
readings, an urgent low still calls, the all-clear still goes, and the end of a pause is
texted to the user once. Checked on the pure decision with a fixed clock."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest

from models import AlertState
from scout.alerts import Decision, Rules, decide, record_call_outcome
from scout.readings import PollFailure, Reading, Readings
from tests.conftest import make_user

NOW = 1_800_000_000.0
RULES = Rules()
PAUSED = make_user(paused_until=NOW + 2 * 3600)


def readings(*values: int, age: float = 60, now: float = NOW) -> Readings:
    return Readings(tuple(Reading(v, now - age - 300 * i, "FortyFiveDown") for i, v in enumerate(values)))


def purposes(decision: Decision) -> list[str]:
    return [a.purpose for a in decision.actions]


@pytest.mark.parametrize("value", [56, 60, 69, 241, 400])
def test_it_holds_the_call_for_a_low_or_high_above_the_urgent_low_while_paused(value: int) -> None:
    d = decide(PAUSED, readings(value), AlertState(), NOW, RULES)
    assert d.actions == []
    assert d.state.episode is None
    assert "alerts paused until 10:00 UTC" in d.summary


@pytest.mark.parametrize("value", [54, 45, 39])  # 39 is Dexcom's LOW, below 40
def test_it_still_calls_for_an_urgent_low_while_paused(value: int) -> None:
    d = decide(PAUSED, readings(value), AlertState(), NOW, RULES)
    assert [(a.purpose, a.kind, a.recipient) for a in d.actions] == [("alert", "call", PAUSED.phone)]


def test_an_urgent_low_line_set_above_the_low_threshold_is_applied_at_the_low_threshold() -> None:
    user = replace(PAUSED, low_mgdl=60.0, urgent_low_mgdl=80.0)
    assert purposes(decide(user, readings(59), AlertState(), NOW, RULES)) == ["alert"]
    assert purposes(decide(user, readings(65), AlertState(), NOW, RULES)) == []  # in range for this user


def test_a_configured_urgent_low_moves_the_line() -> None:
    user = replace(PAUSED, urgent_low_mgdl=50.0)
    assert purposes(decide(user, readings(52), AlertState(), NOW, RULES)) == []
    assert purposes(decide(user, readings(49), AlertState(), NOW, RULES)) == ["alert"]


def test_an_unanswered_call_from_before_the_pause_is_not_passed_to_the_contacts_during_it() -> None:
    unpaused = replace(PAUSED, paused_until=0.0)
    state = decide(unpaused, readings(62), AlertState(), NOW, RULES).state
    assert state.episode and state.episode.call
    record_call_outcome(state, state.episode.call.key, "unanswered", "no-answer", NOW + 30)
    d = decide(PAUSED, readings(61, now=NOW + 60), state, NOW + 60, RULES)
    assert d.actions == []
    d = decide(unpaused, readings(61, now=NOW + 60), state, NOW + 60, RULES)  # without the pause: contacts
    assert purposes(d).count("contacts") == len(unpaused.contacts)


def test_back_in_range_during_a_pause_still_sends_the_all_clear() -> None:
    unpaused = replace(PAUSED, paused_until=0.0)
    state = decide(unpaused, readings(62), AlertState(), NOW, RULES).state
    d = decide(PAUSED, readings(110, now=NOW + 600), state, NOW + 600, RULES)
    assert purposes(d) == ["all_clear"]
    assert d.state.episode is None


def test_the_end_of_a_pause_is_texted_once_and_alerts_resume() -> None:
    user = replace(PAUSED, paused_until=NOW - 30)
    d = decide(user, readings(62), AlertState(), NOW, RULES)
    assert sorted(purposes(d)) == ["alert", "resumed"]
    resumed = next(a for a in d.actions if a.purpose == "resumed")
    assert resumed.kind == "sms" and resumed.recipient == user.phone
    assert "pause ended at 07:59 UTC" in resumed.text
    again = decide(user, readings(62, now=NOW + 60), d.state, NOW + 60, RULES)
    assert "resumed" not in purposes(again)


def test_a_pause_cancelled_on_the_page_sends_no_resume_text() -> None:
    user = replace(PAUSED, paused_until=0.0)
    assert decide(user, readings(110), AlertState(), NOW, RULES).actions == []


def test_a_failing_nightscout_during_a_pause_still_counts_and_notifies_the_outage() -> None:
    state = AlertState(failed_polls=RULES.failed_ping_limit - 1, failing_since=NOW - 3600)
    d = decide(PAUSED, PollFailure("timeout", "no answer within 10 s"), state, NOW, RULES)
    assert purposes(d) == ["outage"]


def test_shuffled_polls_over_a_pause_call_only_for_urgent_lows_then_resume_once() -> None:
    """A night of polls in a random order of values: while paused only values under 55 call;
    after the pause ends exactly one resume text goes out."""
    rng = random.Random(14)
    state, resumed, urgent_calls_while_paused = AlertState(), 0, 0
    for minute in range(0, 240, 3):
        now = NOW + minute * 60
        value = rng.choice([48, 54, 58, 66, 110, 250])
        d = decide(PAUSED, readings(value, now=now), state, now, RULES)
        calls = [a for a in d.actions if a.purpose == "alert"]
        if now < PAUSED.paused_until and value >= 55:
            assert calls == [], (minute, value)
        elif now < PAUSED.paused_until and calls:
            urgent_calls_while_paused += 1
        resumed += purposes(d).count("resumed")
        state = d.state
        if state.episode and state.episode.call and state.episode.call.outcome == "pending":
            record_call_outcome(state, state.episode.call.key, "acknowledged", "1", now + 20)
    assert resumed == 1
    assert urgent_calls_while_paused > 0  # the pause never silenced an urgent low


def test_texts_to_named_contacts_say_whom_they_are_for_and_unnamed_ones_read_as_before() -> None:
    from models import Contact

    user = replace(PAUSED, paused_until=0.0, emergency_contact=Contact("+14155552672", "sms", "Bo"))
    state = decide(user, readings(62), AlertState(), NOW, RULES).state
    assert state.episode and state.episode.call
    record_call_outcome(state, state.episode.call.key, "unanswered", "no-answer", NOW + 30)
    d = decide(user, readings(61, now=NOW + 60), state, NOW + 60, RULES)
    texts = {a.recipient: a.text for a in d.actions if a.purpose == "contacts"}
    assert texts["+14155552672"].startswith("Scout alert for Bo: Ana did not answer a call about a low")
    assert texts["+14155552673"].startswith("Scout alert: Ana did not answer a call about a low")


def test_an_unanswered_urgent_low_call_during_a_pause_reaches_the_contacts_even_as_the_value_rises() -> None:
    d = decide(PAUSED, readings(50), AlertState(), NOW, RULES)
    assert purposes(d) == ["alert"]
    state = d.state
    assert state.episode and state.episode.call
    record_call_outcome(state, state.episode.call.key, "unanswered", "no-answer", NOW + 40)
    later = NOW + 300
    d = decide(PAUSED, readings(62, 50, now=later), state, later, RULES)  # still low, above the urgent line
    texted = {a.recipient for a in d.actions if a.purpose == "contacts"}
    assert PAUSED.emergency_contact is not None and PAUSED.emergency_contact.phone in texted
    assert not [a for a in d.actions if a.purpose == "alert"]  # the pause still holds a new call for 62
    # the unanswered urgent low starts the ladder at once: the emergency contact is called
    assert [a.recipient for a in d.actions if a.purpose == "ladder"] == [PAUSED.emergency_contact.phone]
