"""The calling ladder, traced through the real poller, store, SDKs and signed webhooks with
a controlled clock: when Ana does not acknowledge her call, Scout calls her contacts one
at a time in her order, and a 1 from anyone ends it for everyone."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from models import Contact
from scout.alerts import record_call_outcome
from scout.config import Config
from scout.telephony import make_messenger
from tests.fake_providers import FakeProviders, Recorded, callbacks_for
from tests.telephony_setup import EMERGENCY, EXTRA_SMS, USER_PHONE, WHATSAPP_CONTACT
from tests.test_traces import MINUTE, START, Site, Trace

NO_ANSWER = {"twilio": "no-answer", "vonage": "unanswered"}
BO = Contact(EMERGENCY, "sms", "Bo")  # the emergency contact
BEN = Contact(WHATSAPP_CONTACT, "whatsapp", "Ben")  # texted on WhatsApp, called on his phone
CY = Contact(EXTRA_SMS, "sms", "Cy")


@pytest.fixture
def trace(telephony_config: Config, fake: FakeProviders, httpserver: HTTPServer) -> Iterator[Trace]:
    instance = Trace(telephony_config, fake, httpserver)
    yield instance
    instance.close()


def watch(trace: Trace, value: float, *contacts: Contact, **settings: Any) -> Site:
    """Ana, low at `value`, with Bo as her emergency contact and Ben and Cy after him."""
    first, *others = contacts or (BO, BEN, CY)
    site = trace.add_user(emergency_contact=first, extra_contacts=tuple(others), **settings)
    site.upload(value, START - MINUTE)
    return site


def placed(trace: Trace) -> list[Recorded]:
    """The calls the provider accepted, in order."""
    return [r for r in trace.fake.received() if r.api.endswith(".calls") and r.status < 300]


def called(trace: Trace) -> list[str]:
    """Who was called, in order, as E.164 numbers."""
    return ["+" + r.recipient.lstrip("+") for r in placed(trace)]


def call_to(trace: Trace, phone: str) -> Recorded:
    (call,) = [r for r in placed(trace) if "+" + r.recipient.lstrip("+") == phone]
    return call


def finish(trace: Trace, call: Recorded, status: str, digits: str = "") -> list[int]:
    """The provider reports how `call` ended, through Scout's signed webhooks."""
    callbacks = callbacks_for(call, status, digits, auth_token=trace.config.get("TWILIO_AUTH_TOKEN"),
                              signature_secret=trace.config.get("NEXMO_SIGNATURE_SECRET"))
    return [trace.post(c) for c in callbacks]


def spoken(call: Recorded) -> str:
    if call.api == "twilio.calls":
        return call.field("Twiml")
    return " ".join(str(action.get("text", "")) for action in call.json["ncco"])


def texts_to(trace: Trace, purpose: str) -> list[tuple[str, str, str]]:
    """(recipient, channel, text) of each message of `purpose` the provider accepted."""
    return sorted((e.recipient, e.kind, e.body) for e in trace.log() if e.purpose == purpose and e.status == "sent")


def no_answer(trace: Trace) -> str:
    return NO_ANSWER[trace.config.telephony]


def test_user_and_emergency_contact_unanswered_the_second_contact_presses_1_and_nobody_else_is_called(
        trace: Trace) -> None:
    site = watch(trace, 62)  # a low, not an urgent low: a 1 holds the calls for 15 minutes
    trace.poll()
    assert called(trace) == [USER_PHONE]  # nobody else while Ana's call rings
    finish(trace, call_to(trace, USER_PHONE), no_answer(trace))
    assert called(trace) == [USER_PHONE, EMERGENCY]  # the emergency contact first, at once
    assert len(texts_to(trace, "contacts")) == 3  # and the texts, as before the ladder
    bo_call = call_to(trace, EMERGENCY)
    assert "Hello Bo. This is Scout, calling about Ana. Ana's blood glucose is 62 milligrams per deciliter" \
        in spoken(bo_call)
    assert "Ana did not answer Scout's call." in spoken(bo_call) and "Press 1 if you will check on Ana." \
        in spoken(bo_call)

    bo_final = finish(trace, bo_call, no_answer(trace))
    assert called(trace) == [USER_PHONE, EMERGENCY, WHATSAPP_CONTACT]  # then Ben, after Bo's outcome
    ben_call = call_to(trace, WHATSAPP_CONTACT)
    assert "Hello Ben." in spoken(ben_call) and "Bo did not answer either." in spoken(ben_call)
    # Bo's final status delivered again (a provider retry, or a replay): Ben is not called twice
    assert finish(trace, bo_call, no_answer(trace)) == bo_final
    assert called(trace) == [USER_PHONE, EMERGENCY, WHATSAPP_CONTACT]

    assert all(code in (200, 204) for code in finish(trace, ben_call, "completed", digits="1"))
    told = "Scout: Ben pressed 1 and is on it (Ana's low alert)."
    expected = [(USER_PHONE, "sms", told), (EMERGENCY, "sms", told), (EXTRA_SMS, "sms", told)]
    assert texts_to(trace, "on_it") == expected  # each once; Ben himself is not told
    finish(trace, ben_call, "completed", digits="1")  # the key press delivered again
    assert texts_to(trace, "on_it") == expected
    episode = trace.state().episode
    assert episode is not None and episode.acknowledged_by == "Ben" and not episode.ladder_active

    for minute in (2, 5, 10, 14):  # still low, acknowledged: nobody at all is called
        site.upload(64, START + minute * MINUTE - 30)
        trace.now = START + minute * MINUTE
        summary = trace.poll()
        assert summary.counts["calls"] == 0
    assert called(trace) == [USER_PHONE, EMERGENCY, WHATSAPP_CONTACT]
    assert texts_to(trace, "on_it") == expected
    site.upload(66, START + 16 * MINUTE - 30)
    trace.now = START + 16 * MINUTE  # the snooze is over: Ana is called again, and only Ana
    trace.poll()
    assert called(trace) == [USER_PHONE, EMERGENCY, WHATSAPP_CONTACT, USER_PHONE]


