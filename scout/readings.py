"""What a Nightscout poll yields: readings or a typed failure. Plain data, no I/O."""
from __future__ import annotations

from dataclasses import dataclass

MMOL_PER_MGDL = 1 / 18.0

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


@dataclass(frozen=True)
class Reading:
    """One sensor glucose value: mg/dL, taken at `at` (seconds since the epoch)."""

    mgdl: int
    at: float
    direction: str = "NONE"

    @property
    def trend_words(self) -> str:
        return TREND_WORDS.get(self.direction, "")

    @property
    def arrow(self) -> str:
        return TREND_ARROWS.get(self.direction, "")


@dataclass(frozen=True)
class Readings:
    """A successful poll. `readings` holds valid values, newest first; CGM error codes
    (39 mg/dL and below) are left out and counted in `error_codes`."""

    readings: tuple[Reading, ...]
    error_codes: int = 0

    @property
    def latest(self) -> Reading | None:
        return self.readings[0] if self.readings else None

    @property
    def delta(self) -> int | None:
        """Change between the last two readings, if they are at most 11 minutes apart."""
        if len(self.readings) < 2:
            return None
        newest, previous = self.readings[0], self.readings[1]
        if newest.at - previous.at > 11 * 60:
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


def format_value(mgdl: float, units: str) -> str:
    if units == "mmol/L":
        return f"{mgdl * MMOL_PER_MGDL:.1f}"
    return f"{round(mgdl)}"
