"""The attacks the tutorial was open to, tried over HTTP: someone else's record, forged
forms, script injection and server-side requests into Scout's own network."""
from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from models import Contact, User
from scout.config import load_config
from scout.logs import JsonFormatter
from scout.nightscout import fetch_readings
from scout.readings import PollFailure, Readings
from scout.store.sqlite import SqliteStore
from scout.web import create_app
from tests.conftest import DevAuth, csrf_token, dev_env, make_user
from tests.telephony_setup import EMERGENCY, EXTRA_SMS, USER_PHONE, WHATSAPP_CONTACT, Scout
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


def signed_in_as(client: FlaskClient, user_id: str, generation: int = 0) -> None:
    """Outside dev mode only Google signs people in; the session is what it leaves behind:
    the user id, when the session started and the user's session generation."""
    with client.session_transaction() as session:
        session.update(user_id=user_id, started_at=time.time(), generation=generation)


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


# --- issue 12: one guarded Nightscout client ------------------------------------------------
#
# The servers are real, on loopback: 127.0.0.1 stands for a public Nightscout site (the
# address policy, a parameter, says so) and 127.0.0.2 for a service inside Scout's network.


def only_127_0_0_1_is_public(address: str) -> bool:
    return address == "127.0.0.1"


@pytest.fixture
def public_site() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def internal(public_site: HTTPServer) -> Iterator[HTTPServer]:
    """An internal service on the same port as the public site, at another address: what a
    request lands on when Scout connects to another address than the one it checked."""
    server = HTTPServer(host="127.0.0.2", port=public_site.port, threaded=True)
    server.expect_request(re.compile(".*")).respond_with_data("INTERNAL-SECRET metadata token", 200,
                                                              content_type="text/plain")
    server.start()
    yield server
    server.clear()
    server.stop()


class RawRedirect:
    """A public site that answers every request with a redirect to `location`, byte for
    byte: werkzeug would percent-encode a backslash in a Location header, an attacker's
    server does not."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.location = ""
        self.paths: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.paths.append(self.path)
                self.send_response(302)
                self.send_header("Location", site.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture
def redirecting_site() -> Iterator[RawRedirect]:
    site = RawRedirect()
    yield site
    site.server.shutdown()
    site.server.server_close()


@pytest.fixture
def internal_beside(redirecting_site: RawRedirect) -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.2", port=redirecting_site.port, threaded=True)
    server.expect_request(re.compile(".*")).respond_with_data("INTERNAL-SECRET metadata token", 200,
                                                              content_type="text/plain")
    server.start()
    yield server
    server.clear()
    server.stop()


def nightscout_entries(*values: int) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    return [{"type": "sgv", "sgv": v, "date": now_ms - 300_000 * i, "direction": "Flat"} for i, v in enumerate(values)]


def guarded_app(tmp_path: Any, store: SqliteStore) -> Flask:
    app = non_dev_app(tmp_path, store)
    app.extensions["scout_is_public"] = only_127_0_0_1_is_public
    return app


def check_page(client: FlaskClient) -> str:
    client.post("/check-nightscout", data={"csrf_token": csrf_token(client)})
    return client.get("/").get_data(as_text=True)


BACKSLASH_REDIRECTS = [
    "http://127.0.0.2:{port}\\@127.0.0.1:{port}/api/v1/entries/sgv.json",
    "http://127.0.0.2:{port}\\@127.0.0.1:{port}/../computeMetadata/v1/instance",
]


@pytest.mark.parametrize("location", BACKSLASH_REDIRECTS, ids=["plain", "dot-segments"])
def test_a_backslash_redirect_from_a_public_site_never_reaches_inside_from_the_page(
    tmp_path: Any, store: SqliteStore, redirecting_site: RawRedirect, internal_beside: HTTPServer, location: str
) -> None:
    redirecting_site.location = location.format(port=redirecting_site.port)
    client = guarded_app(tmp_path, store).test_client()
    store.save_user(User("sub-ana", "ana@example.com", nightscout_url=redirecting_site.url()))
    signed_in_as(client, "sub-ana")
    page = check_page(client)
    assert redirecting_site.paths == ["/api/v1/entries/sgv.json?count=3"]
    assert internal_beside.log == []
    assert "INTERNAL-SECRET" not in page
    assert "does not follow such redirects" in page


@pytest.mark.parametrize("location", BACKSLASH_REDIRECTS, ids=["plain", "dot-segments"])
def test_a_backslash_redirect_never_reaches_inside_from_a_webhooks_nightscout_read(
    store: SqliteStore, redirecting_site: RawRedirect, internal_beside: HTTPServer, location: str
) -> None:
    """A signed provider callback makes the engine re-read the user's Nightscout: the same client."""
    from scout.context import WEBHOOK_NIGHTSCOUT_TIMEOUT
    from scout.engine import Engine
    from scout.telephony import make_messenger

    redirecting_site.location = location.format(port=redirecting_site.port)
    engine = Engine(store=store, messenger=make_messenger(load_config({"SCOUT_DEV": "1", "SECRET_KEY": "k"})),
                    nightscout_timeout=WEBHOOK_NIGHTSCOUT_TIMEOUT, is_public=only_127_0_0_1_is_public)
    result = engine.fetch(User("sub-ana", "ana@example.com", nightscout_url=redirecting_site.url()))
    assert isinstance(result, PollFailure) and result.reason == "refused_url", result
    assert "backslash" in result.detail
    assert internal_beside.log == []


