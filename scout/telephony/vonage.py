"""The Vonage backend (SDK `vonage` v4): alert calls with keypress acknowledgement,
and SMS and WhatsApp through the Messages API v1.

A call runs an NCCO: one `talk` (the alert twice and the request to press 1,
interruptible by a key) and an `input` collecting one DTMF digit, posted to the input
webhook. Call progress (including `machine` for voicemail) goes to the event webhook.
Both URLs are built from SITE_URL.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from pydantic import ValidationError
from requests.adapters import HTTPAdapter
from vonage import Auth, HttpClientOptions, Vonage
from vonage_http_client.errors import HttpRequestError
from vonage_messages.models import Sms, WhatsappText
from vonage_utils.errors import VonageError
from vonage_voice.models import CreateCallRequest, Dtmf, Input, Phone, Talk, ToPhone

from scout.logs import mask_phone
from scout.telephony.base import PRESS_ONE, CallPlaced, TelephonyError, call_script
from scout.telephony.http import (
    REQUEST_TIMEOUT,
    VONAGE_EVENT_PATH,
    VONAGE_INPUT_PATH,
    RetryableTelephonyError,
    callback_url,
    digits_only,
    retry_after_seconds,
    transport_error,
    with_retries,
)

log = logging.getLogger("scout.telephony.vonage")

T = TypeVar("T")

INPUT_TIMEOUT = 8  # seconds Vonage waits for a key after the prompt
CALL_LENGTH_LIMIT = 120  # seconds after answering: never leave a long voicemail
NO_KEY_PRESSED = "No key was pressed. Scout will keep trying to reach someone. Goodbye."
ACKNOWLEDGED_SPEECH = "Thank you. Scout has noted that you heard this alert. Goodbye."


class PlainHttpAdapter(HTTPAdapter):
    """The Vonage SDK always builds https:// URLs. For an http:// SCOUT_VONAGE_BASE_URL
    (a local double) this adapter, mounted for that one host only, sends the request
    over plain http instead."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        assert request.url is not None
        request.url = "http://" + request.url.removeprefix("https://")
        return super().send(request, *args, **kwargs)


def alert_ncco(speech: str, input_url: str) -> list[Any]:
    """The alert, twice, and the request to press 1; a key press cuts the speech short."""
    return [
        Talk(text=" ".join(call_script(speech)), bargeIn=True),
        Input(type=["dtmf"], dtmf=Dtmf(maxDigits=1, timeOut=INPUT_TIMEOUT), eventUrl=[input_url],
              eventMethod="POST"),
        Talk(text=NO_KEY_PRESSED),  # reached only when the input ends without a key
    ]


def acknowledged_ncco() -> list[dict[str, Any]]:
    return [Talk(text=ACKNOWLEDGED_SPEECH).model_dump(mode="json", by_alias=True, exclude_none=True)]


def ask_again_ncco(pressed: str, input_url: str) -> list[dict[str, Any]]:
    """Someone pressed another key: ask once more for a 1."""
    actions = [
        Talk(text=f"You pressed {pressed}. {PRESS_ONE}", bargeIn=True),
        Input(type=["dtmf"], dtmf=Dtmf(maxDigits=1, timeOut=INPUT_TIMEOUT), eventUrl=[input_url],
              eventMethod="POST"),
        Talk(text=NO_KEY_PRESSED),
    ]
    return [action.model_dump(mode="json", by_alias=True, exclude_none=True) for action in actions]


def inbound_ncco() -> list[dict[str, Any]]:
    text = "This is Scout. This number only places glucose alerts and cannot take calls. Goodbye."
    return [Talk(text=text).model_dump(mode="json", by_alias=True, exclude_none=True)]


def no_key_ncco() -> list[dict[str, Any]]:
    return [Talk(text=NO_KEY_PRESSED).model_dump(mode="json", by_alias=True, exclude_none=True)]


def _error_from_vonage(response: requests.Response, what: str) -> TelephonyError:
    """Vonage answers errors with a problem document: `type` ends in the error's code,
    `title` and `detail` say what went wrong."""
    try:
        problem = response.json()
    except (ValueError, json.JSONDecodeError):
        problem = {}
    problem = problem if isinstance(problem, dict) else {}
    kind = str(problem.get("type") or "")
    code = kind.rsplit("#", 1)[-1].rsplit("/", 1)[-1] if kind else str(response.status_code)
    reason = " ".join(str(problem[k]) for k in ("title", "detail", "error_title") if problem.get(k))
    status = response.status_code
    text = f"{what}: Vonage refused the request ({status}): {reason or response.reason}"
    if status == 401:
        text += " (check NEXMO_APPLICATION_ID, NEXMO_PRIVATE_KEY, NEXMO_API_KEY and NEXMO_API_SECRET)"
    elif status == 402:
        text += " (the Vonage account balance is too low)"
    if status in (408, 429) or status >= 500:
        return RetryableTelephonyError(text, code=code, status=status,
                                       retry_after=retry_after_seconds(response.headers.get("Retry-After")))
    return TelephonyError(text, code=code, permanent=True)


