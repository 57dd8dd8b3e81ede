"""Night thresholds in the user's own time zone, and each user's own cadence for highs:
the pure decision with a fixed clock, then traces through the real poller, store, provider
SDKs and doubles with a controlled clock."""
from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from models import AlertState, User
from scout.alerts import Decision, Rules, decide, record_call_outcome
from scout.poller import needs_watching
from scout.readings import Reading, Readings
from tests.conftest import make_user
from tests.test_early_and_high import calls, high_night
from tests.test_traces import MINUTE, Trace, trace

__all__ = ["trace"]  # the trace fixture, for the tests below

NIGHT: dict[str, Any] = dict(night_thresholds=True, night_start="22:00", night_end="07:00", night_low_mgdl=80.0,
             night_high_mgdl=200.0)


def at(zone: str, stamp: str) -> float:
    """'2026-11-01 06:30' on the clocks of `zone`, as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=ZoneInfo(zone)).timestamp()


def utc(stamp: str) -> float:
    return at("UTC", stamp)


def local(now: float, zone: str) -> str:
    return datetime.fromtimestamp(now, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")


def one_poll(user: User, value: float, now: float, state: AlertState | None = None) -> Decision:
    return decide(user, Readings((Reading(value, now - 60, "Flat"),)), state or AlertState(), now, Rules())


def purposes(decision: Decision) -> list[str]:
    return [a.purpose for a in decision.actions]


# --- the night window, pure ----------------------------------------------------------------------


@pytest.mark.parametrize("zone, stamp, night", [
    ("America/New_York", "2027-01-15 21:59", False),
    ("America/New_York", "2027-01-15 22:00", True),
    ("America/New_York", "2027-01-16 00:00", True),  # the window wraps midnight
    ("America/New_York", "2027-01-16 06:59", True),
    ("America/New_York", "2027-01-16 07:00", False),
    ("America/New_York", "2027-01-16 12:00", False),
    ("Pacific/Auckland", "2027-01-16 23:15", True),
    ("Pacific/Auckland", "2027-01-16 21:45", False),
])
def test_the_night_window_is_read_on_the_users_own_clocks(zone: str, stamp: str, night: bool) -> None:
    user = make_user(time_zone=zone, **NIGHT)
    assert user.is_night(at(zone, stamp)) is night
    assert bool(purposes(one_poll(user, 75, at(zone, stamp)))) is night  # 75: low only at night (80)


def test_a_window_within_one_day_does_not_wrap() -> None:
    user = make_user(time_zone="Europe/Paris", **{**NIGHT, "night_start": "01:00", "night_end": "05:30"})
    assert not user.is_night(at("Europe/Paris", "2027-01-15 00:59"))
    assert user.is_night(at("Europe/Paris", "2027-01-15 01:00"))
    assert not user.is_night(at("Europe/Paris", "2027-01-15 05:30"))


def test_night_thresholds_off_mean_the_day_thresholds_all_night() -> None:
    user = make_user(time_zone="America/New_York", **{**NIGHT, "night_thresholds": False})
    assert purposes(one_poll(user, 75, at("America/New_York", "2027-01-16 03:00"))) == []


def test_the_same_utc_time_is_night_before_the_clocks_go_back_and_day_after() -> None:
    # New York leaves daylight saving time at 02:00 on 1 November 2026: 11:30 UTC is 07:30
    # EDT on 31 October (day), and 06:30 EST on 1 November (still night).
    user = make_user(time_zone="America/New_York", **NIGHT)
    before, after = utc("2026-10-31 11:30"), utc("2026-11-01 11:30")
    assert local(before, "America/New_York") == "2026-10-31 07:30 EDT"
    assert local(after, "America/New_York") == "2026-11-01 06:30 EST"
    assert purposes(one_poll(user, 75, before)) == []
    assert purposes(one_poll(user, 75, after)) == ["alert"]


def test_an_unknown_zone_counts_as_utc_and_never_stops_the_decision() -> None:
    user = make_user(time_zone="Mars/Olympus_Mons", **NIGHT)
    assert purposes(one_poll(user, 75, utc("2027-01-15 23:00"))) == ["alert"]
    assert purposes(one_poll(user, 75, utc("2027-01-15 12:00"))) == []


def test_a_night_high_calls_where_the_day_high_would_not() -> None:
    user = make_user(time_zone="Europe/London", **NIGHT)
    assert purposes(one_poll(user, 220, at("Europe/London", "2027-01-15 23:00"))) == ["alert"]
    assert purposes(one_poll(user, 220, at("Europe/London", "2027-01-15 15:00"))) == []


def test_an_open_low_follows_the_thresholds_in_force_at_each_poll() -> None:
    """Day low 70, night low 80, a 75 all along: the night opens the episode, and the
    morning's first poll closes it with an all-clear (75 is in the day range)."""
    user = make_user(time_zone="America/New_York", **NIGHT)
    d = one_poll(user, 75, at("America/New_York", "2027-01-16 06:55"))
    assert purposes(d) == ["alert"] and d.state.episode is not None and d.state.episode.kind == "low"
    assert "(night thresholds)" in d.summary
    assert d.state.episode is not None and d.state.episode.call is not None
    record_call_outcome(d.state, d.state.episode.call.key, "acknowledged", "pressed 1",
                        at("America/New_York", "2027-01-16 06:56"))
    d = one_poll(user, 75, at("America/New_York", "2027-01-16 07:00"), d.state)
    assert d.state.episode is None and "all_clear" in purposes(d)
    assert "night" not in d.summary


