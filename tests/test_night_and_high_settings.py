"""The settings page's night thresholds, time zone and cadence of highs: saved in mg/dL and
minutes, shown back in the user's units, refused with a message beside the field, and
nothing saved on an error."""
from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from models import User
from scout.store.sqlite import SqliteStore
from tests.conftest import DevAuth, csrf_token

SETTINGS = {
    "nightscout_url": "http://127.0.0.1:8080/", "phone": "+1 415 555 2671", "emergency_contact": "(415) 555-2672",
    "emergency_channel": "sms", "units": "mg/dL", "low": "70", "high": "240", "urgent_low": "55",
    "time_zone": "America/New_York", "night_start": "22:00", "night_end": "07:00", "night_low": "80",
    "night_high": "200", "high_repeat_minutes": "30", "high_snooze_minutes": "120", "urgent_high": "300",
    "urgent_high_minutes": "60",
}


def save(client: FlaskClient, **changes: str) -> Any:
    return client.post("/", data={**SETTINGS, **changes, "csrf_token": csrf_token(client)})


def saved(store: SqliteStore) -> User:
    user = store.get_user("dev:ana@example.com")
    assert user is not None
    return user


def test_the_night_thresholds_and_the_high_cadence_are_saved_and_shown_back(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    assert save(client, night_thresholds="1", night_start="23:30", night_end="6:15", time_zone="Pacific/Auckland",
                high_repeat_minutes="45", high_snooze_minutes="90", urgent_high="320",
                urgent_high_minutes="0").status_code == 302
    user = saved(store)
    assert (user.time_zone, user.night_thresholds, user.night_start, user.night_end) == (
        "Pacific/Auckland", True, "23:30", "06:15")
    assert (user.night_low_mgdl, user.night_high_mgdl) == (80.0, 200.0)
    assert (user.high_repeat_minutes, user.high_snooze_minutes, user.urgent_high_mgdl, user.urgent_high_minutes) == (
        45, 90, 320.0, 0)
    page = client.get("/").get_data(as_text=True)
    assert "<option selected>Pacific/Auckland</option>" in page
    assert 'id="night_thresholds" name="night_thresholds" value="1" checked' in page
    assert 'id="night_start" name="night_start" type="time" value="23:30"' in page
    assert 'id="urgent_high" name="urgent_high" type="text" inputmode="decimal" value="320"' in page
    assert 'id="high_repeat_minutes" name="high_repeat_minutes" type="text" inputmode="numeric" value="45"' in page
    assert "calls again every 45 minutes, and after you press 1 waits 90 minutes" in page


def test_a_new_user_starts_with_the_default_cadence_and_no_night_thresholds(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    assert save(client).status_code == 302  # night thresholds left off
    user = saved(store)
    assert not user.night_thresholds and user.time_zone == "America/New_York"
    assert (user.high_repeat_minutes, user.high_snooze_minutes, user.urgent_high_mgdl, user.urgent_high_minutes) == (
        30, 120, 300.0, 60)


def test_in_mmol_the_night_values_are_stored_in_mgdl_and_an_unchanged_urgent_high_stays_300(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    assert save(client, units="mmol/L", low="3.9", high="13.3", urgent_low="3.0", night_thresholds="1",
                night_low="4.4", night_high="11.1", urgent_high="16.7").status_code == 302
    user = saved(store)
    assert (user.night_low_mgdl, user.night_high_mgdl, user.urgent_high_mgdl) == (79.0, 200.0, 300.0)
    page = client.get("/").get_data(as_text=True)
    assert 'name="urgent_high" type="text" inputmode="decimal" value="16.7"' in page
    assert 'name="night_low" type="text" inputmode="decimal" value="4.4"' in page
    assert save(client, units="mmol/L", low="3.9", high="13.3", urgent_low="3.0", urgent_high="17").status_code == 302
    assert saved(store).urgent_high_mgdl == 306.0


def test_night_thresholds_left_off_keep_their_saved_values_and_ignore_bad_ones(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    assert save(client, night_thresholds="1", night_low="85", night_start="21:00").status_code == 302
    assert save(client, night_low="abc", night_start="later").status_code == 302  # off: not read
    user = saved(store)
    assert (user.night_thresholds, user.night_low_mgdl, user.night_start) == (False, 85.0, "21:00")


def test_a_form_without_the_new_fields_keeps_the_saved_cadence_and_zone(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    assert save(client, high_repeat_minutes="15", time_zone="Europe/Paris").status_code == 302
    older = {k: v for k, v in SETTINGS.items() if k not in ("high_repeat_minutes", "time_zone", "urgent_high")}
    assert client.post("/", data={**older, "csrf_token": csrf_token(client)}).status_code == 302
    user = saved(store)
    assert (user.high_repeat_minutes, user.time_zone, user.urgent_high_mgdl) == (15, "Europe/Paris", 300.0)


NIGHT_ON = {"night_thresholds": "1"}


@pytest.mark.parametrize("changes, field, message", [
    ({"time_zone": "Mars/Olympus_Mons"}, "time_zone", "Scout knows no time zone called Mars/Olympus_Mons. Choose"),
    ({"time_zone": ""}, "time_zone", "Choose your time zone from the list"),
    ({"time_zone": "America/Springfield"}, "time_zone", "Choose your time zone from the list"),
    ({**NIGHT_ON, "night_start": "25:00"}, "night_start", "as a 24-hour time, e.g. 22:00"),
    ({**NIGHT_ON, "night_start": ""}, "night_start", "Enter when your night starts"),
    ({**NIGHT_ON, "night_end": "7pm"}, "night_end", "Enter when your night ends as a 24-hour time"),
    ({**NIGHT_ON, "night_end": "22:00"}, "night_end", "must end at another time than it starts"),
    ({**NIGHT_ON, "night_low": "30"}, "night_low", "The night low threshold must be between 40 and 120 mg/dL"),
    ({**NIGHT_ON, "night_low": "nan"}, "night_low", "between 40 and 120 mg/dL"),
    ({**NIGHT_ON, "night_low": "low"}, "night_low", "Enter the night low threshold as a number in mg/dL"),
    ({**NIGHT_ON, "night_high": "500"}, "night_high", "The night high threshold must be between 120 and 400 mg/dL"),
    ({**NIGHT_ON, "night_low": "120", "night_high": "120"}, "night_high", "above the night low threshold"),
    ({**NIGHT_ON, "night_low": "50", "urgent_low": "55"}, "urgent_low", "your night low threshold, 50 mg/dL"),
    ({"high_repeat_minutes": "2"}, "high_repeat_minutes", "whole minutes between 5 and 240"),
    ({"high_repeat_minutes": "often"}, "high_repeat_minutes", "how often Scout calls about a high"),
    ({"high_repeat_minutes": ""}, "high_repeat_minutes", "whole minutes between 5 and 240"),
    ({"high_snooze_minutes": "5"}, "high_snooze_minutes", "how long a 1 silences a high as whole minutes between 15 and 480"),
    ({"high_snooze_minutes": "1e9"}, "high_snooze_minutes", "between 15 and 480"),
    ({"urgent_high": "240"}, "urgent_high", "must be above your high threshold (240 mg/dL)"),
    ({"urgent_high": "450"}, "urgent_high", "The urgent high must be between 120 and 400 mg/dL"),
    ({"urgent_high": "inf"}, "urgent_high", "between 120 and 400 mg/dL"),
    ({**NIGHT_ON, "night_high": "320", "urgent_high": "300"}, "urgent_high", "above your high threshold (320 mg/dL)"),
    ({"urgent_high_minutes": "-5"}, "urgent_high_minutes", "whole minutes between 0 and 240"),
    ({"urgent_high_minutes": "300"}, "urgent_high_minutes", "how long above the urgent high before your contacts hear"),
    ({"units": "mmol/L", "low": "3.9", "high": "13.3", "urgent_low": "3.0", "urgent_high": "13"}, "urgent_high",
     "above your high threshold (13.3 mmol/L)"),
])
def test_a_bad_value_is_refused_beside_its_field_and_nothing_is_saved(
    client: FlaskClient, auth: DevAuth, store: SqliteStore, changes: dict[str, str], field: str, message: str
) -> None:
    auth.login()
    response = save(client, **changes)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    error = page.split(f'id="{field}-error"')[1].split("</p>")[0]
    assert message in error
    described = page.split(f'id="{field}"')[1].split(">")[0]
    assert f"{field}-error" in described and 'aria-invalid="true"' in described  # tied to its field
    assert saved(store).phone == ""  # nothing saved


def test_a_refused_page_keeps_what_the_person_typed(client: FlaskClient, auth: DevAuth) -> None:
    auth.login()
    page = save(client, night_thresholds="1", night_low="85", night_start="25:00", high_repeat_minutes="3",
                time_zone="Europe/Paris").get_data(as_text=True)
    assert 'id="night_low" name="night_low" type="text" inputmode="decimal" value="85"' in page
    assert 'value="25:00"' in page and 'value="3"' in page
    assert "<option selected>Europe/Paris</option>" in page
    assert 'id="night_thresholds" name="night_thresholds" value="1" checked' in page
