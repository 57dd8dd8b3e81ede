"""Shared fixtures: a dev-mode config on a temporary SQLite file, the app, a signed-in client."""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from models import User
from scout.config import Config, load_config
from scout.store.sqlite import SqliteStore
from scout.web import create_app

# The Firestore emulator with the fixtures that run a test on each store, and the telephony
# doubles (Twilio and Vonage fakes, a Nightscout, a configured Scout), for every test module.
pytest_plugins = ["tests.firestore_fixtures", "tests.telephony_setup"]


def dev_env(tmp_path: Any, **extra: str) -> dict[str, str]:
    return {"SCOUT_DEV": "1", "SECRET_KEY": "test-secret", "SCOUT_DB": str(tmp_path / "scout.sqlite3"), **extra}


@pytest.fixture
def scratch_cwd(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run in an empty folder: `load_config` in dev mode without SECRET_KEY keeps a key
    beside the default database (instance/), which must land here, not in the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def config(tmp_path: Any) -> Config:
    return load_config(dev_env(tmp_path))


@pytest.fixture
def store(config: Config) -> Iterator[SqliteStore]:
    store = SqliteStore(config.db_path)
    yield store
    store.close()


@pytest.fixture
def app(config: Config, store: SqliteStore) -> Flask:
    app = create_app(config, store)
    app.testing = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def csrf_token(client: FlaskClient, path: str = "/") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page carries no CSRF token"
    return match.group(1)


class DevAuth:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def login(self, email: str = "ana@example.com", name: str = "Ana") -> None:
        response = self.client.post("/dev/login", data={"email": email, "name": name,
                                                         "csrf_token": csrf_token(self.client)})
        assert response.status_code == 302

    def logout(self) -> None:
        self.client.post("/logout", data={"csrf_token": csrf_token(self.client)})


@pytest.fixture
def auth(client: FlaskClient) -> DevAuth:
    return DevAuth(client)


def make_user(nightscout_url: str = "http://127.0.0.1:1/", **changes: Any) -> User:
    from models import Contact

    values: dict[str, Any] = dict(
        id="sub-ana", email="ana@example.com", name="Ana", nightscout_url=nightscout_url,
        phone="+14155552671", emergency_contact=Contact("+14155552672", "sms"),
        extra_contacts=(Contact("+14155552673", "whatsapp"), Contact("+14155552674", "sms")),
    )
    values.update(changes)
    return User(**values)


@pytest.fixture
def threaded_httpserver() -> Iterator[Any]:
    """A local HTTP server that answers requests concurrently, like a real site."""
    from pytest_httpserver import HTTPServer

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()
