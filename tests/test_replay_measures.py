"""The measures `make replay` prints are right on small hand-made days (no simulator needed)."""
from __future__ import annotations

from bench.replay import DAY_START, episodes, figures, nightscout_simple_alarms
from bench.t1d_days import Day, Sample, dexcom_value


def day(*true_values: float, cgm: tuple[int, ...] = ()) -> Day:
    """Samples every 5 minutes from midnight; the CGM reads the truth unless given."""
    shown = cgm or tuple(round(v) for v in true_values)
    return Day("test#001", 1, tuple(Sample(5.0 * i, v, c, True) for i, (v, c) in enumerate(zip(true_values, shown, strict=True))))


def test_an_episode_is_at_least_15_minutes_below() -> None:
    # 10 minutes below 70 is no episode; 15 minutes is one, from its first low sample to the first back up
    d = day(100, 65, 66, 100, 100, 60, 58, 52, 62, 90)
    found = episodes(d, 70)
    assert [((e.start - DAY_START) / 60, (e.end - DAY_START) / 60) for e in found] == [(25, 45)]
    assert episodes(d, 54) == []


def test_an_episode_still_running_at_the_end_of_the_day_counts() -> None:
    assert len(episodes(day(100, 60, 55, 50, 45), 70)) == 1


def test_calls_are_matched_to_episodes_and_to_the_true_glucose() -> None:
    d = day(100, 65, 62, 60, 58, 90, 150)
    calls = [(DAY_START + 10 * 60, "low"), (DAY_START + 22 * 60, "low"), (DAY_START + 31 * 60, "low")]
    result = figures(d, calls, texts=4)
    assert result.delays[70] == [5.0]  # the episode starts at 5 minutes, the first call at 10
    assert result.in_range_calls == 1  # at 31 minutes the true glucose was back at 150
    assert (result.calls, result.texts) == (3, 4)


def test_a_missed_episode_is_reported_as_missed() -> None:
    d = day(100, 65, 62, 60, 58, 90)
    assert figures(d, [(DAY_START + 3 * 3600, "low")], texts=0).delays[70] == [None]


def test_nightscout_alarms_sound_once_while_unanswered_at_night_and_not_for_in_range_values() -> None:
    # three hours at 250 overnight: Nightscout's simple alarm starts once and sounds on
    # (answered 15% of the time at night, so it may restart after a 30-minute snooze)
    d = day(*([250.0] * 36))
    alarms = nightscout_simple_alarms(d)
    assert 1 <= len(alarms) <= 6 and all(kind == "high" for _, kind in alarms)
    assert nightscout_simple_alarms(day(*([120.0] * 36))) == []


def test_dexcom_shows_values_beyond_its_range_as_its_sentinels() -> None:
    assert [dexcom_value(v) for v in (12.0, 39.4, 39.6, 400.4, 512.0)] == [39, 39, 40, 400, 401]
