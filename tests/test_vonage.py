"""The Vonage backend: the real `vonage` v4 SDK sends its real requests to a local fake
Vonage (through SCOUT_VONAGE_BASE_URL), and we check exactly what it sent."""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from scout.config import ConfigError, load_config
from scout.telephony import make_messenger
from scout.telephony.base import TelephonyError, call_script
from scout.telephony.http import RetryableTelephonyError
from scout.telephony.vonage import VonageMessenger
from tests.fake_providers import FakeProviders, Recorded
from tests.telephony_setup import NEXMO_APPLICATION_ID, NEXMO_NUMBER, NEXMO_WHATSAPP_NUMBER, SITE_URL, vonage_env

SPEECH = "Ana, your blood glucose is 3.0 millimoles per liter and falling, 3 minutes ago."
CALL_KEY = "sub-ana:low-1700000000:call:1"


def messenger_for(tmp_path: Path, fake: FakeProviders, key_pem: bytes, **extra: str) -> VonageMessenger:
    messenger = make_messenger(load_config(vonage_env(tmp_path, fake, key_pem, **extra)))
    assert isinstance(messenger, VonageMessenger)
    return messenger


def application_claims(request: Recorded, key_pem: bytes) -> dict[str, object]:
    """The request's bearer JWT, verified with the public half of the application key."""
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    public_key = serialization.load_pem_private_key(key_pem, password=None).public_key()
    claims: dict[str, object] = jwt.decode(token, public_key, algorithms=["RS256"])  # type: ignore[arg-type]
    return claims


def test_an_alert_call_speaks_the_alert_collects_one_digit_and_reports_events_to_scout(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes
) -> None:
    placed = messenger_for(tmp_path, fake, vonage_key_pem).place_call("+14155552671", SPEECH, CALL_KEY)

    (request,) = fake.received("vonage.calls")
    assert request.path == "/v1/calls"
    assert application_claims(request, vonage_key_pem)["application_id"] == NEXMO_APPLICATION_ID
    assert placed.provider_id == request.answer["uuid"]
    key = quote(CALL_KEY, safe="")
    assert request.json == {
        "to": [{"type": "phone", "number": "14155552671"}],
        "from": {"type": "phone", "number": NEXMO_NUMBER},
        "ncco": [
            {"action": "talk", "text": " ".join(call_script(SPEECH)), "bargeIn": True},
            {"action": "input", "type": ["dtmf"], "dtmf": {"maxDigits": 1, "timeOut": 8},
             "eventUrl": [f"{SITE_URL}/webhooks/vonage/input?call={key}"], "eventMethod": "POST"},
            {"action": "talk", "text": "No key was pressed. Scout will keep trying to reach someone. Goodbye."},
        ],
        "event_url": [f"{SITE_URL}/webhooks/vonage/events?call={key}"],
        "event_method": "POST",
        "machine_detection": "continue",
        "length_timer": 120,
    }


def test_sms_and_whatsapp_go_through_the_messages_api(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes
) -> None:
    messenger = messenger_for(tmp_path, fake, vonage_key_pem)
    sms_id = messenger.send_message("+14155552672", "sms", "Scout alert: Ana did not answer.")
    whatsapp_id = messenger.send_message("+14155552673", "whatsapp", "Scout alert: Ana did not answer.")

    sms, whatsapp = fake.received("vonage.messages")
    assert sms.path == "/v1/messages"
    assert application_claims(sms, vonage_key_pem)["application_id"] == NEXMO_APPLICATION_ID
    assert sms.json == {"to": "14155552672", "from": NEXMO_NUMBER, "text": "Scout alert: Ana did not answer.",
                        "channel": "sms", "message_type": "text"}
    assert whatsapp.json == {"to": "14155552673", "from": NEXMO_WHATSAPP_NUMBER,
                             "text": "Scout alert: Ana did not answer.", "channel": "whatsapp",
                             "message_type": "text"}
    assert (sms_id, whatsapp_id) == (sms.answer["message_uuid"], whatsapp.answer["message_uuid"])


def test_a_server_error_is_raised_at_once_for_the_engines_paced_retry(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes
) -> None:
    fake.fail("vonage.messages", 500, times=1)
    with pytest.raises(RetryableTelephonyError) as raised:
        messenger_for(tmp_path, fake, vonage_key_pem).send_message("+14155552672", "sms", "hello")
    assert raised.value.status == 500 and not raised.value.permanent
    assert [r.status for r in fake.received("vonage.messages")] == [500]


