"""What the page tells a person about Scout watching them: the status panel and the
history by episode. Pure functions of (user, stored state, alert log, readings, now);
the views in scout.dashboard fetch those and hand them over.

Times go out as seconds since the epoch: the page's script shows them in the reader's
own time zone.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from models import AlertState, LogEntry, User
from scout.alerts import (
    STALE_AFTER,
    Rules,
    ack_snooze_for,
    believe,
    is_fresh,
    person_name,
    urgent_high_long_enough,
    urgent_high_rule,
)
from scout.readings import PollFailure, PollResult, Reading, Readings, format_value

POLL_SECOND = 30  # the poller polls every minute at :30
ALL_CLEAR_SHOWN_FOR = 60 * 60  # the status keeps "all clear" on show this long
STATUS_LOG_ENTRIES = 20  # the most recent alert log entries (of the last hour) the status reads

# What each alert log entry is, in the words of every page that lists one (the settings
# page's recent alerts, the history, its CSV, the chart's markers): one table.
PURPOSE_WORDS = {
    "alert": "Alert call",
    "ladder": "Call to a contact",
    "contacts": "Text to a contact",
    "outage": "Nightscout down notice",
    "no_data": "No readings notice",
    "all_clear": "All clear",
    "recovered": "Nightscout back notice",
    "resumed": "Pause ended notice",
    "clock": "Uploader clock notice",
    "test": "Test call",
    "test_text": "Test text",
    "reply": "Reply received",
    "reply_answer": "Answer to a reply",
    "on_it": "Someone is on it",
    "note": "Note on your Nightscout",
}
INBOUND = ("reply",)  # entries recording a message someone sent Scout, not one Scout sent
NOTES = ("note",)  # entries recording a note written on the user's Nightscout, to no number


def what(entry: LogEntry) -> str:
    return PURPOSE_WORDS.get(entry.purpose, entry.purpose)


def direction(entry: LogEntry) -> str:
    """'from' for a reply someone sent, 'to' for what Scout sent; '' for a Nightscout note."""
    if entry.purpose in NOTES:
        return ""
    return "from" if entry.purpose in INBOUND else "to"


# Alert log keys of an episode's actions: "<user>:<kind>-<start>:<call|contacts|all_clear>:..."
EPISODE_KEY = re.compile(r":(?P<episode>(?:low|high)-\d+):(?P<step>call|ladder|contacts|on_it|all_clear):")
# The call speech carries the value: "..., your blood glucose is 54 milligrams per deciliter ..."
SPOKEN_VALUE = re.compile(r"blood glucose is (?P<value>\d+(?:\.\d)?) ")


def next_check(now: float) -> float:
    """The next :30 after `now`, when the poller reads every user."""
    minute = now - now % 60
    at = minute + POLL_SECOND
    return at if at > now else at + 60


def mask_phone(phone: str) -> str:
    """'+1 •••• 2672': enough to recognise whose number it is, not enough to use it."""
    digits = phone.lstrip("+")
    if len(digits) < 6:
        return "•••"
    return f"+{digits[:1] if digits.startswith('1') else digits[:2]} •••• {digits[-4:]}"


def judge(user: User, reading: Reading) -> tuple[str, str]:
    """('low', 'below your 70') for a reading against the user's own thresholds."""
    low, high = format_value(user.low_mgdl, user.units), format_value(user.high_mgdl, user.units)
    mgdl = reading.mgdl
    if mgdl < user.low_mgdl:
        urgent = mgdl < user.urgent_low
        return ("urgent-low" if urgent else "low"), f"below your {low}" + (", an urgent low" if urgent else "")
    if mgdl > user.high_mgdl:
        return "high", f"above your {high}"
    return "in-range", f"in your range, {low} to {high}"


def describe_value(reading: Reading, units: str) -> str:
    """How a reading reads: Dexcom's LOW and HIGH (by the reading's own `limit`, so another
    CGM's 39 or 401 is a plain value) as Nightscout shows them."""
    if reading.limit == "below":
        return "LOW (below 40 mg/dL)" if units == "mg/dL" else "LOW (below 2.2 mmol/L)"
    if reading.limit == "above":
        return "HIGH (above 400 mg/dL)" if units == "mg/dL" else "HIGH (above 22.2 mmol/L)"
    return format_value(reading.mgdl, units)


def plain_failure(poll: PollFailure) -> str:
    """Why a read failed, in plain words; never the site's own markup."""
    if poll.reason == "not_json" and ("<" in poll.detail or "html" in poll.detail.lower()):
        what = f" ({poll.detail})" if "<" not in poll.detail else ""  # the client's description, never markup
        return (f"it answered with a web page, not Nightscout data{what}: check the address "
                "(your Nightscout's own address, e.g. https://yourname.herokuapp.com)")
    return f"it {poll.describe()}"


ONLY_ERROR_CODES = ("Nightscout answered, but its newest readings are CGM error codes (below 39 mg/dL): the sensor "
                    "may be warming up or have lost signal. Scout cannot alert you until a reading arrives.")


