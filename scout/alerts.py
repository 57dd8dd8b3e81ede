"""The alert decision: a pure function of (user, poll result, stored state, now).

It does no I/O and never reads the clock. It returns the new state and the actions
(calls and messages) the engine must carry out. Every rule in docs/design.md "Alert
rules" lives here, so each can be tested with a fixed clock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from models import AlertState, CallRecord, Episode, User
from scout.readings import PollFailure, PollResult, Reading, Readings, format_value

UNANSWERED = "unanswered"
ACKNOWLEDGED = "acknowledged"
PENDING = "pending"


@dataclass(frozen=True)
class Rules:
    wait_after_call: float = 120.0  # WAIT_AFTER_CALL
    failed_ping_limit: int = 60  # NIGHTSCOUT_FAILED_PING_SMS: consecutive failed polls
    stale_after: float = 15 * 60  # a reading older than this never triggers a call
    no_data_after: float = 30 * 60  # no new reading for this long: tell the user
    contact_repeat: float = 15 * 60  # texts to contacts within one episode at most this often
    ack_snooze: float = 15 * 60  # after the user pressed 1, no new call for this long
    lost_callback_after: float = 5 * 60  # a call with no final status by then counts as unanswered


@dataclass(frozen=True)
class Action:
    """One call or message to send. `key` is unique to this action, so it is sent once."""

    key: str
    kind: str  # call | sms | whatsapp
    purpose: str  # alert | contacts | outage | no_data | all_clear | recovered | resumed
    recipient: str
    text: str


@dataclass
class Decision:
    state: AlertState
    actions: list[Action] = field(default_factory=list)
    summary: str = ""  # what the poll showed, for the operator
    escalation: str = ""  # set when an unanswered call is passed on to the contacts

    @property
    def line(self) -> str:
        return "; ".join(part for part in (self.summary, self.escalation) if part)


# --- words ---------------------------------------------------------------

UNITS_SPOKEN = {"mg/dL": "milligrams per deciliter", "mmol/L": "millimoles per liter"}


def minutes_ago(at: float, now: float) -> str:
    minutes = int(max(0.0, now - at) // 60)
    if minutes == 0:
        return "just now"
    return "1 minute ago" if minutes == 1 else f"{minutes} minutes ago"


def clock_time(at: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(at))


def describe_reading(reading: Reading, units: str, now: float) -> str:
    """'54 mg/dL and falling, read at 03:12 UTC (3 minutes ago)'."""
    trend = f" and {reading.trend_words}" if reading.trend_words else ""
    value = format_value(reading.mgdl, units)
    return f"{value} {units}{trend}, read at {clock_time(reading.at)} ({minutes_ago(reading.at, now)})"


def call_speech(user: User, reading: Reading, delta: int | None, now: float) -> str:
    """What the alert call says, e.g. 'Ana, your blood glucose is 54 milligrams per
    deciliter and falling, 3 minutes ago.'"""
    trend = f" and {reading.trend_words}" if reading.trend_words else ""
    value = format_value(reading.mgdl, user.units)
    speech = (
        f"{user.display_name}, your blood glucose is {value} "
        f"{UNITS_SPOKEN.get(user.units, user.units)}{trend}, {minutes_ago(reading.at, now)}."
    )
    if delta:
        change = format_value(abs(delta), user.units)
        speech += f" That is {change} {'higher' if delta > 0 else 'lower'} than the reading before."
    return speech


# --- the decision ----------------------------------------------------------


def decide(user: User, poll: PollResult, state: AlertState, now: float, rules: Rules) -> Decision:
    """Apply every alert rule to one poll of one user."""
    s = state.copy()
    _clamp_future_times(s, now)
    decision = Decision(s)
    latest: Reading | None = None
    if isinstance(poll, PollFailure):
        _count_failure(user, poll, s, now, rules, decision)
    else:
        _count_success(user, s, now, decision)
        latest = _check_gap(user, poll, s, now, rules, decision)
    fresh = latest if latest is not None and now - latest.at <= rules.stale_after else None
    back_in_range = fresh is not None and _range_of(user, fresh.mgdl) == "in range"
    _announce_end_of_pause(user, s, now, decision)
    if pause_holds(user, fresh, now) and not back_in_range:
        decision.summary = (decision.summary + "; " if decision.summary else "") + (
            f"alerts paused until {clock_time(user.paused_until)}: no call")
        return decision
    if s.episode is not None and not back_in_range:
        # before any new call replaces the record of the last one
        _escalate_unanswered(user, s.episode, latest, now, rules, decision)
    if fresh is not None:
        assert isinstance(poll, Readings)
        _judge(user, poll, fresh, s, now, rules, decision)
    elif latest is not None:
        decision.summary = f"latest reading is stale ({minutes_ago(latest.at, now)}); no call"
    return decision