def test_rate_limiting_is_raised_with_the_providers_retry_after(
        tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes) -> None:
    fake.fail("vonage.calls", 429, {"type": "https://developer.vonage.com/api-errors#throttled",
                                    "title": "Throttled"}, times=1)
    with pytest.raises(RetryableTelephonyError) as raised:
        messenger_for(tmp_path, fake, vonage_key_pem).place_call("+14155552671", SPEECH, CALL_KEY)
    assert raised.value.status == 429 and raised.value.retry_after == 1.0 and not raised.value.permanent
    assert [r.status for r in fake.received("vonage.calls")] == [429]


@pytest.mark.parametrize("status, problem, code, words", [
    (422, {"type": "https://developer.vonage.com/api-errors/messages#1150", "title": "Invalid params",
           "detail": "The value of the `to` parameter is invalid."}, "1150", "Invalid params"),
    (402, {"type": "https://developer.vonage.com/api-errors/#low-balance", "title": "Low balance",
           "detail": "This request could not be performed due to your account balance being low."},
     "low-balance", "balance is too low"),
    (401, {"type": "https://developer.vonage.com/api-errors#unauthorized", "title": "Unauthorized"},
     "unauthorized", "NEXMO_PRIVATE_KEY"),
])
def test_refusals_are_permanent_with_vonages_code_and_not_retried(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes, status: int, problem: dict[str, str], code: str,
    words: str,
) -> None:
    fake.fail("vonage.messages", status, problem, times=None)
    with pytest.raises(TelephonyError) as raised:
        messenger_for(tmp_path, fake, vonage_key_pem).send_message("+14155552672", "sms", "hello")
    assert raised.value.permanent and raised.value.code == code and words in str(raised.value)
    assert len(fake.received("vonage.messages")) == 1


def test_a_number_vonage_cannot_take_is_refused_before_any_request(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes
) -> None:
    with pytest.raises(TelephonyError) as raised:
        messenger_for(tmp_path, fake, vonage_key_pem).send_message("+0123", "sms", "hello")
    assert raised.value.permanent and raised.value.code == "invalid-request"
    assert fake.received() == []


def test_an_unreachable_vonage_is_tried_three_times_within_a_few_seconds(
    tmp_path: Path, vonage_key_pem: bytes
) -> None:
    closed = FakeProviders()
    closed.stop()
    started = time.monotonic()
    with pytest.raises(TelephonyError) as raised:
        messenger_for(tmp_path, closed, vonage_key_pem).place_call("+14155552671", SPEECH, CALL_KEY)
    assert not raised.value.permanent and raised.value.code == "unreachable"
    assert 1.2 <= time.monotonic() - started < 5


def test_every_request_has_a_timeout_and_the_sdk_does_not_retry_on_its_own(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes
) -> None:
    options = messenger_for(tmp_path, fake, vonage_key_pem).client.http_client.http_client_options
    assert (options.timeout, options.max_retries) == (8, 0)


def test_whatsapp_without_a_whatsapp_sender_is_refused_without_a_request(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes
) -> None:
    messenger = messenger_for(tmp_path, fake, vonage_key_pem, NEXMO_WHATSAPP_NUMBER="")
    with pytest.raises(TelephonyError, match="NEXMO_WHATSAPP_NUMBER is not set"):
        messenger.send_message("+14155552673", "whatsapp", "hello")
    assert fake.received() == []


def test_a_missing_private_key_file_stops_the_start_naming_the_variable(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes
) -> None:
    with pytest.raises(ConfigError, match=r"^NEXMO_PRIVATE_KEY names .*cannot be read"):
        load_config(vonage_env(tmp_path, fake, vonage_key_pem, NEXMO_PRIVATE_KEY=str(tmp_path / "missing.key")))
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello")
    with pytest.raises(ConfigError, match=r"^NEXMO_PRIVATE_KEY names .*not a PEM private key"):
        load_config(vonage_env(tmp_path, fake, vonage_key_pem, NEXMO_PRIVATE_KEY=str(not_a_key)))


def test_a_vonage_number_may_be_written_with_or_without_the_plus_but_must_be_a_number(
    tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes
) -> None:
    assert load_config(vonage_env(tmp_path, fake, vonage_key_pem, NEXMO_NUMBER="+14155550100")).telephony == "vonage"
    with pytest.raises(ConfigError, match=r"^NEXMO_NUMBER must be a phone number in E\.164"):
        load_config(vonage_env(tmp_path, fake, vonage_key_pem, NEXMO_NUMBER="Scout"))