def test_the_urgent_low_never_rises_above_the_low_in_force() -> None:
    user = make_user(time_zone="UTC", urgent_low_mgdl=60.0, **{**NIGHT, "night_low_mgdl": 58.0})
    night = one_poll(user, 59, utc("2027-01-15 23:00"))
    assert night.state.episode is None  # 59 is above the night low of 58: not low at all
    day = one_poll(user, 59, utc("2027-01-15 12:00"))
    assert day.state.episode is not None and day.state.episode.urgent


def test_a_predicted_low_at_night_names_the_night_threshold() -> None:
    user = make_user(time_zone="UTC", predict_low_minutes=20, **NIGHT)
    now = utc("2027-01-15 23:00")
    readings = Readings((Reading(88, now - 60, "SingleDown"), Reading(97, now - 360, "SingleDown")))
    d = decide(user, readings, AlertState(), now, Rules())
    (call,) = [a for a in d.actions if a.kind == "call"]
    assert "predicted to fall below 80 mg/dL" in call.text
    by_day = decide(user, readings, AlertState(), now - 12 * 3600, Rules())  # 11:00: the day low (70) is further off
    assert all("below 80" not in a.text for a in by_day.actions)


# --- the cadence of highs, pure -------------------------------------------------------------------


def test_after_a_1_a_high_waits_the_users_own_snooze() -> None:
    user, now = make_user(high_snooze_minutes=45), utc("2027-01-15 12:00")
    d = one_poll(user, 260, now)
    assert d.state.episode is not None and d.state.episode.call is not None
    record_call_outcome(d.state, d.state.episode.call.key, "acknowledged", "pressed 1", now + 30)
    assert "alert" not in purposes(one_poll(user, 260, now + 44 * 60, d.state))
    assert purposes(one_poll(user, 260, now + 46 * 60, d.state)) == ["alert"]


def test_an_unanswered_high_is_called_again_at_the_users_own_interval() -> None:
    user, now = make_user(high_repeat_minutes=10), utc("2027-01-15 12:00")
    d = one_poll(user, 260, now)
    assert d.state.episode is not None and d.state.episode.call is not None
    record_call_outcome(d.state, d.state.episode.call.key, "unanswered", "no-answer", now + 40)
    assert "alert" not in purposes(one_poll(user, 260, now + 9 * 60, d.state))
    assert "alert" in purposes(one_poll(user, 260, now + 10 * 60, d.state))


# --- traces through the real poller and the provider doubles ---------------------------------------


def night_user(trace: Trace, user_id: str, zone: str, phone: str) -> Any:
    return trace.add_user(user_id, phone=phone, time_zone=zone, **NIGHT)


def poll_with(trace: Trace, sites: list[Any], value: float, now: float) -> None:
    trace.now = now
    for site in sites:
        site.upload(value, now - 30)
    trace.poll()


def test_a_75_calls_just_after_the_night_starts_locally_and_not_just_before(trace: Trace) -> None:
    """Two users, the same readings, the same thresholds, 17 hours of time zones apart."""
    york = night_user(trace, "ana", "America/New_York", "+14155552671")
    auckland = night_user(trace, "kiri", "Pacific/Auckland", "+14155552681")
    before = at("America/New_York", "2027-01-15 21:58")
    assert local(before, "Pacific/Auckland") == "2027-01-16 15:58 NZDT"  # mid-afternoon in Auckland
    poll_with(trace, [york, auckland], 75, before)
    assert calls(trace, "ana") == [] and calls(trace, "kiri") == []
    poll_with(trace, [york, auckland], 75, before + 3 * MINUTE)  # 22:01 in New York
    (speech,) = calls(trace, "ana")
    assert "Ana, your blood glucose is 75 milligrams per deciliter" in speech
    assert calls(trace, "kiri") == []
    assert any("Ana, your blood glucose is 75" in spoken for spoken in trace.calls())  # the provider placed it

    # Auckland's night starts at 22:00 there, 04:00 in New York
    late = at("Pacific/Auckland", "2027-01-16 21:59")
    poll_with(trace, [york, auckland], 75, late)
    assert calls(trace, "kiri") == []
    poll_with(trace, [york, auckland], 75, late + 2 * MINUTE)
    assert len(calls(trace, "kiri")) == 1