# --- pause -------------------------------------------------------------------
#
# A pause (sensor warm-up, a known low being treated) holds calls and contact texts for
# out-of-range readings. It is a separate step in front of the rules above: an urgent low
# still calls, because Dexcom's urgent low can never be silenced either, and a reading
# back in range still closes the episode with its all-clear.


def pause_holds(user: User, fresh: Reading | None, now: float) -> bool:
    """True if the user's pause holds back the alerts for this poll."""
    if not user.is_paused(now):
        return False
    return fresh is None or fresh.mgdl >= user.urgent_low


def _announce_end_of_pause(user: User, s: AlertState, now: float, d: Decision) -> None:
    """Once a pause has run out, tell the user, once, that alerts are back on."""
    until = user.paused_until
    if not until or until > now or s.pause_resumed_for == until or not user.phone:
        return
    s.pause_resumed_for = until
    d.actions.append(Action(
        key=f"{user.id}:resumed:{until:.0f}", kind="sms", purpose="resumed", recipient=user.phone,
        text=(f"Scout: your pause ended at {clock_time(until)}. Scout is watching again and will call "
              "you for lows and highs."),
    ))


def _clamp_future_times(s: AlertState, now: float) -> None:
    """If the clock stepped back, times 'in the future' restart from now: a cooldown
    neither fires early nor waits for the clock to catch up."""
    ep = s.episode
    if ep is None:
        return
    for name in ("last_call_at", "acknowledged_at", "last_contacts_at"):
        value = getattr(ep, name)
        if value is not None and value > now:
            setattr(ep, name, now)
    if ep.call is not None and ep.call.placed_at > now:
        ep.call.placed_at = now


def _count_failure(user: User, poll: PollFailure, s: AlertState, now: float, rules: Rules, d: Decision) -> None:
    s.failed_polls += 1
    s.last_failure = poll.reason
    if s.failing_since is None:
        s.failing_since = now
    d.summary = f"Nightscout {poll.describe()} ({s.failed_polls} failed in a row)"
    if s.failed_polls >= rules.failed_ping_limit and not s.outage_notified and user.phone:
        s.outage_notified = True
        d.actions.append(
            Action(
                key=f"{user.id}:outage:{s.failing_since:.0f}",
                kind="sms",
                purpose="outage",
                recipient=user.phone,
                text=(
                    f"Scout: your Nightscout site has not answered for {s.failed_polls} polls "
                    f"(about {s.failed_polls} minutes): it {poll.describe()}. Scout cannot watch "
                    "your glucose until it answers again; please check your Nightscout site."
                ),
            )
        )


def _count_success(user: User, s: AlertState, now: float, d: Decision) -> None:
    if s.outage_notified and user.phone:
        d.actions.append(
            Action(
                key=f"{user.id}:recovered:{now:.0f}",
                kind="sms",
                purpose="recovered",
                recipient=user.phone,
                text="Scout: your Nightscout site is answering again. Scout is watching your glucose.",
            )
        )
    if s.failed_polls or s.outage_notified or s.last_failure or s.failing_since is not None:
        s.failed_polls, s.outage_notified, s.last_failure, s.failing_since = 0, False, "", None


def _check_gap(user: User, poll: Readings, s: AlertState, now: float, rules: Rules, d: Decision) -> Reading | None:
    """The no-new-reading rule. Returns the latest valid reading, if any."""
    latest = poll.latest
    if latest is not None:
        if s.no_valid_since is not None:
            s.no_valid_since = None
        since = latest.at
    else:
        if s.no_valid_since is None:
            s.no_valid_since = now
        since = s.no_valid_since
        d.summary = "only CGM error codes, no valid reading"
    if now - since >= rules.no_data_after and s.gap_notified_for != since and user.phone:
        s.gap_notified_for = since
        d.actions.append(
            Action(
                key=f"{user.id}:no_data:{since:.0f}",
                kind="sms",
                purpose="no_data",
                recipient=user.phone,
                text=(
                    f"Scout: your Nightscout site has had no new glucose reading for "
                    f"{int((now - since) // 60)} minutes. Check your sensor and uploader; "
                    "Scout cannot alert you without readings."
                ),
            )
        )
    return latest


def _range_of(user: User, mgdl: float) -> str:
    if mgdl < user.low_mgdl:
        return "low"
    if mgdl > user.high_mgdl:
        return "high"
    return "in range"


