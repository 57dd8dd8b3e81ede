"""The web app: sign-in, the settings page, the health check."""
from __future__ import annotations

import re
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient

from scout.config import load_config
from scout.store.sqlite import SqliteStore
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
        "phone": "+14155552672", "channel": "whatsapp", "mode": "call"}  # no mode in the form: called
    assert [c.as_dict() for c in user.extra_contacts] == [
        {"phone": "+442079460958", "channel": "sms", "mode": "call"},
        {"phone": "+14155552674", "channel": "whatsapp", "mode": "call"}]
    page = client.get("/").get_data(as_text=True)
    # shown back the way people write numbers, not as raw E.164 (issue 14)
    assert 'value="+1 415-555-2671"' in page and 'value="+44 20 7946 0958"' in page
    assert "+14155552671" not in page.split('id="page-data"')[0]


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
    entries = client.get("/dev/nightscout/falling-to-low/api/v1/entries/sgv.json?count=3").get_json()
    assert [e["sgv"] for e in entries] == [54, 66, 78]
    assert entries[0]["direction"] == "SingleDown"
    assert client.get("/dev/nightscout/down/api/v1/entries.json").status_code == 503


# --- the settings page in detail -------------------------------------------------------------


def test_in_dev_mode_the_session_cookie_is_httponly_and_lax_but_not_secure_for_plain_http(
    client: FlaskClient, auth: DevAuth
) -> None:
    auth.login()
    cookie = client.get("/").headers.get("Set-Cookie", "")
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert cookie.startswith("session=") and {"httponly", "samesite=lax"} <= flags and "secure" not in flags


def test_a_saved_token_is_never_shown_back_only_its_last_two_characters(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    save(client, nightscout_token="my-reader-token-x7", nightscout_api_secret="a-very-long-api-secret-q9")
    page = client.get("/").get_data(as_text=True)
    assert "my-reader-token-x7" not in page and "a-very-long-api-secret-q9" not in page
    assert "Access token saved, ends in …x7" in page and "API secret saved, ends in …q9" in page
    save(client)  # empty fields keep what is saved
    user = store.get_user("dev:ana@example.com")
    assert user is not None and (user.nightscout_token, user.nightscout_api_secret) == (
        "my-reader-token-x7", "a-very-long-api-secret-q9")
    save(client, clear_nightscout_token="1")
    user = store.get_user("dev:ana@example.com")
    assert user is not None and (user.nightscout_token, user.nightscout_api_secret) == ("", "a-very-long-api-secret-q9")


def test_a_too_short_api_secret_is_refused(client: FlaskClient, auth: DevAuth) -> None:
    auth.login()
    response = save(client, nightscout_api_secret="short")
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "at least 12 characters" in response.get_data(as_text=True)  # type: ignore[attr-defined]


def test_an_error_lands_next_to_the_contact_row_it_is_about_even_after_an_empty_row(
    client: FlaskClient, auth: DevAuth
) -> None:
    auth.login()
    response = save(client, extra_contacts=["", "+14155552674", "12"], extra_channels=["sms", "sms", "sms"])
    page = response.get_data(as_text=True)  # type: ignore[attr-defined]
    assert response.status_code == 400  # type: ignore[attr-defined]
    row3 = page.split('id="extra-phone-3"')[1].split("data-contact-row")[0]
    assert "&#39;12&#39; is not a valid phone number" in row3 or "&#39;12&#39; is not a phone number" in row3


def test_the_emergency_contact_must_be_someone_else_and_contacts_are_not_listed_twice(
    client: FlaskClient, auth: DevAuth
) -> None:
    auth.login()
    page = save(client, emergency_contact="+1 415 555 2671").get_data(as_text=True)  # type: ignore[attr-defined]
    assert "Enter someone else&#39;s number" in page
    page = save(client, extra_contacts=["+14155552672"], extra_channels=["sms"]).get_data(as_text=True)  # type: ignore[attr-defined]
    assert "+14155552672 is already listed" in page


def test_thresholds_are_shown_in_the_chosen_units(client: FlaskClient, auth: DevAuth) -> None:
    auth.login()
    page = client.get("/").get_data(as_text=True)
    assert 'id="low" name="low" type="text" inputmode="decimal" value="70"' in page
    assert 'value="240"' in page
    save(client, units="mmol/L", low="3.9", high="13.3")
    page = client.get("/").get_data(as_text=True)
    assert 'name="low" type="text" inputmode="decimal" value="3.9"' in page and 'value="13.3"' in page
    assert ('"mmol/L": {"high": 13.3, "low": 3.9, "night_high": 13.3, "night_low": 3.9, "urgent_high": 16.7, '
            '"urgent_low": 3.1}') in page  # the script's data, as JSON
    assert 'id="urgent_high" name="urgent_high" type="text" inputmode="decimal" value="16.7"' in page


@pytest.mark.parametrize("low, high", [("nan", "240"), ("inf", "240"), ("70", "1e9"), ("-5", "240")])
def test_non_numbers_and_absurd_thresholds_are_refused(client: FlaskClient, auth: DevAuth, low: str, high: str) -> None:
    auth.login()
    assert save(client, low=low, high=high).status_code == 400  # type: ignore[attr-defined]


def entries(now: float, sgv: int = 62, direction: str = "SingleDown", age_minutes: float = 2) -> list[dict[str, object]]:
    at = int((now - age_minutes * 60) * 1000)
    return [{"type": "sgv", "sgv": sgv, "date": at, "direction": direction},
            {"type": "sgv", "sgv": sgv + 8, "date": at - 300_000, "direction": direction}]


def check(client: FlaskClient) -> str:
    client.post("/check-nightscout", data={"csrf_token": csrf_token(client)})
    page = client.get("/").get_data(as_text=True)
    return page.split('id="check-result"')[1].split("</div>")[0] if 'id="check-result"' in page else ""


def test_check_my_nightscout_shows_value_units_arrow_and_age(
    client: FlaskClient, auth: DevAuth, httpserver: object
) -> None:
    auth.login()
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(time.time()))  # type: ignore[attr-defined]
    save(client, nightscout_url=httpserver.url_for("/"))  # type: ignore[attr-defined]
    assert "Nightscout works: 62 mg/dL ↓ falling, 2 minutes ago." in check(client)