def test_across_daylight_saving_changes_the_night_follows_local_clocks(trace: Trace) -> None:
    """The same UTC time of day, a day apart: before New York's clocks go back 11:30 UTC is
    07:30 (day), after it 06:30 (night). Auckland's clocks go forward on 27 September 2026:
    18:30 UTC is 06:30 (night) the day before and 07:30 (day) the day after."""
    auckland = night_user(trace, "kiri", "Pacific/Auckland", "+14155552681")
    poll_with(trace, [auckland], 75, utc("2026-09-25 18:30"))
    assert local(trace.now, "Pacific/Auckland") == "2026-09-26 06:30 NZST"
    assert len(calls(trace, "kiri")) == 1
    assert trace.finish_last_call("completed", "1")  # Kiri pressed 1
    poll_with(trace, [auckland], 75, utc("2026-09-26 18:30"))
    assert local(trace.now, "Pacific/Auckland") == "2026-09-27 07:30 NZDT"
    assert trace.state("kiri").episode is None  # day again: 75 is in range, and the episode is closed
    assert [e.recipient for e in trace.log("kiri") if e.purpose == "all_clear"] == ["+14155552681"]
    assert len(calls(trace, "kiri")) == 1

    york = night_user(trace, "ana", "America/New_York", "+14155552671")
    poll_with(trace, [york], 75, utc("2026-10-31 11:30"))
    assert local(trace.now, "America/New_York") == "2026-10-31 07:30 EDT"
    assert calls(trace, "ana") == []
    poll_with(trace, [york], 75, utc("2026-11-01 11:30"))
    assert local(trace.now, "America/New_York") == "2026-11-01 06:30 EST"
    assert len(calls(trace, "ana")) == 1


def test_a_users_own_high_cadence_calls_every_20_minutes(trace: Trace) -> None:
    trace.now = utc("2027-01-15 12:00")
    said = high_night(trace, 250, 2, high_repeat_minutes=20)
    assert len(calls(trace)) == 6  # at 0, 20, 40, 60, 80 and 100 minutes (the default: 4)
    assert trace.texts("contacts") == []
    unanswered = [line for line in said if "call unanswered" in line]
    assert unanswered and all("only above 300 mg/dL for 60 minutes" in line for line in unanswered)


def test_a_users_own_urgent_high_reaches_the_contacts_after_their_minutes(trace: Trace) -> None:
    """290 never reaches the contacts by default (300 mg/dL for 60 minutes); this user set
    280 for 15 minutes, and a call every 10 minutes."""
    start = trace.now = utc("2027-01-15 12:00")
    high_night(trace, 290, 1, urgent_high_mgdl=280.0, urgent_high_minutes=15, high_repeat_minutes=10)
    assert len(calls(trace)) == 6
    texts = [e for e in trace.log() if e.purpose == "contacts"]
    # unanswered 5 minutes after each call: at 5 (too soon), 15, 25 (contacts were told 10
    # minutes before), 35, 45 and 55 minutes: the contacts hear at 15, 35 and 55
    rounds = sorted({round((e.created_at - start) / MINUTE) for e in texts})
    assert rounds == [15, 35, 55]
    assert len(texts) == 9 and all("did not answer a call about a high blood glucose" in e.body for e in texts)


def test_the_escalation_line_names_the_users_urgent_high_in_their_units(trace: Trace) -> None:
    trace.now = utc("2027-01-15 12:00")
    said = high_night(trace, 250, 0.2, units="mmol/L", urgent_high_mgdl=306.0, urgent_high_minutes=30,
                      high_repeat_minutes=5)
    assert any("only above 17.0 mmol/L for 30 minutes" in line for line in said)


def test_a_user_near_their_night_thresholds_is_polled_among_the_first_at_any_hour() -> None:
    # 95 is 25 above the day low of 70 (not near), 15 above the night low of 80 (near);
    # 185 is near the night high of 200, not the day high of 240
    for value in (95, 185):
        poll = Readings((Reading(value, utc("2027-01-15 12:00"), "Flat"),))
        assert needs_watching(make_user(time_zone="UTC", **NIGHT), poll, AlertState())
        assert not needs_watching(make_user(time_zone="UTC", **{**NIGHT, "night_thresholds": False}), poll,
                                  AlertState())
