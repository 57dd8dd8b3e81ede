"""Acknowledging by text: a reply of 1 or OK, through each provider's signed inbound webhook,
the real poller, the real SDKs and the local provider doubles."""
from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from models import AlertState, Contact, Episode
from scout.replies import decide_reply, digits_of, is_acknowledgement
from tests.conftest import make_user
from tests.fake_providers import Callback, callbacks_for, twilio_signed, vonage_signed
from tests.telephony_setup import (
    EMERGENCY,
    EXTRA_SMS,
    NEXMO_NUMBER,
    SITE_URL,
    TWILIO_NUMBER,
    TWILIO_SID,
    USER_PHONE,
    WHATSAPP_CONTACT,
    Scout,
)

UNANSWERED = {"twilio": ("no-answer", "", ""), "vonage": ("unanswered", "", "")}


def inbound(scout: Scout, sender: str, text: str, channel: str = "sms", message_id: str = "",
            secret: str = "") -> Callback:
    """The signed webhook the provider posts when `sender` texts Scout's number."""
    message_id = message_id or uuid.uuid4().hex
    if scout.provider == "twilio":
        address = f"whatsapp:{sender}" if channel == "whatsapp" else sender
        form = {"MessageSid": f"SM{message_id}", "AccountSid": TWILIO_SID, "From": address, "To": TWILIO_NUMBER,
                "Body": text, "NumMedia": "0"}
        return twilio_signed(f"{SITE_URL}/webhooks/twilio/messages", form,
                             secret or scout.config.get("TWILIO_AUTH_TOKEN"))
    body = {"message_uuid": str(uuid.UUID(hex=message_id)), "channel": channel, "message_type": "text",
            "from": sender.removeprefix("+"), "to": NEXMO_NUMBER, "text": text,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return vonage_signed(f"{SITE_URL}/webhooks/vonage/inbound", body,
                         secret or scout.config.get("NEXMO_SIGNATURE_SECRET"))


def reply(scout: Scout, sender: str, text: str, **options: Any) -> int:
    return int(scout.post(inbound(scout, sender, text, **options)).status_code)


def sent(scout: Scout, purpose: str) -> list[tuple[str, str]]:
    """(recipient, text) of each message of `purpose` that the provider accepted."""
    return sorted((e.recipient, e.body) for e in scout.log() if e.purpose == purpose and e.status == "sent")


def episode(scout: Scout) -> Episode:
    found = scout.store.get_state("sub-ana")[0].episode
    assert found is not None
    return found


def unanswered_call(scout: Scout) -> None:
    """The first call about the low goes unanswered, so the three contacts are texted."""
    scout.poll()
    scout.finish_call(*UNANSWERED[scout.provider])
    assert len(sent(scout, "contacts")) == 3


def test_ok_from_a_contact_acknowledges_for_everyone_and_the_others_are_told_once(scout: Scout) -> None:
    scout.nightscout.clock = lambda: scout.now  # readings stay fresh on the test's clock
    scout.nightscout.show(62, 70)  # a low, not an urgent low: a 1 silences it for 15 minutes
    unanswered_call(scout)
    assert reply(scout, EMERGENCY, "OK") in (200, 204)

    ep = episode(scout)
    assert ep.acknowledged_at is not None and ep.call is not None and ep.call.outcome == "acknowledged"
    assert sent(scout, "reply_answer") == [(EMERGENCY, "Scout: thank you, Ana's low alert is acknowledged. "
                                                      "Scout will call again in 15 minutes if it is still low.")]
    told = "Scout: the contact at +14155552672 replied OK and is on it (Ana's low alert)."
    everyone_else = sorted([(USER_PHONE, told), (WHATSAPP_CONTACT, told), (EXTRA_SMS, told)])
    assert sent(scout, "on_it") == everyone_else  # the user too: she was called
    assert len(scout.messages()) == 3 + 4  # the contacts' alert texts, then the answer and three "on it"
    # the emergency contact was being called on the ladder: nobody after them is called
    assert ep.ladder_active is False

    # a second OK, from another contact: told it is already in hand; nobody else is told again
    assert reply(scout, EXTRA_SMS, " ok. ") in (200, 204)
    assert sent(scout, "on_it") == everyone_else
    assert (EXTRA_SMS, "Scout: Ana's low alert is already acknowledged.") in sent(scout, "reply_answer")

    calls = len([e for e in scout.log() if e.kind == "call"])
    for after in (120, 12 * 60):  # 2 and 14 minutes later, still low: snoozed as after a 1
        cycle = scout.poll(after=after)
        assert cycle.acted and cycle.counts["calls"] == 0
    scout.poll(after=2 * 60)  # 16 minutes: the snooze is over and it is still low
    assert len([e for e in scout.log() if e.kind == "call"]) == calls + 1


def test_1_from_the_user_while_the_call_is_still_ringing_acknowledges_it(scout: Scout) -> None:
    scout.poll()
    assert reply(scout, USER_PHONE, "1") in (200, 204)
    assert episode(scout).call.outcome == "acknowledged"  # type: ignore[union-attr]
    # the call then ends without a key: it changes nothing, and no contact is texted
    scout.finish_call(*UNANSWERED[scout.provider])
    assert sent(scout, "contacts") == [] and sent(scout, "on_it") == []
    assert [r for r, _ in sent(scout, "reply_answer")] == [USER_PHONE]


def test_a_whatsapp_reply_is_answered_on_whatsapp(scout: Scout) -> None:
    unanswered_call(scout)
    assert reply(scout, WHATSAPP_CONTACT, "Okay!", channel="whatsapp") in (200, 204)
    answers = [e for e in scout.log() if e.purpose == "reply_answer"]
    assert [(e.kind, e.recipient, e.status) for e in answers] == [("whatsapp", WHATSAPP_CONTACT, "sent")]


@pytest.mark.parametrize("text", ["STOP", "HELP", "12", "not ok", "", "yes"])
def test_other_words_are_left_alone(scout: Scout, text: str) -> None:
    unanswered_call(scout)
    before = len(scout.messages())
    assert reply(scout, EMERGENCY, text) in (200, 204)
    assert len(scout.messages()) == before
    assert episode(scout).acknowledged_at is None
    noted = [e for e in scout.log() if e.purpose == "reply"]
    assert [(e.recipient, e.outcome) for e in noted] == [(EMERGENCY, "ignored: not 1 or OK")]


def test_a_reply_from_an_unknown_number_is_ignored(scout: Scout) -> None:
    unanswered_call(scout)
    before = (len(scout.messages()), len(scout.log()))
    assert reply(scout, "+14155559999", "1") in (200, 204)
    assert (len(scout.messages()), len(scout.log())) == before
    assert episode(scout).acknowledged_at is None


def test_a_reply_with_no_open_episode_is_ignored(scout: Scout) -> None:
    scout.nightscout.show(120, 118, direction="Flat")
    scout.poll()
    assert reply(scout, EMERGENCY, "OK") in (200, 204)
    assert scout.messages() == []
    assert scout.store.get_state("sub-ana")[0].episode is None
    assert [e.outcome for e in scout.log() if e.purpose == "reply"] == ["ignored: no open alert for this number"]


def test_a_reply_after_the_all_clear_gets_all_clear_already(scout: Scout) -> None:
    unanswered_call(scout)
    scout.nightscout.show(95, 80, direction="SingleUp")
    scout.poll(after=120)  # (each poll is a new poller: the last one's lease has run out by then)
    assert len(sent(scout, "all_clear")) == 4  # the user and the three contacts
    assert reply(scout, EXTRA_SMS, "1") in (200, 204)
    assert sent(scout, "reply_answer") == [(EXTRA_SMS, "Scout: all clear already. Ana's blood glucose is back in range.")]
    assert scout.store.get_state("sub-ana")[0].episode is None


def test_a_replayed_inbound_webhook_is_refused_and_acts_once(scout: Scout) -> None:
    unanswered_call(scout)
    callback = inbound(scout, EMERGENCY, "OK")
    assert scout.post(callback).status_code in (200, 204)
    messages = len(scout.messages())
    assert scout.post(callback).status_code == 403
    assert len(scout.messages()) == messages
    assert len([e for e in scout.log() if e.purpose == "reply"]) == 1


def test_a_forged_inbound_webhook_is_refused_and_changes_nothing(scout: Scout) -> None:
    unanswered_call(scout)
    before = (len(scout.messages()), len(scout.log()))
    assert reply(scout, EMERGENCY, "OK", secret="not-the-real-secret-" + "0" * 32) == 403
    unsigned = inbound(scout, EMERGENCY, "OK")
    unsigned.headers.clear()
    assert scout.post(unsigned).status_code == 403
    # a genuine request whose text was changed on the way
    tampered = inbound(scout, EMERGENCY, "STOP")
    if tampered.form is not None:
        tampered.form["Body"] = "OK"
    else:
        assert tampered.body is not None
        tampered.body = tampered.body.replace(b'"STOP"', b'"OK"')
    assert scout.post(tampered).status_code == 403
    assert (len(scout.messages()), len(scout.log())) == before
    assert episode(scout).acknowledged_at is None


# --- the pure decision ----------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("1", True), ("OK", True), ("ok", True), (" Okay! ", True), ("ok.", True),
    ("11", False), ("STOP", False), ("okk", False), ("not ok", False), ("", False), ("0", False),
])
def test_what_counts_as_an_acknowledgement(text: str, expected: bool) -> None:
    assert is_acknowledgement(text) is expected


