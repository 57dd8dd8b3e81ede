"""A hostile review of the calling ladder: mid-round changes the real world makes (a contact
removed, reordered or set to text only, a contact's OK by text while their call waits),
each on the pure decision with a fixed clock."""
from __future__ import annotations

from dataclasses import replace

from models import AlertState, Contact, User
from scout.alerts import Decision, Rules, call_still_due, decide, record_call_outcome, record_call_placed
from scout.replies import decide_reply
from tests.conftest import make_user
from tests.test_alerts import NOW, readings

RULES = Rules()
BO = Contact("+14155552672", "sms", "Bo")
BEN = Contact("+14155552673", "whatsapp", "Ben")
CY = Contact("+14155552674", "sms", "Cy")
ANA = make_user(emergency_contact=BO, extra_contacts=(BEN, CY))


def ladder_calls(decision: Decision) -> list[str]:
    return [a.recipient for a in decision.actions if a.purpose == "ladder"]


def first_contact_called(user: User = ANA) -> AlertState:
    """Ana's call (a low of 62) goes unanswered; the ladder's first call, to Bo, is placed."""
    state = decide(user, readings(62), AlertState(), NOW, RULES).state
    assert state.episode is not None and state.episode.call is not None
    assert record_call_placed(state, state.episode.call.key, NOW + 1)
    assert record_call_outcome(state, state.episode.call.key, "unanswered", "no-answer", NOW + 40)
    d = decide(user, readings(62, now=NOW + 40), state, NOW + 40, RULES)
    assert ladder_calls(d) == [BO.phone]
    return d.state


def bo_unanswered(state: AlertState, at: float) -> AlertState:
    ep = state.episode
    assert ep is not None and ep.ladder_call is not None and ep.ladder_call.to == BO.phone
    assert record_call_placed(state, ep.ladder_call.key, NOW + 45)
    assert record_call_outcome(state, ep.ladder_call.key, "unanswered", "no-answer", at)
    return state


def test_removing_a_contact_already_called_mid_round_does_not_skip_the_next_one() -> None:
    state = bo_unanswered(first_contact_called(), NOW + 90)
    # Bo was called and did not answer; Ana (or her parent) then removes Bo from her contacts
    without_bo = replace(ANA, emergency_contact=BEN, extra_contacts=(CY,))
    d = decide(without_bo, readings(62, now=NOW + 90), state, NOW + 90, RULES)
    assert ladder_calls(d) == [BEN.phone]  # Ben is next; on main Cy is called and Ben never is


def test_setting_a_called_contact_to_text_only_mid_round_does_not_skip_the_next_one() -> None:
    state = bo_unanswered(first_contact_called(), NOW + 90)
    bo_texts_only = replace(ANA, emergency_contact=replace(BO, mode="text"))
    d = decide(bo_texts_only, readings(62, now=NOW + 90), state, NOW + 90, RULES)
    assert ladder_calls(d) == [BEN.phone]


def test_reordering_the_contacts_mid_round_neither_calls_anyone_twice_nor_skips_anyone() -> None:
    state = bo_unanswered(first_contact_called(), NOW + 90)
    cy_first = replace(ANA, emergency_contact=CY, extra_contacts=(BO, BEN))
    called = []
    at = NOW + 90
    for _ in range(4):
        d = decide(cy_first, readings(62, now=at), state, at, RULES)
        called += ladder_calls(d)
        state = d.state
        ep = state.episode
        assert ep is not None and ep.ladder_call is not None
        record_call_placed(state, ep.ladder_call.key, at + 1)
        record_call_outcome(state, ep.ladder_call.key, "unanswered", "busy", at + 30)
        at += 30
    assert sorted(called) == sorted([CY.phone, BEN.phone])  # on main: Bo again, then Ben; Cy never


def test_a_contact_who_replies_ok_while_their_call_waits_in_the_queue_is_not_called() -> None:
    state = first_contact_called()
    ep = state.episode
    assert ep is not None and ep.ladder_call is not None
    bo_call = ep.ladder_call.key
    assert call_still_due(state, bo_call)  # recorded, waiting its turn in the paced send queue
    # Bo read the contacts' text first and replied OK
    reply = decide_reply(ANA, state, [], BO.phone, "sms", "OK", "sub-ana:reply:twilio:SM1", NOW + 50)
    assert reply.outcome == "acknowledged" and reply.state is not None
    assert not call_still_due(reply.state, bo_call)  # on main, Bo is still called


