"""Google sign-in: ID tokens signed by a key made here, checked against a local copy of
Google's certificate endpoint. Only a token Google would have issued to our client id
signs anyone in; identity comes from its claims alone."""
from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from google.auth import crypt, jwt
from pytest_httpserver import HTTPServer

from models import Contact, User
from scout.config import load_config
from scout.store.sqlite import SqliteStore
from scout.web import create_app
from tests.conftest import csrf_token, dev_env

CLIENT_ID = "1234-scout.apps.googleusercontent.com"
KEY_ID = "scout-test-key"


def make_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate_pem(key: rsa.RSAPrivateKey) -> str:
    """A self-signed x509 certificate for `key`, the form Google publishes its keys in."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scout-test.googleusercontent.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def google_key() -> rsa.RSAPrivateKey:
    return make_key()


@pytest.fixture(scope="module")
def certs_server(google_key: rsa.RSAPrivateKey) -> Iterator[HTTPServer]:
    """Google's certificate endpoint, as https://www.googleapis.com/oauth2/v1/certs serves it."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    server.expect_request("/oauth2/v1/certs").respond_with_data(
        json.dumps({KEY_ID: certificate_pem(google_key)}), content_type="application/json")
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def google_app(tmp_path: Any, certs_server: HTTPServer, store: SqliteStore) -> Flask:
    env = dev_env(tmp_path, GOOGLE_CLIENT_ID=CLIENT_ID, SCOUT_GOOGLE_CERTS_URL=certs_server.url_for("/oauth2/v1/certs"))
    app = create_app(load_config(env), store)
    app.testing = True
    return app


@pytest.fixture
def google_client(google_app: Flask) -> FlaskClient:
    return google_app.test_client()


