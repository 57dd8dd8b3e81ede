"""The attacks the tutorial was open to, tried over HTTP: someone else's record, forged
forms, script injection and server-side requests into Scout's own network."""
from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from models import Contact, User
from scout.config import load_config
from scout.store.sqlite import SqliteStore
from scout.web import create_app
from tests.conftest import DevAuth, csrf_token, dev_env
from tests.test_web import SETTINGS, save

XSS_PAYLOADS = [
    '<script>alert(1)</script>',
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
    "'-alert(1)-'",
    "</script><script>alert(1)</script>",
]
TEXT_FIELDS = ["nightscout_url", "nightscout_token", "nightscout_api_secret", "phone", "emergency_contact",
               "emergency_channel", "extra_contacts", "extra_channels", "units", "low", "high"]


def non_dev_app(tmp_path: Any, store: SqliteStore) -> Flask:
    env = {**dev_env(tmp_path), "SCOUT_DEV": "", "SITE_URL": "https://scout.example.org",
           "GOOGLE_CLIENT_ID": "id", "SCOUT_TELEPHONY": "twilio", "TWILIO_ACCOUNT_SID": "AC1",
           "TWILIO_AUTH_TOKEN": "t", "TWILIO_NUMBER": "+15005550006"}
    app = create_app(load_config(env), store)
    app.testing = True
    return app


def signed_in_as(client: FlaskClient, user_id: str) -> None:
    """Outside dev mode only Google signs people in; the session is what it leaves behind."""
    with client.session_transaction() as session:
        session["user_id"] = user_id


@pytest.fixture
def bo(store: SqliteStore) -> User:
    user = User("sub-bo", "bo@example.com", "Bo", nightscout_url="https://bo.example.org",
                nightscout_token="bo-secret-token-123", phone="+14155550101",
                emergency_contact=Contact("+14155550102"))
    store.save_user(user)
    return user


# --- someone else's record ---------------------------------------------------------------


def test_the_page_shows_only_the_signed_in_persons_record(client: FlaskClient, auth: DevAuth, bo: User) -> None:
    auth.login()
    page = client.get("/").get_data(as_text=True)
    assert "bo@example.com" not in page and "+14155550101" not in page and "bo.example.org" not in page
    assert "sub-bo" not in client.get("/?id=sub-bo&user_id=sub-bo").get_data(as_text=True)


def test_posting_another_users_id_changes_only_ones_own_record(
    client: FlaskClient, auth: DevAuth, store: SqliteStore, bo: User
) -> None:
    auth.login()
    response = save(client, id="sub-bo", user_id="sub-bo", email="bo@example.com", phone="+1 415 555 2671")
    assert response.status_code == 302  # type: ignore[attr-defined]
    assert store.get_user("sub-bo") == bo
    mine = store.get_user("dev:ana@example.com")
    assert mine is not None and mine.phone == "+14155552671" and mine.email == "ana@example.com"


def test_no_user_id_travels_through_any_form(client: FlaskClient, auth: DevAuth) -> None:
    auth.login()
    page = client.get("/").get_data(as_text=True)
    hidden = re.findall(r'<input type="hidden" name="([^"]+)"', page)
    assert set(hidden) == {"csrf_token"}
    assert "dev:ana@example.com" not in page


def test_deleting_my_data_removes_only_my_record(client: FlaskClient, auth: DevAuth, store: SqliteStore, bo: User) -> None:
    auth.login()
    response = client.post("/delete-account", data={"csrf_token": csrf_token(client), "user_id": "sub-bo"})
    assert response.status_code == 302
    assert store.get_user("dev:ana@example.com") is None and store.get_user("sub-bo") == bo


def test_a_session_cookie_from_another_secret_key_is_not_accepted(tmp_path: Any, store: SqliteStore, bo: User) -> None:
    forger = create_app(load_config(dev_env(tmp_path, SECRET_KEY="guessed")), store).test_client()
    signed_in_as(forger, "sub-bo")
    cookie = forger.get_cookie("session")
    assert cookie is not None
    victim_app = create_app(load_config(dev_env(tmp_path)), store).test_client()
    victim_app.set_cookie("session", cookie.value)
    assert "Sign in to Scout" in victim_app.get("/").get_data(as_text=True)


# --- forged forms (CSRF) --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/check-nightscout", "/test-alert", "/delete-account", "/logout"])
@pytest.mark.parametrize("token", [None, "forged-token"], ids=["missing", "wrong"])
def test_a_state_changing_post_without_a_valid_csrf_token_is_refused_and_changes_nothing(
    client: FlaskClient, auth: DevAuth, store: SqliteStore, path: str, token: str | None
) -> None:
    auth.login()
    data: dict[str, Any] = dict(SETTINGS)
    if token is not None:
        data["csrf_token"] = token
    response = client.post(path, data=data)
    assert response.status_code == 400
    assert "Nothing was changed" in response.get_data(as_text=True)
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.nightscout_url == ""  # still there, unchanged
    assert store.user_log("dev:ana@example.com") == []
    assert "Your alert settings" in client.get("/").get_data(as_text=True)  # still signed in