def vonage_request(operation: Callable[[], T], what: str) -> T:
    """Run one SDK request, turning every failure into a TelephonyError that says
    whether trying again can help."""
    try:
        return operation()
    except HttpRequestError as exc:
        raise _error_from_vonage(exc.response, what) from exc
    except ValidationError as exc:  # the SDK refuses the request before sending: a bad number, say
        problems = exc.errors()
        where = ".".join(str(part) for part in problems[0]["loc"]) if problems else "request"
        reason = problems[0]["msg"] if problems else str(exc)
        raise TelephonyError(f"{what}: Vonage cannot send this ({where}: {reason})",
                             code="invalid-request", permanent=True) from exc
    except (requests.exceptions.RequestException, VonageError) as exc:
        raise transport_error(exc, what, "Vonage") from exc


class VonageMessenger:
    name = "vonage"

    def __init__(self, make_client: Callable[[], Vonage], number: str, whatsapp_number: str, site_url: str) -> None:
        self._make_client = make_client
        # The SDK keeps request headers on the client object, so the polling threads
        # each get their own client rather than sharing one.
        self._local = threading.local()
        self.number = number
        self.whatsapp_number = whatsapp_number
        self.site_url = site_url

    @classmethod
    def from_config(cls, config: Any) -> VonageMessenger:
        auth = Auth(
            api_key=config.get("NEXMO_API_KEY"), api_secret=config.get("NEXMO_API_SECRET"),
            application_id=config.get("NEXMO_APPLICATION_ID"), private_key=config.get("NEXMO_PRIVATE_KEY"),
        )
        base_url = config.get("SCOUT_VONAGE_BASE_URL").strip()

        def make_client() -> Vonage:
            return build_client(auth, base_url)

        return cls(make_client, config.get("NEXMO_NUMBER").strip(), config.get("NEXMO_WHATSAPP_NUMBER").strip(),
                   config.site_url)

    @property
    def client(self) -> Vonage:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._make_client()
        return client

    def place_call(self, to: str, speech: str, call_key: str) -> CallPlaced:
        what = f"Vonage call to {to}"

        def create() -> Any:
            return self.client.voice.create_call(CreateCallRequest(
                to=[ToPhone(number=digits_only(to))], from_=Phone(number=digits_only(self.number)),
                ncco=alert_ncco(speech, callback_url(self.site_url, VONAGE_INPUT_PATH, call_key)),
                event_url=[callback_url(self.site_url, VONAGE_EVENT_PATH, call_key)], event_method="POST",
                machine_detection="continue", length_timer=CALL_LENGTH_LIMIT,
            ))

        call = with_retries(lambda: vonage_request(create, what), what)
        log.info("vonage call placed to=%s uuid=%s", mask_phone(to), call.uuid)
        return CallPlaced(call.uuid)

    def send_message(self, to: str, channel: str, body: str) -> str:
        what = f"Vonage {channel} to {to}"

        def send() -> Any:
            message: Sms | WhatsappText
            if channel == "whatsapp":
                if not self.whatsapp_number:
                    raise TelephonyError(
                        "NEXMO_WHATSAPP_NUMBER is not set, so Scout cannot send WhatsApp messages: set it, "
                        "or ask this contact to choose SMS", code="no-whatsapp-sender", permanent=True)
                message = WhatsappText(to=digits_only(to), from_=digits_only(self.whatsapp_number), text=body)
            else:
                message = Sms(to=digits_only(to), from_=digits_only(self.number), text=body)
            return self.client.messages.send(message)

        sent = with_retries(lambda: vonage_request(send, what), what)
        return str(sent.message_uuid)


def build_client(auth: Auth, base_url: str = "") -> Vonage:
    """A Vonage client with bounded requests and our own retries only (the SDK's are
    off), sending to `base_url` instead of Vonage's hosts when it is set."""
    if not base_url:
        return Vonage(auth, HttpClientOptions(timeout=REQUEST_TIMEOUT, max_retries=0))
    parts = urlsplit(base_url)
    host = parts.netloc + parts.path.rstrip("/")  # the SDK puts "https://" in front of this
    client = Vonage(auth, HttpClientOptions(api_host=host, rest_host=host, timeout=REQUEST_TIMEOUT, max_retries=0))
    if parts.scheme == "http":
        # the SDK exposes its HTTP client but not its requests session; mounting an
        # adapter there is the one way to reach a plain-http double
        session: requests.Session = client.http_client._session
        session.mount(f"https://{parts.netloc}/", PlainHttpAdapter(max_retries=0))
    return client
