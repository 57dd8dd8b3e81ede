"""The messenger interface: place an alert call, send an SMS or WhatsApp message.

Backends: `console` (the default; it logs every call and message), `twilio` and
`vonage`. Every failure is a TelephonyError; `permanent` ones (an invalid number,
say) are never retried.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("scout.telephony")

PRESS_ONE = "Press 1 to tell Scout you heard this alert."


class TelephonyError(Exception):
    def __init__(self, message: str, *, code: str = "", permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent


@dataclass(frozen=True)
class CallPlaced:
    provider_id: str
    outcome: str = ""  # set when the outcome is known at once (the console cannot be answered)
    detail: str = ""


class Messenger(Protocol):
    name: str

    def place_call(self, to: str, speech: str, call_key: str) -> CallPlaced: ...

    def send_message(self, to: str, channel: str, body: str) -> str: ...


def call_script(speech: str) -> list[str]:
    """What an alert call says, in order: the alert twice, then how to acknowledge."""
    return [speech, "Again: " + speech, PRESS_ONE]


class ConsoleMessenger:
    """Logs calls and messages instead of sending them. Nobody can press 1 on the
    console, so every console call is unanswered and the escalation follows."""

    name = "console"

    def place_call(self, to: str, speech: str, call_key: str) -> CallPlaced:
        call_id = f"console-call-{uuid.uuid4().hex[:12]}"
        log.warning("CALL %s [%s]: %s", to, call_id, " ".join(call_script(speech)))
        return CallPlaced(call_id, outcome="unanswered", detail="console calls cannot be answered")

    def send_message(self, to: str, channel: str, body: str) -> str:
        message_id = f"console-{channel}-{uuid.uuid4().hex[:12]}"
        log.warning("%s %s [%s]: %s", channel.upper(), to, message_id, body)
        return message_id


def make_messenger(config: Any) -> Messenger:
    """The backend the configuration selects, with clients created in the calling process."""
    if config.telephony == "twilio":
        from scout.twilio_messenger import TwilioMessenger

        return TwilioMessenger.from_config(config)
    if config.telephony == "vonage":
        from scout.vonage_messenger import VonageMessenger

        return VonageMessenger.from_config(config)
    return ConsoleMessenger()
