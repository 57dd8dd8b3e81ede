"""Early warnings (a predicted low, a fast drop) and the cadence of highs, as traces through
the real poller, store, provider SDKs and doubles, with a controlled clock."""
from __future__ import annotations

import json
from typing import Any

import pytest

from models import AlertState
from scout.alerts import Rules, decide, record_call_outcome
from scout.readings import Reading, Readings
from tests.conftest import make_user
from tests.test_traces import MINUTE, START, Trace, trace

__all__ = ["trace"]  # fixtures imported for the tests below


def spoken(trace: Trace) -> list[str]:
    return [json.loads(s)[0]["text"] if s.startswith("[") else s for s in trace.calls()]


def calls(trace: Trace, user_id: str = "ana") -> list[str]:
    """What Scout's calls to the user said (not the ladder's calls to their contacts)."""
    return [e.body for e in trace.log(user_id) if e.purpose == "alert"]


# --- a predicted low ----------------------------------------------------------------------


def test_a_predicted_low_is_called_before_the_value_crosses_the_threshold(trace: Trace) -> None:
    for user_id, settings in (("ana", {"predict_low_minutes": 20}), ("ben", {})):
        site = trace.add_user(user_id, phone="+14155552671" if user_id == "ana" else "+14155552681", **settings)
        site.upload(84, START - 6 * MINUTE)
        site.upload(76, START - MINUTE)
    trace.poll()
    (speech,) = calls(trace, "ana")
    assert "your blood glucose is 76 milligrams per deciliter" in speech
    assert speech.endswith("Scout is calling early: it is predicted to fall below 70 mg/dL in about 10 minutes.")
    assert any("predicted to fall below 70 mg/dL in about 10 minutes" in s for s in spoken(trace))
    episode = trace.state("ana").episode
    assert episode is not None and episode.kind == "low" and episode.why.startswith("predicted")
    assert calls(trace, "ben") == []  # the same readings, without the option: 76 is in range


def test_the_episode_of_a_predicted_low_closes_with_an_all_clear_once_the_forecast_is_safe(trace: Trace) -> None:
    site = trace.add_user(predict_low_minutes=20)
    site.upload(84, START - 6 * MINUTE)
    site.upload(76, START - MINUTE)
    trace.poll()
    site.upload(78, START + 4 * MINUTE)  # levelling off: no low within 20 minutes
    trace.poll(after=5 * MINUTE)
    assert trace.state().episode is None
    assert trace.texts("all_clear") and "back in range, 78 mg/dL" in trace.texts("all_clear")[0]


def test_no_forecast_from_stale_readings_or_past_a_sensor_error(trace: Trace) -> None:
    stale = trace.add_user("ana", predict_low_minutes=20)
    stale.upload(84, START - 17 * MINUTE)
    stale.upload(76, START - 12 * MINUTE)  # more than 10 minutes old
    faulty = trace.add_user("cy", phone="+14155552691", predict_low_minutes=20)
    faulty.upload(84, START - 7 * MINUTE)
    faulty.upload(76, START - 2 * MINUTE)
    faulty.upload(5, START - MINUTE)  # ?NC: the sensor is not calibrated now
    sentinel = trace.add_user("dee", phone="+14155552692", predict_low_minutes=20)
    sentinel.upload(90, START - 7 * MINUTE)
    sentinel.upload(401, START - 2 * MINUTE)  # HIGH: no slope through a sentinel
    trace.poll()
    assert calls(trace, "ana") == [] and calls(trace, "cy") == []
    assert [c for c in calls(trace, "dee") if "early" in c] == []  # called for the HIGH itself, not a forecast


# --- a fast drop ------------------------------------------------------------------------------


def test_a_fast_drop_is_called_and_says_so(trace: Trace) -> None:
    site = trace.add_user(fast_drop=True)
    for minutes_ago, value in ((16, 150), (11, 135), (6, 120), (1, 105)):
        site.upload(value, START - minutes_ago * MINUTE)
    trace.poll()
    (speech,) = calls(trace)
    assert "105 milligrams per deciliter" in speech and speech.endswith("Scout is calling early: it is falling fast.")


# --- highs ----------------------------------------------------------------------------------------


def high_night(trace: Trace, value: float, hours: float, **settings: Any) -> list[str]:
    """`value` every 5 minutes for `hours`, polled each minute; every call goes unanswered
    (no final status: after 5 minutes Scout counts it unanswered). Returns what each poll said."""
    site = trace.add_user(**settings)
    said = []
    for minute in range(int(hours * 60)):
        if minute % 5 == 0:
            site.upload(value, trace.now - 30)
        said += [r.summary for r in trace.poll(after=MINUTE if minute else 0).results]
    return said


