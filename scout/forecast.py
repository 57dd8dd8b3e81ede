"""Where glucose is heading: a predicted low (AR2) and a fast drop. Pure, no I/O, no clock.

The method follows Nightscout's own AR2 forecast (its `ar2` plugin), so what Scout calls a
"predicted low" is what the user's Nightscout chart draws as the forecast line:

- the two inputs are the newest reading and the value five minutes before it (the reading
  closest to five minutes earlier, scaled to exactly five minutes);
- each value is taken as y = ln(mgdl / 140), 140 mg/dL being the model's centre;
- each five-minute step is y_next = -0.723 * y_prev + 1.716 * y_now;
- the values are held within 36 to 400 mg/dL, as on the chart.

Scout only forecasts from readings it trusts: fresh (the newest at most 10 minutes old, as
Nightscout's AR2 alarm), real values (never Dexcom's LOW 39 or HIGH 401 sentinels, never an
error code), with no error code newer than the newest reading, and two readings 2.5 to 11
minutes apart by the uploader's own dates (consistent with each other even when its clock
is off). Otherwise there is no forecast, and the rules on the current value still apply.
See docs/design.md, "Predicted low and fast drop", for the limits of the method.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from models import User
from scout.readings import Reading, format_value

BG_CENTRE = 140.0  # mg/dL: the AR2 model's central tendency
AR2 = (-0.723, 1.716)  # weights of (y five minutes ago, y now)
FORECAST_FLOOR, FORECAST_CEILING = 36.0, 400.0
STEP = 5 * 60.0  # seconds between forecast points
FRESH_WITHIN = 10 * 60.0  # Nightscout's AR2 alarm ignores a newest reading older than this
PAIR_MIN_GAP, PAIR_MAX_GAP = 150.0, 11 * 60.0  # the two inputs' own dates, seconds apart
MAX_HORIZON_MINUTES = 60  # AR2 is a short-term model; further out it means little
LOWEST_REAL, HIGHEST_REAL = 40, 400  # Dexcom's measurable range: 39 and 401 are sentinels
FAST_DROP_BELOW = 150.0  # mg/dL: a fast fall from higher up is usually a correction working


@dataclass(frozen=True)
class ForecastPoint:
    minutes: int  # after the newest reading
    mgdl: float


@dataclass(frozen=True)
class PredictedLow:
    """The forecast falls below `threshold` about `minutes` after the newest reading."""

    minutes: int
    threshold: float
    mgdl: float  # the forecast value at that point

    def reason(self, threshold_text: str) -> str:
        return f"predicted to fall below {threshold_text} in about {self.minutes} minutes"


@dataclass(frozen=True)
class FastDrop:
    """Glucose fell `mgdl` over `minutes`: on average `rate` mg/dL a minute."""

    rate: float
    minutes: float
    mgdl: float

    @staticmethod
    def reason() -> str:
        return "falling fast"


def own_date(reading: Reading) -> float:
    """The uploader's own time stamp: intervals between readings are measured on it."""
    return float(getattr(reading, "date", reading.at))


def is_real_value(reading: Reading) -> bool:
    """A measured value: no sentinel (LOW 39, HIGH 401) and no error code."""
    if getattr(reading, "limit", ""):
        return False
    return LOWEST_REAL <= reading.mgdl <= HIGHEST_REAL


def trusted_run(readings: Sequence[Reading], now: float, error_dates: Iterable[float] = (),
                fresh_within: float = FRESH_WITHIN) -> list[Reading]:
    """The newest readings a forecast may use, newest first, or [] when none may be used.

    The newest reading must be a real value and fresh; an error code newer than it, or a
    sentinel, ends the run (what came before a sensor fault says nothing about now)."""
    ordered = sorted(readings, key=own_date, reverse=True)
    if not ordered:
        return []
    newest = ordered[0]
    if not is_real_value(newest) or not 0 <= now - newest.at <= fresh_within:
        return []
    if any(date >= own_date(newest) for date in error_dates):
        return []
    run = [newest]
    for reading in ordered[1:]:
        if not is_real_value(reading) or own_date(run[-1]) - own_date(reading) > PAIR_MAX_GAP:
            break
        run.append(reading)
    return run


