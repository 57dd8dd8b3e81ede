"""The settings page's early warnings (predicted low, fast drop): saved in mg/dL, refused
with a message beside the field, nothing saved on an error."""
from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from scout.store.sqlite import SqliteStore
from tests.conftest import DevAuth, csrf_token

SETTINGS = {
    "nightscout_url": "http://127.0.0.1:8080/", "phone": "+1 415 555 2671", "emergency_contact": "(415) 555-2672",
    "emergency_channel": "sms", "units": "mg/dL", "low": "70", "high": "240",
    "predict_low_minutes": "20", "fast_drop_rate": "3", "fast_drop_minutes": "15",
}


def save(client: FlaskClient, **changes: str) -> Any:
    return client.post("/", data={**SETTINGS, **changes, "csrf_token": csrf_token(client)})


def test_both_options_are_off_until_chosen(client: FlaskClient, auth: DevAuth, store: SqliteStore) -> None:
    auth.login()
    assert save(client).status_code == 302
    user = store.get_user("dev:ana@example.com")
    assert user is not None and (user.predict_low_minutes, user.fast_drop) == (0, False)


def test_the_options_are_saved_and_shown_back(client: FlaskClient, auth: DevAuth, store: SqliteStore) -> None:
    auth.login()
    assert save(client, predict_low="1", predict_low_minutes="25", fast_drop="1", fast_drop_rate="2.5",
                fast_drop_minutes="20").status_code == 302
    user = store.get_user("dev:ana@example.com")
    assert user is not None
    assert (user.predict_low_minutes, user.fast_drop, user.fast_drop_rate_mgdl, user.fast_drop_minutes) == (25, True, 2.5, 20)
    page = client.get("/").get_data(as_text=True)
    assert 'id="predict_low" name="predict_low" value="1" checked' in page
    assert 'id="fast_drop_rate" name="fast_drop_rate" type="text" inputmode="decimal" value="2.5"' in page


def test_a_fast_drop_rate_in_mmol_is_stored_in_mgdl(client: FlaskClient, auth: DevAuth, store: SqliteStore) -> None:
    auth.login()
    assert save(client, units="mmol/L", low="3.9", high="13.3", fast_drop="1", fast_drop_rate="0.17").status_code == 302
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.fast_drop_rate_mgdl == pytest.approx(3.1, abs=0.05)
    assert 'value="0.17"' in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("changes, field, message", [
    ({"predict_low": "1", "predict_low_minutes": "45"}, "predict_low_minutes", "between 5 and 30 minutes"),
    ({"predict_low": "1", "predict_low_minutes": "soon"}, "predict_low_minutes", "as a number between 5 and 30"),
    ({"fast_drop": "1", "fast_drop_rate": "0.2"}, "fast_drop_rate", "between 1 and 10 mg/dL a minute"),
    ({"fast_drop": "1", "fast_drop_rate": "nan"}, "fast_drop_rate", "between 1 and 10 mg/dL a minute"),
    ({"fast_drop": "1", "fast_drop_minutes": "90"}, "fast_drop_minutes", "between 10 and 30 minutes"),
    ({"units": "mmol/L", "low": "3.9", "high": "13.3", "fast_drop": "1", "fast_drop_rate": "3"}, "fast_drop_rate",
     "between 0.056 and 0.56 mmol/L a minute"),
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
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.phone == ""  # nothing saved


def test_an_option_left_off_ignores_its_fields(client: FlaskClient, auth: DevAuth, store: SqliteStore) -> None:
    auth.login()
    assert save(client, predict_low_minutes="999", fast_drop_rate="abc").status_code == 302
