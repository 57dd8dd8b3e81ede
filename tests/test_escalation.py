"""Escalation end to end, for both providers: the poller calls through the real SDK
and a local fake provider, the provider's signed webhooks say how the call ended, and
the alert log shows who got what."""
from __future__ import annotations

import time

import pytest

from tests.fake_providers import FakeProviders
from tests.telephony_setup import EMERGENCY, EXTRA_SMS, USER_PHONE, WHATSAPP_CONTACT, Scout

# How each outcome reaches Scout: (final status, key pressed, Twilio AnsweredBy)
OUTCOMES = {
    "twilio": {
        "acknowledged": ("completed", "1", "human"),
        "no-answer": ("no-answer", "", ""),
        "busy": ("busy", "", ""),
        "voicemail": ("completed", "", "machine_end_beep"),
        "completed-without-digit": ("completed", "", "human"),
        "failed": ("failed", "", ""),
    },
    "vonage": {
        "acknowledged": ("completed", "1", ""),
        "no-answer": ("unanswered", "", ""),
        "busy": ("busy", "", ""),
        "voicemail": ("machine", "", ""),
        "completed-without-digit": ("completed", "", ""),
        "failed": ("rejected", "", ""),
    },
}

CALLED = ("call", "alert", USER_PHONE, "sent")
# the ladder's first step: the emergency contact is called (and is then texted like everyone)
LADDER_FIRST = ("call", "ladder", EMERGENCY, "sent")
CONTACTS_TEXTED = [
    ("sms", "contacts", EMERGENCY, "sent"),
    ("sms", "contacts", EXTRA_SMS, "sent"),
    ("whatsapp", "contacts", WHATSAPP_CONTACT, "sent"),
]


def test_pressing_1_acknowledges_and_nobody_else_is_told(scout: Scout) -> None:
    scout.poll()
    status, digits, answered_by = OUTCOMES[scout.provider]["acknowledged"]
    assert all(code in (200, 204) for code in scout.finish_call(status, digits, answered_by))
    assert scout.who_got_what() == [CALLED]
    assert scout.messages() == []
    summary = scout.poll(after=60)  # still low, but acknowledged: no call for 15 minutes
    assert summary.counts["calls"] == 0 and scout.who_got_what() == [CALLED]


@pytest.mark.parametrize("outcome", ["no-answer", "busy", "voicemail", "completed-without-digit", "failed"])
def test_every_call_not_acknowledged_texts_the_emergency_contact_and_the_extra_contacts(
    scout: Scout, outcome: str
) -> None:
    scout.poll()
    assert scout.who_got_what() == [CALLED]  # nothing to the contacts until the call ends
    status, digits, answered_by = OUTCOMES[scout.provider][outcome]
    scout.finish_call(status, digits, answered_by)

    assert scout.who_got_what() == sorted([CALLED, LADDER_FIRST, *CONTACTS_TEXTED])
    texts = {e.recipient: e.body for e in scout.log() if e.purpose == "contacts"}
    # someone who picked up and hung up without a key is never said to have "not answered"
    said = ("Ana answered a call about a low blood glucose but did not press 1." if outcome == "completed-without-digit"
            else "Ana did not answer a call about a low blood glucose.")
    for text in texts.values():
        assert text.startswith(f"Scout alert: {said}")
        assert "54 mg/dL and falling, read at" in text and "minute ago" in text
    assert len(scout.messages()) == 3
    call = next(e for e in scout.log() if e.purpose == "alert")
    assert call.outcome.startswith("unanswered: ")


def test_a_hung_nightscout_does_not_hold_the_webhook_and_the_contacts_are_still_texted(scout: Scout) -> None:
    scout.poll()
    scout.nightscout.hang(7.0)  # longer than the webhook's 5 s read limit
    started = time.monotonic()
    status, digits, answered_by = OUTCOMES[scout.provider]["no-answer"]
    assert all(code in (200, 204) for code in scout.finish_call(status, digits, answered_by))
    assert time.monotonic() - started < 6.5  # inside the provider's 15 s webhook timeout
    assert scout.who_got_what() == sorted([CALLED, LADDER_FIRST, *CONTACTS_TEXTED])
    for entry in scout.log():
        if entry.purpose == "contacts":
            assert "Scout cannot read their Nightscout right now; their last alert was for a low." in entry.body


def test_a_voicemail_then_the_end_of_the_call_texts_the_contacts_once(scout: Scout) -> None:
    scout.poll()
    if scout.provider == "vonage":
        scout.finish_call("machine")
        scout.finish_call("completed")
    else:
        scout.finish_call("completed", answered_by="machine_start")
        scout.finish_call("completed", answered_by="machine_start")
    assert len(scout.messages()) == 3
    assert "voicemail" in next(e for e in scout.log() if e.purpose == "alert").outcome


