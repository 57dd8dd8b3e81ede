"""The alert decision: a pure function of (user, poll result, stored state, now).

It does no I/O and never reads the clock. It returns the new state and the actions
(calls and messages) the engine must carry out. Every rule in docs/design.md "Alert
rules" lives here, so each can be tested with a fixed clock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from models import AlertState, CallRecord, Contact, Episode, User
from scout.forecast import early_warning, readings_wanted
from scout.readings import PollFailure, PollResult, Reading, Readings, SensorError, change_between, format_value

UNANSWERED = "unanswered"
ACKNOWLEDGED = "acknowledged"
PENDING = "pending"
UNPLACED = "unplaced"  # the call could not be placed at all (the provider kept refusing or throttling)
STOPPED = "stopped"  # a contact's call made pointless: someone else pressed 1 first

# The freshness rule, the one place it is written: a reading older than this (timed as Scout
# believes it, see "freshness by arrival") never triggers a call. The page says the same.
STALE_AFTER = 15 * 60
FUTURE_TOLERANCE = 2 * 60  # a reading dated further ahead than this is timed by its arrival
CLOCK_TOLERANCE = 5 * 60  # dates further than this from the arrival: the uploader's clock is off
SEEN_KEPT = 12  # entries remembered per user (besides those in the latest poll)
# The newest entries of a poll the decision looks at. The poller asks for 3; a site that
# ignores `count` (thousands of entries, up to the body cap) must neither bloat the stored
# state nor hold the poller's loop for seconds comparing every entry with every other.
ENTRIES_DECIDED = 24

# The send queue's order (lower goes first): first calls before repeat calls, lows before
# highs, the lowest value first; then contact texts, notices, and all-clears last.
URGENCY_FIRST_CALL, URGENCY_REPEAT_CALL, URGENCY_CONTACTS = 0, 1000, 2000
URGENCY_NOTICE, URGENCY_ALL_CLEAR = 3000, 4000


@dataclass(frozen=True)
class Rules:
    wait_after_call: float = 120.0  # WAIT_AFTER_CALL
    failed_ping_limit: int = 60  # NIGHTSCOUT_FAILED_PING_SMS: consecutive failed polls
    stale_after: float = STALE_AFTER  # a reading older than this never triggers a call
    no_data_after: float = 30 * 60  # no new reading for this long: tell the user
    contact_repeat: float = 15 * 60  # texts to contacts within one episode at most this often
    ack_snooze: float = 15 * 60  # after the user pressed 1, no new call for this long
    lost_callback_after: float = 5 * 60  # a call with no final status by then counts as unanswered
    # a call still not placed this long after it was decided cannot be placed in time
    # (the engine gives up sooner, see scout.engine.CALL_WINDOW; this is the backstop)
    unplaced_after: float = 5 * 60
    # Highs have a cadence of their own, set by each user (models.User.high_repeat_minutes,
    # high_snooze_minutes, urgent_high_mgdl, urgent_high_minutes). Lows keep wait_after_call.
    # An urgent low (below the user's urgent_low, 55 mg/dL by default) waits less: a 1 snoozes
    # it for 5 minutes, and an unanswered call reaches the contacts again after 5 minutes.
    urgent_ack_snooze: float = 5 * 60
    urgent_contact_repeat: float = 5 * 60


@dataclass(frozen=True)
class Action:
    """One call or message to send. `key` is unique to this action, so it is sent once."""

    key: str
    kind: str  # call | sms | whatsapp
    purpose: str  # alert | contacts | outage | no_data | all_clear | recovered | resumed
    recipient: str
    text: str
    urgency: float = URGENCY_NOTICE


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
    """'54 mg/dL and falling, read at 03:12 UTC (3 minutes ago)'; the time is the one
    Scout believes (by arrival when the uploader's clock is off), not the uploader's."""
    trend = f" and {reading.trend_words}" if reading.trend_words else ""
    value = format_value(reading.mgdl, units, reading.limit)
    return f"{value} {units}{trend}, read at {clock_time(reading.at)} ({minutes_ago(reading.at, now)})"


def call_speech(user: User, reading: Reading, delta: float | None, now: float) -> str:
    """What the alert call says, e.g. 'Ana, your blood glucose is 54 milligrams per
    deciliter and falling, 3 minutes ago.' or '... is below 40 milligrams per deciliter ...'."""
    trend = f" and {reading.trend_words}" if reading.trend_words else ""
    value = format_value(reading.mgdl, user.units, reading.limit)
    speech = (
        f"{user.display_name}, your blood glucose is {value} "
        f"{UNITS_SPOKEN.get(user.units, user.units)}{trend}, {minutes_ago(reading.at, now)}."
    )
    if delta:
        change = format_value(abs(delta), user.units)
        speech += f" That is {change} {'higher' if delta > 0 else 'lower'} than the reading before."
    return speech


# --- the decision ----------------------------------------------------------


def decide(user: User, poll: PollResult, state: AlertState, now: float, rules: Rules,
           count_failures: bool = True) -> Decision:
    """Apply every alert rule to one poll of one user. `count_failures` is False for a
    read made outside the poller's cycle (a webhook's): it never counts toward an outage.
    The thresholds are those in force at `now`: at night, the user's night thresholds."""
    user = user.in_force(now)
    s = state.copy()
    _clamp_future_times(s, now)
    watched_before = s.watching_since is not None
    if not watched_before:
        s.watching_since = now
    decision = Decision(s)
    latest: Reading | None = None
    previous: Reading | None = None
    if isinstance(poll, PollFailure):
        if count_failures:
            _count_failure(user, poll, s, now, rules, decision)
        else:
            decision.summary = f"Nightscout {poll.describe()}"
    else:
        _count_success(user, s, now, decision)
        latest, previous, newest_error = _note_arrivals(s, poll, now, watched_before, user)
        _check_clock(user, s, now, decision)
        _check_gap(user, s, latest, newest_error, now, rules, decision)
    fresh = latest if latest is not None and is_fresh(latest, now, rules) else None
    warning = _early_warning(user, poll, fresh, now)
    back_in_range = fresh is not None and _range_of(user, fresh.mgdl) == "in range" and not warning
    _announce_end_of_pause(user, s, now, decision)
    held = pause_holds(user, fresh, now) and not back_in_range
    # An unanswered call reaches the contacts before any new call replaces its record. A pause
    # holds this too, except for an urgent low's call: if nobody pressed 1, the contacts must
    # hear of it even once the value has risen above the urgent line.
    if s.episode is not None and not back_in_range and (not held or s.episode.urgent):
        _escalate_unanswered(user, s.episode, latest, now, rules, decision)
        _climb_ladder(user, s.episode, latest, now, rules, decision)
    if held:
        if s.episode is not None and not s.episode.urgent:
            _end_round_for_pause(s.episode, decision)
        decision.summary = (decision.summary + "; " if decision.summary else "") + (
            f"alerts paused until {clock_time(user.paused_until)}: no call")
        return decision
    if fresh is not None:
        delta = change_between(fresh, previous) if previous is not None else None
        _judge(user, fresh, delta, s, now, rules, decision, warning)
    elif latest is not None:
        decision.summary = f"latest reading is stale ({minutes_ago(latest.at, now)}); no call"
    return decision


def is_fresh(reading: Reading, now: float, rules: Rules | None = None) -> bool:
    """Whether a reading (timed as Scout believes it) is recent enough to call for."""
    return now - reading.at <= (rules or Rules()).stale_after


@dataclass(frozen=True)
class Belief:
    """The latest valid reading as the poller would take it from a poll at `now`, timed as
    Scout believes it (by arrival when the uploader's clock is off), and that clock's offset
    (see clock_offset; None when unknown)."""

    latest: Reading | None
    clock_offset: float | None


def believe(user: User, poll: Readings, state: AlertState, now: float) -> Belief:
    """What the poller would make of `poll` if it polled now, without changing `state`:
    for the page, which must say what Scout does. The poll is cut to the entries the poller
    asks for (a page reads a day of them for its chart), then timed exactly as decide()
    times them, against the arrivals the poller has recorded."""
    user = user.in_force(now)  # as decide() judges: the thresholds in force (night or day)
    s = state.copy()
    _clamp_future_times(s, now)
    wanted = readings_wanted(user)
    both: list[Reading | SensorError] = [*poll.readings, *poll.errors]
    entries = sorted(both, key=lambda e: e.date, reverse=True)[:wanted]
    cut = Readings(tuple(e for e in entries if isinstance(e, Reading)),
                   tuple(e for e in entries if isinstance(e, SensorError)))
    latest, _previous, _error = _note_arrivals(s, cut, now, s.watching_since is not None, user)
    return Belief(latest, clock_offset(s))


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


# --- freshness by arrival ------------------------------------------------------------
#
# An entry's `date` comes from the uploader's phone, which can be minutes or years off.
# Scout therefore also remembers when it first saw each entry. An entry that arrived
# since the last poll is new, whatever its date; an entry dated in the future is timed
# by its arrival and never outranks one that arrived after it; and "no new reading"
# counts from the last arrival.


def _note_arrivals(s: AlertState, poll: Readings, now: float, watched_before: bool,
                   user: User) -> tuple[Reading | None, Reading | None, SensorError | None]:
    """Record the poll's new entries in `s.seen`; return the latest valid reading and the
    one before it (each timed as Scout believes), and the newest error code if it is
    newer than the latest valid reading. Of readings with the same date and different
    values (two uploaders of one sensor), the most alarming for the user is believed,
    whatever order the site lists them in and whichever reached Scout first."""
    witnessed = watched_before or bool(s.seen)  # Scout polled this site before: what is new arrived since
    known = {record[0]: record for record in s.seen}
    by_date_value = {(record[1], record[2]): record for record in s.seen}
    entries: list[Reading | SensorError] = [*poll.readings, *poll.errors]
    if len(entries) > ENTRIES_DECIDED:
        entries = sorted(entries, key=lambda e: e.date, reverse=True)[:ENTRIES_DECIDED]
    current: dict[str, list[Any]] = {}
    for entry in entries:
        value = entry.mgdl if isinstance(entry, Reading) else entry.code
        record = known.get(entry.key) or by_date_value.get((entry.date, value))
        if record is None:  # first sight: it arrived now, or (first poll) by its date at the latest
            record = [entry.key, entry.date, value, now if witnessed else min(entry.date, now), int(witnessed)]
            known[entry.key] = by_date_value[(entry.date, value)] = record
            if isinstance(entry, Reading) and (s.last_arrival_at is None or record[3] > s.last_arrival_at):
                s.last_arrival_at = record[3]
        current[entry.key] = record
    in_poll = {id(record) for record in current.values()}
    unique = {id(record): record for record in known.values()}.values()  # a duplicate upload shares its record
    others = sorted((r for r in unique if id(r) not in in_poll), key=lambda r: r[3], reverse=True)
    kept = list({id(record): record for record in current.values()}.values()) + others[:SEEN_KEPT]
    kept.sort(key=lambda r: (r[3], r[1]))
    if kept != s.seen:
        s.seen = kept
    ranked = sorted(entries, key=lambda e: _rank(current[e.key]), reverse=True)
    believed: dict[float, Reading] = {}
    for entry in entries:
        if isinstance(entry, Reading) and (entry.date not in believed
                                           or _alarm(user, entry) > _alarm(user, believed[entry.date])):
            believed[entry.date] = entry
    valid = _believed_order([e for e in ranked if isinstance(e, Reading) and believed[e.date] is e], current,
                            list(known.values()))
    latest = valid[0] if valid else None
    newest = ranked[0] if ranked else None
    error = newest if isinstance(newest, SensorError) else None
    return latest, (valid[1] if len(valid) > 1 else None), error


def _alarm(user: User, reading: Reading) -> float:
    """How far out of range a reading is (negative inside the range): larger is more alarming."""
    return max(user.low_mgdl - reading.mgdl, reading.mgdl - user.high_mgdl)


def _is_future(record: list[Any]) -> bool:
    return bool(record[1] - record[3] > FUTURE_TOLERANCE)


def _rank(record: list[Any]) -> tuple[float, int, float]:
    """Later arrivals first; among entries that arrived together, a future-dated one
    last, then by date."""
    return (record[3], 0 if _is_future(record) else 1, record[1])


def _believed_order(ranked: list[Reading], records: dict[str, list[Any]], seen: list[list[Any]]) -> list[Reading]:
    """The valid readings, latest first, each with `at` set to the time Scout believes.

    A reading whose date is in the future, or that arrived since the last poll dated more
    than CLOCK_TOLERANCE before its arrival, is timed by its arrival. A late upload of an
    old reading (dated before one that reached Scout earlier) keeps its date and never
    outranks the newer one."""
    timed: list[Reading] = []
    late: list[Reading] = []
    for reading in ranked:
        record = records[reading.key]
        newer_seen_before = any(
            not _is_future(other) and other[3] < record[3] and other[1] > record[1] for other in seen)
        if newer_seen_before and not _is_future(record):
            late.append(replace(reading, at=min(reading.date, record[3])))
        elif _is_future(record) or (record[4] and record[3] - record[1] > CLOCK_TOLERANCE):
            timed.append(replace(reading, at=record[3]))
        else:
            timed.append(replace(reading, at=min(reading.date, record[3]) if record[4] else reading.date))
    return timed + sorted(late, key=lambda r: r.at, reverse=True)


def clock_offset(s: AlertState) -> float | None:
    """How far the uploader's clock is behind (positive) or ahead (negative), in
    seconds, when the last two entries seen arriving agree that it is off by more than
    CLOCK_TOLERANCE; 0.0 when the last one arrived on time; None when unknown."""
    arrivals = [r for r in s.seen if r[4]]
    if not arrivals:
        return None
    offsets = [r[3] - r[1] for r in arrivals[-2:]]
    if abs(offsets[-1]) <= CLOCK_TOLERANCE:
        return 0.0
    if len(offsets) < 2 or abs(offsets[0]) <= CLOCK_TOLERANCE or (offsets[0] > 0) != (offsets[1] > 0):
        return None
    return offsets[-1]


def _check_clock(user: User, s: AlertState, now: float, d: Decision) -> None:
    """Tell the user once per skew episode that their uploader's clock is off."""
    offset = clock_offset(s)
    if offset == 0.0 and s.clock_skew_told and _clock_right_again(s):
        s.clock_skew_told = False  # the clock is right again: a later skew is a new episode
    if not offset or s.clock_skew_told or not user.phone:
        return
    s.clock_skew_told = True
    minutes = round(abs(offset) / 60)
    side = "behind" if offset > 0 else "ahead"
    d.actions.append(Action(
        key=f"{user.id}:clock:{s.seen[-1][3]:.0f}", kind="sms", purpose="clock", recipient=user.phone,
        text=(f"Scout: your uploader's clock is about {minutes} minutes {side}; Scout is using the time "
              "readings arrive. Please set the phone or uploader that sends your readings to the right time."),
        urgency=URGENCY_NOTICE,
    ))


def _clock_right_again(s: AlertState) -> bool:
    """The last two arrivals were well within the tolerance (half of it). A clock about
    CLOCK_TOLERANCE off, whose readings arrive on either side of it as the poll falls,
    is the same skew, not a new one to text about each time."""
    arrivals = [r for r in s.seen if r[4]][-2:]
    return len(arrivals) == 2 and all(abs(r[3] - r[1]) <= CLOCK_TOLERANCE / 2 for r in arrivals)


def _clamp_future_times(s: AlertState, now: float) -> None:
    """If the clock stepped back, times 'in the future' restart from now: a cooldown
    neither fires early nor waits for the clock to catch up."""
    for name in ("last_call_at", "last_arrival_at"):
        if (value := getattr(s, name)) is not None and value > now:
            setattr(s, name, now)
    if any(record[3] > now for record in s.seen):
        # entries seen 'in the future' would outrank every new arrival until the clock
        # caught up (new lists: the records are shared with the state this was copied from)
        s.seen = [[*record[:3], now, *record[4:]] if record[3] > now else record for record in s.seen]
    ep = s.episode
    if ep is None:
        return
    for name in ("last_call_at", "acknowledged_at", "last_contacts_at"):
        value = getattr(ep, name)
        if value is not None and value > now:
            setattr(ep, name, now)
    for call in (ep.call, ep.ladder_call):
        if call is not None and call.placed_at > now:
            call.placed_at = now


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


def _check_gap(user: User, s: AlertState, latest: Reading | None, error: SensorError | None, now: float,
               rules: Rules, d: Decision) -> None:
    """The no-new-reading rule, counted from the last arrival of a valid reading."""
    if latest is not None:
        if s.no_valid_since is not None:
            s.no_valid_since = None
        since = s.last_arrival_at if s.last_arrival_at is not None else latest.at
    else:
        if s.no_valid_since is None:
            s.no_valid_since = now
        since = s.no_valid_since if s.last_arrival_at is None else s.last_arrival_at
        d.summary = "only CGM error codes, no valid reading"
    if error is not None:
        d.summary = f"sensor error: {error.name}" + (f"; {d.summary}" if latest is None else "")
    if now - since >= rules.no_data_after and s.gap_notified_for != since and user.phone:
        sensor = f" Your sensor reports an error: {error.name}." if error is not None else ""
        s.gap_notified_for = since
        d.actions.append(
            Action(
                key=f"{user.id}:no_data:{since:.0f}",
                kind="sms",
                purpose="no_data",
                recipient=user.phone,
                text=(
                    f"Scout: your Nightscout site has had no new glucose reading for "
                    f"{int((now - since) // 60)} minutes.{sensor} Check your sensor and uploader; "
                    "Scout cannot alert you without readings."
                ),
            )
        )


def _range_of(user: User, mgdl: float) -> str:
    if mgdl < user.low_mgdl:
        return "low"
    if mgdl > user.high_mgdl:
        return "high"
    return "in range"


def _early_warning(user: User, poll: PollResult, fresh: Reading | None, now: float) -> str:
    """The user's opt-in early warning (scout.forecast): why to call before the value is low.
    The forecast sees the readings by their own dates, the newest timed as Scout believes it."""
    if fresh is None or not isinstance(poll, Readings):
        return ""
    readings = [fresh, *(r for r in poll.readings if r.key != fresh.key)]
    return early_warning(user, readings, now, [e.date for e in poll.errors])


def _judge(user: User, latest: Reading, delta: float | None, s: AlertState, now: float, rules: Rules,
           d: Decision, warning: str = "") -> None:
    value = f"{format_value(latest.mgdl, user.units, latest.limit)} {user.units} {latest.arrow}".rstrip()
    where = _range_of(user, latest.mgdl)
    d.summary = f"{value}, {minutes_ago(latest.at, now)}: {where}" + (" (night thresholds)" if user.is_night(now) else "")
    if where == "in range" and warning:
        where = "low"  # not low yet, but heading there: the low's episode opens now
        d.summary += f", {warning}"
    if where == "in range":
        if s.episode is not None:
            _all_clear(user, s, latest, now, d)
        return
    ep = s.episode
    if ep is None or ep.kind != where:
        alerted = ep.alerted if ep else []
        ep = s.episode = Episode(id=f"{where}-{now:.0f}", kind=where, started_at=now, alerted=alerted)
    ep.why = warning
    ep.urgent = where == "low" and latest.mgdl < user.urgent_low
    if where == "high":
        _track_urgent_high(user, ep, latest, now)
    if _call_due(user, s, ep, now, rules):
        _place_call(user, s, ep, latest, delta, now, d)


def _track_urgent_high(user: User, ep: Episode, latest: Reading, now: float) -> None:
    if latest.mgdl > user.urgent_high_mgdl:
        if ep.urgent_high_since is None:
            ep.urgent_high_since = now
    elif ep.urgent_high_since is not None:
        ep.urgent_high_since = None


def ack_snooze_for(ep: Episode, user: User, rules: Rules) -> float:
    """How long a 1 silences this episode: the user's snooze for a high (2 hours by default),
    5 minutes for an urgent low, 15 minutes for any other low."""
    if ep.kind == "high":
        return user.high_snooze_minutes * 60.0
    return rules.urgent_ack_snooze if ep.urgent else rules.ack_snooze


def _call_due(user: User, s: AlertState, ep: Episode, now: float, rules: Rules) -> bool:
    """Whether to call now, from the episode's last call, its acknowledgement and the waits."""
    call = ep.call
    if call is not None and call.outcome == PENDING:
        return False
    # A 1 since the last call, from the user or anyone else (a contact's call on the ladder,
    # a text reply), holds the calls for the snooze.
    if ep.acknowledged_at is not None and (ep.last_call_at is None or ep.acknowledged_at >= ep.last_call_at):
        return now - ep.acknowledged_at >= ack_snooze_for(ep, user, rules)
    if (ep.kind == "high" and ep.last_call_at is not None
            and now - ep.last_call_at < user.high_repeat_minutes * 60.0):
        return False
    # one WAIT_AFTER_CALL per user: a low turning high does not start a wait of its own
    last = max((t for t in (ep.last_call_at, s.last_call_at) if t is not None), default=None)
    return last is None or now - last >= rules.wait_after_call


def urgency(ep: Episode, reading: Reading) -> float:
    """The call's place in the send queue: first calls before repeats, lows before highs,
    the lowest low (or the highest high) first."""
    return (URGENCY_FIRST_CALL if ep.calls <= 1 else URGENCY_REPEAT_CALL) + _rank_by_value(ep.kind, reading.mgdl)


def _rank_by_value(kind: str, mgdl: float) -> float:
    """A call's place within its band: lows (0-499) before highs (500-999), the lowest low
    and the highest high first."""
    if kind == "low":
        return min(max(mgdl, 0.0), 499.0)
    return 500 + max(0.0, 499.0 - min(mgdl, 999.0) / 2)


def _place_call(user: User, s: AlertState, ep: Episode, latest: Reading, delta: float | None, now: float,
                d: Decision) -> None:
    ep.calls += 1
    key = f"{user.id}:{ep.id}:call:{ep.calls}"
    ep.call = CallRecord(key=key, placed_at=now, queued=True)
    ep.last_call_at = s.last_call_at = now
    speech = call_speech(user, latest, delta, now)
    if ep.why:
        speech += f" Scout is calling early: it is {ep.why}."
    d.actions.append(Action(key, "call", "alert", user.phone, speech, urgency=urgency(ep, latest)))
    d.summary += f", calling (call {ep.calls})"


def _escalate_unanswered(user: User, ep: Episode, latest: Reading | None, now: float, rules: Rules, d: Decision) -> None:
    call = ep.call
    if call is None:
        return
    _time_out(call, now, rules)
    if call.outcome not in (UNANSWERED, UNPLACED) or call.escalated:
        return
    call.escalated = True
    if ep.kind == "high" and not urgent_high_long_enough(user, ep, now):
        d.escalation = (f"call {'could not be placed' if call.outcome == UNPLACED else 'unanswered'}; a high is "
                        f"passed to the contacts only {urgent_high_rule(user)}")
        return
    if not ep.ladder_active and user.ladder:
        # a new round of calls to the contacts, from the first (see _climb_ladder)
        ep.ladder_round += 1
        ep.ladder_step, ep.ladder_active, ep.ladder_call, ep.ladder_called = 0, True, None, []
    repeat = rules.urgent_contact_repeat if ep.urgent else rules.contact_repeat
    if ep.last_contacts_at is not None and now - ep.last_contacts_at < repeat:
        return  # contacts were texted recently in this episode
    ep.contact_rounds += 1
    ep.last_contacts_at = now
    if latest is not None:
        news = f"Their blood glucose is {describe_reading(latest, user.units, now)}."
    else:
        news = "Scout cannot read their Nightscout right now; their last alert was for a " + ep.kind + "."
    if call.outcome == UNPLACED:  # never "did not answer" for a call that was never placed
        what = f"Scout could not reach {user.display_name} by phone about a {ep.kind} blood glucose."
    else:
        what = (f"{user.display_name} answered a call about a {ep.kind} blood glucose but did not press 1."
                if _answered_without_a_key(call)
                else f"{user.display_name} did not answer a call about a {ep.kind} blood glucose.")
    text = f"{what} {news} Please check on {user.display_name}."
    for contact in user.contacts:
        d.actions.append(
            Action(
                key=f"{user.id}:{ep.id}:contacts:{ep.contact_rounds}:{contact.phone}",
                kind=contact.channel,
                purpose="contacts",
                recipient=contact.phone,
                text=f"{addressed('Scout alert', contact.name)}: {text}",
                urgency=URGENCY_CONTACTS,
            )
        )
        if [contact.phone, contact.channel] not in ep.alerted:
            ep.alerted.append([contact.phone, contact.channel])
    state = "could not be placed" if call.outcome == UNPLACED else "unanswered"
    d.escalation = f"call {state} ({call.detail or 'no answer'}): texting {len(user.contacts)} contact(s)"


def urgent_high_long_enough(user: User, ep: Episode, at: float) -> bool:
    """A high episode has been above the user's urgent high for their minutes by `at`."""
    return ep.urgent_high_since is not None and at - ep.urgent_high_since >= user.urgent_high_minutes * 60.0


def urgent_high_rule(user: User) -> str:
    """'above 300 mg/dL for 60 minutes', in the user's units."""
    return (f"above {format_value(user.urgent_high_mgdl, user.units)} {user.units} "
            f"for {user.urgent_high_minutes} minutes")


def _time_out(call: CallRecord, now: float, rules: Rules) -> None:
    """A call still pending too long: never placed in time ("unplaced"), or placed with no
    final status from the provider (counted as unanswered)."""
    if call.outcome == PENDING and call.queued and now - call.placed_at >= rules.unplaced_after:
        call.outcome, call.detail = UNPLACED, "the call was not placed in time"
    elif call.outcome == PENDING and not call.queued and now - call.placed_at >= rules.lost_callback_after:
        call.outcome, call.detail = UNANSWERED, "no final call status arrived"


# --- the ladder ----------------------------------------------------------------------
#
# After the user's call goes unacknowledged (and the contacts may hear of it: a high only
# under the urgent-high rule), Scout calls the contacts who chose "call and text", in the
# user's order, one at a time: the next only once the previous call's outcome is known (or
# its window ran out). A 1 from anyone ends the round and acknowledges the episode for
# everyone. A round that reached everyone ends; the next unacknowledged call of the user
# (after the usual waits) starts a new one from the first contact.


def person_name(user: User, phone: str) -> str:
    """'Ana' for the user, a contact's name as the user wrote it ('Ben'), or 'the contact at +1...'."""
    if phone == user.phone:
        return user.display_name
    named = [c.name for c in user.contacts if c.phone == phone and c.name]
    return named[0] if named else f"the contact at {phone}"


def _climb_ladder(user: User, ep: Episode, latest: Reading | None, now: float, rules: Rules, d: Decision) -> None:
    """One step of the ladder: time out the contact's call in progress, or call the next contact."""
    current = ep.ladder_call
    if current is not None:
        _time_out(current, now, rules)
        if current.outcome == PENDING and current.queued and current.to not in {c.phone for c in user.ladder}:
            # not placed yet, and the contact was removed or set to "Text only" since: never placed
            current.outcome, current.detail = STOPPED, "no longer on the ladder"
    if not ep.ladder_active or (current is not None and current.outcome == PENDING):
        return  # no round running, or one call at a time: wait for this one's outcome
    ladder = user.ladder
    # The contacts not called yet in this round, in the user's order as it is now: a contact
    # removed, set to text only or moved up mid-round neither skips anyone nor is called twice.
    # (A round stored before `ladder_called` existed reached the first `ladder_step` of them.)
    called = ep.ladder_called or [c.phone for c in ladder[:ep.ladder_step]]
    waiting = [c for c in ladder if c.phone not in called]
    if not waiting:
        ep.ladder_active = False
        d.escalation = _joined(d.escalation, f"every contact on the ladder was called (round {ep.ladder_round})")
        return
    contact = waiting[0]
    ep.ladder_called = [*called, contact.phone]
    ep.ladder_step += 1
    key = f"{user.id}:{ep.id}:ladder:{ep.ladder_round}:{ep.ladder_step}"
    speech = ladder_speech(user, contact, ep, latest, now)
    ep.ladder_call = CallRecord(key=key, placed_at=now, queued=True, to=contact.phone)
    if [contact.phone, contact.channel] not in ep.alerted:
        ep.alerted.append([contact.phone, contact.channel])
    first = URGENCY_FIRST_CALL + (_rank_by_value(ep.kind, latest.mgdl) if latest is not None else 500.0)
    d.actions.append(Action(key, "call", "ladder", contact.phone, speech, urgency=first))
    d.escalation = _joined(d.escalation, f"calling {person_name(user, contact.phone)} "
                                         f"(contact {ep.ladder_step} of {ep.ladder_step + len(waiting) - 1} on the ladder)")


def _end_round_for_pause(ep: Episode, d: Decision) -> None:
    """A pause set during a round (not an urgent low's) ends it: the user is awake and has
    seen Scout. A contact's call not placed yet never is; after the pause the user is called
    first, and a new round starts only if that call goes unacknowledged."""
    if not ep.ladder_active:
        return
    ep.ladder_active = False
    current = ep.ladder_call
    if current is not None and current.outcome == PENDING and current.queued:
        current.outcome, current.detail = STOPPED, "the user paused alerts"
    d.escalation = _joined(d.escalation, "the user paused alerts: the ladder's round ends")


def _joined(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


def ladder_speech(user: User, contact: Contact, ep: Episode, latest: Reading | None, now: float) -> str:
    """What a contact's call says: whose glucose, the value, its trend and age, that the user
    (and the contact called before, if any) did not answer, and the request for a 1.
    'Press 1' ends the speech: the call script asks for it once more (telephony.base)."""
    name = user.display_name
    hello = f"Hello {contact.name}. " if contact.name else "Hello. "
    if latest is not None:
        trend = f" and {latest.trend_words}" if latest.trend_words else ""
        value = format_value(latest.mgdl, user.units, latest.limit)
        news = (f"{name}'s blood glucose is {value} {UNITS_SPOKEN.get(user.units, user.units)}{trend}, "
                f"{minutes_ago(latest.at, now)}.")
    else:
        news = f"Scout cannot read {name}'s Nightscout right now; the last alert was for a {ep.kind} blood glucose."
    if ep.why:
        news += f" Scout is calling early: it is {ep.why}."
    if ep.call is not None and ep.call.outcome == UNPLACED:
        missed = f"Scout could not reach {name} by phone."
    elif ep.call is not None and _answered_without_a_key(ep.call):
        missed = f"{name} answered Scout's call but did not press 1."
    else:
        missed = f"{name} did not answer Scout's call."
    before = ep.ladder_call
    if before is not None and before.to and before.to != contact.phone and before.outcome in (UNANSWERED, UNPLACED):
        other = person_name(user, before.to)
        said = other[:1].upper() + other[1:]  # at the start of a sentence
        missed += (f" Scout could not reach {other} by phone either." if before.outcome == UNPLACED
                   else f" {said} answered but did not press 1 either." if _answered_without_a_key(before)
                   else f" {said} did not answer either.")
    return f"{hello}This is Scout, calling about {name}. {news} {missed} Press 1 if you will check on {name}."


def _answered_without_a_key(call: CallRecord) -> bool:
    """Someone picked up and hung up without a key: never say they "did not answer"."""
    return call.outcome == UNANSWERED and call.detail.startswith("completed without a key")


def acknowledge(user: User, ep: Episode, by: str, how: str, now: float) -> list[Action]:
    """A 1 from `by` (the user's or a contact's number): the episode is acknowledged for
    everyone, with the snooze of the user's own 1; the ladder stops, nobody else is called,
    and everyone else alerted in this episode gets one text saying who is on it."""
    who = person_name(user, by)
    ep.acknowledged_at = now
    ep.acks += 1
    ep.acknowledged_by = who
    if ep.call is not None and ep.call.outcome in (PENDING, UNANSWERED):
        ep.call.outcome, ep.call.detail = ACKNOWLEDGED, how if by == user.phone else f"{how} ({who})"
    ep.ladder_active = False
    # A contact's call still pending is never placed, or its 1 ignored: also the call of the
    # contact who just replied OK (they are on it; a 1 on that call would tell everyone twice).
    current = ep.ladder_call
    if current is not None and current.outcome == PENDING:
        current.outcome, current.detail = STOPPED, f"{who} {how}" + ("" if current.to == by else " first")
    recipients = ([[user.phone, "sms"]] if ep.calls and user.phone else []) + ep.alerted
    told = {by}
    actions = []
    for phone, channel in recipients:
        if phone in told:
            continue
        told.add(phone)
        actions.append(Action(
            f"{user.id}:{ep.id}:on_it:{ep.acks}:{phone}", channel, "on_it", phone,
            f"Scout: {who} {how} and is on it ({user.display_name}'s {ep.kind} alert).", urgency=URGENCY_CONTACTS))
    return actions


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
        d.actions.append(Action(f"{user.id}:{ep.id}:all_clear:{phone}", channel, "all_clear", phone, text,
                                urgency=URGENCY_ALL_CLEAR))
    s.episode = None
    d.summary += f", back in range: all clear to {len(recipients)}"


def _call_record(state: AlertState, call_key: str) -> CallRecord | None:
    """The episode's call (the user's, or the contact's on the ladder) with this key."""
    ep = state.episode
    if ep is None:
        return None
    for call in (ep.call, ep.ladder_call):
        if call is not None and call.key == call_key:
            return call
    return None


def settle_call(user: User | None, state: AlertState, call_key: str, outcome: str, detail: str,
                now: float) -> tuple[bool, list[Action]]:
    """Apply a call's final outcome to the state: whether anything changed (False for an
    unknown or older call, or an outcome already known), and what to send now (after a 1,
    the texts saying who is on it; they need `user`)."""
    call = _call_record(state, call_key)
    if call is None or call.outcome != PENDING:
        return False, []
    ep = state.episode
    assert ep is not None
    call.outcome, call.detail = outcome, detail
    if outcome != UNPLACED:
        call.queued = False  # an outcome from the provider: the call was placed
    if outcome != ACKNOWLEDGED:
        return True, []
    if user is None:
        ep.acknowledged_at = now
        return True, []
    return True, acknowledge(user, ep, call.to or user.phone, "pressed 1", now)


def record_call_outcome(state: AlertState, call_key: str, outcome: str, detail: str, now: float) -> bool:
    """`settle_call` without the texts: whether the outcome changed the state."""
    return settle_call(None, state, call_key, outcome, detail, now)[0]


def record_call_placed(state: AlertState, call_key: str, now: float) -> bool:
    """The provider accepted the call: from now on it can be answered, or go unanswered.
    Returns False if nothing changed."""
    call = _call_record(state, call_key)
    if call is None or not call.queued or call.outcome != PENDING:
        return False
    call.queued, call.placed_at = False, now
    return True


def stop_call(state: AlertState, call_key: str, why: str) -> bool:
    """A contact's call recorded but not placed yet, made pointless (the contact was removed
    or set to "Text only" since): it is never placed, and the ladder goes on. Returns False
    if nothing changed."""
    call = _call_record(state, call_key)
    if call is None or call.outcome != PENDING or not call.queued or not call.to:
        return False
    call.outcome, call.detail = STOPPED, why
    return True


def call_still_due(state: AlertState, call_key: str) -> bool:
    """Whether a recorded alert call (the user's or a contact's) is still the episode's
    pending, unplaced call: the only kind the send queue may place."""
    call = _call_record(state, call_key)
    return call is not None and call.outcome == PENDING and call.queued