def test_a_text_only_contact_is_texted_and_never_called(trace: Trace) -> None:
    watch(trace, 62, Contact(EMERGENCY, "sms", "Bo", mode="text"), BEN, CY)
    trace.poll()
    finish(trace, call_to(trace, USER_PHONE), no_answer(trace))
    assert called(trace) == [USER_PHONE, WHATSAPP_CONTACT]  # Bo is skipped: Ben is first on the ladder
    assert "Hello Ben." in spoken(call_to(trace, WHATSAPP_CONTACT))
    finish(trace, call_to(trace, WHATSAPP_CONTACT), no_answer(trace))
    assert called(trace) == [USER_PHONE, WHATSAPP_CONTACT, EXTRA_SMS]
    finish(trace, call_to(trace, EXTRA_SMS), no_answer(trace))
    # everyone on the ladder was tried: no more contact calls this round, and never Bo
    trace.poll(after=MINUTE)
    assert EMERGENCY not in called(trace)
    assert [r for r, _kind, _text in texts_to(trace, "contacts")] == sorted([EMERGENCY, WHATSAPP_CONTACT, EXTRA_SMS])
    state = trace.state().episode
    assert state is not None and state.ladder_active is False and state.ladder_step == 2


def test_a_contact_call_the_provider_refuses_is_could_not_reach_and_the_ladder_goes_on(
        trace: Trace, fake: FakeProviders) -> None:
    if trace.config.telephony == "twilio":
        fake.fail_twilio("twilio.calls", 21214, "The number cannot be reached.", to=EMERGENCY)
    else:
        fake.fail("vonage.calls", 400, {"type": "https://developer.vonage.com/api-errors/voice#invalid-number",
                                        "title": "Bad Request", "detail": "The number cannot be called."},
                  times=None, to=EMERGENCY.lstrip("+"))
    watch(trace, 62)
    trace.poll()
    finish(trace, call_to(trace, USER_PHONE), no_answer(trace))
    # Bo's call is refused: at once, Ben is called and told the truth about Bo
    assert called(trace) == [USER_PHONE, WHATSAPP_CONTACT]
    ben = spoken(call_to(trace, WHATSAPP_CONTACT))
    assert "Scout could not reach Bo by phone either." in ben and "Bo did not answer" not in ben
    (bo,) = [e for e in trace.log() if e.purpose == "ladder" and e.recipient == EMERGENCY]
    assert bo.status == "permanent"
    episode = trace.state().episode
    assert episode is not None and episode.ladder_call is not None and episode.ladder_call.to == WHATSAPP_CONTACT
    assert not any("Bo did not answer" in e.body for e in trace.log())


def test_a_throttled_contact_call_is_retried_and_placed_once(trace: Trace, fake: FakeProviders) -> None:
    api = f"{trace.config.telephony}.calls"
    for engine in (trace.poller.engine, trace.app.extensions["scout_engine"]):
        engine.sleep = lambda seconds: time.sleep(min(seconds, 0.2))  # short backoffs, same retries
    watch(trace, 62)
    trace.poll()
    fake.fail(api, 429, {"code": 20429, "message": "Too Many Requests", "status": 429}, times=2)
    finish(trace, call_to(trace, USER_PHONE), no_answer(trace))
    assert len(fake.throttled(api)) == 2
    assert called(trace) == [USER_PHONE, EMERGENCY]  # placed once, after the 429s
    (bo,) = [e for e in trace.log() if e.purpose == "ladder"]
    assert bo.status == "sent" and bo.provider_id
    trace.poll(after=MINUTE)
    assert called(trace).count(EMERGENCY) == 1


