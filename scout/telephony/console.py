"""The console backend, the default: it logs calls and messages instead of sending them."""
from __future__ import annotations

import uuid

from scout.logs import mask_phone
from scout.telephony.base import CallPlaced, call_script, log


class ConsoleMessenger:
    """Logs calls and messages instead of sending them. Nobody can press 1 on the
    console, so every console call is unanswered and the escalation follows."""

    name = "console"

    def place_call(self, to: str, speech: str, call_key: str) -> CallPlaced:
        call_id = f"console-call-{uuid.uuid4().hex[:12]}"
        log.info("CALL to=%s [%s]", mask_phone(to), call_id)
        log.debug("CALL %s [%s]: %s", to, call_id, " ".join(call_script(speech)))  # the value: DEBUG only
        return CallPlaced(call_id, outcome="unanswered", detail="console calls cannot be answered")

    def send_message(self, to: str, channel: str, body: str) -> str:
        message_id = f"console-{channel}-{uuid.uuid4().hex[:12]}"
        log.info("%s to=%s [%s]", channel.upper(), mask_phone(to), message_id)
        log.debug("%s %s [%s]: %s", channel.upper(), to, message_id, body)  # the value: DEBUG only
        return message_id
