"""The forecast (Nightscout's AR2) and the fast-drop rule, on hostile reading sets."""
from __future__ import annotations

import random

import pytest

from scout.forecast import ar2_forecast, early_warning, fast_drop, predicted_low, trusted_run
from scout.readings import Reading

NOW = 1_800_000_000.0


def series(*values: int, every: float = 300, age: float = 60) -> list[Reading]:
    """Readings `every` seconds apart, newest first, the newest `age` seconds old."""
    return [Reading(v, NOW - age - every * i, "NONE") for i, v in enumerate(values)]


def run_of(readings: list[Reading], errors: tuple[float, ...] = ()) -> list[Reading]:
    return trusted_run(readings, NOW, errors)


# Reference values worked out by hand from Nightscout's AR2 (y = ln(mgdl/140), weights
# -0.723 and 1.716), rounded to 0.1 mg/dL.
@pytest.mark.parametrize(
    "newest, before, expected",
    [
        (100, 110, [93.6, 89.4, 86.8, 85.3, 84.4, 84.2]),
        (100, 100, [100.2, 100.6, 101.2, 101.8, 102.5, 103.2]),
        (76, 84, [71.0, 67.9, 66.1, 65.2, 64.8, 64.9]),
        (88, 100, [80.5, 75.8, 72.8, 71.1, 70.2, 69.9]),
    ],
)
def test_the_forecast_matches_nightscouts_ar2(newest: int, before: int, expected: list[float]) -> None:
    points = ar2_forecast(run_of(series(newest, before)), 30)
    assert [p.minutes for p in points] == [5, 10, 15, 20, 25, 30]
    assert [p.mgdl for p in points] == pytest.approx(expected, abs=0.1)


def test_the_forecast_is_held_between_36_and_400() -> None:
    assert max(p.mgdl for p in ar2_forecast(run_of(series(390, 330)), 60)) == 400
    assert min(p.mgdl for p in ar2_forecast(run_of(series(45, 70)), 60)) == 36


def test_one_minute_readings_forecast_from_the_value_five_minutes_back() -> None:
    # a Libre through xDrip+ uploads every minute; the noise between neighbours must not
    # be multiplied by five
    minutely = series(100, 103, 99, 106, 104, 110, 111, every=60)
    five_minutely = series(100, 110)
    assert ar2_forecast(run_of(minutely)) == ar2_forecast(run_of(five_minutely))


def test_an_uneven_gap_is_scaled_to_five_minutes() -> None:
    # 100 now, 116 eight minutes ago: 10 mg/dL per five minutes, like 100 after 110
    points = ar2_forecast(run_of([Reading(100, NOW - 60), Reading(116, NOW - 60 - 480)]))
    assert points[0].mgdl == pytest.approx(93.6, abs=0.1)


def test_the_order_readings_arrive_in_does_not_matter() -> None:
    readings = series(88, 100, 109, 117, 124)
    expected = predicted_low(run_of(readings), 70, 30)
    for seed in range(5):
        shuffled = readings[:]
        random.Random(seed).shuffle(shuffled)
        assert predicted_low(run_of(shuffled), 70, 30) == expected
    assert expected is not None and expected.minutes == 30


def test_a_low_is_predicted_before_the_value_crosses_the_threshold() -> None:
    low = predicted_low(run_of(series(76, 84)), 70, 20)
    assert low is not None
    assert (low.minutes, low.threshold, low.mgdl) == (10, 70, 67.9)
    assert low.reason("70 mg/dL") == "predicted to fall below 70 mg/dL in about 10 minutes"


@pytest.mark.parametrize(
    "values, within, expect",
    [
        ((76, 84), 5, None),  # 71.0 at 5 minutes: not yet below 70
        ((76, 84), 10, 10),
        ((88, 100), 20, None),  # 71.1 at 20 minutes
        ((88, 100), 30, 30),
        ((100, 100), 30, None),  # steady: never
        ((72, 72), 30, None),  # steady just above the threshold: never
        ((69, 75), 30, None),  # already below: the ordinary low rule calls, not the forecast
        ((120, 90), 30, None),  # rising
    ],
)
def test_predicted_low_within_the_users_horizon(values: tuple[int, int], within: int, expect: int | None) -> None:
    low = predicted_low(run_of(series(*values)), 70, within)
    assert (low.minutes if low else None) == expect


def test_no_forecast_from_a_stale_newest_reading() -> None:
    assert predicted_low(run_of(series(76, 84, age=9 * 60)), 70, 20) is not None
    assert run_of(series(76, 84, age=10 * 60 + 1)) == []
    assert predicted_low(run_of(series(76, 84, age=10 * 60 + 1)), 70, 20) is None
    assert fast_drop(run_of(series(105, 120, 135, 150, age=11 * 60))) is None