def test_the_others_are_told_the_contacts_name_when_the_user_gave_one() -> None:
    user = make_user(emergency_contact=Contact("+14155552672", "sms", name="Ben"))
    state = AlertState(episode=Episode(id="low-1", kind="low", started_at=1.0, calls=1,
                                       alerted=[["+14155552672", "sms"], ["+14155552673", "whatsapp"]]))
    decided = decide_reply(user, state, [], "+14155552672", "sms", "1", "k1", 100.0)
    told = [(a.recipient, a.text) for a in decided.actions if a.purpose == "on_it"]
    text = "Scout: Ben replied OK and is on it (Ana's low alert)."
    assert told == [("+14155552671", text), ("+14155552673", text)]  # Ana was called: she is told too


def test_an_urgent_low_acknowledged_by_text_is_called_again_after_5_minutes(scout: Scout) -> None:
    unanswered_call(scout)  # 54 mg/dL: below the urgent low (55)
    assert reply(scout, EMERGENCY, "OK") in (200, 204)
    assert (EMERGENCY, "Scout: thank you, Ana's low alert is acknowledged. Scout will call again in 5 minutes "
                       "if it is still low.") in sent(scout, "reply_answer")


def test_a_contact_who_was_not_texted_in_this_episode_cannot_acknowledge_it() -> None:
    user = make_user()
    state = AlertState(episode=Episode(id="low-1", kind="low", started_at=1.0, calls=1,
                                       alerted=[["+14155552672", "sms"]]))
    texted = decide_reply(user, state, [], "14155552672", "sms", "ok", "k1", 100.0)
    assert texted.outcome == "acknowledged" and texted.record.recipient == "+14155552672"
    not_texted = decide_reply(user, state, [], "+14155552674", "sms", "ok", "k2", 100.0)
    assert not_texted.outcome == "ignored: no open alert for this number" and not_texted.state is None


