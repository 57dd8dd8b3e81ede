"""The telephony webhooks, with signatures computed for real: Twilio's HMAC-SHA1 over
the public URL and form, Vonage's HS256 JWT carrying the body's SHA-256. A request
that fails verification gets 403 and changes nothing; the same event twice acts once."""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import jwt
import pytest

from scout.config import load_config
from tests.fake_providers import Callback, FakeProviders, twilio_signed, vonage_signed
from tests.telephony_setup import Nightscout, Scout, vonage_env

NO_ANSWER = {"twilio": "no-answer", "vonage": "unanswered"}


def call_outcome(scout: Scout) -> str:
    episode = scout.store.get_state("sub-ana")[0].episode
    assert episode is not None and episode.call is not None
    return episode.call.outcome


def contact_messages(scout: Scout) -> list[str]:
    return [e.recipient for e in scout.log() if e.purpose == "contacts"]


@pytest.fixture
def calling(scout: Scout) -> Scout:
    """Scout has just placed an alert call that nobody has answered yet."""
    scout.poll()
    assert call_outcome(scout) == "pending"
    return scout


def test_a_signed_no_answer_texts_every_contact_and_a_replay_acts_once(calling: Scout) -> None:
    callbacks = calling.callbacks(NO_ANSWER[calling.provider])
    assert [calling.post(c).status_code for c in callbacks] in ([200], [204])
    assert call_outcome(calling) == "unanswered"
    assert sorted(contact_messages(calling)) == ["+14155552672", "+14155552673", "+14155552674"]
    assert len(calling.messages()) == 3

    assert [calling.post(c).status_code for c in callbacks] in ([200], [204])  # delivered again
    assert len(calling.messages()) == 3 and len(contact_messages(calling)) == 3
    # the ladder called the emergency contact once, however often the status came
    calls = calling.fake.answered(f"{calling.provider}.calls")
    assert [r.recipient.lstrip("+") for r in calls] == ["14155552671", "14155552672"]
    call = next(e for e in calling.log() if e.purpose == "alert")
    assert call.outcome == f"unanswered: {NO_ANSWER[calling.provider]}"


def test_a_status_before_the_end_of_the_call_changes_nothing(calling: Scout) -> None:
    assert calling.finish_call("ringing" if calling.provider == "twilio" else "answered")[0] in (200, 204)
    assert call_outcome(calling) == "pending" and calling.messages() == []


def test_pressing_1_acknowledges_and_the_final_status_then_texts_nobody(calling: Scout) -> None:
    press, final = calling.callbacks("completed", digits="1")
    answer = calling.post(press)
    assert answer.status_code == 200
    if calling.provider == "twilio":
        twiml = ElementTree.fromstring(answer.data)
        assert [child.tag for child in twiml] == ["Say", "Hangup"]
        assert "Thank you" in (twiml.find("Say").text or "")  # type: ignore[union-attr]
    else:
        assert answer.json == [{"action": "talk", "text": "Thank you. Scout has noted that you heard this alert. "
                                                          "Goodbye."}]
    assert call_outcome(calling) == "acknowledged"
    assert calling.post(final).status_code in (200, 204)
    assert call_outcome(calling) == "acknowledged" and calling.messages() == []
    assert next(e for e in calling.log() if e.kind == "call").outcome == "acknowledged"


def test_another_key_asks_again_for_a_1_and_acknowledges_nothing(calling: Scout) -> None:
    press, _final = calling.callbacks("completed", digits="7")
    answer = calling.post(press)
    assert answer.status_code == 200 and call_outcome(calling) == "pending"
    if calling.provider == "twilio":
        gather = ElementTree.fromstring(answer.data).find("Gather")
        assert gather is not None and gather.attrib["action"] == press.url
        assert "You pressed 7. Press 1" in (gather.find("Say").text or "")  # type: ignore[union-attr]
    else:
        talk, ask, _goodbye = answer.json
        assert talk["text"].startswith("You pressed 7. Press 1") and ask["eventUrl"] == [press.url]


def test_a_signed_event_for_an_unknown_call_is_accepted_and_changes_nothing(calling: Scout) -> None:
    (final,) = calling.callbacks(NO_ANSWER[calling.provider])
    if calling.provider == "twilio":
        form = {**(final.form or {}), "CallSid": "CA" + "0" * 32}
        forged = twilio_signed(final.url.split("?")[0], form, calling.config.get("TWILIO_AUTH_TOKEN"))
    else:
        payload = {**json.loads(final.body or b"{}"), "uuid": "00000000-0000-0000-0000-000000000000"}
        forged = vonage_signed(final.url.split("?")[0], payload, calling.config.get("NEXMO_SIGNATURE_SECRET"))
    assert calling.post(forged).status_code in (200, 204)
    assert call_outcome(calling) == "pending" and calling.messages() == []


def test_the_tutorials_webhook_paths_are_aliases(calling: Scout) -> None:
    (final,) = calling.callbacks(NO_ANSWER[calling.provider])
    alias = "/webhooks/twilio-on-completed" if calling.provider == "twilio" else "/webhooks/events"
    url = final.url.replace(final.url.split("?")[0].split("scout.example.org")[1], alias)
    if calling.provider == "twilio":
        resigned = twilio_signed(url, final.form or {}, calling.config.get("TWILIO_AUTH_TOKEN"))
    else:
        resigned = vonage_signed(url, json.loads(final.body or b"{}"), calling.config.get("NEXMO_SIGNATURE_SECRET"))
    assert calling.post(resigned).status_code in (200, 204)
    assert call_outcome(calling) == "unanswered" and len(calling.messages()) == 3