def test_the_dev_sign_in_needs_a_csrf_token_too(client: FlaskClient, store: SqliteStore) -> None:
    assert client.post("/dev/login", data={"email": "eve@example.com"}).status_code == 400
    assert store.list_users() == []


# --- script injection (XSS) ----------------------------------------------------------------


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_script_payloads_in_every_field_are_refused_and_rendered_escaped(
    client: FlaskClient, auth: DevAuth, store: SqliteStore, payload: str
) -> None:
    auth.login()
    form = {name: payload for name in TEXT_FIELDS}
    response = client.post("/", data={**form, "csrf_token": csrf_token(client)})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert payload not in page or payload == "javascript:alert(1)"  # that one is plain text, harmless escaped
    assert "<script>alert" not in page and "<img src=x" not in page and "</script><script>" not in page
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.nightscout_url == "" and user.phone == ""  # nothing saved


def test_script_payloads_stored_in_the_name_and_alert_log_are_shown_as_text(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    from models import LogEntry

    auth.login(name='<script>alert("name")</script>')
    store.commit("dev:ana@example.com", None, 0, [LogEntry(
        key="k1", user_id="dev:ana@example.com", kind="sms", purpose="<b>x</b>", recipient='"><svg onload=alert(1)>',
        body="b", created_at=1.0, status="permanent", error="<script>alert('provider')</script>")])
    page = client.get("/").get_data(as_text=True)
    assert "<script>alert" not in page and "<svg onload" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(&#39;provider&#39;)&lt;/script&gt;" in page


def test_page_data_reaches_the_script_only_as_escaped_json(client: FlaskClient, auth: DevAuth) -> None:
    auth.login()
    page = client.get("/").get_data(as_text=True)
    blocks = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert blocks, "the page carries its data block"
    for attributes, body in blocks:
        assert 'type="application/json"' in attributes or (body.strip() == "" and "src=" in attributes)


def test_no_template_marks_anything_safe() -> None:
    from pathlib import Path

    for template in (Path(__file__).resolve().parent.parent / "templates").rglob("*.html"):
        text = template.read_text()
        assert "|safe" not in text.replace(" ", "") and "Markup(" not in text, template.name
        assert "autoescape false" not in text, template.name


def test_every_response_carries_a_strict_content_security_policy(client: FlaskClient) -> None:
    csp = client.get("/").headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";") if part.strip())
    assert directives["script-src"] == "'self' https://accounts.google.com/gsi/client"
    assert directives["object-src"] == "'none'" and directives["form-action"] == "'self'"
    assert "unsafe" not in csp


# --- server-side requests into Scout's network (SSRF) ------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:5000/",
    "http://10.0.0.8/api/v1/entries.json",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8080/",
    "http://localhost:8080/",
    "http://192.168.1.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0/",
])
def test_nightscout_urls_into_private_networks_are_refused_outside_dev_mode(
    tmp_path: Any, store: SqliteStore, url: str
) -> None:
    client = non_dev_app(tmp_path, store).test_client()
    store.save_user(User("sub-ana", "ana@example.com"))
    signed_in_as(client, "sub-ana")
    response = client.post("/", data={**SETTINGS, "nightscout_url": url, "csrf_token": csrf_token(client)})
    assert response.status_code == 400
    assert "private or internal address" in response.get_data(as_text=True)
    user = store.get_user("sub-ana")
    assert user is not None and user.nightscout_url == ""


def test_check_my_nightscout_re_checks_the_address_when_it_fetches(tmp_path: Any, store: SqliteStore) -> None:
    """A record saved before (or a name that now resolves elsewhere) is checked again at fetch time."""
    client = non_dev_app(tmp_path, store).test_client()
    store.save_user(User("sub-ana", "ana@example.com", nightscout_url="http://169.254.169.254/"))
    signed_in_as(client, "sub-ana")
    client.post("/check-nightscout", data={"csrf_token": csrf_token(client)})
    page = client.get("/").get_data(as_text=True)
    assert "is an address Scout will not fetch" in page


def test_outside_dev_mode_the_session_cookie_is_secure_httponly_and_lax(tmp_path: Any, store: SqliteStore) -> None:
    client = non_dev_app(tmp_path, store).test_client()
    store.save_user(User("sub-ana", "ana@example.com"))
    signed_in_as(client, "sub-ana")
    response = client.get("/")  # the settings page puts a CSRF token in the session
    cookie = response.headers.get("Set-Cookie", "")
    assert cookie.startswith("session=")
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"secure", "httponly", "samesite=lax"} <= flags


def test_the_sign_in_page_echoes_no_text_from_its_url(client: FlaskClient) -> None:
    page = client.get("/?error=Call+%2B1+900+555+0100+now&saved=1").get_data(as_text=True)
    assert "900 555" not in page and "Saved" not in page


def test_a_dev_sign_in_without_an_email_says_so(client: FlaskClient, store: SqliteStore) -> None:
    response = client.post("/dev/login", data={"email": "nobody", "csrf_token": csrf_token(client)})
    assert response.status_code == 302 and store.list_users() == []
    assert "Enter an email address" in client.get("/").get_data(as_text=True)
