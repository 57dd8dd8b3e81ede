"""The web app: sign-in, the settings page, the health check."""
from __future__ import annotations

import time

import pytest
from flask import Flask
from flask.testing import FlaskClient

from models import CycleRecord, SqliteStore
from scout.config import load_config
from scout.web import create_app
from tests.conftest import DevAuth, csrf_token, dev_env

SETTINGS = {
    "nightscout_url": "http://127.0.0.1:8080/dev/nightscout/falling-to-low/api/v1/entries.json",
    "phone": "+1 415 555 2671",
    "emergency_contact": "(415) 555-2672",
    "emergency_channel": "whatsapp",
    "extra_contacts": ["+44 20 7946 0958", "+14155552674"],
    "extra_channels": ["sms", "whatsapp"],
    "units": "mg/dL",
    "low": "70",
    "high": "240",
}


def save(client: FlaskClient, **changes: object) -> object:
    return client.post("/", data={**SETTINGS, **changes, "csrf_token": csrf_token(client)})


def test_healthz_is_503_until_a_cycle_finishes_then_200(client: FlaskClient, store: SqliteStore) -> None:
    assert client.get("/healthz").status_code == 503
    store.record_cycle(CycleRecord(time.time(), {"users": 0}))
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json["summary"] == {"users": 0}
    store.record_cycle(CycleRecord(time.time() - 181, {"users": 0}))
    assert client.get("/healthz").status_code == 503


def test_the_dev_sign_in_then_saving_settings_stores_them_in_e164(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    response = save(client)
    assert response.status_code == 302  # type: ignore[attr-defined]
    user = store.get_user("dev:ana@example.com")
    assert user is not None
    assert user.phone == "+14155552671"
    assert user.emergency_contact is not None and user.emergency_contact.as_dict() == {
        "phone": "+14155552672", "channel": "whatsapp"}
    assert [c.as_dict() for c in user.extra_contacts] == [
        {"phone": "+442079460958", "channel": "sms"}, {"phone": "+14155552674", "channel": "whatsapp"}]
    page = client.get("/").get_data(as_text=True)
    assert "+14155552671" in page


def test_a_bad_phone_number_is_refused_with_a_message_and_nothing_saved(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    response = save(client, phone="call me maybe")
    assert response.status_code == 400  # type: ignore[attr-defined]
    page = response.get_data(as_text=True)  # type: ignore[attr-defined]
    assert "is not a phone number" in page and "call me maybe" in page  # the input is kept
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.phone == ""


def test_a_sixth_extra_contact_is_refused(client: FlaskClient, auth: DevAuth, store: SqliteStore) -> None:
    auth.login()
    phones = [f"+1415555267{i}" for i in range(6)]
    response = save(client, extra_contacts=phones, extra_channels=["sms"] * 6)
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "at most 5 extra contacts" in response.get_data(as_text=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("low, high, message", [("120", "120", "must be above the low"),
                                                 ("10", "240", "between 40 and 120"),
                                                 ("x", "240", "as a number")])
def test_thresholds_are_checked(client: FlaskClient, auth: DevAuth, low: str, high: str, message: str) -> None:
    auth.login()
    response = save(client, low=low, high=high)
    assert response.status_code == 400 and message in response.get_data(as_text=True)  # type: ignore[attr-defined]


def test_thresholds_in_mmol_are_stored_in_mgdl(client: FlaskClient, auth: DevAuth, store: SqliteStore) -> None:
    auth.login()
    save(client, units="mmol/L", low="3.9", high="13.3")
    user = store.get_user("dev:ana@example.com")
    assert user is not None and (user.units, user.low_mgdl, user.high_mgdl) == ("mmol/L", 70, 239)


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    response = client.post("/", data=SETTINGS)
    assert response.status_code == 400
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.nightscout_url == ""


def test_logout_clears_the_session(client: FlaskClient, auth: DevAuth) -> None:
    auth.login()
    auth.logout()
    assert "Sign in to Scout" in client.get("/").get_data(as_text=True)


def test_outside_dev_mode_there_is_no_dev_sign_in_or_simulator(tmp_path: object) -> None:
    env = {**dev_env(tmp_path), "SCOUT_DEV": "", "SITE_URL": "https://scout.example.org",
           "GOOGLE_CLIENT_ID": "id", "SCOUT_TELEPHONY": "twilio", "TWILIO_ACCOUNT_SID": "AC1",
           "TWILIO_AUTH_TOKEN": "t", "TWILIO_NUMBER": "+15005550006"}
    app: Flask = create_app(load_config(env))
    client = app.test_client()
    assert client.post("/dev/login", data={"email": "a@b.c"}).status_code == 404
    assert client.get("/dev/nightscout/low/api/v1/entries.json").status_code == 404


def test_the_simulated_nightscout_serves_a_falling_low(client: FlaskClient) -> None:
    entries = client.get("/dev/nightscout/falling-to-low/api/v1/entries/sgv.json?count=3").json
    assert [e["sgv"] for e in entries] == [54, 66, 78]
    assert entries[0]["direction"] == "SingleDown"
    assert client.get("/dev/nightscout/down/api/v1/entries.json").status_code == 503
