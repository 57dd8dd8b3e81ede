"""What a Nightscout poll yields: readings or a typed failure. Plain data, no I/O."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MMOL_PER_MGDL = 1 / 18.0

# Dexcom's out-of-range sentinels, as Nightscout stores and shows them: 39 is "LOW"
# (below the sensor's 40 mg/dL floor), 401 is "HIGH" (above its 400 mg/dL ceiling).
SENSOR_LOW, SENSOR_HIGH = 39, 401
# Values below 39 are not glucose at all but the sensor's error codes. The names are
# Nightscout's own (its errorcodes plugin shows ?SN, ?MD, ... on the site).
ERROR_CODE_NAMES = {
    1: "sensor not active (?SN)",
    2: "minimal deviation (?MD)",
    3: "no antenna (?NA)",
    5: "sensor not calibrated (?NC)",
    6: "counts deviation (?CD)",
    9: "hourglass (?AD)",
    10: "??? (power deviation)",
    12: "bad radio signal (?RF)",
}

TREND_WORDS = {
    "TripleUp": "rising very fast",
    "DoubleUp": "rising fast",
    "SingleUp": "rising",
    "FortyFiveUp": "rising slowly",
    "Flat": "steady",
    "FortyFiveDown": "falling slowly",
    "SingleDown": "falling",
    "DoubleDown": "falling fast",
    "TripleDown": "falling very fast",
}

TREND_ARROWS = {
    "TripleUp": "⇈",
    "DoubleUp": "⇈",
    "SingleUp": "↑",
    "FortyFiveUp": "↗",
    "Flat": "→",
    "FortyFiveDown": "↘",
    "SingleDown": "↓",
    "DoubleDown": "⇊",
    "TripleDown": "⇊",
}


def error_code_name(code: float) -> str:
    return ERROR_CODE_NAMES.get(int(code), f"error code {code:g}")


@dataclass(frozen=True)
class Reading:
    """One sensor glucose value: mg/dL, taken at `at` (seconds since the epoch).

    `date` is the uploader's own time stamp; `at` starts equal to it, and the decision
    replaces it with the time Scout believes (see scout.alerts, freshness by arrival).
    `limit` is "below" for Dexcom's LOW (39) and "above" for its HIGH (401): the true
    value is beyond what the sensor can measure. `key` names the Nightscout entry.
    """

    mgdl: float
    at: float
    direction: str = "NONE"
    key: str = ""
    limit: str = ""  # "" | "below" | "above"
    date: float = field(default=math.nan, compare=False)

    def __post_init__(self) -> None:
        if math.isnan(self.date):
            object.__setattr__(self, "date", self.at)
        if not self.key:
            object.__setattr__(self, "key", f"{self.date * 1000:.0f}:{self.mgdl:g}")

    @property
    def trend_words(self) -> str:
        return TREND_WORDS.get(self.direction, "")

    @property
    def arrow(self) -> str:
        return TREND_ARROWS.get(self.direction, "")


@dataclass(frozen=True)
class SensorError:
    """An entry carrying one of the sensor's error codes (0 to 38) instead of a value."""

    code: float
    date: float
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", f"{self.date * 1000:.0f}:{self.code:g}")

    @property
    def name(self) -> str:
        return error_code_name(self.code)


@dataclass(frozen=True)
class Readings:
    """A successful poll. `readings` holds valid values, newest first by their date;
    CGM error codes (0 to 38) are left out of them and kept in `errors`."""

    readings: tuple[Reading, ...]
    errors: tuple[SensorError, ...] = ()

    @property
    def error_codes(self) -> int:
        return len(self.errors)

    @property
    def latest(self) -> Reading | None:
        return self.readings[0] if self.readings else None

    @property
    def delta(self) -> float | None:
        """Change between the last two readings, if they are at most 11 minutes apart."""
        if len(self.readings) < 2:
            return None
        newest, previous = self.readings[0], self.readings[1]
        return change_between(newest, previous)


def change_between(newest: Reading, previous: Reading) -> float | None:
    """The change from `previous` to `newest`, if their own dates are at most 11 minutes
    apart (the uploader's dates are consistent with each other even when its clock is off);
    None across a sentinel, whose true value is unknown."""
    if newest.limit or previous.limit or not 0 < newest.date - previous.date <= 11 * 60:
        return None
    return newest.mgdl - previous.mgdl


FAILURE_REASONS = {
    "unreachable": "could not connect",
    "timeout": "did not answer in time",
    "unauthorized": "refused access (401): the access token or API secret is missing or wrong",
    "http_status": "answered with an error",
    "not_json": "did not answer with Nightscout data (is this a Nightscout site?)",
    "no_readings": "has no glucose readings",
    "bad_data": "sent readings Scout cannot read",
    "refused_url": "is an address Scout will not fetch",
}


@dataclass(frozen=True)
class PollFailure:
    """A poll that gave no readings; `reason` is one of FAILURE_REASONS."""

    reason: str
    detail: str = ""

    def describe(self) -> str:
        text = FAILURE_REASONS.get(self.reason, self.reason)
        return f"{text} ({self.detail})" if self.detail else text


PollResult = Readings | PollFailure


def format_value(mgdl: float, units: str, limit: str = "") -> str:
    """A value as people read it: '54', '240.4', '3.0', or 'below 40' for Dexcom's LOW."""
    if limit:
        mgdl = 40 if limit == "below" else 400
    if units == "mmol/L":
        text = f"{mgdl * MMOL_PER_MGDL:.1f}"
    else:
        text = f"{mgdl:.0f}" if float(mgdl).is_integer() else f"{mgdl:.1f}"
    return f"{limit} {text}" if limit else text


def _is_dexcom(device: Any) -> bool:
    """Dexcom's sentinels apply to Dexcom uploads and to entries that name no device."""
    return not device or not isinstance(device, str) or "dexcom" in device.lower() or "share" in device.lower()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_entry(entry: Any) -> Reading | SensorError | None:
    """One Nightscout entry: a reading, a sensor error code, or None for anything that
    is no sensor glucose value (a meter `mbg` or a `cal` record, a broken entry)."""
    if not isinstance(entry, dict) or entry.get("type", "sgv") != "sgv":
        return None
    sgv, date_ms = _number(entry.get("sgv")), _number(entry.get("date"))
    if sgv is None or date_ms is None or sgv < 0:
        return None
    raw_id = entry.get("_id")
    key = raw_id if isinstance(raw_id, str) and raw_id else f"{date_ms:.0f}:{sgv:g}"
    if sgv < SENSOR_LOW:
        return SensorError(sgv, date_ms / 1000.0, key)
    limit = ""
    if _is_dexcom(entry.get("device")):
        limit = "below" if sgv == SENSOR_LOW else "above" if sgv == SENSOR_HIGH else ""
    direction = entry.get("direction")
    return Reading(sgv, date_ms / 1000.0, direction if isinstance(direction, str) else "NONE", key, limit)


def parse_entries(payload: Any) -> PollResult:
    """Turn a decoded Nightscout entries list into readings, newest first by date."""
    if not isinstance(payload, list):
        return PollFailure("not_json", "the answer is not a list of entries")
    if not payload:
        return PollFailure("no_readings", "the entries list is empty")
    parsed = [parse_entry(entry) for entry in payload]
    readings = sorted((p for p in parsed if isinstance(p, Reading)), key=lambda r: r.date, reverse=True)
    errors = sorted((p for p in parsed if isinstance(p, SensorError)), key=lambda e: e.date, reverse=True)
    if not readings and not errors:
        return PollFailure("bad_data", "no entry has a numeric sgv and date")
    return Readings(tuple(readings), tuple(errors))
