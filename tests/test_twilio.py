"""The Twilio backend: the real `twilio` SDK sends its real requests to a local fake
Twilio, and we check exactly what it sent."""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote
from xml.etree import ElementTree

import pytest

from scout.config import ConfigError, load_config
from scout.telephony import make_messenger
from scout.telephony.base import TelephonyError, call_script
from scout.telephony.http import RetryableTelephonyError
from scout.telephony.twilio import TwilioMessenger
from tests.fake_providers import FakeProviders
from tests.telephony_setup import SITE_URL, TWILIO_NUMBER, TWILIO_SID, TWILIO_WHATSAPP_NUMBER, twilio_env

SPEECH = "Ana, your blood glucose is 54 milligrams per deciliter and falling, 3 minutes ago."
CALL_KEY = "sub-ana:low-1700000000:call:1"


def messenger_for(tmp_path: Path, fake: FakeProviders, **extra: str) -> TwilioMessenger:
    messenger = make_messenger(load_config(twilio_env(tmp_path, fake, **extra)))
    assert isinstance(messenger, TwilioMessenger)
    return messenger


def test_an_alert_call_asks_for_a_key_and_reports_its_final_status_to_scout(
    tmp_path: Path, fake: FakeProviders
) -> None:
    messenger = messenger_for(tmp_path, fake)
    placed = messenger.place_call("+14155552671", SPEECH, CALL_KEY)

    (request,) = fake.received("twilio.calls")
    assert request.path == f"/2010-04-01/Accounts/{TWILIO_SID}/Calls.json"
    assert request.basic_auth == (TWILIO_SID, messenger.client.password)
    assert placed.provider_id == request.answer["sid"] and placed.outcome == ""
    assert request.field("To") == "+14155552671" and request.field("From") == TWILIO_NUMBER
    key = quote(CALL_KEY, safe="")
    assert request.field("StatusCallback") == f"{SITE_URL}/webhooks/twilio/status?call={key}"
    assert request.field("StatusCallbackMethod") == "POST"
    assert request.form["StatusCallbackEvent"] == ["completed"]
    assert request.field("MachineDetection") == "Enable"
    twiml = ElementTree.fromstring(request.field("Twiml"))
    gather = twiml.find("Gather")
    assert gather is not None
    assert gather.attrib == {"action": f"{SITE_URL}/webhooks/twilio/gather?call={key}", "method": "POST",
                             "numDigits": "1", "timeout": "8"}
    assert [say.text for say in gather.findall("Say")] == call_script(SPEECH)
    assert [say.text for say in twiml.findall("Say")] == ["No key was pressed. Scout will keep trying to reach someone. Goodbye."]


def test_the_spoken_text_is_xml_escaped_by_the_sdk(tmp_path: Path, fake: FakeProviders) -> None:
    messenger_for(tmp_path, fake).place_call("+14155552671", "<Ana & Bo>, your glucose is 54", CALL_KEY)
    twiml_text = fake.received("twilio.calls")[0].field("Twiml")
    assert "&lt;Ana &amp; Bo&gt;" in twiml_text
    says = ElementTree.fromstring(twiml_text).find("Gather").findall("Say")  # type: ignore[union-attr]
    assert says[0].text == "<Ana & Bo>, your glucose is 54"


def test_an_sms_and_a_whatsapp_message_go_from_the_configured_senders(tmp_path: Path, fake: FakeProviders) -> None:
    messenger = messenger_for(tmp_path, fake)
    sms_id = messenger.send_message("+14155552672", "sms", "Scout alert: Ana did not answer.")
    whatsapp_id = messenger.send_message("+14155552673", "whatsapp", "Scout alert: Ana did not answer.")

    sms, whatsapp = fake.received("twilio.messages")
    assert sms.path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    assert (sms.field("To"), sms.field("From"), sms.field("Body")) == (
        "+14155552672", TWILIO_NUMBER, "Scout alert: Ana did not answer.")
    assert (whatsapp.field("To"), whatsapp.field("From")) == (
        "whatsapp:+14155552673", f"whatsapp:{TWILIO_WHATSAPP_NUMBER}")
    assert (sms_id, whatsapp_id) == (sms.answer["sid"], whatsapp.answer["sid"])


