"""Logging set-up shared by the web app, the poller and the command line."""
from __future__ import annotations

import logging
import os
import re


def configure_logging() -> None:
    level = os.environ.get("SCOUT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )


# --- personal data in log lines ------------------------------------------------------------
#
# Logs leave Scout (log viewers, support tickets, exports), so a line carries no phone
# number in full, no email (user ids name people) and no glucose value above DEBUG.

_PHONE_LIKE = re.compile(r"(?<![\w.])\+?\d[\d ().-]{5,}\d(?![\w.])")


def mask_phone(number: str) -> str:
    """A phone number as logs show it: its last 4 digits (***2671), enough to tell numbers
    apart. ASCII, so that JSON log lines show it as it is."""
    digits = re.sub(r"\D", "", number or "")
    if not digits:
        return ""
    return "***" + digits[-4:] if len(digits) > 4 else "***"


def mask_text(text: str) -> str:
    """`text` with every run of 7 or more digits that could be a phone number masked, for
    messages Scout did not write itself (a provider's error, an exception)."""
    def masked(match: re.Match[str]) -> str:
        return mask_phone(match.group(0)) if len(re.sub(r"\D", "", match.group(0))) >= 7 else match.group(0)

    return _PHONE_LIKE.sub(masked, text or "")


def mask_key(key: str) -> str:
    """An alert log key as logs show it: a part that is a phone number (contact keys end in
    one) keeps its last 4 digits; the user id and the episode stay, so a search still
    follows one alert from the decision to the provider."""
    return ":".join(mask_phone(part) if part.lstrip("+").isdigit() and len(part) >= 7 else part
                    for part in (key or "").split(":"))
