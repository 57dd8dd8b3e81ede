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
from typing import Any

from models import AlertState, LogEntry, Store, StoreUnavailable, User
from scout.alerts import UNANSWERED, Action, Decision, Rules, decide, record_call_outcome
from scout.logs import mask_key, mask_phone, mask_text
from scout.nightscout import CONNECT_TIMEOUT, READ_TIMEOUT, fetch_readings, is_public_address
from scout.readings import PollFailure, PollResult
from scout.telephony.base import Messenger, TelephonyError

log = logging.getLogger("scout.engine")

CLAIM_HOLD = 90.0  # seconds an entry stays claimed by the process sending it
MESSAGE_RETRY_WINDOW = 30 * 60  # an unsent message older than this is no longer worth sending
CALL_RETRY_WINDOW = 120  # a call never attempted is placed late only within this window
MAX_COMMIT_ATTEMPTS = 5


def log_action(stage: str, entry: LogEntry, level: int = logging.INFO, **extra: Any) -> None:
    """One JSON line per action and stage (recorded, sent, send_failed, expired), with the
    same fields as the per-cycle line's style, so a log search can follow one alert by
    its key from the decision to the provider."""
    fields_ = {"event": "action", "stage": stage, "user": entry.user_id, "key": mask_key(entry.key), "kind": entry.kind,
               "purpose": entry.purpose, "to": mask_phone(entry.recipient), **extra}
    log.log(level, "action %s: %s %s", stage, entry.kind, entry.purpose, extra={"fields": fields_})


def _observe(state: AlertState, observed: dict[str, Any] | None) -> AlertState:
    return replace(state, **observed) if observed else state


@dataclass
class UserResult:
    user_id: str
    email: str
    ok: bool
    reason: str = ""  # why the poll failed, e.g. "timeout"
    summary: str = ""
    calls: int = 0
    messages: int = 0
    failed_sends: int = 0
    elapsed: float = 0.0
    decided_at: float = 0.0  # clock time the decision was made and recorded, before sending

    def line(self) -> str:
        sent = f" [calls {self.calls}, messages {self.messages}" + (
            f", failed {self.failed_sends}]" if self.failed_sends else "]"
        )
        return f"{self.email}: {self.summary}" + (sent if self.calls or self.messages or self.failed_sends else "")


