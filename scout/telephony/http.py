"""Plumbing shared by the Twilio and Vonage backends: request timeouts, bounded
retries, phone-number shapes and the callback URLs an alert call carries.

The backends themselves live in scout/telephony/twilio.py and
scout/telephony/vonage.py; the webhooks that receive the callbacks in
scout/webhooks.py.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests

from scout.logs import mask_text
from scout.telephony.base import TelephonyError

log = logging.getLogger("scout.telephony")

T = TypeVar("T")

# Every provider request is bounded: a provider that hangs must not stall the cycle.
REQUEST_TIMEOUT = 8  # seconds, connect and read (Vonage's SDK takes whole seconds only)
# Attempts after a transient failure (429, 5xx, no connection): three attempts with
# short pauses, and no new attempt once RETRY_BUDGET seconds have gone by, so a
# provider outage delays one send by a few seconds, not the whole cycle.
RETRY_DELAYS = (0.3, 1.0)
RETRY_BUDGET = 4.0

# Where the provider posts what became of an alert call. The call key in the query
# names the alert when the provider's call id is not stored yet (see scout/webhooks.py).
TWILIO_GATHER_PATH = "/webhooks/twilio/gather"
TWILIO_STATUS_PATH = "/webhooks/twilio/status"
VONAGE_EVENT_PATH = "/webhooks/vonage/events"
VONAGE_INPUT_PATH = "/webhooks/vonage/input"


class RetryableTelephonyError(TelephonyError):
    """A failure worth another attempt: rate limited (429), a provider error (5xx), no
    connection. `status` is the provider's HTTP status (0: no answer at all);
    `retry_after` the seconds its Retry-After asked for, if any. A 429 or 5xx is never
    permanent: the engine tries again, paced, until the call's window passes."""

    def __init__(self, message: str, *, code: str = "", status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header given in seconds (the form Twilio and Vonage use)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 3600 else None


def with_retries(operation: Callable[[], T], what: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `operation`, trying again after a failed connection while the retry budget
    lasts. A 429 or 5xx is raised at once: the engine retries it at the paced rate
    (another attempt right away would only add to the provider's load). Anything else,
    and the last transient failure, is raised."""
    started = time.monotonic()
    for delay in (*RETRY_DELAYS, None):
        try:
            return operation()
        except RetryableTelephonyError as exc:
            if exc.status or delay is None or time.monotonic() - started + delay > RETRY_BUDGET:
                raise
            log.warning("%s failed (%s); trying again in %.1f s", what, mask_text(str(exc)), delay)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def transport_error(exc: Exception, what: str, provider: str) -> TelephonyError:
    """What a failure below the provider's API means: a connection never made (nothing was
    sent, so try again) or a request sent but not answered (it may have been carried out,
    so it is not repeated now)."""
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return TelephonyError(f"{what}: {provider} did not answer within {REQUEST_TIMEOUT} s", code="timeout")
    if isinstance(exc, requests.exceptions.ConnectionError):  # includes connect timeouts
        return RetryableTelephonyError(f"{what}: could not reach {provider} ({exc})", code="unreachable")
    return TelephonyError(f"{what}: {exc}", code="error")


def digits_only(number: str) -> str:
    """'+14155552671' -> '14155552671': Vonage wants numbers without the plus."""
    return number.strip().lstrip("+")


def callback_url(site_url: str, path: str, call_key: str) -> str:
    """The public URL of one of Scout's webhooks, naming the alert call it is about."""
    return f"{site_url.rstrip('/')}{path}?{urlencode({'call': call_key})}"


def rebase_url(url: str, base_url: str) -> str:
    """Send a provider request to `base_url` instead of the provider's host: the path
    and query stay, the scheme and host (and any path prefix) come from `base_url`."""
    target, base = urlsplit(url), urlsplit(base_url)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + target.path, target.query, ""))