# --- forgeries ----------------------------------------------------------------------


def twilio_forgeries(final: Callback, token: str) -> Iterator[tuple[str, Callback]]:
    form = final.form or {}
    yield "wrong signature", twilio_signed(final.url, form, "not-the-auth-token")
    yield "signed for another URL", dataclasses.replace(
        final, headers=twilio_signed(final.url.replace("scout.example.org", "evil.example.org"), form, token).headers)
    yield "tampered body", dataclasses.replace(final, form={**form, "CallStatus": "busy"})
    yield "signed, then sent to another alert", dataclasses.replace(
        final, url=final.url.split("?")[0] + "?call=sub-bo%3Alow-1%3Acall%3A1")
    yield "missing header", dataclasses.replace(final, headers={})


def vonage_forgeries(final: Callback, secret: str) -> Iterator[tuple[str, Callback]]:
    payload = json.loads(final.body or b"{}")
    yield "wrong secret", vonage_signed(final.url, payload, "x" * 64)
    yield "tampered body", dataclasses.replace(final, body=json.dumps({**payload, "status": "busy"}).encode())
    yield "missing header", dataclasses.replace(final, headers={"Content-Type": "application/json"})
    yield "not a bearer token", dataclasses.replace(final, headers={"Authorization": "Basic YTpi"})
    no_hash = jwt.encode({"iat": int(time.time())}, secret, algorithm="HS256")
    yield "no payload hash", dataclasses.replace(final, headers={"Authorization": f"Bearer {no_hash}"})
    unsigned = jwt.encode({"iat": int(time.time()), "payload_hash": "0"}, "", algorithm="none")
    yield "unsigned token", dataclasses.replace(final, headers={"Authorization": f"Bearer {unsigned}"})
    yield "issued in the future", vonage_signed(final.url, payload, secret, iat=time.time() + 3600)


def test_forged_webhooks_get_403_and_change_nothing(calling: Scout) -> None:
    press, final = calling.callbacks(NO_ANSWER[calling.provider], digits="1")
    log_before = calling.log()
    if calling.provider == "twilio":
        forgeries = [*twilio_forgeries(final, calling.config.get("TWILIO_AUTH_TOKEN")),
                     ("key press, wrong signature", twilio_signed(press.url, press.form or {}, "nope"))]
    else:
        forgeries = [*vonage_forgeries(final, calling.config.get("NEXMO_SIGNATURE_SECRET")),
                     ("key press, wrong secret", vonage_signed(press.url, json.loads(press.body or b"{}"), "y" * 64))]
    refused = {name: calling.post(forged).status_code for name, forged in forgeries}
    assert refused == {name: 403 for name, _ in forgeries}
    assert call_outcome(calling) == "pending"
    assert calling.messages() == [] and calling.log() == log_before


def test_a_twilio_webhook_is_refused_when_scout_has_no_twilio_auth_token(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes, nightscout: Nightscout
) -> None:
    scout = Scout(load_config(vonage_env(tmp_path, fake, vonage_key_pem)), fake, nightscout)
    scout.poll()
    forged = twilio_signed("https://scout.example.org/webhooks/twilio/status",
                           {"CallSid": "CA1", "CallStatus": "no-answer"}, "")
    assert scout.post(forged).status_code == 403
    assert scout.client.post("/webhooks/twilio/status", data={"CallSid": "CA1"}).status_code == 403
    scout.close()


def test_webhooks_need_no_csrf_token_but_only_accept_posts(calling: Scout) -> None:
    assert calling.client.get("/webhooks/twilio/status").status_code == 405
    assert calling.client.get("/webhooks/vonage/events").status_code == 405


def test_a_callback_that_beats_the_stored_call_id_still_finds_its_call_by_the_signed_url(calling: Scout) -> None:
    # the instant between the provider accepting the call and Scout storing its id
    call = next(e for e in calling.log() if e.kind == "call")
    calling.store.update_log(call.key, provider_id="", status="sending")
    calling.finish_call(NO_ANSWER[calling.provider])
    assert call_outcome(calling) == "unanswered" and len(calling.messages()) == 3


def test_a_call_id_that_belongs_to_another_alert_than_the_url_names_changes_nothing(calling: Scout) -> None:
    (final,) = calling.callbacks(NO_ANSWER[calling.provider])
    other_url = final.url.split("?")[0] + "?call=sub-bo%3Alow-1%3Acall%3A1"
    if calling.provider == "twilio":
        forged = twilio_signed(other_url, final.form or {}, calling.config.get("TWILIO_AUTH_TOKEN"))
    else:
        forged = vonage_signed(other_url, json.loads(final.body or b"{}"), calling.config.get("NEXMO_SIGNATURE_SECRET"))
    assert calling.post(forged).status_code in (200, 204)
    assert call_outcome(calling) == "pending" and calling.messages() == []


def test_a_call_to_scouts_vonage_number_hears_that_it_only_places_alerts(calling: Scout) -> None:
    answer = calling.client.get("/webhooks/vonage/answer?from=14155550199")
    assert answer.status_code == 200 and answer.get_json()[0]["action"] == "talk"
    assert "only places glucose alerts" in answer.get_json()[0]["text"] and call_outcome(calling) == "pending"