def test_a_crash_between_recording_and_placing_a_contact_call_never_calls_twice(trace: Trace) -> None:
    site = watch(trace, 62)
    trace.poll()
    user = trace.store.get_user("ana")
    assert user is not None
    engine = trace.poller.engine
    state = trace.state()
    assert state.episode is not None and state.episode.call is not None
    user_call = state.episode.call.key
    # Ana's call ends unanswered; the process records the escalation (texts and Bo's call) ...
    assert engine._update_state(user.id, lambda s: record_call_outcome(s, user_call, "unanswered", "no-answer",
                                                                        trace.now))
    _result, entries = engine.record_poll(user, engine.fetch(user))
    (bo,) = [e for e in entries if e.purpose == "ladder"]
    claimed = trace.store.claim_log(bo.key, trace.now, 90)
    assert claimed is not None
    make_messenger(trace.config).place_call(claimed.recipient, claimed.body, claimed.key)
    # ... the provider placed Bo's call, and the process died before storing its id.
    assert called(trace) == [USER_PHONE, EMERGENCY]
    site.upload(63, START + 30)
    trace.poll(after=45)  # a restarted poller while the claim holds: Bo's call is not placed again
    assert called(trace).count(EMERGENCY) == 1
    # Bo's call ends unanswered: its status finds the call by the key in the signed URL, settles
    # the entry as placed (with the provider's id), and the ladder moves on to Ben
    finish(trace, call_to(trace, EMERGENCY), no_answer(trace))
    settled = trace.store.get_log(bo.key)
    assert settled is not None and settled.status == "sent" and settled.provider_id
    assert called(trace).count(EMERGENCY) == 1 and called(trace).count(WHATSAPP_CONTACT) == 1
    for _ in range(3):
        site.upload(64, trace.now + MINUTE - 30)
        trace.poll(after=MINUTE)
    assert called(trace).count(EMERGENCY) == 1 and called(trace).count(WHATSAPP_CONTACT) == 1


def test_a_contact_call_recorded_but_never_sent_is_placed_once_by_the_next_cycle(trace: Trace) -> None:
    site = watch(trace, 62)
    trace.poll()
    user = trace.store.get_user("ana")
    assert user is not None
    engine = trace.poller.engine
    state = trace.state()
    assert state.episode is not None and state.episode.call is not None
    user_call = state.episode.call.key
    engine._update_state(user.id, lambda s: record_call_outcome(s, user_call, "unanswered", "no-answer", trace.now))
    engine.record_poll(user, engine.fetch(user))  # recorded; the process dies before sending anything
    assert called(trace) == [USER_PHONE]
    site.upload(63, START + 30)
    trace.poll(after=MINUTE)
    assert called(trace) == [USER_PHONE, EMERGENCY]
    site.upload(63, START + 90)
    trace.poll(after=MINUTE)
    assert called(trace).count(EMERGENCY) == 1


def test_an_urgent_low_starts_the_ladder_at_once(trace: Trace) -> None:
    watch(trace, 50)
    trace.poll()
    finish(trace, call_to(trace, USER_PHONE), no_answer(trace))
    assert called(trace) == [USER_PHONE, EMERGENCY]  # within the webhook, not at the next cycle
    assert "50 milligrams per deciliter" in spoken(call_to(trace, EMERGENCY))


def keep_high(trace: Trace, site: Site, value: float, minutes: range) -> None:
    """Readings of `value` every 5 minutes; each new call to Ana goes unanswered."""
    for minute in minutes:
        site.upload(value, START + minute * MINUTE - 30)
        trace.now = START + minute * MINUTE
        before = len(placed(trace))
        trace.poll()
        if len(placed(trace)) > before:
            finish(trace, placed(trace)[-1], no_answer(trace))


def test_a_high_reaches_the_ladder_only_under_the_urgent_high_rule(trace: Trace) -> None:
    site = watch(trace, 320)
    trace.poll()
    finish(trace, call_to(trace, USER_PHONE), no_answer(trace))
    assert called(trace) == [USER_PHONE]  # above 300 for less than an hour: Ana only
    keep_high(trace, site, 320, range(5, 56, 5))
    assert called(trace) == [USER_PHONE, USER_PHONE]  # the high cadence: every 30 minutes
    assert texts_to(trace, "contacts") == []
    keep_high(trace, site, 320, range(60, 61))  # an hour above 300, and Ana's call unanswered: the ladder
    assert called(trace) == [USER_PHONE, USER_PHONE, USER_PHONE, EMERGENCY]


def test_a_high_under_the_urgent_high_line_never_calls_a_contact(trace: Trace) -> None:
    site = watch(trace, 250)
    trace.poll()
    finish(trace, call_to(trace, USER_PHONE), no_answer(trace))
    keep_high(trace, site, 250, range(5, 126, 5))
    assert called(trace) == [USER_PHONE] * 5  # two hours: Ana every 30 minutes, nobody else
    assert texts_to(trace, "contacts") == []