def test_a_lost_callback_escalates_on_the_poller_after_five_minutes(scout: Scout) -> None:
    scout.poll()
    scout.poll(after=120)  # no word from the provider yet: keep waiting, no new call
    assert scout.who_got_what() == [CALLED]
    scout.poll(after=181)  # five minutes after the call
    texted = [row for row in scout.who_got_what() if row[1] == "contacts"]
    assert texted == CONTACTS_TEXTED
    episode = scout.store.get_state("sub-ana")[0].episode
    assert episode is not None and episode.contact_rounds == 1
    # the provider's word arrives late: it changes nothing
    scout.finish_call(*OUTCOMES[scout.provider]["no-answer"])
    assert len([row for row in scout.who_got_what() if row[1] == "contacts"]) == 3


def test_back_in_range_everyone_who_was_alerted_gets_an_all_clear(scout: Scout) -> None:
    scout.poll()
    scout.finish_call(*OUTCOMES[scout.provider]["no-answer"])
    scout.nightscout.show(112, 98, direction="Flat")
    scout.poll(after=300)
    all_clear = sorted((e.kind, e.recipient, e.status) for e in scout.log() if e.purpose == "all_clear")
    assert all_clear == sorted([("sms", USER_PHONE, "sent"), ("sms", EMERGENCY, "sent"), ("sms", EXTRA_SMS, "sent"),
                                ("whatsapp", WHATSAPP_CONTACT, "sent")])
    assert all("back in range, 112 mg/dL" in e.body for e in scout.log() if e.purpose == "all_clear")
    assert len(scout.messages()) == 3 + 4
    assert scout.store.get_state("sub-ana")[0].episode is None


def test_a_provider_error_then_success_sends_each_message_once(scout: Scout, fake: FakeProviders) -> None:
    api = f"{scout.provider}.messages"
    fake.fail(api, 500, times=1)
    scout.poll()
    scout.finish_call(*OUTCOMES[scout.provider]["no-answer"])
    assert [r.status for r in fake.received(api)].count(500) == 1
    assert len(fake.answered(api)) == 3 and len(scout.messages()) == 3
    assert scout.who_got_what() == sorted([CALLED, LADDER_FIRST, *CONTACTS_TEXTED])


def test_an_invalid_contact_number_is_recorded_as_permanent_and_the_others_are_still_texted(
    scout: Scout, fake: FakeProviders
) -> None:
    if scout.provider == "twilio":
        fake.fail_twilio("twilio.messages", 21211, f"The 'To' number {EMERGENCY} is not a valid phone number.",
                         to=EMERGENCY)
        code = "21211"
    else:
        fake.fail("vonage.messages", 422, {"type": "https://developer.vonage.com/api-errors/messages#1150",
                                           "title": "Invalid params", "detail": "The `to` number is invalid."},
                  times=None, to=EMERGENCY.lstrip("+"))
        code = "1150"
    scout.poll()
    scout.finish_call(*OUTCOMES[scout.provider]["no-answer"])
    assert scout.who_got_what() == sorted([
        CALLED, LADDER_FIRST, ("sms", "contacts", EMERGENCY, "permanent"), ("sms", "contacts", EXTRA_SMS, "sent"),
        ("whatsapp", "contacts", WHATSAPP_CONTACT, "sent"),
    ])
    refused = next(e for e in scout.log() if e.recipient == EMERGENCY and e.purpose == "contacts")
    assert refused.error.startswith(f"{code}: ") and refused.provider == scout.provider
    # a permanent refusal is not retried by later cycles
    scout.poll(after=60)
    assert next(e for e in scout.log() if e.recipient == EMERGENCY and e.purpose == "contacts").attempts == 1


def test_a_call_the_provider_refuses_texts_the_contacts_at_once(scout: Scout, fake: FakeProviders) -> None:
    if scout.provider == "twilio":
        fake.fail_twilio("twilio.calls", 21608, "The number is unverified. Trial accounts may only make calls "
                         "to verified numbers.")
    else:
        fake.fail("vonage.calls", 402, {"type": "https://developer.vonage.com/api-errors/#low-balance",
                                        "title": "Low balance"}, times=None)
    summary = scout.poll()
    # every call is refused: the ladder goes on through every contact, each "could not reach"
    refused_ladder = [("call", "ladder", phone, "permanent") for phone in (EMERGENCY, WHATSAPP_CONTACT, EXTRA_SMS)]
    assert scout.who_got_what() == sorted([("call", "alert", USER_PHONE, "permanent"), *refused_ladder,
                                           *CONTACTS_TEXTED])
    call = next(e for e in scout.log() if e.purpose == "alert")
    assert call.error.startswith("21608: " if scout.provider == "twilio" else "low-balance: ")
    assert "call could not be placed" in summary.results[0].summary
    # the contacts are told the truth: the call never rang, so nobody "did not answer" it
    texts = [text for _to, text in scout.messages()]
    assert texts and all("could not reach Ana by phone" in t and "did not answer" not in t for t in texts)
