"""Secrets read from Secret Manager at start (issue 13): the real client, REST transport,
against a local double of the REST API. Explicit variables win; a missing required secret is
named; a permission problem names the role to grant; nothing is read twice."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from scout.config import ConfigError, load_config
from scout.secret_manager import SECRET_NAMES
from tests.secret_manager_double import SecretManagerDouble
from tests.test_deployment import Gunicorn, gunicorn  # noqa: F401 (gunicorn is a fixture)

pytestmark = pytest.mark.usefixtures("scratch_cwd")

PEM = "-----BEGIN PRIVATE KEY-----\nMIIBVgIBADANBg\n\"quoted\" line\n-----END PRIVATE KEY-----\n"
STORED = {
    "SECRET_KEY": "k" * 64, "SITE_URL": "https://scout.example.org", "GOOGLE_CLIENT_ID": "1234-abc.apps.googleusercontent.com",
    "SCOUT_TELEPHONY": "vonage", "NEXMO_API_KEY": "key", "NEXMO_API_SECRET": "s3cr=t/+", "NEXMO_APPLICATION_ID": "app-1",
    "NEXMO_PRIVATE_KEY": PEM, "NEXMO_NUMBER": "15551234567", "NEXMO_SIGNATURE_SECRET": "sig ñ secret",
}


@pytest.fixture
def double() -> Iterator[SecretManagerDouble]:
    server = SecretManagerDouble("scout-prod", STORED)
    yield server
    server.close()


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, double: SecretManagerDouble) -> Iterator[Callable[..., None]]:
    """The process environment as App Engine would give it, with no Scout variable set.
    Scout writes what it read into the environment: put it back as it was afterwards."""
    saved = dict(os.environ)
    def set_up(**variables: str) -> None:
        for name in list(os.environ):
            if name.startswith(("SCOUT_", "TWILIO_", "NEXMO_", "GOOGLE_", "FIREBASE_", "FIRESTORE_")) or name in (
                    "SECRET_KEY", "SITE_URL", "WAIT_AFTER_CALL", "NIGHTSCOUT_FAILED_PING_SMS"):
                monkeypatch.delenv(name)
        base = {"SCOUT_SECRETS": "secretmanager", "GOOGLE_CLOUD_PROJECT": "scout-prod",
                "SCOUT_SECRET_MANAGER_ENDPOINT": double.endpoint}
        for name, value in {**base, **variables}.items():
            monkeypatch.setenv(name, value)

    yield set_up
    os.environ.clear()
    os.environ.update(saved)


def test_every_setting_comes_from_secret_manager_named_as_its_variable(
    environment: Callable[..., None], double: SecretManagerDouble
) -> None:
    environment()
    config = load_config()
    assert (config.dev, config.secret_key, config.site_url) == (False, "k" * 64, "https://scout.example.org")
    assert config.telephony == "vonage" and config.get("NEXMO_PRIVATE_KEY") == PEM
    assert config.get("NEXMO_SIGNATURE_SECRET") == "sig ñ secret" and config.get("NEXMO_API_SECRET") == "s3cr=t/+"
    assert sorted(double.requests) == sorted(SECRET_NAMES), "each name asked for once, the missing ones included"
    assert os.environ["SCOUT_SECRETS_READ"] == ",".join(sorted(STORED))

    load_config()  # a process started later (a worker, the poller) finds them in its environment
    assert len(double.requests) == len(SECRET_NAMES)


def test_a_variable_set_explicitly_wins_over_its_secret(
    environment: Callable[..., None], double: SecretManagerDouble
) -> None:
    environment(SITE_URL="https://staging.example.org")
    assert load_config().site_url == "https://staging.example.org"
    assert "SITE_URL" not in double.requests


def test_a_required_secret_missing_from_secret_manager_is_named(
    environment: Callable[..., None], double: SecretManagerDouble
) -> None:
    del double.secrets["GOOGLE_CLIENT_ID"]
    environment()
    with pytest.raises(ConfigError, match="^GOOGLE_CLIENT_ID is not set"):
        load_config()


def test_a_denied_secret_stops_the_start_naming_the_role_to_grant(
    environment: Callable[..., None], double: SecretManagerDouble
) -> None:
    double.denied.add("NEXMO_API_SECRET")
    environment()
    with pytest.raises(ConfigError) as refused:
        load_config()
    message = str(refused.value)
    assert "NEXMO_API_SECRET" in message and "roles/secretmanager.secretAccessor" in message
    assert "\n" not in message


def test_secret_manager_unreachable_stops_the_start_in_one_line(environment: Callable[..., None]) -> None:
    environment(SCOUT_SECRET_MANAGER_ENDPOINT="http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="^Secret Manager could not be read for SECRET_KEY in project scout-prod"):
        load_config()
    assert time.monotonic() - started < 30


def test_no_project_named_stops_the_start(environment: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    environment()
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    with pytest.raises(ConfigError, match="SCOUT_SECRETS_PROJECT nor GOOGLE_CLOUD_PROJECT"):
        load_config()


def test_an_unknown_secrets_source_is_refused(environment: Callable[..., None]) -> None:
    environment(SCOUT_SECRETS="vault")
    with pytest.raises(ConfigError, match="SCOUT_SECRETS must be 'secretmanager' or 'env'"):
        load_config()


def test_gunicorn_reads_the_secrets_once_for_its_workers_and_its_poller(
    tmp_path: Path, double: SecretManagerDouble, gunicorn: Callable[..., Gunicorn]  # noqa: F811
) -> None:
    """The master reads them before it forks; the workers and the poller inherit them."""
    double.secrets.update(SCOUT_TELEPHONY="console")
    server = gunicorn(WEB_CONCURRENCY="2", SCOUT_SECRETS="secretmanager", GOOGLE_CLOUD_PROJECT="scout-prod",
                      SCOUT_SECRET_MANAGER_ENDPOINT=double.endpoint, SCOUT_POLL_INTERVAL="0.5")
    deadline = time.time() + 60
    answer = requests.get(f"{server.base}/healthz/poller", timeout=10)
    while time.time() < deadline and answer.status_code != 200:
        time.sleep(0.3)
        answer = requests.get(f"{server.base}/healthz/poller", timeout=10)
    assert answer.status_code == 200, f"{answer.text}\n{server.output()[-2000:]}"
    page = requests.get(f"{server.base}/", timeout=5).text
    assert "1234-abc.apps.googleusercontent.com" in page, "the sign-in page carries the client id read at start"
    assert sorted(double.requests) == sorted(SECRET_NAMES), "read once, by the master"