def _value_five_minutes_before(run: Sequence[Reading]) -> float | None:
    """The value five minutes before the newest, from the reading closest to that time,
    scaled to exactly five minutes (as Nightscout's delta does for uneven gaps)."""
    newest = run[0]
    candidates = [r for r in run[1:] if PAIR_MIN_GAP <= own_date(newest) - own_date(r) <= PAIR_MAX_GAP]
    if not candidates:
        return None
    previous = min(candidates, key=lambda r: abs(own_date(newest) - own_date(r) - STEP))
    minutes = (own_date(newest) - own_date(previous)) / 60.0
    value = newest.mgdl - (newest.mgdl - previous.mgdl) * 5.0 / minutes
    return max(value, FORECAST_FLOOR)


def ar2_forecast(run: Sequence[Reading], horizon_minutes: int = 30) -> list[ForecastPoint]:
    """Forecast points every 5 minutes up to `horizon_minutes` after the newest reading of a
    trusted run (see trusted_run); [] when the run cannot carry a forecast."""
    if not run:
        return []
    before = _value_five_minutes_before(run)
    if before is None:
        return []
    y_before, y_now = math.log(before / BG_CENTRE), math.log(run[0].mgdl / BG_CENTRE)
    points = []
    for step in range(1, min(horizon_minutes, MAX_HORIZON_MINUTES) // 5 + 1):
        y_before, y_now = y_now, AR2[0] * y_before + AR2[1] * y_now
        mgdl = min(max(BG_CENTRE * math.exp(y_now), FORECAST_FLOOR), FORECAST_CEILING)
        points.append(ForecastPoint(step * 5, round(mgdl, 1)))
    return points


def predicted_low(run: Sequence[Reading], threshold: float, within_minutes: int) -> PredictedLow | None:
    """A low predicted within `within_minutes`, while the newest value is still at or above
    `threshold` (below it, the ordinary low rule calls)."""
    if not run or run[0].mgdl < threshold:
        return None
    for point in ar2_forecast(run, within_minutes):
        if point.mgdl < threshold:
            return PredictedLow(point.minutes, threshold, point.mgdl)
    return None


def fast_drop(run: Sequence[Reading], rate: float = 3.0, over_minutes: float = 15.0) -> FastDrop | None:
    """A drop of at least `rate` mg/dL a minute on average over about `over_minutes`, still
    falling at the newest reading. The window's start is the reading closest to `over_minutes`
    before the newest, at least 80% of that span back, within one unbroken trusted run."""
    if len(run) < 3:
        return None
    newest = run[0]
    span = over_minutes * 60.0
    candidates = [r for r in run[1:] if 0.8 * span <= own_date(newest) - own_date(r) <= span + PAIR_MAX_GAP / 2]
    if not candidates:
        return None
    start = min(candidates, key=lambda r: abs(own_date(newest) - own_date(r) - span))
    minutes = (own_date(newest) - own_date(start)) / 60.0
    drop = start.mgdl - newest.mgdl
    still_falling = newest.mgdl < run[1].mgdl
    if still_falling and drop / minutes >= rate:
        return FastDrop(round(drop / minutes, 1), round(minutes, 1), drop)
    return None


def readings_wanted(user: User, usual: int = 3) -> int:
    """How many entries to ask Nightscout for: enough for the user's early warnings even
    from a CGM that uploads every minute (five minutes back; the whole fast-drop window)."""
    wanted = usual
    if user.predict_low_minutes:
        wanted = max(wanted, 7)
    if user.fast_drop:
        wanted = max(wanted, user.fast_drop_minutes + 3)
    return wanted


def early_warning(user: User, readings: Sequence[Reading], now: float, error_dates: Iterable[float] = ()) -> str:
    """Why to call before the value is low, for a user who opted in: 'predicted to fall below
    70 mg/dL in about 10 minutes', 'falling fast', or '' for no reason."""
    if not user.predict_low_minutes and not user.fast_drop:
        return ""
    run = trusted_run(readings, now, error_dates)
    if user.predict_low_minutes:
        low = predicted_low(run, user.low_mgdl, user.predict_low_minutes)
        if low is not None:
            return low.reason(f"{format_value(user.low_mgdl, user.units)} {user.units}")
    if user.fast_drop and run and run[0].mgdl < FAST_DROP_BELOW:
        drop = fast_drop(run, user.fast_drop_rate_mgdl, user.fast_drop_minutes)
        if drop is not None:
            return drop.reason()
    return ""
