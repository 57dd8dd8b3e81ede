"""Carries out the alert decision for one user: fetch, decide, record, send.

The decision itself is pure (scout.alerts). This module is the thin shell around it:
every action is recorded in the alert log *before* it is sent and marked after, so a
crash or a provider outage never drops an alert, and the log's unique keys mean an
alert is never sent twice.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from models import AlertState, LogEntry, Store, StoreUnavailable, User
from scout.alerts import (
    ACKNOWLEDGED,
    UNPLACED,
    URGENCY_CONTACTS,
    Action,
    Decision,
    Rules,
    ack_snooze_for,
    call_still_due,
    decide,
    person_name,
    record_call_placed,
    settle_call,
    stop_call,
)
from scout.cloudtasks import EnqueueError, SendTasks
from scout.forecast import readings_wanted
from scout.logs import mask_key, mask_phone, mask_text
from scout.nightscout import CONNECT_TIMEOUT, READ_TIMEOUT, fetch_readings, is_public_address, post_treatment
from scout.pacing import Pacers, backoff
from scout.readings import PollFailure, PollResult
from scout.replies import ReplyDecision, decide_reply, sender_name
from scout.telephony.base import Messenger, TelephonyError
from scout.telephony.http import RetryableTelephonyError

log = logging.getLogger("scout.engine")

CLAIM_HOLD = 90.0  # seconds an entry stays claimed by the process sending it
# An entry claimed by one attempt of a send queue's task (/tasks/send) stays claimed this
# long: longer than an attempt can live (gunicorn stops a worker after 30 s), so Cloud Tasks'
# retry of an attempt that seems lost never sends beside it; after it, the retry sends.
QUEUED_CLAIM_HOLD = 45.0
# A send handed to a Cloud Tasks queue that has not been tried for this long (a queue paused,
# or that gave the task up) is sent by the lease holder itself: no alert depends on the queue.
QUEUED_GRACE = 120.0
MESSAGE_RETRY_WINDOW = 30 * 60  # an unsent message older than this is no longer worth sending
# A call is placed within this long of its decision or not at all: waiting its turn in
# the send queue, or retried after a 429 or 5xx, but never later (the alert decision's
# `unplaced_after` backstop is a minute longer). 500 users low at once at 3 calls/s take
# under three minutes.
CALL_WINDOW = 240
MAX_COMMIT_ATTEMPTS = 5
MESSAGE_SEND_BUDGET = 20.0
NOTE_PURPOSE = "note"  # a treatment posted on the user's own Nightscout (see note_on_nightscout)
NOTE_AUTHOR = "Scout"
NOTE_TIMEOUT = (3.0, 5.0)  # a note comes after the alerts it describes; a hung site is left quickly


@dataclass(frozen=True)
class Note:
    key: str  # unique per event, so each is posted once
    event_type: str  # Nightscout eventType: "Announcement" for calls and escalations, "Note" otherwise
    text: str


def notes_for(user: User, entries: list[LogEntry]) -> list[Note]:
    """The Nightscout notes for actions just sent: each alert call, one per escalation to the
    contacts, one per all-clear."""
    notes: list[Note] = []
    contacts = [e for e in entries if e.purpose == "contacts"]
    clears = [e for e in entries if e.purpose == "all_clear"]
    for entry in entries:
        if entry.purpose == "alert" and entry.kind == "call":
            spoken = entry.body.split(". That is")[0].rstrip(".")
            notes.append(Note(f"{entry.key}:note", "Announcement", f"Scout called: {spoken}."))
        elif entry.purpose == "ladder":
            notes.append(Note(f"{entry.key}:note", "Announcement",
                              f"Scout called {person_name(user, entry.recipient)}: "
                              f"{user.display_name} did not acknowledge the alert."))
    if contacts:
        notes.append(Note(f"{contacts[0].key.rsplit(':', 1)[0]}:note", "Announcement",
                          f"Scout texted {len(contacts)} contact(s): {user.display_name} did not answer the call."))
    if clears:
        notes.append(Note(f"{clears[0].key.rsplit(':', 1)[0]}:note", "Note",
                          f"Scout: back in range; all clear sent to {len(clears)}."))
    return notes


def log_action(stage: str, entry: LogEntry, level: int = logging.INFO, **extra: Any) -> None:
    """One JSON line per action and stage (recorded, sent, send_failed, expired), with the
    same fields as the per-cycle line's style, so a log search can follow one alert by
    its key from the decision to the provider."""
    fields_ = {"event": "action", "stage": stage, "user": entry.user_id, "key": mask_key(entry.key), "kind": entry.kind,
               "purpose": entry.purpose, "to": mask_phone(entry.recipient), **extra}
    log.log(level, "action %s: %s %s", stage, entry.kind, entry.purpose, extra={"fields": fields_})


def _observe(state: AlertState, observed: dict[str, Any] | None) -> AlertState:
    return replace(state, **observed) if observed else state


@dataclass(slots=True)  # the main poller process holds one per user of every process at a cycle's end
class UserResult:
    user_id: str
    email: str
    ok: bool
    reason: str = ""  # why the poll failed, e.g. "timeout"
    summary: str = ""
    calls: int = 0
    messages: int = 0
    failed_sends: int = 0
    queued: int = 0  # handed to a Cloud Tasks send queue, which sends them (scout.tasks)
    elapsed: float = 0.0
    decided_at: float = 0.0  # clock time the decision was made and recorded, before sending

    def line(self) -> str:
        sent = f" [calls {self.calls}, messages {self.messages}" + (
            f", failed {self.failed_sends}" if self.failed_sends else "") + (
            f", queued {self.queued}]" if self.queued else "]")
        acted = self.calls or self.messages or self.failed_sends or self.queued
        return f"{self.email}: {self.summary}" + (sent if acted else "")


@dataclass
class Engine:
    store: Store
    messenger: Messenger
    rules: Rules = field(default_factory=Rules)
    allow_private: bool = False
    clock: Callable[[], float] = time.time
    nightscout_timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT)
    is_public: Callable[[str], bool] = is_public_address  # the address policy for Nightscout reads
    pacers: Pacers | None = None  # None: send as fast as the provider answers (tests of other things)
    sleep: Callable[[float], None] = time.sleep
    call_window: float = CALL_WINDOW
    # A message still failing after this many seconds of paced retries is left "failed"
    # for the next cycle: a provider outage must not hold a send thread for half an hour.
    message_budget: float = MESSAGE_SEND_BUDGET
    # SCOUT_TASKS_CALL_QUEUE / SCOUT_TASKS_MESSAGE_QUEUE: recorded sends of those kinds are
    # handed to Cloud Tasks, whose dispatch rate holds across every instance (scout.tasks)
    send_tasks: SendTasks | None = None

    def fetch(self, user: User) -> PollResult:
        return fetch_readings(user, allow_private=self.allow_private, timeout=self.nightscout_timeout,
                              is_public=self.is_public, count=readings_wanted(user))

    # --- one user ---------------------------------------------------------------

    def poll_user(self, user: User, poll: PollResult | None = None) -> UserResult:
        """Fetch the user's readings (unless given), decide, record and send."""
        started = self.clock()
        if poll is None:
            poll = self.fetch(user)
        result, entries = self.record_poll(user, poll)
        self.deliver(user, entries, poll, result)
        result.elapsed = self.clock() - started
        return result

    def record_poll(self, user: User, poll: PollResult,
                    observed: dict[str, Any] | None = None) -> tuple[UserResult, list[LogEntry]]:
        """The first half of `poll_user`: decide on the poll and record the new state with
        its actions, which are returned unsent (see `deliver`). `observed` sets fields of
        the new state that the decision does not own (how the site answered, see the poller)."""
        result = UserResult(user.id, user.email, ok=not isinstance(poll, PollFailure))
        if isinstance(poll, PollFailure):
            result.reason = poll.reason
        decision, entries = self._decide_and_record(user, poll, observed)
        result.decided_at = self.clock()
        result.summary = decision.line
        return result, entries

    def decide_ahead(self, user: User, poll: PollResult, state: AlertState,
                     observed: dict[str, Any] | None = None) -> tuple[UserResult, AlertState | None] | None:
        """Decide on a state read earlier in the cycle, for a poll with nothing to send: its
        result, and the new state to write (None when nothing changed, as for most polls of
        a site with no new reading). None when there is an action to record and send, which
        `record_poll` must do on a fresh read. The caller writes the new state only if the
        stored one is still the state decided on (its version), and otherwise calls
        `record_poll`, which decides again on what is stored then."""
        now = self.clock()
        decision = decide(user, poll, state, now, self.rules)
        if decision.actions:
            return None
        new_state = _observe(decision.state, observed)
        failure = poll.reason if isinstance(poll, PollFailure) else ""
        result = UserResult(user.id, user.email, ok=not failure, reason=failure, summary=decision.line, decided_at=now)
        return result, (None if new_state == state else new_state)

    def _decide_and_record(self, user: User, poll: PollResult,
                           observed: dict[str, Any] | None = None,
                           count_failures: bool = True) -> tuple[Decision, list[LogEntry]]:
        """Decide on the stored state and commit the new state with the actions, all or
        nothing; if another process changed the state meanwhile, decide again."""
        for _attempt in range(MAX_COMMIT_ATTEMPTS):
            state, version = self.store.get_state(user.id)
            now = self.clock()
            decision = decide(user, poll, state, now, self.rules, count_failures=count_failures)
            new_state = _observe(decision.state, observed)
            if new_state == state and not decision.actions:
                return decision, []  # nothing changed: no write at all
            entries = [self._entry(user, action, now) for action in decision.actions]
            if self.store.commit(user.id, new_state, version, entries):
                for entry in entries:
                    log_action("recorded", entry)
                return decision, entries
        raise StoreUnavailable(f"the alert state of {user.email} kept changing; will try next cycle")

    def _entry(self, user: User, action: Action, now: float) -> LogEntry:
        # recorded as "queued" when a send queue will carry it: the lease holder's retry of
        # unsent entries then leaves it to the queue (see retry_unsent)
        queued = self.send_tasks is not None and bool(self.send_tasks.queue_for(action.kind))
        return LogEntry(
            key=action.key, user_id=user.id, kind=action.kind, purpose=action.purpose,
            recipient=action.recipient, body=action.text, created_at=now, urgency=action.urgency,
            status="queued" if queued else "pending",
        )

    # --- sending ------------------------------------------------------------------

    def deliver(self, user: User, entries: list[LogEntry], poll: PollResult, result: UserResult,
                later: Callable[[float, Callable[[], object]], None] | None = None) -> None:
        """The second half of `poll_user`: send recorded entries in order, counted in
        `result`; a call whose outcome is known at once is acted on at once. An entry for a
        send queue is handed to it instead, in the order given (most urgent first).

        With `later`, acting on a call's known outcome (deciding again, then texting the
        contacts) is handed to it as a step of its own, with its place in the send order
        (after every call, among the contacts' sends): the poller runs it once the calls
        already waiting are placed. It runs only after the call was placed and marked, so
        the user's call still comes before their contacts' texts."""
        for entry in entries:
            if self.hand_off(entry, result):
                continue
            outcome = self.send(entry, result)
            if outcome is not None:
                # the call's outcome is already known (it failed, or it cannot be answered):
                # apply it and decide again on the same readings, so the escalation follows
                follow_up = partial(self.apply_call_outcome, user, entry.key, *outcome, poll=poll, result=result)
                if later is None:
                    follow_up()
                else:  # the most urgent call's follow-up first; all of them after the calls
                    later(URGENCY_CONTACTS + min(max(entry.urgency, 0.0), URGENCY_CONTACTS) / URGENCY_CONTACTS,
                          follow_up)
        self.note_on_nightscout(user, notes_for(user, entries))

    def hand_off(self, entry: LogEntry, result: UserResult | None = None) -> bool:
        """Hand a recorded entry to its Cloud Tasks send queue; False when it has none, or the
        queue did not take it: the caller then sends it here, through this process's pacer."""
        if self.send_tasks is None or entry.status != "queued" or not self.send_tasks.queue_for(entry.kind):
            return False
        try:
            enqueued = self.send_tasks.enqueue(entry.key, entry.kind)
        except EnqueueError as exc:
            log_action("queue_failed", entry, logging.WARNING, error=mask_text(str(exc)),
                       then="sending it from this instance" + (", through its own pacer" if self.pacers else ""))
            return False
        log_action("queued", entry, **({} if enqueued else {"already_queued": True}))
        if result is not None:
            result.queued += 1
        return True

    def send(self, entry: LogEntry, result: UserResult | None = None) -> tuple[str, str] | None:
        """Send one recorded entry if nobody else is sending it, at the paced rate and
        retried after a 429 or 5xx while its window lasts. For a call whose outcome is
        known at once, returns (outcome, detail)."""
        now = self.clock()
        claimed = self.store.claim_log(entry.key, now, CLAIM_HOLD)
        if claimed is None:
            return None
        result = result or UserResult(entry.user_id, "", ok=True)
        if claimed.kind == "call" and self._call_settled(claimed):
            return None
        window = self.call_window if claimed.kind == "call" else MESSAGE_RETRY_WINDOW
        budget = max(0.0, claimed.created_at + window - now)
        give_up_at = time.monotonic() + (budget if claimed.kind == "call" else min(budget, self.message_budget))
        attempt = 0
        while True:
            attempt += 1
            if self.pacers is not None:
                self.pacers.wait(claimed.kind, claimed.urgency)
            try:
                return self._send_now(claimed, result)
            except RetryableTelephonyError as exc:
                delay = backoff(attempt, exc.retry_after)
                if time.monotonic() + delay >= give_up_at:
                    return self._not_sent_in_window(claimed, exc, result)
                log_action("retrying", claimed, logging.WARNING, attempt=attempt, error=mask_text(str(exc)),
                           retry_in_s=round(delay, 2))
                self.store.update_log(claimed.key, status="sending", error=f"{exc.code}: {exc}",
                                      claimed_until=self.clock() + delay + CLAIM_HOLD)
                self.sleep(delay)
            except TelephonyError as exc:
                return self._refused(claimed, exc, result)

    def _refused(self, claimed: LogEntry, exc: TelephonyError, result: UserResult) -> tuple[str, str] | None:
        """The provider refused the send (not a 429 or 5xx): a call is never retried, and its
        outcome is that it could not be placed; a message is retried unless refused for good."""
        status = "permanent" if exc.permanent or claimed.kind == "call" else "failed"
        self.store.update_log(claimed.key, status=status, error=f"{exc.code + ': ' if exc.code else ''}{exc}",
                              provider=self.messenger.name, claimed_until=0.0)
        log_action("send_failed", claimed, logging.WARNING, status=status, attempt=claimed.attempts,
                   error=mask_text(str(exc)))
        result.failed_sends += 1
        return (UNPLACED, f"the call could not be placed: {exc}") if claimed.kind == "call" else None

    def send_queued(self, key: str) -> tuple[bool, str]:
        """One attempt at a send handed to a Cloud Tasks queue (POST /tasks/send). Returns
        (done, what happened); not done asks Cloud Tasks to try again at the queue's pace.

        Sent, refused for good, too old, or already sent by an earlier attempt: done. A 429 or
        5xx from the provider is not done, and the entry goes back to "queued": Cloud Tasks'
        retry is the backoff, and the queue's rate holds across every instance (no retries
        here, which would send outside it). A call refused at once or not placed within its
        window is acted on as "could not be placed", never as "did not answer"."""
        claimed = self._claim_queued(key)
        if not isinstance(claimed, LogEntry):
            return claimed
        if self._expired(claimed, self.clock() - claimed.created_at):
            return True, "expired"
        if claimed.kind == "call" and self._call_settled(claimed):
            return True, "settled before it was placed"
        return self._attempt_queued(claimed)

    def _claim_queued(self, key: str) -> LogEntry | tuple[bool, str]:
        """The entry, claimed for one attempt; or (done, why) when there is nothing to do
        now: it is sent or gone (done), or another attempt holds it (not done)."""
        entry = self.store.get_log(key)
        if entry is None:
            return True, "no such entry (deleted with its user's data)"
        if not entry.claimable:
            return True, f"already {entry.status}"
        claimed = self.store.claim_log(key, self.clock(), QUEUED_CLAIM_HOLD)
        if claimed is not None:
            return claimed
        latest = self.store.get_log(key)
        if latest is None or not latest.claimable:
            return True, f"already {latest.status if latest else 'deleted'}"
        return False, "another attempt is sending it"

    def _attempt_queued(self, claimed: LogEntry) -> tuple[bool, str]:
        """One provider request for a claimed entry, and what it means for the task."""
        result = UserResult(claimed.user_id, "", ok=True)
        window = self.call_window if claimed.kind == "call" else MESSAGE_RETRY_WINDOW
        try:
            outcome = self._send_now(claimed, result)
            what = "sent"
        except RetryableTelephonyError as exc:
            if self.clock() + backoff(claimed.attempts, exc.retry_after) >= claimed.created_at + window:
                outcome, what = self._not_sent_in_window(claimed, exc, result), "not sent within its window"
            else:
                self.store.update_log(claimed.key, status="queued", error=f"{exc.code}: {exc}", claimed_until=0.0)
                log_action("retrying", claimed, logging.WARNING, attempt=claimed.attempts, error=mask_text(str(exc)),
                           by="the send queue")
                return False, f"the provider is throttling or failing ({exc.code or exc.status}); retry at the queue's pace"
        except TelephonyError as exc:
            outcome, what = self._refused(claimed, exc, result), "refused"
        if outcome is not None:
            self._give_up_call(claimed, *outcome)
        return True, what

    def _send_now(self, claimed: LogEntry, result: UserResult) -> tuple[str, str] | None:
        if claimed.kind == "call":
            placed = self.messenger.place_call(claimed.recipient, claimed.body, claimed.key)
            provider_id, outcome = placed.provider_id, ((placed.outcome, placed.detail) if placed.outcome else None)
        else:
            provider_id = self.messenger.send_message(claimed.recipient, claimed.kind, claimed.body)
            outcome = None
        self.store.update_log(claimed.key, status="sent", provider=self.messenger.name, provider_id=provider_id,
                              outcome=outcome[0] if outcome else "", error="", claimed_until=0.0)
        log_action("sent", claimed, provider=self.messenger.name, provider_id=provider_id, attempt=claimed.attempts)
        if claimed.kind == "call":
            result.calls += 1
            self._update_state(claimed.user_id, lambda state: record_call_placed(state, claimed.key, self.clock()))
        else:
            result.messages += 1
        return outcome

    def _not_sent_in_window(self, claimed: LogEntry, exc: TelephonyError,
                            result: UserResult) -> tuple[str, str] | None:
        """Throttled or failing until the window passed: never "refused", never "did not
        answer". A message is retried by a later cycle; a call is given up, and the
        contacts are told the truth (Scout could not reach the user by phone)."""
        if claimed.kind != "call":
            self.store.update_log(claimed.key, status="failed", error=f"{exc.code}: {exc}", claimed_until=0.0)
            log_action("send_failed", claimed, logging.WARNING, status="failed", error=mask_text(str(exc)))
            result.failed_sends += 1
            return None
        self.store.update_log(claimed.key, status="expired", provider=self.messenger.name, claimed_until=0.0,
                              error=f"not placed within {self.call_window:g} s: {exc}")
        log_action("expired", claimed, logging.WARNING, error=mask_text(str(exc)))
        result.failed_sends += 1
        return UNPLACED, "the provider was busy or throttling, and the call could not be placed in time"

    def _call_settled(self, claimed: LogEntry) -> bool:
        """A call with a provider id, a known outcome, or no longer the episode's pending
        call is never placed (again). Such an entry is marked as what it is."""
        if claimed.provider_id or claimed.outcome:
            self.store.update_log(claimed.key, status="sent", claimed_until=0.0)
            return True
        if claimed.purpose not in ("alert", "ladder"):
            return False  # a test call from the settings page belongs to no episode
        if claimed.purpose == "ladder":
            user = self.store.get_user(claimed.user_id)
            if user is None or claimed.recipient not in {c.phone for c in user.ladder}:
                why = "the contact was removed or set to text only before the call was placed"
                self._update_state(claimed.user_id, lambda state: stop_call(state, claimed.key, why))
                self.store.update_log(claimed.key, status="expired", error=why, claimed_until=0.0)
                log_action("skipped", claimed, why=why)
                return True
        state, _version = self.store.get_state(claimed.user_id)
        if call_still_due(state, claimed.key):
            return False
        ep = state.episode
        known = ep is not None and claimed.key in {c.key for c in (ep.call, ep.ladder_call) if c is not None}
        status, why = ("sent", "the call was answered or settled") if known and claimed.purpose == "alert" \
            else ("expired", "the alert this call was for has moved on, or someone pressed 1")
        self.store.update_log(claimed.key, status=status, error=why, claimed_until=0.0)
        log_action("skipped", claimed, why=why)
        return True

    def _update_state(self, user_id: str, change: Callable[[AlertState], bool]) -> bool:
        """Apply `change` to the stored state with compare-and-set; False if it changed nothing."""
        for _attempt in range(MAX_COMMIT_ATTEMPTS):
            state, version = self.store.get_state(user_id)
            updated = state.copy()
            if not change(updated):
                return False
            if self.store.commit(user_id, updated, version, []):
                return True
        raise StoreUnavailable(f"the alert state of {user_id} kept changing")

    def retry_unsent(self, entries: list[LogEntry]) -> UserResult:
        """Send entries that were recorded but not sent (a crash, a provider outage).
        Returns what was sent now, calls and messages counted apart."""
        now, total = self.clock(), UserResult("", "", ok=True)
        for entry in sorted(entries, key=lambda e: (e.urgency, e.created_at)):
            if self._expired(entry, now - entry.created_at):
                continue
            if entry.claimed_until > now:
                continue
            if entry.status == "queued" and now - max(entry.created_at, entry.updated_at) < QUEUED_GRACE:
                continue  # its send queue has it
            result = UserResult(entry.user_id, "", ok=True)
            outcome = self.send(entry, result)
            if outcome is not None:
                self._give_up_call(entry, *outcome)
            total.calls, total.messages = total.calls + result.calls, total.messages + result.messages
            total.failed_sends += result.failed_sends
        return total

    def _expired(self, entry: LogEntry, age: float) -> bool:
        """An entry older than its window is marked expired and not sent; a call given up
        so is acted on as "could not be placed"."""
        if age <= (self.call_window if entry.kind == "call" else MESSAGE_RETRY_WINDOW):
            return False
        self.store.update_log(entry.key, status="expired", error="not sent in time; not retried", claimed_until=0.0)
        log_action("expired", entry, logging.WARNING, age_s=round(age, 1))
        if entry.kind == "call" and not entry.provider_id:
            self._give_up_call(entry)
        return True

    def _give_up_call(self, entry: LogEntry, outcome: str = UNPLACED,
                      detail: str = "the call could not be placed in time") -> None:
        user = self.store.get_user(entry.user_id)
        if user is not None:
            self.apply_call_outcome(user, entry.key, outcome, detail)

    # --- call outcomes ------------------------------------------------------------

    def apply_call_outcome(
        self, user: User, call_key: str, outcome: str, detail: str,
        poll: PollResult | None = None, result: UserResult | None = None,
    ) -> bool:
        """Record a call's final outcome and act on it at once (an unanswered call
        texts the contacts). Returns False if the outcome was already known."""
        for _attempt in range(MAX_COMMIT_ATTEMPTS):
            state, version = self.store.get_state(user.id)
            updated: AlertState = state.copy()
            now = self.clock()
            changed, actions = settle_call(user, updated, call_key, outcome, detail, now)
            if not changed:
                return False
            told = [self._entry(user, action, now) for action in actions]
            if self.store.commit(user.id, updated, version, told):
                break
        else:
            raise StoreUnavailable(f"could not record the call outcome for {user.email}")
        log.info("call outcome: %s", outcome, extra={"fields": {
            "event": "call_outcome", "user": user.id, "key": mask_key(call_key), "outcome": outcome, "detail": detail}})
        if outcome == ACKNOWLEDGED:
            # Nothing more is due at once after a 1 but the texts saying who is on it (recorded
            # with the acknowledgement): the snooze holds the calls and the next cycle sends any
            # all-clear. Reading Nightscout here as well would let a hung site hold the
            # provider's callback past its 15 s.
            for entry in told:
                log_action("recorded", entry)
                if not self.hand_off(entry, result):
                    self.send(entry, result)
            who = updated.episode.acknowledged_by if updated.episode is not None else user.display_name
            self.note_on_nightscout(user, [Note(f"{call_key}:ack:note", "Note",
                                                f"Scout: {who} pressed 1: alert acknowledged.")])
            return True
        if poll is None:
            poll = self.fetch(user)
        # A read made here, outside the poller's cycle, never counts toward an outage; nor does
        # the poller's own poll again (it was counted when it was decided): the ladder can step
        # through several unplaceable calls on one poll.
        decision, entries = self._decide_and_record(user, poll, count_failures=False)
        self.deliver(user, entries, poll, result or UserResult(user.id, user.email, ok=True))
        if result is not None and decision.escalation:
            result.summary += f"; {decision.escalation}"
        return True

    # --- replies by text -------------------------------------------------------------

    def record_reply(self, user: User, sender: str, channel: str, text: str, reply_key: str) -> ReplyDecision | None:
        """Decide on one inbound reply (see scout.replies), record it with its answers and
        the new state, then send the answers. None when `reply_key` is already recorded:
        the provider's webhook was delivered again, or replayed."""
        for _attempt in range(MAX_COMMIT_ATTEMPTS):
            if self.store.get_log(reply_key) is not None:
                return None
            state, version = self.store.get_state(user.id)
            now = self.clock()
            snooze = ack_snooze_for(state.episode, user, self.rules) if state.episode is not None else self.rules.ack_snooze
            decision = decide_reply(user, state, self.store.user_log(user.id), sender, channel, text, reply_key,
                                    now, round(snooze / 60))
            entries = [self._entry(user, action, now) for action in decision.actions]
            if self.store.commit(user.id, decision.state, version, [decision.record, *entries]):
                log.info("reply: %s", decision.outcome, extra={"fields": {
                    "event": "reply", "user": user.id, "key": mask_key(reply_key), "from": mask_phone(sender),
                    "outcome": decision.outcome}})
                for entry in entries:
                    log_action("recorded", entry)
                    if not self.hand_off(entry):
                        self.send(entry)
                if decision.outcome == ACKNOWLEDGED:
                    self.note_on_nightscout(user, [Note(f"{reply_key}:note", "Note",
                                                        f"Scout: alert acknowledged by a text reply from "
                                                        f"{sender_name(user, sender)}.")])
                return decision
        raise StoreUnavailable(f"could not record the reply for {user.email}")

    # --- notes on the user's Nightscout ---------------------------------------------------

    def note_on_nightscout(self, user: User, notes: list[Note]) -> None:
        """Post each note as a treatment on the user's own Nightscout, if they asked for it.
        Recorded in the alert log first (purpose `note`), so each is posted once; a note
        that fails is logged and never retried, and never raises: a note never blocks an alert."""
        if not user.nightscout_notes or not notes:
            return
        for note in notes:
            try:
                self._post_note(user, note)
            except Exception:  # a store or network failure here must not reach the alert path
                log.exception("nightscout note failed user=%s key=%s", user.id, mask_key(note.key))

    def _post_note(self, user: User, note: Note) -> None:
        now = self.clock()
        if self.store.get_log(note.key) is not None:
            return  # already noted (or being noted) by an earlier attempt
        entry = LogEntry(key=note.key, user_id=user.id, kind="nightscout", purpose=NOTE_PURPOSE,
                         recipient="Nightscout", body=note.text, created_at=now, status="noting")
        self.store.commit(user.id, None, 0, [entry])
        treatment = {"eventType": note.event_type, "notes": note.text, "enteredBy": NOTE_AUTHOR,
                     "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now))}
        result = post_treatment(user, treatment, allow_private=self.allow_private, timeout=NOTE_TIMEOUT,
                                is_public=self.is_public)
        if result.ok:
            self.store.update_log(note.key, status="sent", provider="nightscout")
        else:
            self.store.update_log(note.key, status="permanent" if result.refused else "expired", error=result.error,
                                  provider="nightscout")
            log.warning("nightscout note not written: %s", mask_text(result.error), extra={"fields": {
                "event": "note_failed", "user": user.id, "key": mask_key(note.key), "error": mask_text(result.error)}})