def test_a_redirect_carrying_a_user_name_is_refused(public_site: HTTPServer, internal: HTTPServer) -> None:
    public_site.expect_request("/api/v1/entries/sgv.json").respond_with_data(
        "", 302, headers={"Location": f"http://scout@127.0.0.1:{public_site.port}/moved"})
    result = fetch_readings(make_user(public_site.url_for("/")), is_public=only_127_0_0_1_is_public)
    assert isinstance(result, PollFailure) and result.reason == "refused_url" and "user name" in result.detail
    assert [r.path for r, _ in public_site.log] == ["/api/v1/entries/sgv.json"]


def test_a_name_that_rebinds_to_an_internal_address_is_checked_where_it_connects(
    public_site: HTTPServer, internal: HTTPServer
) -> None:
    """The name answers the public address once, then the internal one: every connection
    uses the answer that was checked, so the internal service is never reached."""
    public_site.expect_request("/api/v1/entries/sgv.json").respond_with_json(nightscout_entries(120))
    answers: list[str] = []

    async def rebinding(host: str, port: int, family: int) -> list[dict[str, Any]]:
        address = "127.0.0.1" if not answers else "127.0.0.2"
        answers.append(address)
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    user = make_user(f"http://ana.nightscout.test:{public_site.port}/")
    first = fetch_readings(user, is_public=only_127_0_0_1_is_public, lookup=rebinding)
    second = fetch_readings(user, is_public=only_127_0_0_1_is_public, lookup=rebinding)
    assert isinstance(first, Readings) and first.latest is not None and first.latest.mgdl == 120
    assert isinstance(second, PollFailure) and second.reason == "refused_url" and "127.0.0.2" in second.detail
    assert answers == ["127.0.0.1", "127.0.0.2"]  # one lookup per fetch, and it is the one connected to
    assert internal.log == []


@pytest.mark.parametrize("status, content_type, described", [
    (200, "text/html", "the answer is text/html, 41 bytes, not JSON"),
    (500, "text/plain", "HTTP 500, text/plain"),
    (404, "text/html", "HTTP 404, text/html"),
])
def test_a_failed_answer_is_described_never_echoed_on_the_page(
    client: FlaskClient, auth: DevAuth, store: SqliteStore, public_site: HTTPServer, status: int, content_type: str,
    described: str,
) -> None:
    public_site.expect_request("/api/v1/entries/sgv.json").respond_with_data(
        "INTERNAL-SECRET aws_secret_access_key=abc", status, content_type=content_type)
    auth.login()
    user = store.get_user("dev:ana@example.com")
    assert user is not None
    store.save_user(replace(user, nightscout_url=public_site.url_for("/")))
    page = check_page(client)
    assert "INTERNAL-SECRET" not in page and "aws_secret" not in page
    assert described in page