def test_a_server_error_is_raised_at_once_for_the_engines_paced_retry(tmp_path: Path, fake: FakeProviders) -> None:
    fake.fail("twilio.messages", 500, times=1)
    with pytest.raises(RetryableTelephonyError) as raised:
        messenger_for(tmp_path, fake).send_message("+14155552672", "sms", "hello")
    assert raised.value.status == 500 and not raised.value.permanent
    assert [r.status for r in fake.received("twilio.messages")] == [500]  # no burst of retries past the pace


def test_rate_limiting_is_raised_at_once_and_never_permanent(tmp_path: Path, fake: FakeProviders) -> None:
    fake.fail_twilio("twilio.calls", 20429, "Too Many Requests", status=429, times=2)
    with pytest.raises(RetryableTelephonyError) as raised:
        messenger_for(tmp_path, fake).place_call("+14155552671", SPEECH, CALL_KEY)
    assert raised.value.status == 429 and not raised.value.permanent and raised.value.code == "20429"
    assert [r.status for r in fake.received("twilio.calls")] == [429]


def test_an_invalid_number_is_a_permanent_error_with_twilios_code_and_is_not_retried(
    tmp_path: Path, fake: FakeProviders
) -> None:
    fake.fail_twilio("twilio.messages", 21211, "The 'To' number +1415555267 is not a valid phone number.")
    with pytest.raises(TelephonyError) as raised:
        messenger_for(tmp_path, fake).send_message("+1415555267", "sms", "hello")
    assert raised.value.permanent and raised.value.code == "21211"
    assert "not a valid number" in str(raised.value)
    assert len(fake.received("twilio.messages")) == 1


@pytest.mark.parametrize("code, status, words", [
    (21608, 400, "trial account"),
    (20003, 401, "TWILIO_AUTH_TOKEN"),
    (20005, 401, "not active"),
])
def test_trial_auth_and_account_errors_are_permanent(
    tmp_path: Path, fake: FakeProviders, code: int, status: int, words: str
) -> None:
    fake.fail_twilio("twilio.calls", code, "refused", status=status)
    with pytest.raises(TelephonyError) as raised:
        messenger_for(tmp_path, fake).place_call("+14155552671", SPEECH, CALL_KEY)
    assert raised.value.permanent and raised.value.code == str(code) and words in str(raised.value)


def test_an_unreachable_twilio_is_tried_three_times_within_a_few_seconds(tmp_path: Path) -> None:
    closed = FakeProviders()
    closed.stop()  # nothing listens on its port any more
    messenger = messenger_for(tmp_path, closed)
    started = time.monotonic()
    with pytest.raises(TelephonyError) as raised:
        messenger.send_message("+14155552672", "sms", "hello")
    assert not raised.value.permanent and raised.value.code == "unreachable"
    assert 1.2 <= time.monotonic() - started < 5


def test_every_request_has_a_timeout(tmp_path: Path, fake: FakeProviders) -> None:
    assert messenger_for(tmp_path, fake).client.http_client.timeout == 8


def test_whatsapp_without_a_whatsapp_sender_is_refused_without_a_request(
    tmp_path: Path, fake: FakeProviders
) -> None:
    messenger = messenger_for(tmp_path, fake, TWILIO_WHATSAPP_NUMBER="")
    with pytest.raises(TelephonyError, match="TWILIO_WHATSAPP_NUMBER is not set") as raised:
        messenger.send_message("+14155552673", "whatsapp", "hello")
    assert raised.value.permanent
    assert fake.received() == []


@pytest.mark.parametrize("name, value, words", [
    ("TWILIO_ACCOUNT_SID", "SK123", "starts with AC"),
    ("TWILIO_NUMBER", "555-1234", "E.164"),
    ("TWILIO_WHATSAPP_NUMBER", "whatsapp:+14155238886", "E.164"),
    ("SCOUT_TWILIO_BASE_URL", "127.0.0.1:4010", "http(s) base URL"),
])
def test_wrong_twilio_settings_stop_the_start_naming_the_variable(
    tmp_path: Path, fake: FakeProviders, name: str, value: str, words: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(twilio_env(tmp_path, fake, **{name: value}))
    assert str(raised.value).startswith(name) and words in str(raised.value)