def test_an_unanswered_high_of_250_for_three_hours_calls_every_30_minutes_and_texts_nobody(trace: Trace) -> None:
    said = high_night(trace, 250, 3)
    assert len(calls(trace)) == 6  # at 0, 30, 60, 90, 120 and 150 minutes (the tutorial's cadence: about 90)
    assert trace.texts("contacts") == []
    unanswered = [line for line in said if "call unanswered" in line]
    assert len(unanswered) == 6
    assert all("a high is passed to the contacts only above 300 mg/dL for 60 minutes" in line for line in unanswered)


def test_an_urgent_high_is_passed_to_the_contacts_after_60_minutes(trace: Trace) -> None:
    high_night(trace, 320, 1.6)
    texts = trace.texts("contacts")
    # calls at 0, 30, 60 and 90 minutes, unanswered 5 minutes later each: the first two are
    # within the first hour above 300 and reach nobody; those at 65 and 95 minutes text the three
    assert len(texts) == 6 and all("did not answer a call about a high blood glucose" in t for t in texts)
    first_text = min(e.created_at for e in trace.log() if e.purpose == "contacts")
    assert first_text - START >= 60 * MINUTE


def test_after_a_1_for_a_high_scout_waits_two_hours() -> None:
    user, rules, now = make_user(), Rules(), START
    state = AlertState()
    reading = Readings((Reading(260, now - 60, "Flat"),))
    d = decide(user, reading, state, now, rules)
    assert d.state.episode is not None and d.state.episode.call is not None
    assert record_call_outcome(d.state, d.state.episode.call.key, "acknowledged", "pressed 1", now + 30)
    state = d.state
    for minutes in (30, 60, 119):
        later = now + minutes * 60
        d = decide(user, Readings((Reading(260, later - 60, "Flat"),)), state, later, rules)
        assert not [a for a in d.actions if a.kind == "call"], minutes
        state = d.state
    later = now + 121 * 60
    d = decide(user, Readings((Reading(260, later - 60, "Flat"),)), state, later, rules)
    assert [a.kind for a in d.actions] == ["call"]


def test_lows_keep_the_two_minute_repeat() -> None:
    user, rules, now = make_user(), Rules(), START
    d = decide(user, Readings((Reading(60, now - 60, "Flat"),)), AlertState(), now, rules)
    assert d.state.episode is not None and d.state.episode.call is not None
    record_call_outcome(d.state, d.state.episode.call.key, "unanswered", "no-answer", now + 40)
    d2 = decide(user, Readings((Reading(60, now + 60, "Flat"),)), d.state, now + 120, rules)
    assert [a.kind for a in d2.actions if a.purpose == "alert"] == ["call"]


# --- urgent lows -------------------------------------------------------------------------------


def low_call(value: float, at: float, state: AlertState | None = None) -> tuple[AlertState, list[str]]:
    d = decide(make_user(), Readings((Reading(value, at - 60, "Flat"),)), state or AlertState(), at, Rules())
    return d.state, [a.purpose for a in d.actions]


@pytest.mark.parametrize("value, snooze_minutes", [(50, 5), (54, 5), (55, 15), (62, 15)])
def test_after_a_1_an_urgent_low_is_called_again_after_5_minutes_a_low_after_15(value: float, snooze_minutes: int) -> None:
    state, purposes = low_call(value, START)
    assert purposes == ["alert"] and state.episode is not None and state.episode.call is not None
    assert record_call_outcome(state, state.episode.call.key, "acknowledged", "pressed 1", START + 20)
    state, purposes = low_call(value, START + 20 + snooze_minutes * 60 - 30, state)
    assert "alert" not in purposes
    state, purposes = low_call(value, START + 20 + snooze_minutes * 60 + 30, state)
    assert purposes == ["alert"]


def test_an_unanswered_urgent_low_reaches_the_contacts_again_after_5_minutes_not_15() -> None:
    rounds = []
    state = AlertState()
    now = START
    for _ in range(4):  # a call, unanswered at once, then the next call
        state, purposes = low_call(50, now, state)
        assert state.episode is not None and state.episode.call is not None
        record_call_outcome(state, state.episode.call.key, "unanswered", "no-answer", now + 30)
        state, purposes = low_call(50, now + 60, state)
        rounds.append(purposes.count("contacts"))
        now += 3 * 60
    # unanswered at 1, 4, 7 and 10 minutes: contacts at 1 minute, then 7 (5 minutes later, not 15)
    assert rounds == [3, 0, 3, 0]


def test_the_urgent_low_line_follows_the_users_setting() -> None:
    user = make_user(urgent_low_mgdl=65.0)
    d = decide(user, Readings((Reading(62, START - 60, "Flat"),)), AlertState(), START, Rules())
    assert d.state.episode is not None and d.state.episode.urgent