@pytest.mark.parametrize("status, body, expected", [
    (401, "Unauthorized", "refused access (401): the access token or API secret is missing or wrong"),
    (200, "<!doctype html><title>Blog</title>", "did not answer with Nightscout data (is this a Nightscout site?)"),
    (200, "[]", "has no glucose readings"),
    (503, "down", "answered with an error (HTTP 503, text/plain)"),
])
def test_check_my_nightscout_says_exactly_why_it_failed(
    client: FlaskClient, auth: DevAuth, httpserver: object, status: int, body: str, expected: str
) -> None:
    auth.login()
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_data(body, status=status)  # type: ignore[attr-defined]
    save(client, nightscout_url=httpserver.url_for("/"))  # type: ignore[attr-defined]
    result = check(client)
    assert "Scout could not read your Nightscout" in result and expected.replace("'", "&#39;") in result
    assert "doctype" not in result and "title" not in result.lower()  # never the site's raw HTML


def test_check_my_nightscout_warns_when_the_newest_reading_is_stale(
    client: FlaskClient, auth: DevAuth, httpserver: object
) -> None:
    auth.login()
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(time.time(), age_minutes=42))  # type: ignore[attr-defined]
    save(client, nightscout_url=httpserver.url_for("/"))  # type: ignore[attr-defined]
    result = check(client)
    assert "its newest reading is old: 62 mg/dL ↓ falling, 42 minutes ago." in result
    assert "Scout never calls for a reading older than 15 minutes" in result and "Nightscout works" not in result


def test_check_my_nightscout_reports_an_unreachable_site(client: FlaskClient, auth: DevAuth) -> None:
    auth.login()
    save(client, nightscout_url="http://127.0.0.1:9/")
    assert "could not connect" in check(client)