def test_a_reading_dated_in_the_future_feeds_no_forecast() -> None:
    assert run_of(series(76, 84, age=-120)) == []


@pytest.mark.parametrize("sentinel", [39, 401])
def test_dexcom_sentinels_never_feed_a_forecast(sentinel: int) -> None:
    # LOW (39) and HIGH (401) are "beyond the sensor", not values: no slope through them
    assert run_of(series(sentinel, 84)) == []
    assert predicted_low(run_of(series(76, sentinel, 84)), 70, 30) is None
    assert len(run_of(series(76, 84, sentinel, 90))) == 2


def test_error_codes_never_feed_a_forecast() -> None:
    readings = series(76, 84)
    assert predicted_low(run_of(readings), 70, 20) is not None
    # an error code (e.g. ?NA) newer than the last value: the sensor is faulty now
    assert run_of(readings, errors=(NOW - 30,)) == []
    # an older one does not matter
    assert predicted_low(run_of(readings, errors=(NOW - 3600,)), 70, 20) is not None
    # a value below 40 that is not a sentinel is an error code too
    assert run_of(series(12, 84)) == []


def test_no_forecast_across_a_gap_of_more_than_11_minutes() -> None:
    assert run_of([Reading(76, NOW - 60), Reading(84, NOW - 60 - 12 * 60)]) == [Reading(76, NOW - 60)]
    assert ar2_forecast(run_of([Reading(76, NOW - 60), Reading(84, NOW - 60 - 12 * 60)])) == []


def test_two_readings_too_close_together_carry_no_slope() -> None:
    assert ar2_forecast(run_of([Reading(76, NOW - 60), Reading(84, NOW - 120)])) == []


def test_a_fast_drop_of_3_per_minute_over_15_minutes() -> None:
    drop = fast_drop(run_of(series(105, 120, 135, 150)))
    assert drop is not None
    assert (drop.rate, drop.minutes, drop.mgdl) == (3.0, 15.0, 45)
    assert drop.reason() == "falling fast"


@pytest.mark.parametrize(
    "values, every",
    [
        ((107, 122, 136, 150), 300),  # 2.9 mg/dL a minute
        ((120, 105, 120, 150), 300),  # rebounding at the newest reading
        ((105, 150), 900),  # one step of 15 minutes: more than 11 minutes without a reading
        ((140, 150, 160), 300),  # 10 minutes of data only
    ],
)
def test_no_fast_drop(values: tuple[int, ...], every: float) -> None:
    assert fast_drop(run_of(series(*values, every=every))) is None


def test_a_fast_drop_on_one_minute_readings_and_a_custom_rate() -> None:
    values = [200 - 4 * i for i in range(17)][::-1]  # newest first: falling 4 a minute
    assert fast_drop(run_of(series(*values, every=60))) is not None
    assert fast_drop(run_of(series(*values, every=60)), rate=4.5) is None
    assert fast_drop(run_of(series(*values, every=60)), rate=4.0, over_minutes=10) is not None


def test_a_sentinel_inside_the_window_breaks_the_fast_drop() -> None:
    assert fast_drop(run_of(series(105, 120, 401, 150))) is None


# --- the user's opt-in early warnings ---------------------------------------------------


def test_early_warnings_are_off_unless_the_user_opts_in() -> None:
    from tests.conftest import make_user

    falling = series(76, 84, 92, 100)
    assert early_warning(make_user(), falling, NOW) == ""
    assert early_warning(make_user(predict_low_minutes=20), falling, NOW) == \
        "predicted to fall below 70 mg/dL in about 10 minutes"
    assert early_warning(make_user(predict_low_minutes=20, units="mmol/L"), falling, NOW) == \
        "predicted to fall below 3.9 mmol/L in about 10 minutes"
    assert early_warning(make_user(predict_low_minutes=20), falling, NOW, error_dates=(NOW - 10,)) == ""


def test_a_fast_drop_is_called_only_low_enough_to_matter() -> None:
    from tests.conftest import make_user

    user = make_user(fast_drop=True)
    assert early_warning(user, series(105, 120, 135, 150), NOW) == "falling fast"
    assert early_warning(user, series(200, 215, 230, 245), NOW) == ""  # a correction working, from a high
    assert early_warning(make_user(fast_drop=True, fast_drop_rate_mgdl=4.0), series(105, 120, 135, 150), NOW) == ""


def test_scout_asks_nightscout_for_enough_readings_for_the_early_warnings() -> None:
    from scout.forecast import readings_wanted
    from tests.conftest import make_user

    assert readings_wanted(make_user()) == 3
    assert readings_wanted(make_user(predict_low_minutes=20)) == 7  # five minutes back at one a minute
    assert readings_wanted(make_user(fast_drop=True, fast_drop_minutes=30)) == 33
