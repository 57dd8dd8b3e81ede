"""The Twilio backend: alert calls with keypress acknowledgement, SMS and WhatsApp.

A call speaks its TwiML (built with the SDK's VoiceResponse, so every word is
XML-escaped) inside <Gather numDigits="1">; pressing a key posts `Digits` to the
gather webhook, and the final call status (with `AnsweredBy`, from answering-machine
detection) goes to the status webhook. Both URLs are built from SITE_URL.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from scout.logs import mask_phone
from scout.telephony.base import PRESS_ONE, CallPlaced, TelephonyError, call_script
from scout.telephony.http import (
    REQUEST_TIMEOUT,
    TWILIO_GATHER_PATH,
    TWILIO_STATUS_PATH,
    RetryableTelephonyError,
    callback_url,
    rebase_url,
    transport_error,
    with_retries,
)

log = logging.getLogger("scout.telephony.twilio")
# The SDK logs every request and its headers at INFO; Scout logs what it sent itself.
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)

T = TypeVar("T")

GATHER_TIMEOUT = 8  # seconds Twilio waits for a key after the prompt
CALL_TIME_LIMIT = 120  # seconds: the alert takes under a minute; never leave a long voicemail
NO_KEY_PRESSED = "No key was pressed. Scout will keep trying to reach someone. Goodbye."
ACKNOWLEDGED_SPEECH = "Thank you. Scout has noted that you heard this alert. Goodbye."

# What to tell the operator or user for the errors they can fix; every 4xx is permanent.
KNOWN_ERRORS = {
    20003: "Twilio refused the credentials: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
    20005: "the Twilio account is not active (suspended or out of funds)",
    21211: "the phone number is not a valid number",
    21214: "the phone number cannot be reached",
    21408: "the Twilio account may not call or text this country (Geo Permissions)",
    21608: "a Twilio trial account can only reach verified numbers: verify this number or upgrade",
    21610: "the recipient has replied STOP to this number",
    21612: "Twilio cannot route messages to this number from TWILIO_NUMBER",
    21614: "the number cannot receive SMS (not a mobile number)",
    63007: "TWILIO_WHATSAPP_NUMBER is not a WhatsApp sender on this account",
}


class RebasedTwilioHttpClient(TwilioHttpClient):
    """Twilio's own HTTP client, sending every request to SCOUT_TWILIO_BASE_URL instead
    of Twilio's hosts (a local double, a staging proxy). Everything else is the SDK's."""

    def __init__(self, base_url: str, timeout: float = REQUEST_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        return super().request(method, rebase_url(url, self.base_url), *args, **kwargs)


def alert_twiml(speech: str, gather_url: str) -> str:
    """The alert, twice, and the request to press 1, all inside one Gather."""
    response = VoiceResponse()
    gather = response.gather(num_digits=1, action=gather_url, method="POST", timeout=GATHER_TIMEOUT)
    for line in call_script(speech):
        gather.say(line)
    response.say(NO_KEY_PRESSED)  # reached only when the Gather ends without a key
    return str(response)


def acknowledged_twiml() -> str:
    response = VoiceResponse()
    response.say(ACKNOWLEDGED_SPEECH)
    response.hangup()
    return str(response)


def no_key_twiml() -> str:
    response = VoiceResponse()
    response.say(NO_KEY_PRESSED)
    response.hangup()
    return str(response)


def ask_again_twiml(pressed: str, gather_url: str) -> str:
    """Someone pressed another key: ask once more for a 1."""
    response = VoiceResponse()
    gather = response.gather(num_digits=1, action=gather_url, method="POST", timeout=GATHER_TIMEOUT)
    gather.say(f"You pressed {pressed}. {PRESS_ONE}")
    response.say(NO_KEY_PRESSED)
    return str(response)


def _error_from_twilio(status: int, code: Any, message: str) -> TelephonyError:
    code_text = str(code or status)
    hint = KNOWN_ERRORS.get(code) if isinstance(code, int) else None
    text = f"Twilio refused the request ({status}): {hint or message}"
    if status == 429 or status >= 500:
        return RetryableTelephonyError(text, code=code_text, status=status)
    return TelephonyError(text, code=code_text, permanent=True)


def twilio_request(operation: Callable[[], T], what: str) -> T:
    """Run one SDK request, turning every failure into a TelephonyError that says
    whether trying again can help."""
    try:
        return operation()
    except TwilioRestException as exc:
        raise _error_from_twilio(exc.status, exc.code, exc.msg) from exc
    except TwilioServiceException as exc:
        raise _error_from_twilio(exc.status, exc.code, f"{exc.title}: {exc.detail or ''}".rstrip(": ")) from exc
    except (requests.exceptions.RequestException, TwilioException) as exc:
        raise transport_error(exc, what, "Twilio") from exc


class TwilioMessenger:
    name = "twilio"

    def __init__(self, client: Client, number: str, whatsapp_number: str, site_url: str) -> None:
        self.client = client
        self.number = number
        self.whatsapp_number = whatsapp_number
        self.site_url = site_url

    @classmethod
    def from_config(cls, config: Any) -> TwilioMessenger:
        base_url = config.get("SCOUT_TWILIO_BASE_URL").strip()
        http_client = (RebasedTwilioHttpClient(base_url) if base_url
                       else TwilioHttpClient(timeout=REQUEST_TIMEOUT))
        client = Client(config.get("TWILIO_ACCOUNT_SID"), config.get("TWILIO_AUTH_TOKEN"), http_client=http_client)
        return cls(client, config.get("TWILIO_NUMBER").strip(), config.get("TWILIO_WHATSAPP_NUMBER").strip(),
                   config.site_url)

    def place_call(self, to: str, speech: str, call_key: str) -> CallPlaced:
        twiml = alert_twiml(speech, callback_url(self.site_url, TWILIO_GATHER_PATH, call_key))
        status_url = callback_url(self.site_url, TWILIO_STATUS_PATH, call_key)
        what = f"Twilio call to {to}"

        def create() -> Any:
            return self.client.calls.create(
                to=to, from_=self.number, twiml=twiml,
                status_callback=status_url, status_callback_method="POST",
                status_callback_event=["completed"],  # one callback, carrying the final CallStatus
                machine_detection="Enable", time_limit=CALL_TIME_LIMIT,
            )

        call = with_retries(lambda: twilio_request(create, what), what)
        log.info("twilio call placed to=%s sid=%s", mask_phone(to), call.sid)
        return CallPlaced(str(call.sid))

    def send_message(self, to: str, channel: str, body: str) -> str:
        if channel == "whatsapp":
            if not self.whatsapp_number:
                raise TelephonyError(
                    "TWILIO_WHATSAPP_NUMBER is not set, so Scout cannot send WhatsApp messages: set it, "
                    "or ask this contact to choose SMS", code="no-whatsapp-sender", permanent=True)
            sender, recipient = f"whatsapp:{self.whatsapp_number}", f"whatsapp:{to}"
        else:
            sender, recipient = self.number, to
        what = f"Twilio {channel} to {to}"
        message = with_retries(
            lambda: twilio_request(lambda: self.client.messages.create(to=recipient, from_=sender, body=body), what),
            what,
        )
        return str(message.sid)