def test_two_people_who_share_a_contact_are_both_acknowledged(scout: Scout) -> None:
    other = make_user(scout.nightscout.url, id="sub-ben", email="ben@example.com", name="Ben",
                      phone="+14155552681", emergency_contact=Contact(EMERGENCY, "sms"), extra_contacts=())
    scout.store.save_user(other)
    scout.poll()
    # Ana's call goes unanswered (the two calls were placed concurrently: pick hers by number)
    ana_call = next(r for r in scout.fake.answered(f"{scout.provider}.calls") if digits_of(r.recipient) == USER_PHONE[1:])
    status, digits, answered_by = UNANSWERED[scout.provider]
    for callback in callbacks_for(ana_call, status, digits, answered_by, auth_token=scout.config.get("TWILIO_AUTH_TOKEN"),
                                  signature_secret=scout.config.get("NEXMO_SIGNATURE_SECRET")):
        assert scout.post(callback).status_code in (200, 204)
    ben_state = scout.store.get_state("sub-ben")[0]
    assert ben_state.episode is not None  # Ben is low too, his call still ringing
    assert reply(scout, EMERGENCY, "1") in (200, 204)
    assert episode(scout).acknowledged_at is not None
    # Ben's contact was not texted yet (his call has not ended): his episode is left alone
    assert scout.store.get_state("sub-ben")[0].episode.acknowledged_at is None  # type: ignore[union-attr]