def id_token(key: rsa.RSAPrivateKey, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com", "aud": CLIENT_ID, "azp": CLIENT_ID, "sub": "109876543210",
        "email": "ana@example.com", "email_verified": True, "name": "Ana Example", "iat": now, "exp": now + 3600,
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    signer = crypt.RSASigner.from_string(private_pem(key), key_id=KEY_ID)
    return jwt.encode(signer, claims).decode()


def post_credential(client: FlaskClient, credential: str, *, cookie: str | None = "csrf-1", field: str | None = "csrf-1",
                    **extra: str) -> Any:
    if cookie is not None:
        client.set_cookie("g_csrf_token", cookie)
    data = {"credential": credential, **extra}
    if field is not None:
        data["g_csrf_token"] = field
    return client.post("/login", data=data)


def test_a_valid_google_id_token_signs_the_person_in_keyed_by_their_subject_id(
    google_client: FlaskClient, google_key: rsa.RSAPrivateKey, store: SqliteStore
) -> None:
    response = post_credential(google_client, id_token(google_key))
    assert response.status_code == 302 and response.headers["Location"] == "/"
    user = store.get_user("109876543210")
    assert user is not None and (user.email, user.name) == ("ana@example.com", "Ana Example")
    page = google_client.get("/").get_data(as_text=True)
    assert "Your alert settings" in page and "ana@example.com" in page


@pytest.mark.parametrize("changes", [
    pytest.param({"aud": "someone-elses-client.apps.googleusercontent.com"}, id="wrong audience"),
    pytest.param({"iss": "https://evil.example.com"}, id="wrong issuer"),
    pytest.param({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, id="expired"),
    pytest.param({"sub": None}, id="no subject"),
])
def test_a_token_google_did_not_issue_to_this_scout_is_refused_and_nothing_is_stored(
    google_client: FlaskClient, google_key: rsa.RSAPrivateKey, store: SqliteStore, changes: dict[str, Any]
) -> None:
    response = post_credential(google_client, id_token(google_key, **changes))
    assert response.status_code == 400
    assert "could not be verified" in response.get_data(as_text=True)
    assert store.list_users() == []
    assert "Sign in to Scout" in google_client.get("/").get_data(as_text=True)


def test_a_token_signed_by_another_key_is_refused(google_client: FlaskClient, store: SqliteStore) -> None:
    response = post_credential(google_client, id_token(make_key()))
    assert response.status_code == 400 and store.list_users() == []


@pytest.mark.parametrize("credential", ["", "not.a.jwt", "x" * 20000])
def test_garbage_credentials_are_refused(google_client: FlaskClient, store: SqliteStore, credential: str) -> None:
    assert post_credential(google_client, credential).status_code == 400
    assert store.list_users() == []


@pytest.mark.parametrize("cookie, field", [(None, "csrf-1"), ("csrf-1", None), ("csrf-1", "csrf-2"), ("", "")],
                         ids=["no cookie", "no field", "mismatch", "both empty"])
def test_a_missing_or_mismatched_g_csrf_token_is_refused_even_with_a_valid_token(
    google_client: FlaskClient, google_key: rsa.RSAPrivateKey, store: SqliteStore, cookie: str | None, field: str | None
) -> None:
    response = post_credential(google_client, id_token(google_key), cookie=cookie, field=field)
    assert response.status_code == 400
    assert "did not come from Google" in response.get_data(as_text=True)
    assert store.list_users() == []


def test_a_forged_email_field_is_ignored(
    google_client: FlaskClient, google_key: rsa.RSAPrivateKey, store: SqliteStore
) -> None:
    store.save_user(User("victim-sub", "victim@example.com", "Victim", phone="+14155552671"))
    response = post_credential(google_client, id_token(google_key), email="victim@example.com",
                               sub="victim-sub", user_id="victim-sub", name="Victim")
    assert response.status_code == 302
    page = google_client.get("/").get_data(as_text=True)
    assert "ana@example.com" in page and "victim@example.com" not in page and "+14155552671" not in page
    victim = store.get_user("victim-sub")
    assert victim is not None and victim.email == "victim@example.com"
    assert {u.id for u in store.list_users()} == {"victim-sub", "109876543210"}


def test_a_tutorial_era_record_with_the_same_email_is_adopted_and_not_kept_twice(
    google_client: FlaskClient, google_key: rsa.RSAPrivateKey, store: SqliteStore
) -> None:
    legacy = User("ana@example.com", "ana@example.com", "", nightscout_url="https://ana.herokuapp.com",
                  phone="+14155552671", emergency_contact=Contact("+14155552672"))
    store.save_user(legacy)
    assert post_credential(google_client, id_token(google_key)).status_code == 302
    adopted = store.get_user("109876543210")
    assert adopted is not None
    assert (adopted.nightscout_url, adopted.phone, adopted.name) == ("https://ana.herokuapp.com", "+14155552671",
                                                                     "Ana Example")
    assert store.get_user("ana@example.com") is None  # the poller would otherwise watch Ana twice


def test_an_unverified_email_adopts_nothing(
    google_client: FlaskClient, google_key: rsa.RSAPrivateKey, store: SqliteStore
) -> None:
    store.save_user(User("ana@example.com", "ana@example.com", phone="+14155552671"))
    assert post_credential(google_client, id_token(google_key, email_verified=False)).status_code == 302
    user = store.get_user("109876543210")
    assert user is not None and user.phone == ""
    assert store.get_user("ana@example.com") is not None


def test_the_sign_in_page_loads_google_identity_services_through_our_own_script(google_client: FlaskClient) -> None:
    response = google_client.get("/")
    page = response.get_data(as_text=True)
    assert 'id="g_id_onload"' in page and f'data-client_id="{CLIENT_ID}"' in page
    assert 'data-login_uri="http://localhost/login"' in page
    assert '<script src="/static/signin.js"></script>' in page
    assert "<script>" not in page  # no inline script: the CSP would block it anyway
    assert "dev-signin" not in page  # a client id turns the dev sign-in off
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self' https://accounts.google.com/gsi/client" in csp
    assert "'unsafe-inline'" not in csp
    assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"  # Google checks the origin
    with google_client.get("/static/signin.js") as script:
        assert "https://accounts.google.com/gsi/client" in script.get_data(as_text=True)


def test_logout_ends_the_google_session(
    google_client: FlaskClient, google_key: rsa.RSAPrivateKey
) -> None:
    post_credential(google_client, id_token(google_key))
    assert "Your alert settings" in google_client.get("/").get_data(as_text=True)
    google_client.post("/logout", data={"csrf_token": csrf_token(google_client)})
    assert "Sign in to Scout" in google_client.get("/").get_data(as_text=True)
