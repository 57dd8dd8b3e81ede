"""The ladder review's cases that need Scout as deployed: the real poller, store, SDKs and
provider doubles, with a controlled clock (see tests/test_ladder.py)."""
from __future__ import annotations

from dataclasses import replace

from tests.telephony_setup import EMERGENCY, USER_PHONE, WHATSAPP_CONTACT
from tests.test_ladder import BEN, BO, CY, call_to, called, finish, spoken, trace, watch  # noqa: F401 (trace is a fixture)
from tests.test_traces import MINUTE, START, Trace


def test_a_contact_set_to_text_only_while_their_call_waits_unsent_is_never_called(trace: Trace) -> None:  # noqa: F811
    site = watch(trace, 62)
    trace.poll()
    user = trace.store.get_user("ana")
    assert user is not None
    engine = trace.poller.engine
    state = trace.state()
    assert state.episode is not None and state.episode.call is not None
    user_call = state.episode.call.key
    from scout.alerts import record_call_outcome

    # Ana's call ends unanswered; Bo's call is recorded, and the process dies before placing it
    engine._update_state(user.id, lambda s: record_call_outcome(s, user_call, "unanswered", "no-answer", trace.now))
    engine.record_poll(user, engine.fetch(user))
    assert called(trace) == [USER_PHONE]
    # Bo, woken by the contacts' text, asks Ana to set him to "Text only" (or she removes him)
    trace.store.save_user(replace(user, emergency_contact=replace(BO, mode="text")))
    site.upload(63, START + 30)
    trace.poll(after=MINUTE)
    assert EMERGENCY not in called(trace)  # on main, the next cycle places Bo's call anyway
    assert called(trace) == [USER_PHONE, WHATSAPP_CONTACT]  # Ben is the first on the ladder now
    assert CY.phone not in called(trace) and BEN.phone == WHATSAPP_CONTACT
    ben = [e.body for e in trace.log() if e.purpose == "ladder" and e.recipient == WHATSAPP_CONTACT]
    assert len(ben) == 1 and "Bo" not in ben[0]  # Bo was not called: never "Bo did not answer either"
    bo = [e for e in trace.log() if e.purpose == "ladder" and e.recipient == EMERGENCY]
    assert [e.status for e in bo] == ["expired"]  # in Recent alerts: not placed, and why


def test_a_person_who_answered_and_pressed_nothing_is_never_said_to_have_not_answered(
        trace: Trace) -> None:  # noqa: F811
    watch(trace, 62)
    trace.poll()
    finish(trace, call_to(trace, USER_PHONE), "completed")  # Ana picked up, heard it, pressed nothing
    bo = spoken(call_to(trace, EMERGENCY))
    assert "Ana answered Scout's call but did not press 1." in bo and "Ana did not answer" not in bo
    finish(trace, call_to(trace, EMERGENCY), "completed")  # so did Bo
    ben = spoken(call_to(trace, WHATSAPP_CONTACT))
    assert "Bo answered but did not press 1 either." in ben and "Bo did not answer" not in ben
