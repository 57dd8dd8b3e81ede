"""The console backend, the default: it logs calls and messages instead of sending them."""
from __future__ import annotations

import uuid

from scout.telephony.base import CallPlaced, call_script, log


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
