"""Logging shared by the web app, the poller, the command line and gunicorn: one JSON object
per line on stdout, the shape Cloud Logging reads as a structured entry (`jsonPayload`).

`severity` and `message` are the keys Cloud Logging knows; the rest land in `jsonPayload`:
`logger`, `process`, and whatever a call passes as `extra={"fields": {...}}`, e.g.
`log.info("poll cycle finished", extra={"fields": {"event": "cycle", "users": 12}})`, so a
query can say `jsonPayload.event="cycle" AND jsonPayload.users>0`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
from typing import Any

# Python's level names as Cloud Logging's severities (LogSeverity)
SEVERITIES = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARNING", "ERROR": "ERROR", "CRITICAL": "CRITICAL"}


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON: severity, message, time, logger, process, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": SEVERITIES.get(record.levelname, "DEFAULT"),
            "message": record.getMessage(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "logger": record.name,
            "process": record.processName if record.processName != "MainProcess" else f"pid-{record.process}",
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({key: value for key, value in fields.items() if key not in ("severity", "message")})
        if record.exc_info:
            # Error Reporting picks up a stack trace that follows the message
            entry["message"] += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(entry, default=str, ensure_ascii=False)


def json_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    return handler


def configure_logging(level: str | None = None) -> None:
    """Every Scout logger writes one JSON object per line to stdout. `level` defaults to
    SCOUT_LOG_LEVEL (checked by scout.config)."""
    name = (level or os.environ.get("SCOUT_LOG_LEVEL", "") or "INFO").upper()
    root = logging.getLogger()
    root.setLevel(getattr(logging, name, logging.INFO))
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.addHandler(json_handler())


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its error log (starts, stops, worker restarts) in the
    same JSON lines as Scout's. There is no access log (App Engine logs each request)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }


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
