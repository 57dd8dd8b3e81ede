"""Acknowledging an alert by text: a reply of "1" or "OK". Pure, no I/O, no clock.

The webhook (scout/webhooks.py) verifies the provider's signature and the engine records
what this module decides, before anything is sent, like every other action:

- from the user, or from a contact who was texted about the open episode: the episode is
  acknowledged as if the user had pressed 1 (no call during the snooze), the sender gets a
  short confirmation, and the other people who were alerted get one text saying who is on it;
- after the all-clear (an all-clear went to this number within ALL_CLEAR_ANSWERED): a short
  "all clear already";
- anything else (another word, a number Scout does not know, no open episode): nothing is
  sent; it is noted in the user's alert log when the number is theirs.

STOP, HELP and the like are the providers' own business (they answer them and block the
number); Scout never answers them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from models import AlertState, LogEntry, User
from scout.alerts import ACKNOWLEDGED, Action, acknowledge, person_name

ACKNOWLEDGING_WORDS = {"1", "ok", "okay"}
ALL_CLEAR_ANSWERED = 6 * 3600  # a reply this long after an all-clear still gets "all clear already"
REPLY_PURPOSE = "reply"  # the alert log's record of an inbound reply (never sent, never retried)
RECEIVED = "received"


def digits_of(phone: str) -> str:
    """'whatsapp:+1 415-555-2671' and '14155552671' are the same number: compare digits."""
    return re.sub(r"\D", "", phone.removeprefix("whatsapp:"))


def is_acknowledgement(text: str) -> bool:
    """'1', 'OK', 'ok.', ' Okay! ' acknowledge; 'STOP', '12', 'not ok' do not."""
    return re.sub(r"[\s.!]+", "", text or "").lower() in ACKNOWLEDGING_WORDS


def sender_role(user: User, sender: str) -> str:
    """'user', 'contact' or '' for a number that is neither."""
    wanted = digits_of(sender)
    if not wanted:
        return ""
    if digits_of(user.phone) == wanted:
        return "user"
    return "contact" if any(digits_of(c.phone) == wanted for c in user.contacts) else ""


def stored_number(user: User, sender: str) -> str:
    """The sender's number as the user saved it ('+14155552671'), so answers and the log
    use one spelling whatever the provider sent ('14155552671', 'whatsapp:+1...')."""
    wanted = digits_of(sender)
    for phone in (user.phone, *(c.phone for c in user.contacts)):
        if phone and digits_of(phone) == wanted:
            return phone
    return sender


def sender_name(user: User, sender: str) -> str:
    """'Ana' for the user, the contact's name as the user wrote it ('Ben'), or their number."""
    return person_name(user, stored_number(user, sender))


@dataclass
class ReplyDecision:
    state: AlertState | None  # the new state, or None when it does not change
    record: LogEntry  # the reply itself, for the alert log
    actions: list[Action] = field(default_factory=list)
    outcome: str = ""  # acknowledged | all clear already | ignored: why


def decide_reply(user: User, state: AlertState, recent: list[LogEntry], sender: str, channel: str, text: str,
                 reply_key: str, now: float, snooze_minutes: int = 15) -> ReplyDecision:
    """What one inbound reply from `sender` (a number of `user`'s) means. `recent` is the
    user's recent alert log, newest first; `reply_key` names this reply uniquely."""
    sender = stored_number(user, sender)
    record = LogEntry(key=reply_key, user_id=user.id, kind=channel, purpose=REPLY_PURPOSE, recipient=sender,
                      body=(text or "")[:160], created_at=now, status=RECEIVED)
    decision = ReplyDecision(None, record)
    if not is_acknowledgement(text):
        return _ignored(decision, "not 1 or OK")
    ep = state.episode
    if ep is not None and _was_alerted(user, state, sender):
        return _acknowledge(user, state, sender, channel, now, snooze_minutes, decision)
    if _all_clear_sent_to(recent, sender, now):
        text = f"Scout: all clear already. {user.display_name}'s blood glucose is back in range."
        decision.actions.append(Action(f"{reply_key}:answer", channel, "reply_answer", sender, text))
        return _ignored(decision, "all clear already", outcome="all clear already")
    return _ignored(decision, "no open alert for this number")


def _ignored(decision: ReplyDecision, why: str, outcome: str = "") -> ReplyDecision:
    decision.outcome = outcome or f"ignored: {why}"
    decision.record = replace(decision.record, outcome=decision.outcome)
    return decision


def _was_alerted(user: User, state: AlertState, sender: str) -> bool:
    ep = state.episode
    if ep is None:
        return False
    role = sender_role(user, sender)
    if role == "user":
        return ep.calls > 0
    return any(digits_of(phone) == digits_of(sender) for phone, _channel in ep.alerted)


def _all_clear_sent_to(recent: list[LogEntry], sender: str, now: float) -> bool:
    return any(e.purpose == "all_clear" and digits_of(e.recipient) == digits_of(sender)
               and now - e.created_at <= ALL_CLEAR_ANSWERED for e in recent)


def _acknowledge(user: User, state: AlertState, sender: str, channel: str, now: float, snooze_minutes: int,
                 decision: ReplyDecision) -> ReplyDecision:
    current = state.episode
    assert current is not None
    if (current.acknowledged_at is not None
            and (current.last_call_at is None or current.acknowledged_at >= current.last_call_at)
            and now - current.acknowledged_at < snooze_minutes * 60):
        # someone is already on it: say so to this sender only, and keep the snooze as it is
        decision.actions.append(Action(
            f"{decision.record.key}:answer", channel, "reply_answer", stored_number(user, sender),
            f"Scout: {user.display_name}'s {current.kind} alert is already acknowledged."))
        return _ignored(decision, "", outcome="already acknowledged")
    new = state.copy()
    ep = new.episode
    assert ep is not None
    sender = stored_number(user, sender)
    # the same acknowledgement as a 1 on a call: the ladder stops, the others are told once
    told = acknowledge(user, ep, sender, "replied OK", now)
    decision.state = new
    decision.outcome = ACKNOWLEDGED
    decision.record = replace(decision.record, outcome=ACKNOWLEDGED)
    decision.actions.append(Action(
        f"{decision.record.key}:answer", channel, "reply_answer", sender,
        f"Scout: thank you, {user.display_name}'s {ep.kind} alert is acknowledged. Scout will call again in "
        f"{snooze_minutes} minutes if it is still {ep.kind}."))
    decision.actions.extend(told)
    return decision
