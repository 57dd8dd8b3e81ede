"""Telephony: the messenger interface (`base`), its backends (`console`, `twilio`,
`vonage`), their shared HTTP plumbing (`http`), and `make_messenger`, which picks the
backend the configuration selects."""
from __future__ import annotations

from typing import Any

from scout.telephony.base import Messenger


def make_messenger(config: Any) -> Messenger:
    """The backend the configuration selects, with clients created in the calling process."""
    if config.telephony == "twilio":
        from scout.telephony.twilio import TwilioMessenger

        return TwilioMessenger.from_config(config)
    if config.telephony == "vonage":
        from scout.telephony.vonage import VonageMessenger

        return VonageMessenger.from_config(config)
    from scout.telephony.console import ConsoleMessenger

    return ConsoleMessenger()