def _judge(user: User, poll: Readings, latest: Reading, s: AlertState, now: float, rules: Rules, d: Decision) -> None:
    value = f"{format_value(latest.mgdl, user.units)} {user.units} {latest.arrow}".rstrip()
    where = _range_of(user, latest.mgdl)
    d.summary = f"{value}, {minutes_ago(latest.at, now)}: {where}"
    if where == "in range":
        if s.episode is not None:
            _all_clear(user, s, latest, now, d)
        return
    ep = s.episode
    if ep is None or ep.kind != where:
        alerted = ep.alerted if ep else []
        ep = s.episode = Episode(id=f"{where}-{now:.0f}", kind=where, started_at=now, alerted=alerted)
    if _call_due(ep, now, rules):
        _place_call(user, ep, latest, poll.delta, now, d)


def _call_due(ep: Episode, now: float, rules: Rules) -> bool:
    call = ep.call
    if call is not None and call.outcome == PENDING:
        return False
    if call is not None and call.outcome == ACKNOWLEDGED and ep.acknowledged_at is not None:
        return now - ep.acknowledged_at >= rules.ack_snooze
    return ep.last_call_at is None or now - ep.last_call_at >= rules.wait_after_call


def _place_call(user: User, ep: Episode, latest: Reading, delta: int | None, now: float, d: Decision) -> None:
    ep.calls += 1
    key = f"{user.id}:{ep.id}:call:{ep.calls}"
    ep.call = CallRecord(key=key, placed_at=now)
    ep.last_call_at = now
    d.actions.append(Action(key, "call", "alert", user.phone, call_speech(user, latest, delta, now)))
    d.summary += f", calling (call {ep.calls})"


def _escalate_unanswered(user: User, ep: Episode, latest: Reading | None, now: float, rules: Rules, d: Decision) -> None:
    call = ep.call
    if call is None:
        return
    if call.outcome == PENDING and now - call.placed_at >= rules.lost_callback_after:
        call.outcome, call.detail = UNANSWERED, "no final call status arrived"
    if call.outcome != UNANSWERED or call.escalated:
        return
    call.escalated = True
    if ep.last_contacts_at is not None and now - ep.last_contacts_at < rules.contact_repeat:
        return  # contacts were texted recently in this episode
    ep.contact_rounds += 1
    ep.last_contacts_at = now
    if latest is not None:
        news = f"Their blood glucose is {describe_reading(latest, user.units, now)}."
    else:
        news = "Scout cannot read their Nightscout right now; their last alert was for a " + ep.kind + "."
    text = (
        f"{user.display_name} did not answer a call about a {ep.kind} blood glucose. "
        f"{news} Please check on {user.display_name}."
    )
    for contact in user.contacts:
        d.actions.append(
            Action(
                key=f"{user.id}:{ep.id}:contacts:{ep.contact_rounds}:{contact.phone}",
                kind=contact.channel,
                purpose="contacts",
                recipient=contact.phone,
                text=f"{addressed('Scout alert', contact.name)}: {text}",
            )
        )
        if [contact.phone, contact.channel] not in ep.alerted:
            ep.alerted.append([contact.phone, contact.channel])
    d.escalation = f"call unanswered ({call.detail or 'no answer'}): texting {len(user.contacts)} contact(s)"


def addressed(heading: str, name: str) -> str:
    """'Scout alert for Bo': a text to a named contact says who it is for."""
    return f"{heading} for {name}" if name else heading


def _all_clear(user: User, s: AlertState, latest: Reading, now: float, d: Decision) -> None:
    ep = s.episode
    assert ep is not None
    recipients = list(ep.alerted)
    if ep.calls and [user.phone, "sms"] not in recipients:
        recipients.insert(0, [user.phone, "sms"])
    text = (
        f"Scout all clear: {user.display_name}'s blood glucose is back in range, "
        f"{describe_reading(latest, user.units, now)}."
    )
    for phone, channel in recipients:
        d.actions.append(Action(f"{user.id}:{ep.id}:all_clear:{phone}", channel, "all_clear", phone, text))
    s.episode = None
    d.summary += f", back in range: all clear to {len(recipients)}"


def record_call_outcome(state: AlertState, call_key: str, outcome: str, detail: str, now: float) -> bool:
    """Apply a call's final outcome to the state. Returns False if nothing changed
    (an unknown or older call, or the outcome was already known)."""
    ep = state.episode
    if ep is None or ep.call is None or ep.call.key != call_key or ep.call.outcome != PENDING:
        return False
    ep.call.outcome, ep.call.detail = outcome, detail
    if outcome == ACKNOWLEDGED:
        ep.acknowledged_at = now
    return True