def test_a_test_call_is_placed_logged_shown_and_limited_to_one_per_two_minutes(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    save(client)
    client.post("/test-alert", data={"csrf_token": csrf_token(client)})
    page = client.get("/").get_data(as_text=True)
    assert "Test call placed to +1 415-555-2671" in page and "This is a test call from Scout" in page
    entries_ = store.user_log("dev:ana@example.com")
    assert [(e.purpose, e.kind, e.recipient, e.status, e.provider) for e in entries_] == [
        ("test", "call", "+14155552671", "sent", "console")]
    assert "Test call" in page.split('id="recent-alerts"')[1]

    client.post("/test-alert", data={"csrf_token": csrf_token(client)})
    assert "Try again in" in client.get("/").get_data(as_text=True)
    assert len(store.user_log("dev:ana@example.com")) == 1  # the limit comes from the log, not from memory


def test_a_test_call_refused_by_the_provider_says_why(
    client: FlaskClient, auth: DevAuth, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scout.telephony.base import TelephonyError
    from scout.telephony.console import ConsoleMessenger

    def refuse(self: object, to: str, speech: str, call_key: str) -> object:
        raise TelephonyError("The 'To' number is not a valid phone number", code="21211", permanent=True)

    monkeypatch.setattr(ConsoleMessenger, "place_call", refuse)
    auth.login()
    save(client)
    client.post("/test-alert", data={"csrf_token": csrf_token(client)})
    page = client.get("/").get_data(as_text=True)
    assert "The test call to +1 415-555-2671 failed: 21211: The &#39;To&#39; number is not a valid phone number" in page
    assert "refused by console: 21211" in page  # the alert log shows the provider's code too


def test_a_test_call_needs_a_saved_phone_number(client: FlaskClient, auth: DevAuth, store: SqliteStore) -> None:
    auth.login()
    client.post("/test-alert", data={"csrf_token": csrf_token(client)})
    assert "Save your phone number first" in client.get("/").get_data(as_text=True)
    assert store.user_log("dev:ana@example.com") == []


def test_delete_my_data_asks_first_then_removes_user_state_and_log_and_signs_out(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    from models import AlertState

    auth.login()
    save(client)
    client.post("/test-alert", data={"csrf_token": csrf_token(client)})
    store.commit("dev:ana@example.com", AlertState(failed_polls=3), 0, [])
    confirm = client.get("/delete-account").get_data(as_text=True)
    assert "Delete your data?" in confirm and "Yes, delete everything" in confirm
    assert store.get_user("dev:ana@example.com") is not None  # asking deletes nothing
    response = client.post("/delete-account", data={"csrf_token": csrf_token(client, "/delete-account")})
    assert response.status_code == 302
    assert store.get_user("dev:ana@example.com") is None
    assert store.user_log("dev:ana@example.com") == [] and store.get_state("dev:ana@example.com") == (AlertState(), 0)
    page = client.get("/").get_data(as_text=True)
    assert "Sign in to Scout" in page and "were deleted" in page


def test_signed_out_posts_change_nothing_and_ask_to_sign_in(client: FlaskClient, store: SqliteStore) -> None:
    token = csrf_token(client)
    for path in ("/", "/check-nightscout", "/test-alert", "/delete-account"):
        response = client.post(path, data={**SETTINGS, "csrf_token": token})
        assert response.status_code == 302, path
    assert store.list_users() == []
    assert "Please sign in again" in client.get("/").get_data(as_text=True)


def test_the_page_works_without_any_cdn(client: FlaskClient, auth: DevAuth) -> None:
    auth.login()
    page = client.get("/").get_data(as_text=True)
    assert re.findall(r'(?:href|src)="(https?:)?//', page) == []
    for asset in re.findall(r'(?:href|src)="(/static/[^"]+)"', page):
        with client.get(asset) as response:
            assert response.status_code == 200, asset


def test_every_field_has_a_label(client: FlaskClient, auth: DevAuth) -> None:
    auth.login()
    save(client)
    page = client.get("/").get_data(as_text=True).split("<template")[0]
    ids = re.findall(r'<(?:input|select)[^>]*\sid="([^"]+)"', page)
    labelled = set(re.findall(r'<label for="([^"]+)"', page))
    visible = [i for i in ids if i not in labelled]
    assert visible == [], f"fields without a label: {visible}"
    unnamed = re.findall(r'<(?:input|select)(?![^>]*type="hidden")(?![^>]*\sid=)(?![^>]*type="checkbox")[^>]*>', page)
    assert unnamed == []


@pytest.mark.parametrize("sgv, outcome, words", [
    (54, "warn", "That is below your 70, an urgent low: Scout would call you for it"),
    (62, "warn", "That is below your 70: Scout would call you for it"),
    (250, "warn", "That is above your 240: Scout would call you for it"),
    (110, "ok", "110 mg/dL ↓ falling, 2 minutes ago, in your range, 70 to 240."),
])
def test_check_my_nightscout_judges_the_value_against_the_users_own_thresholds(
    client: FlaskClient, auth: DevAuth, httpserver: object, sgv: int, outcome: str, words: str
) -> None:
    """A 54 is not simply "Nightscout works": the check says it is below the user's 70 and
    that Scout would call (issue 14)."""
    auth.login()
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(time.time(), sgv=sgv))  # type: ignore[attr-defined]
    save(client, nightscout_url=httpserver.url_for("/"))  # type: ignore[attr-defined]
    result = check(client)
    assert words in result
    assert f'aria-hidden="true">{ {"warn": "warning", "ok": "check_circle"}[outcome] }</i>' in result


def test_contacts_are_saved_with_their_names_and_a_name_without_a_number_is_refused(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    response = save(client, emergency_name="  Bo\x07   Ng ", extra_contacts=["+1 415 555 2673", ""],
                    extra_channels=["sms", "sms"], extra_names=["Sam", "Kim"])
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "Enter Kim&#39;s phone number, or delete the row." in response.get_data(as_text=True)  # type: ignore[attr-defined]
    assert save(client, emergency_name="  Bo\x07   Ng ", extra_contacts=["+1 415 555 2673"],
                extra_channels=["sms"], extra_names=["Sam"]).status_code == 302  # type: ignore[attr-defined]
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.emergency_contact is not None
    assert user.emergency_contact.name == "Bo Ng" and [c.name for c in user.extra_contacts] == ["Sam"]
    page = client.get("/").get_data(as_text=True)
    assert 'value="Bo Ng"' in page and 'value="Sam"' in page
