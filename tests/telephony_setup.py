"""What the telephony tests share: the fake providers, a local Nightscout, and a
Scout configured for Twilio or Vonage against them. Keys and secrets are made here,
at test time."""
from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from models import LogEntry
from scout.config import Config, load_config
from scout.poller import Poller
from scout.store.sqlite import SqliteStore
from scout.web import create_app
from tests.conftest import dev_env, make_user
from tests.fake_providers import Callback, FakeProviders, callbacks_for

SITE_URL = "https://scout.example.org"
TWILIO_SID = "AC" + "5ca1ab1e" * 4
TWILIO_NUMBER = "+15005550006"
TWILIO_WHATSAPP_NUMBER = "+14155238886"
NEXMO_NUMBER = "14155550100"
NEXMO_WHATSAPP_NUMBER = "14157386102"
NEXMO_APPLICATION_ID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
USER_PHONE, EMERGENCY, WHATSAPP_CONTACT, EXTRA_SMS = "+14155552671", "+14155552672", "+14155552673", "+14155552674"


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    server = FakeProviders().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vonage_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def twilio_env(tmp_path: Path, fake: FakeProviders, **extra: str) -> dict[str, str]:
    settings = dict(SITE_URL=SITE_URL, SCOUT_TELEPHONY="twilio", TWILIO_ACCOUNT_SID=TWILIO_SID,
                    TWILIO_AUTH_TOKEN=secrets.token_hex(16), TWILIO_NUMBER=TWILIO_NUMBER,
                    TWILIO_WHATSAPP_NUMBER=TWILIO_WHATSAPP_NUMBER, SCOUT_TWILIO_BASE_URL=fake.url)
    return dev_env(tmp_path, **{**settings, **extra})


def vonage_env(tmp_path: Path, fake: FakeProviders, key_pem: bytes, **extra: str) -> dict[str, str]:
    key_path = tmp_path / "private.key"
    key_path.write_bytes(key_pem)
    settings = dict(SITE_URL=SITE_URL, SCOUT_TELEPHONY="vonage", NEXMO_API_KEY="abc123",
                    NEXMO_API_SECRET=secrets.token_hex(8), NEXMO_APPLICATION_ID=NEXMO_APPLICATION_ID,
                    NEXMO_PRIVATE_KEY=str(key_path), NEXMO_NUMBER=NEXMO_NUMBER,
                    NEXMO_WHATSAPP_NUMBER=NEXMO_WHATSAPP_NUMBER, NEXMO_SIGNATURE_SECRET=secrets.token_hex(32),
                    SCOUT_VONAGE_BASE_URL=fake.url)
    return dev_env(tmp_path, **{**settings, **extra})


@pytest.fixture(params=["twilio", "vonage"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def telephony_config(provider: str, tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes) -> Config:
    env = twilio_env(tmp_path, fake) if provider == "twilio" else vonage_env(tmp_path, fake, vonage_key_pem)
    return load_config(env)


class Nightscout:
    """A local Nightscout whose latest reading can be changed between polls; readings
    are dated when they are asked for, so they are always fresh."""

    def __init__(self, server: HTTPServer, *values: int, direction: str = "SingleDown") -> None:
        self.server, self.values, self.direction = server, values, direction
        self.delay = 0.0
        self.clock = time.time  # when "now" is for the readings' dates; a test may follow its own clock
        server.expect_request("/api/v1/entries/sgv.json").respond_with_handler(self._answer)

    def show(self, *values: int, direction: str = "SingleDown") -> None:
        self.values, self.direction = values, direction

    def hang(self, seconds: float) -> None:
        """Answer only after `seconds`, as a site that has stopped responding."""
        self.delay = seconds

    def _answer(self, _request: Request) -> Response:
        import json

        time.sleep(self.delay)
        now_ms = int(self.clock() * 1000)
        entries = [{"_id": f"id{i}", "type": "sgv", "sgv": v, "date": now_ms - 60_000 - 300_000 * i,
                    "direction": self.direction, "device": "xDrip"} for i, v in enumerate(self.values)]
        return Response(json.dumps(entries), content_type="application/json")

    @property
    def url(self) -> str:
        return self.server.url_for("/")


@pytest.fixture
def nightscout(httpserver: HTTPServer) -> Nightscout:
    return Nightscout(httpserver, 54, 62)


class Scout:
    """One Scout, as deployed: the poller and the web app (for the webhooks) on one store."""

    def __init__(self, config: Config, fake: FakeProviders, nightscout: Nightscout) -> None:
        self.config, self.fake, self.nightscout = config, fake, nightscout
        self.store = SqliteStore(config.db_path)
        self.store.save_user(make_user(nightscout.url))
        self.app: Flask = create_app(config, self.store)
        self.app.testing = True
        self.client: FlaskClient = self.app.test_client()
        self.now = time.time()

    @property
    def provider(self) -> str:
        return self.config.telephony

    def poll(self, after: float = 0.0) -> Any:
        """One poll cycle, `after` seconds later than the last one."""
        self.now += after
        return Poller(self.config, store=self.store, clock=lambda: self.now, workers=4).run_cycle()

    def log(self) -> list[LogEntry]:
        return self.store.user_log("sub-ana")

    def who_got_what(self) -> list[tuple[str, str, str, str]]:
        """The alert log as (kind, purpose, recipient, status), sorted."""
        return sorted((e.kind, e.purpose, e.recipient, e.status) for e in self.log())

    def callbacks(self, status: str, digits: str = "", answered_by: str = "") -> list[Callback]:
        return callbacks_for(self.fake.last_call(), status, digits, answered_by,
                             auth_token=self.config.get("TWILIO_AUTH_TOKEN"),
                             signature_secret=self.config.get("NEXMO_SIGNATURE_SECRET"))

    def post(self, callback: Callback) -> Any:
        if callback.form is not None:
            return self.client.post(callback.path_and_query, data=callback.form, headers=callback.headers)
        return self.client.post(callback.path_and_query, data=callback.body, headers=callback.headers)

    def finish_call(self, status: str, digits: str = "", answered_by: str = "") -> list[int]:
        """The provider reports how the last call ended, through Scout's webhooks."""
        return [self.post(callback).status_code for callback in self.callbacks(status, digits, answered_by)]

    def messages(self) -> list[tuple[str, str]]:
        """Messages the provider accepted, as (channel address, text)."""
        found = []
        for request in self.fake.answered("twilio.messages") + self.fake.answered("vonage.messages"):
            if request.api == "twilio.messages":
                found.append((request.field("To"), request.field("Body")))
            else:
                found.append((f"{request.json['channel']}:{request.json['to']}", request.json["text"]))
        return sorted(found)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def scout(telephony_config: Config, fake: FakeProviders, nightscout: Nightscout) -> Iterator[Scout]:
    instance = Scout(telephony_config, fake, nightscout)
    yield instance
    instance.close()