def reading_status(user: User, poll: PollResult | None, now: float, state: AlertState | None = None) -> dict[str, Any]:
    """What the latest read of the user's Nightscout showed, or plainly why there is none.

    The reading is timed as the poller times it (scout.alerts.believe, against the arrivals
    recorded in the user's `state`): with an uploader whose clock is off, the page says what
    Scout does, not what the uploader's time stamp suggests."""
    if poll is None and user.nightscout_url:
        return {"pending": "Reading your Nightscout…"}
    if poll is None:
        return {"problem": "Save your Nightscout address so Scout can read it."}
    if isinstance(poll, PollFailure):
        return {"problem": f"Scout could not read your Nightscout: {plain_failure(poll)}."}
    belief = believe(user, poll, state or AlertState(), now)
    latest = belief.latest
    if latest is None:
        return {"problem": ONLY_ERROR_CODES}
    where, words = judge(user.in_force(now), latest)
    fresh = is_fresh(latest, now)
    shown = {
        "value": describe_value(latest, user.units), "units": user.units, "limit": latest.limit,
        "arrow": latest.arrow, "trend": latest.trend_words, "at": latest.at,
        "ageMinutes": max(0, int((now - latest.at) // 60)), "fresh": fresh, "range": where,
        "judgement": words if fresh else
        f"{words}; older than {STALE_AFTER // 60} minutes, so Scout would not call for it",
    }
    offset = belief.clock_offset
    if offset:
        minutes = round(abs(offset) / 60)
        shown["clock"] = (f"Your uploader's clock is about {minutes} minutes {'behind' if offset > 0 else 'ahead'}: "
                          "Scout times your readings by when they arrive. Set that phone or uploader to the right time.")
    return shown


def _step(at: float | None, text: str) -> list[dict[str, Any]]:
    return [{"at": at, "text": text}] if at else []


def alert_status(user: User, state: AlertState, log: list[LogEntry], now: float) -> dict[str, Any] | None:
    """The alert under way (or the all-clear of the last hour), as a few timed steps."""
    ep = state.episode
    if ep is None:
        clear = next((e for e in log if e.purpose == "all_clear" and now - e.created_at < ALL_CLEAR_SHOWN_FOR), None)
        if clear is None:
            return None
        return {"state": "all-clear", "headline": "All clear: back in range", "steps": _step(clear.created_at, "All clear sent")}
    steps = _step(ep.started_at, f"Out of range ({ep.kind})")
    call = ep.call
    steps += _step(ep.last_call_at, f"Called you (call {ep.calls})")
    acknowledged = ep.acknowledged_at is not None and (ep.last_call_at is None or ep.acknowledged_at >= ep.last_call_at)
    who = "You" if not ep.acknowledged_by or ep.acknowledged_by == user.display_name else ep.acknowledged_by
    ladder = ep.ladder_call
    if ladder is not None:
        steps += _step(ladder.placed_at, f"Called {person_name(user, ladder.to)}, your contact")
    if call is not None and call.outcome == "pending":
        headline, phase = "Calling you: waiting for you to press 1", "calling"
    elif acknowledged:
        wait = ack_snooze_for(ep, user, Rules())
        again = f"{wait / 3600:g} hours" if wait >= 3600 else f"{wait / 60:g} minutes"
        headline, phase = f"{who} pressed 1: if you are still out of range, Scout calls again in {again}", "acknowledged"
        steps += _step(ep.acknowledged_at, f"{who} pressed 1")
    elif ladder is not None and ladder.outcome == "pending" and ep.ladder_active:
        headline, phase = (f"No 1 pressed: Scout is calling {person_name(user, ladder.to)}, your contact, "
                           "waiting for a 1"), "unanswered"
        steps += _step(call.placed_at if call is not None else None,
                       f"Call not acknowledged ({call.detail or 'no answer'})" if call is not None else "")
    elif call is not None:
        told = ep.kind != "high" or urgent_high_long_enough(user, ep, call.placed_at)
        headline = ("No 1 pressed: your contacts are told" if told else
                    f"No 1 pressed: Scout calls again within {user.high_repeat_minutes} minutes; your contacts are "
                    f"told of a high only {urgent_high_rule(user)}")
        phase = "unanswered"
        steps += _step(call.placed_at, f"Call not acknowledged ({call.detail or 'no answer'})")
    else:
        headline, phase = f"Out of range ({ep.kind})", "open"
    steps += _step(ep.last_contacts_at, f"Contacts texted ({ep.contact_rounds} round{'s' if ep.contact_rounds != 1 else ''})")
    return {"state": phase, "kind": ep.kind, "headline": headline,
            "steps": sorted(steps, key=lambda s: s["at"])}


def watching(user: User, state: AlertState, now: float) -> tuple[bool, list[dict[str, Any]]]:
    """Whether Scout is watching, and every reason it is not (or not fully)."""
    reasons: list[dict[str, Any]] = []
    if not user.nightscout_url:
        reasons.append({"text": "No Nightscout address is saved"})
    if not user.phone:
        reasons.append({"text": "No phone number is saved"})
    if state.failing_since is not None and state.failed_polls:
        reasons.append({"text": "Nightscout failing since", "at": state.failing_since})
    if user.is_paused(now):
        reasons.append({"text": "Paused until", "at": user.paused_until,
                        "note": f"an urgent low (below {format_value(user.urgent_low, user.units)} "
                                f"{user.units}) still calls"})
    return user.is_watchable and not user.is_paused(now), reasons


def status(user: User, state: AlertState, log: list[LogEntry], poll: PollResult | None,
           last_check: float | None, now: float) -> dict[str, Any]:
    """Everything the status panel shows. Of `log`, only the last hour's entries matter (the
    all-clear shown for an hour, and what the chart would show anew)."""
    log = [e for e in log if e.created_at >= now - ALL_CLEAR_SHOWN_FOR]
    on, reasons = watching(user, state, now)
    return {
        "watching": on,
        "headline": "Watching" if on else ("Paused" if user.is_paused(now) else "Not watching"),
        "reasons": reasons,
        "lastCheck": last_check,
        "nextCheck": next_check(now),
        "reading": reading_status(user, poll, now, state),
        "alert": alert_status(user, state, log, now),
        "pausedUntil": user.paused_until if user.is_paused(now) else 0,
        "now": now,
        "chartMark": chart_mark(poll, log),
    }


def chart_mark(poll: PollResult | None, log: list[LogEntry]) -> str:
    """Changes when the chart would: a new reading, or a new or updated entry among the recent
    alert log (a call answered, a text sent). The page reloads its chart only then, instead of
    on every status refresh (each chart reads up to CHART_LOG_ENTRIES log entries)."""
    dates = [r.date for r in poll.readings] + [e.date for e in poll.errors] if isinstance(poll, Readings) else []
    newest = max(dates, default=0.0)
    entries = hashlib.sha1(repr([(e.key, e.status, e.outcome) for e in log]).encode()).hexdigest()[:16]
    return f"{newest:.0f}-{'none' if poll is None else 'read'}-{entries}"


# --- history by episode ------------------------------------------------------------


@dataclass
class EpisodeHistory:
    id: str
    kind: str  # low | high | other (notices that belong to no episode)
    started_at: float
    ended_at: float | None = None
    entries: list[LogEntry] = field(default_factory=list)

    @property
    def opened_at(self) -> float:
        """When it began: an episode when Scout opened it (the time in its id; every entry of
        it was made then or later), a notice when it was made."""
        return float(self.id.split("-", 1)[1]) if self.kind != "other" else self.started_at

    @property
    def extreme(self) -> str:
        """The lowest (or highest) value Scout called about in this episode."""
        values = [float(m.group("value")) for e in self.entries if e.purpose == "alert"
                  for m in [SPOKEN_VALUE.search(e.body)] if m]
        if not values:
            return ""
        return f"{min(values) if self.kind == 'low' else max(values):g}"


def call_outcome(entry: LogEntry) -> str:
    """A call's outcome in words a person uses."""
    if entry.status == "permanent" or (entry.status in ("failed", "expired") and not entry.outcome):
        return f"could not be placed ({entry.error or entry.status})"
    outcome = entry.outcome
    if outcome == "acknowledged":
        return "pressed 1"
    if "machine" in outcome or "voicemail" in outcome:
        return "voicemail"
    if outcome.startswith("unanswered"):
        detail = outcome.split(":", 1)[1].strip() if ":" in outcome else ""
        return "no answer" + (f" ({detail})" if detail and detail not in ("no-answer", "no answer") else "")
    return "waiting for an answer" if entry.status in ("pending", "queued", "sending", "sent") else entry.status


def episodes(log: list[LogEntry]) -> list[EpisodeHistory]:
    """The alert log grouped by episode, newest first. Entries outside any episode (notices,
    tests) each stand alone."""
    grouped: dict[str, EpisodeHistory] = {}
    for entry in sorted(log, key=lambda e: e.created_at):
        match = EPISODE_KEY.search(entry.key)
        ep_id = match.group("episode") if match else f"notice-{entry.key}"
        kind = ep_id.split("-", 1)[0] if match else "other"
        group = grouped.setdefault(ep_id, EpisodeHistory(ep_id, kind, entry.created_at))
        group.entries.append(entry)
        if entry.purpose == "all_clear":
            group.ended_at = entry.created_at
    return sorted(grouped.values(), key=lambda g: g.started_at, reverse=True)


def whole_episodes(log: list[LogEntry], everything: bool) -> list[EpisodeHistory]:
    """episodes(log), cut to those known whole. `log` is the newest part of the user's alert
    log; unless it is `everything`, an episode that began at or before its oldest entry may
    have older entries that were not read, and is left out (a second apart, for the
    rounding of the time in an episode's id)."""
    groups = episodes(log)
    if everything or not log:
        return groups
    oldest = min(e.created_at for e in log)
    return [g for g in groups if g.opened_at - 1 > oldest]
