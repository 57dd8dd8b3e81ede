"""The messenger interface: place an alert call, send an SMS or WhatsApp message.

Backends (this package): `console` (the default; it logs every call and message),
`twilio` and `vonage`. Every failure is a TelephonyError; `permanent` ones (an invalid number,
say) are never retried.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

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
    """What an alert call says, in order: the alert twice, then how to acknowledge. A speech
    that ends with its own request for a 1 (a contact's call on the ladder: "Press 1 if you
    will check on Ana.") keeps it, said once more at the end instead of the user's."""
    alert, found, ask = speech.rpartition(" Press 1 ")
    if found:
        return [speech, "Again: " + alert, "Press 1 " + ask]
    return [speech, "Again: " + speech, PRESS_ONE]