@dataclass
class Engine:
    store: Store
    messenger: Messenger
    rules: Rules = field(default_factory=Rules)
    allow_private: bool = False
    clock: Callable[[], float] = time.time
    nightscout_timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT)
    is_public: Callable[[str], bool] = is_public_address  # the address policy for Nightscout reads

    def fetch(self, user: User) -> PollResult:
        return fetch_readings(user, allow_private=self.allow_private, timeout=self.nightscout_timeout,
                              is_public=self.is_public)

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

    def decide_without_writing(self, user: User, poll: PollResult, state: AlertState,
                               observed: dict[str, Any] | None = None) -> UserResult | None:
        """The result of a poll that changes nothing (no new state, no action), decided on
        a state read earlier in the cycle; None when there is something to record, which
        `poll_user` must then do on a fresh read. Most polls of most users end here."""
        now = self.clock()
        decision = decide(user, poll, state, now, self.rules)
        if _observe(decision.state, observed) != state or decision.actions:
            return None
        failure = poll.reason if isinstance(poll, PollFailure) else ""
        return UserResult(user.id, user.email, ok=not failure, reason=failure, summary=decision.line, decided_at=now)

    def _decide_and_record(self, user: User, poll: PollResult,
                           observed: dict[str, Any] | None = None) -> tuple[Decision, list[LogEntry]]:
        """Decide on the stored state and commit the new state with the actions, all or
        nothing; if another process changed the state meanwhile, decide again."""
        for _attempt in range(MAX_COMMIT_ATTEMPTS):
            state, version = self.store.get_state(user.id)
            now = self.clock()
            decision = decide(user, poll, state, now, self.rules)
            new_state = _observe(decision.state, observed)
            if new_state == state and not decision.actions:
                return decision, []  # nothing changed: no write at all
            entries = [self._entry(user, action, now) for action in decision.actions]
            if self.store.commit(user.id, new_state, version, entries):
                for entry in entries:
                    log_action("recorded", entry)
                return decision, entries
        raise StoreUnavailable(f"the alert state of {user.email} kept changing; will try next cycle")

    @staticmethod
    def _entry(user: User, action: Action, now: float) -> LogEntry:
        return LogEntry(
            key=action.key, user_id=user.id, kind=action.kind, purpose=action.purpose,
            recipient=action.recipient, body=action.text, created_at=now,
        )

    # --- sending ------------------------------------------------------------------

    def deliver(self, user: User, entries: list[LogEntry], poll: PollResult, result: UserResult) -> None:
        """The second half of `poll_user`: send recorded entries in order, counted in
        `result`; a call whose outcome is known at once is acted on at once."""
        for entry in entries:
            outcome = self.send(entry, result)
            if outcome is not None:
                # the call's outcome is already known (it failed, or it cannot be answered):
                # apply it and decide again on the same readings, so the escalation follows now
                self.apply_call_outcome(user, entry.key, *outcome, poll=poll, result=result)

    def send(self, entry: LogEntry, result: UserResult | None = None) -> tuple[str, str] | None:
        """Send one recorded entry if nobody else is sending it. For a call whose
        outcome is known at once, returns (outcome, detail)."""
        now = self.clock()
        claimed = self.store.claim_log(entry.key, now, CLAIM_HOLD)
        if claimed is None:
            return None
        result = result or UserResult(entry.user_id, "", ok=True)
        try:
            if claimed.kind == "call":
                placed = self.messenger.place_call(claimed.recipient, claimed.body, claimed.key)
                provider_id, outcome = placed.provider_id, ((placed.outcome, placed.detail) if placed.outcome else None)
            else:
                provider_id = self.messenger.send_message(claimed.recipient, claimed.kind, claimed.body)
                outcome = None
        except TelephonyError as exc:
            status = "permanent" if exc.permanent or claimed.kind == "call" else "failed"
            self.store.update_log(claimed.key, status=status, error=f"{exc.code + ': ' if exc.code else ''}{exc}",
                                  provider=self.messenger.name, claimed_until=0.0)
            log_action("send_failed", claimed, logging.WARNING, status=status, attempt=claimed.attempts,
                       error=mask_text(str(exc)))
            result.failed_sends += 1
            return (UNANSWERED, f"call failed: {exc}") if claimed.kind == "call" else None
        self.store.update_log(claimed.key, status="sent", provider=self.messenger.name, provider_id=provider_id,
                              outcome=outcome[0] if outcome else "", claimed_until=0.0)
        log_action("sent", claimed, provider=self.messenger.name, provider_id=provider_id, attempt=claimed.attempts)
        if claimed.kind == "call":
            result.calls += 1
        else:
            result.messages += 1
        return outcome

    def retry_unsent(self, entries: list[LogEntry]) -> int:
        """Send entries that were recorded but not sent (a crash, a provider outage).
        Returns how many were sent now."""
        now, sent = self.clock(), 0
        for entry in entries:
            age = now - entry.created_at
            too_old = age > (CALL_RETRY_WINDOW if entry.kind == "call" else MESSAGE_RETRY_WINDOW)
            if too_old or (entry.kind == "call" and entry.attempts > 0 and entry.status != "sending"):
                self.store.update_log(entry.key, status="expired", error="not sent in time; not retried")
                log_action("expired", entry, logging.WARNING, age_s=round(age, 1))
                continue
            if entry.claimed_until > now:
                continue
            result = UserResult(entry.user_id, "", ok=True)
            self.send(entry, result)
            sent += result.calls + result.messages
        return sent

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
            if not record_call_outcome(updated, call_key, outcome, detail, self.clock()):
                return False
            if self.store.commit(user.id, updated, version, []):
                break
        else:
            raise StoreUnavailable(f"could not record the call outcome for {user.email}")
        log.info("call outcome: %s", outcome, extra={"fields": {
            "event": "call_outcome", "user": user.id, "key": mask_key(call_key), "outcome": outcome, "detail": detail}})
        if poll is None:
            poll = self.fetch(user)
        decision, entries = self._decide_and_record(user, poll)
        self.deliver(user, entries, poll, result or UserResult(user.id, user.email, ok=True))
        if result is not None and decision.escalation:
            result.summary += f"; {decision.escalation}"
        return True