EMBEDDED_IPV4 = ["http://[::127.0.0.1]/", "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/",
                 "http://[64:ff9b:1::7f00:1]/", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/"]


@pytest.mark.parametrize("url", EMBEDDED_IPV4)
def test_ipv6_forms_that_embed_an_ipv4_address_are_refused_when_saved(tmp_path: Any, store: SqliteStore,
                                                                       url: str) -> None:
    client = non_dev_app(tmp_path, store).test_client()
    store.save_user(User("sub-ana", "ana@example.com"))
    signed_in_as(client, "sub-ana")
    response = client.post("/", data={**SETTINGS, "nightscout_url": url, "csrf_token": csrf_token(client)})
    assert response.status_code == 400
    assert "private or internal address" in response.get_data(as_text=True)


@pytest.mark.parametrize("url", EMBEDDED_IPV4)
def test_ipv6_forms_that_embed_an_ipv4_address_are_refused_at_fetch_whatever_the_policy(url: str) -> None:
    result = fetch_readings(make_user(url), is_public=lambda address: True)
    assert isinstance(result, PollFailure) and result.reason == "refused_url", result


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:8181\\@ana.example.org/", "no backslashes or spaces"),
    ("http://ana.example.org\\.evil/", "no backslashes or spaces"),
    ("http://scout:pw@ana.example.org/", "Leave the user name and password out"),
    ("http://@ana.example.org/", "Leave the user name and password out"),
])
def test_addresses_with_backslashes_or_user_info_are_refused_when_saved(client: FlaskClient, auth: DevAuth,
                                                                        url: str, reason: str) -> None:
    auth.login()
    response = client.post("/", data={**SETTINGS, "nightscout_url": url, "csrf_token": csrf_token(client)})
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert reason in text