def test_a_contact_who_replies_ok_and_then_presses_1_on_their_ringing_call_tells_nobody_twice() -> None:
    from scout.alerts import settle_call

    state = first_contact_called()
    ep = state.episode
    assert ep is not None and ep.ladder_call is not None
    bo_call = ep.ladder_call.key
    assert record_call_placed(state, bo_call, NOW + 45)  # Bo's phone rings
    reply = decide_reply(ANA, state, [], BO.phone, "sms", "ok", "sub-ana:reply:twilio:SM1", NOW + 50)
    assert reply.state is not None
    on_it = sorted(a.recipient for a in reply.actions if a.purpose == "on_it")
    assert on_it == sorted([ANA.phone, BEN.phone, CY.phone])  # told once: "Bo replied OK and is on it"
    # Bo then answers his ringing call and presses 1 as it asks
    _changed, told = settle_call(ANA, reply.state, bo_call, "acknowledged", "pressed 1", NOW + 70)
    assert [a.recipient for a in told if a.purpose == "on_it"] == []  # on main, all three are told again


def test_a_round_stored_before_the_called_list_existed_goes_on_where_it_was() -> None:
    """A round in progress when this version is deployed (ladder_step 1, no list of numbers
    called) calls Ben next, never Bo again."""
    state = bo_unanswered(first_contact_called(), NOW + 90)
    stored = state.as_dict()
    del stored["episode"]["ladder_called"]
    old = AlertState.from_dict(stored)
    assert old.episode is not None and old.episode.ladder_step == 1 and old.episode.ladder_called == []
    d = decide(ANA, readings(62, now=NOW + 90), old, NOW + 90, RULES)
    assert ladder_calls(d) == [BEN.phone]
    assert d.state.episode is not None and d.state.episode.ladder_called == [BO.phone, BEN.phone]
    assert state.copy().episode.ladder_called is not state.episode.ladder_called  # type: ignore[union-attr]


def test_a_contact_set_to_text_only_before_their_queued_call_is_placed_is_skipped_truthfully() -> None:
    state = first_contact_called()  # Bo's call recorded, still waiting in the send queue
    ep = state.episode
    assert ep is not None and ep.ladder_call is not None and ep.ladder_call.queued
    bo_call = ep.ladder_call.key
    bo_texts_only = replace(ANA, emergency_contact=replace(BO, mode="text"))
    d = decide(bo_texts_only, readings(62, now=NOW + 60), state, NOW + 60, RULES)
    assert not call_still_due(d.state, bo_call)
    (ben,) = [a for a in d.actions if a.purpose == "ladder"]
    assert ben.recipient == BEN.phone
    assert "Bo" not in ben.text  # Bo was never called: not "Bo did not answer either"


def test_after_a_pause_the_user_is_called_again_before_any_more_contacts() -> None:
    state = bo_unanswered(first_contact_called(), NOW + 90)
    # Ana wakes (Bo's call woke the house), sees the page and pauses alerts for 30 minutes
    paused = replace(ANA, paused_until=NOW + 100 + 30 * 60)
    held = decide(paused, readings(62, now=NOW + 100), state, NOW + 100, RULES)
    assert [a for a in held.actions if a.kind == "call"] == []
    # the pause runs out; still 64, a low but not urgent: Ana is called first, nobody else yet
    after = NOW + 100 + 31 * 60
    d = decide(paused, readings(64, now=after), held.state, after, RULES)
    assert [(a.purpose, a.recipient) for a in d.actions if a.kind == "call"] == [("alert", ANA.phone)]


def test_a_pause_set_while_a_contacts_call_waits_unsent_stops_it_but_not_an_urgent_lows_round() -> None:
    state = first_contact_called()  # Bo's call is recorded, not placed yet
    ep = state.episode
    assert ep is not None and ep.ladder_call is not None
    key = ep.ladder_call.key
    paused = replace(ANA, paused_until=NOW + 50 + 30 * 60)
    held = decide(paused, readings(62, now=NOW + 50), state, NOW + 50, RULES)
    assert not call_still_due(held.state, key) and held.state.episode is not None
    assert not held.state.episode.ladder_active and "paused alerts" in held.escalation
    # an urgent low's round goes on through a pause: Bo's call is still to be placed
    urgent = first_contact_called()
    urgent_key = urgent.episode.ladder_call.key if urgent.episode and urgent.episode.ladder_call else ""
    still = decide(paused, readings(50, now=NOW + 50), urgent, NOW + 50, RULES)
    assert call_still_due(still.state, urgent_key)


def test_the_contacts_texts_say_the_user_answered_without_a_key_never_that_she_did_not_answer() -> None:
    state = decide(ANA, readings(62), AlertState(), NOW, RULES).state
    assert state.episode is not None and state.episode.call is not None
    assert record_call_placed(state, state.episode.call.key, NOW + 1)
    assert record_call_outcome(state, state.episode.call.key, "unanswered", "completed without a key press", NOW + 40)
    d = decide(ANA, readings(62, now=NOW + 40), state, NOW + 40, RULES)
    texts = [a.text for a in d.actions if a.purpose == "contacts"]
    assert len(texts) == 3
    assert all("Ana answered a call about a low blood glucose but did not press 1." in t for t in texts)
    assert not any("did not answer" in t for t in texts)