def test_a_site_trickling_a_byte_every_half_second_cannot_hold_a_check(public_site: HTTPServer) -> None:
    """Issue 11, item 5: a deadline for the whole fetch, not for each read."""
    def trickle(_request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(60):
                yield b" "
                time.sleep(0.5)
        return Response(body(), content_type="application/json")

    public_site.expect_request("/api/v1/entries/sgv.json").respond_with_handler(trickle)
    started = time.monotonic()
    result = fetch_readings(make_user(public_site.url_for("/")), allow_private=True, timeout=(1.0, 1.0))
    elapsed = time.monotonic() - started
    assert result == PollFailure("timeout", "no complete answer within 2 s")
    assert elapsed < 20  # the trickle lasts 30 s; a per-read timeout would wait for all of it


# --- issue 12: sessions that end -------------------------------------------------------------


def copy_of_session(client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def settings_saved_with(app: Flask, cookie: str, phone: str) -> bool:
    """What an attacker holding a copied cookie tries: to change the stored phone number.
    True if the settings page took it."""
    thief = app.test_client()
    thief.set_cookie("session", cookie)
    page = thief.get("/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)  # the sign-in page has one too
    assert token is not None
    thief.post("/", data={**SETTINGS, "phone": phone, "csrf_token": token.group(1)})
    return "Your alert settings" in page

def test_a_cookie_copied_before_logout_is_worthless_after(app: Flask, client: FlaskClient, auth: DevAuth,
                                                          store: SqliteStore) -> None:
    auth.login()
    save(client)
    copied = copy_of_session(client)
    auth.logout()
    assert not settings_saved_with(app, copied, "+1 415 555 2699")
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.phone == "+14155552671"
    auth.login()  # signing in again works, with a fresh session
    assert "Your alert settings" in client.get("/").get_data(as_text=True)
    assert not settings_saved_with(app, copied, "+1 415 555 2699")  # and the old copy stays dead
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.phone == "+14155552671"


def test_a_cookie_copied_before_deleting_ones_data_is_worthless_after(app: Flask, client: FlaskClient,
                                                                      auth: DevAuth, store: SqliteStore) -> None:
    auth.login()
    copied = copy_of_session(client)
    client.post("/delete-account", data={"csrf_token": csrf_token(client)})
    assert not settings_saved_with(app, copied, "+1 415 555 2699")
    assert store.get_user("dev:ana@example.com") is None  # the copy did not bring the record back
    auth.login()  # she signs up again, and sets Scout up afresh
    save(client)
    assert not settings_saved_with(app, copied, "+1 415 555 2699")  # the copy from before is still dead
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.phone == "+14155552671"


def test_a_session_older_than_the_maximum_age_ends(tmp_path: Any, store: SqliteStore) -> None:
    app = create_app(load_config(dev_env(tmp_path, SCOUT_SESSION_MAX_AGE="3600")), store)
    client = app.test_client()
    DevAuth(client).login()
    with client.session_transaction() as session:
        session["started_at"] = time.time() - 3601  # signed with our key: only its age is wrong
    assert "Sign in to Scout" in client.get("/").get_data(as_text=True)


def test_a_get_of_logout_signs_nobody_out(client: FlaskClient, auth: DevAuth) -> None:
    """Another site can make a browser GET /logout (an image tag will do)."""
    auth.login()
    client.get("/logout")
    assert "Your alert settings" in client.get("/").get_data(as_text=True)


# --- issue 12: numbers that can't be abused ----------------------------------------------------


PREMIUM_AND_SUCH = ["+1 900 234 5678", "+979 123456789", "+44 90 1234 5678", "+33 8 84 01 23 45",
                    "+44 55 1234 5678", "+41 86 0123456789"]


@pytest.mark.parametrize("number", PREMIUM_AND_SUCH)
@pytest.mark.parametrize("field", ["phone", "emergency_contact", "extra_contacts"])
def test_premium_rate_and_other_costly_numbers_are_refused_for_the_user_and_contacts(
    client: FlaskClient, auth: DevAuth, store: SqliteStore, number: str, field: str
) -> None:
    auth.login()
    response = save(client, **{field: number})
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "a person answers" in response.get_data(as_text=True)  # type: ignore[attr-defined]
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.phone == ""


def test_a_premium_number_saved_before_is_never_dialled_by_the_test_call(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    """A record from before these rules (or an import) holds +1 900: the page refuses to test it."""
    auth.login()
    user = store.get_user("dev:ana@example.com")
    assert user is not None
    store.save_user(replace(user, phone="+19002345678"))
    client.post("/test-alert", data={"csrf_token": csrf_token(client)})
    assert [e for e in store.user_log(user.id) if e.purpose == "test"] == []
    assert "a person answers" in client.get("/").get_data(as_text=True)


def test_only_numbers_in_the_allowed_countries_are_accepted(tmp_path: Any, store: SqliteStore) -> None:
    app = create_app(load_config(dev_env(tmp_path, SCOUT_ALLOWED_COUNTRIES="US, gb")), store)
    client = app.test_client()
    DevAuth(client).login()
    refused = save(client, emergency_contact="+33 6 12 34 56 78")
    assert refused.status_code == 400  # type: ignore[attr-defined]
    text = refused.get_data(as_text=True)  # type: ignore[attr-defined]
    assert "in FR; this Scout calls and texts numbers in GB, US only" in text
    assert save(client).status_code == 302  # type: ignore[attr-defined]


def test_an_unknown_country_in_the_allow_list_stops_the_start(tmp_path: Any) -> None:
    from scout.config import ConfigError

    with pytest.raises(ConfigError, match="SCOUT_ALLOWED_COUNTRIES names unknown regions XX"):
        load_config(dev_env(tmp_path, SCOUT_ALLOWED_COUNTRIES="US,XX"))


# --- issue 12: abuse limits that hold -----------------------------------------------------------


def test_deleting_ones_data_does_not_reset_the_test_call_limit(app: Flask, store: SqliteStore) -> None:
    placed = []
    for _attempt in range(3):
        client = app.test_client()
        DevAuth(client).login()
        save(client)
        client.post("/test-alert", data={"csrf_token": csrf_token(client)})
        placed += [e for e in store.user_log("dev:ana@example.com") if e.purpose == "test"]
        client.post("/delete-account", data={"csrf_token": csrf_token(client)})
    assert len(placed) == 1


def test_another_account_cannot_ring_the_same_number_within_the_limit(app: Flask, store: SqliteStore) -> None:
    for email in ("ana@example.com", "eve@example.com", "mallory@example.com"):
        client = app.test_client()
        DevAuth(client).login(email=email)
        save(client)
        client.post("/test-alert", data={"csrf_token": csrf_token(client)})
    tests = [e for u in store.list_users() for e in store.user_log(u.id) if e.purpose == "test"]
    assert len(tests) == 1


def test_checks_are_limited_per_user(client: FlaskClient, auth: DevAuth, store: SqliteStore,
                                     public_site: HTTPServer) -> None:
    public_site.expect_request("/api/v1/entries/sgv.json").respond_with_json(nightscout_entries(120))
    auth.login()
    user = store.get_user("dev:ana@example.com")
    assert user is not None
    store.save_user(replace(user, nightscout_url=public_site.url_for("/")))
    for _ in range(12):
        client.post("/check-nightscout", data={"csrf_token": csrf_token(client)})
    assert len(public_site.log) == 10
    assert "You checked 10 times in the last 10 minutes" in client.get("/").get_data(as_text=True)


def test_a_restarted_app_keeps_the_limits(tmp_path: Any, store: SqliteStore) -> None:
    first = create_app(load_config(dev_env(tmp_path)), store).test_client()
    DevAuth(first).login()
    save(first)
    first.post("/test-alert", data={"csrf_token": csrf_token(first)})
    from scout.store.sqlite import SqliteStore as Reopened

    again = Reopened(store.path)
    try:
        second = create_app(load_config(dev_env(tmp_path)), again).test_client()
        DevAuth(second).login()
        second.post("/test-alert", data={"csrf_token": csrf_token(second)})
        assert "Try again in" in second.get("/").get_data(as_text=True)
    finally:
        again.close()
    assert len([e for e in store.user_log("dev:ana@example.com") if e.purpose == "test"]) == 1


# --- issue 12: HSTS ---------------------------------------------------------------------------------


def test_an_https_site_url_sends_strict_transport_security(tmp_path: Any, store: SqliteStore,
                                                           client: FlaskClient) -> None:
    assert "max-age=" in non_dev_app(tmp_path, store).test_client().get("/").headers["Strict-Transport-Security"]
    assert "Strict-Transport-Security" not in client.get("/").headers  # dev mode on plain http


# --- issue 12: import-users on hostile input ------------------------------------------------------


def import_file(app: Flask, path: Any) -> Any:
    return app.test_cli_runner().invoke(args=["import-users", str(path)])


def test_an_import_cannot_take_over_a_signed_in_user_through_their_sub(app: Flask, store: SqliteStore,
                                                                        tmp_path: Any) -> None:
    owner = User("109876543210", "ana@example.com", "Ana", nightscout_url="https://ana.example.org",
                 phone="+14155552671")
    store.save_user(owner)
    path = tmp_path / "scouts.json"
    path.write_text(json.dumps([{"sub": "109876543210", "email": "eve@example.com", "phone": "+14155552699",
                                 "nightscout_api": "https://eve.example.org"}]))
    result = import_file(app, path)
    assert "NOT imported" in result.output and "belongs to user 109876543210" in result.output
    assert store.get_user("109876543210") == owner


@pytest.mark.parametrize("content, reason", [
    ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep"),
    ('[{"email": "a@example.com", "x": ' + "[" * 5000 + "]" * 5000 + "}]", "nested 5002 levels deep"),
    ('{"scouts": [', "not valid JSON"),
    ("", "not valid JSON"),
    ("null", "expected a JSON list"),
])
def test_a_malformed_import_file_gives_one_line_and_exit_code_2(app: Flask, tmp_path: Any, content: str,
                                                                reason: str) -> None:
    path = tmp_path / "scouts.json"
    path.write_text(content)
    result = import_file(app, path)
    assert result.exit_code == 2, result.output
    assert reason in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not isinstance(result.exception, RecursionError)


def test_an_import_file_that_is_not_utf8_gives_one_line_and_exit_code_2(app: Flask, tmp_path: Any) -> None:
    path = tmp_path / "scouts.json"
    path.write_bytes(b'[{"email": "\xff\xfe@example.com"}]')
    result = import_file(app, path)
    assert result.exit_code == 2 and "not UTF-8" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("field, value", [("email", "a" * 2_000_000 + "@example.com"), ("username", "A" * 5000),
                                          ("sub", "9" * 1000), ("email", {"$gt": ""}), ("phone", ["+14155552671"])])
def test_imported_fields_have_types_and_length_limits(app: Flask, store: SqliteStore, tmp_path: Any,
                                                      field: str, value: Any) -> None:
    record = {"sub": "g-1", "email": "ana@example.com", "phone": "+14155552671", field: value}
    path = tmp_path / "scouts.json"
    path.write_text(json.dumps([record]))
    result = import_file(app, path)
    assert "NOT imported" in result.output and field in result.output
    assert store.list_users() == []
    assert max(len(line) for line in result.output.splitlines()) < 400  # the value is not echoed back


def test_an_import_refuses_premium_rate_numbers(app: Flask, store: SqliteStore, tmp_path: Any) -> None:
    path = tmp_path / "scouts.json"
    path.write_text(json.dumps([{"email": "ana@example.com", "phone": "19002345678"}]))
    result = import_file(app, path)
    assert "NOT imported" in result.output and "premium-rate" in result.output
    assert store.list_users() == []


# --- issue 12: sign-in throttling and Google's keys ------------------------------------------------


@pytest.fixture
def cached_certs() -> Iterator[HTTPServer]:
    """Google's certificate endpoint with the Cache-Control Google sends (hours)."""
    from tests.test_signin import KEY_ID, certificate_pem, make_key

    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request("/oauth2/v1/certs").respond_with_data(
        json.dumps({KEY_ID: certificate_pem(make_key())}), content_type="application/json",
        headers={"Cache-Control": "public, max-age=19977, must-revalidate, no-transform"})
    server.start()
    yield server
    server.clear()
    server.stop()


def google_signin_app(tmp_path: Any, store: SqliteStore, certs: HTTPServer) -> Flask:
    from tests.test_signin import CLIENT_ID

    env = dev_env(tmp_path, GOOGLE_CLIENT_ID=CLIENT_ID,
                  SCOUT_GOOGLE_CERTS_URL=certs.url_for(f"/oauth2/v1/certs?{tmp_path.name}"))  # a URL of this test's own
    app = create_app(load_config(env), store)
    app.testing = True
    return app


def test_bad_sign_ins_are_throttled_per_client_address_and_keys_are_fetched_once(
    tmp_path: Any, store: SqliteStore, cached_certs: HTTPServer
) -> None:
    from tests.test_signin import id_token, make_key, post_credential

    client = google_signin_app(tmp_path, store, cached_certs).test_client()
    forged = id_token(make_key())  # signed by a key Google never published
    statuses = [post_credential(client, forged).status_code for _ in range(40)]
    assert statuses[:30] == [400] * 30 and statuses[30:] == [429] * 10
    assert len(cached_certs.log) == 1  # Google's keys were fetched once, then kept per their Cache-Control
    other = google_signin_app(tmp_path, store, cached_certs).test_client()  # another instance, same store
    assert "Too many sign-in attempts" in post_credential(other, forged).get_data(as_text=True)
    elsewhere = google_signin_app(tmp_path, store, cached_certs).test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "203.0.113.7"  # another client address is not held back
    assert post_credential(elsewhere, forged).status_code == 400


# --- issue 12: logs without personal data ---------------------------------------------------------


def test_a_cycle_and_a_webhook_log_no_phone_number_email_or_glucose_value(
    scout: Scout, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scout.poll()  # 54 mg/dL and falling: a call
    scout.finish_call("no-answer" if scout.provider == "twilio" else "unanswered")  # the contacts are texted
    assert len(scout.messages()) == 3, "the cycle and the webhook did their work"
    shown = [r for r in caplog.records if r.levelno >= logging.INFO]
    text = "\n".join(JsonFormatter().format(r) for r in shown)  # each line as written: message and fields
    assert "call placed" in text and '"stage": "sent"' in text  # the scan read the lines that matter
    for number in (USER_PHONE, EMERGENCY, EXTRA_SMS, WHATSAPP_CONTACT):
        assert number.lstrip("+") not in text.replace("+", ""), number
        assert f"***{number[-4:]}" in text
    assert "ana@example.com" not in text
    for unit in ("mg/dL", "milligrams", "mmol", "glucose"):
        assert unit not in text, unit
    assert any("54" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)  # kept for DEBUG


@pytest.mark.parametrize("chunked", [False, True], ids=["announced", "streamed"])
def test_an_endless_answer_is_cut_at_the_body_cap(public_site: HTTPServer, chunked: bool) -> None:
    """A site answering gigabytes (announced, or streamed without a length) costs Scout at most 512 kB."""
    sent = []

    def endless(_request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(4096):  # 256 MB if read to the end
                sent.append(1)
                yield b"[" + b" " * 65534 + b","
        headers = {} if chunked else {"Content-Length": str(4096 * 65536)}
        return Response(body(), content_type="application/json", headers=headers)

    public_site.expect_request("/api/v1/entries/sgv.json").respond_with_handler(endless)
    result = fetch_readings(make_user(public_site.url_for("/")), allow_private=True)
    assert isinstance(result, PollFailure) and result.reason == "not_json" and "over 512 kB" in result.detail
    assert len(sent) < 1024  # most was never read: the server stops once Scout closes the connection


def test_an_import_keeps_to_the_allowed_countries(tmp_path: Any, store: SqliteStore) -> None:
    app = create_app(load_config(dev_env(tmp_path, SCOUT_ALLOWED_COUNTRIES="US")), store)
    path = tmp_path / "scouts.json"
    path.write_text(json.dumps([{"email": "ana@example.com", "phone": "+14155552671", "emerg_contact": "+33612345678"},
                                {"email": "bo@example.com", "phone": "+14155552681"}]))
    result = import_file(app, path)
    assert "contact: a number in FR; this Scout calls and texts numbers in US only" in result.output
    assert [u.email for u in store.list_users()] == ["bo@example.com"]


def test_the_limits_kept_after_deletion_hold_no_phone_number_in_clear(app: Flask, store: SqliteStore) -> None:
    client = app.test_client()
    DevAuth(client).login()
    save(client)
    client.post("/test-alert", data={"csrf_token": csrf_token(client)})
    client.post("/delete-account", data={"csrf_token": csrf_token(client)})
    import sqlite3

    with sqlite3.connect(store.path) as db:
        kept = [str(row) for table in ("abuse_limits", "sessions") for row in db.execute(f"SELECT * FROM {table}")]
    assert kept and not any("4155552671" in row for row in kept)  # (a dev user's id is its email, by design)
