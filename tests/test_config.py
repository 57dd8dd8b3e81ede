"""Configuration: explicit settings win, and anything unsafe stops the start with one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scout.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("scratch_cwd")

PROD = {"SECRET_KEY": "k", "SITE_URL": "https://scout.example.org", "GOOGLE_CLIENT_ID": "id.apps.googleusercontent.com",
        "SCOUT_TELEPHONY": "twilio", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t", "TWILIO_NUMBER": "+15005550006"}


def without(name: str) -> dict[str, str]:
    return {k: v for k, v in PROD.items() if k != name}


def test_dev_mode_runs_on_the_embedded_defaults() -> None:
    config = load_config({"SCOUT_DEV": "1"})
    assert (config.store, config.telephony, config.dev_sign_in) == ("sqlite", "console", True)
    assert config.db_path == "instance/scout.sqlite3"
    assert config.wait_after_call == 120 and config.failed_ping_limit == 60


@pytest.mark.parametrize("missing", ["SECRET_KEY", "SITE_URL", "GOOGLE_CLIENT_ID", "TWILIO_AUTH_TOKEN", "TWILIO_NUMBER"])
def test_outside_dev_mode_a_missing_setting_is_named(missing: str) -> None:
    with pytest.raises(ConfigError, match=missing):
        load_config(without(missing))


def test_outside_dev_mode_console_telephony_is_refused() -> None:
    with pytest.raises(ConfigError, match="SCOUT_TELEPHONY"):
        load_config({**without("SCOUT_TELEPHONY"), "TWILIO_ACCOUNT_SID": "", "TWILIO_AUTH_TOKEN": "",
                     "TWILIO_NUMBER": ""})


def test_the_provider_is_detected_from_its_credentials_unless_chosen() -> None:
    assert load_config(without("SCOUT_TELEPHONY")).telephony == "twilio"
    with pytest.raises(ConfigError, match="NEXMO_API_KEY"):
        load_config({**PROD, "SCOUT_TELEPHONY": "vonage"})


def test_the_dev_sign_in_is_off_once_a_google_client_id_is_set() -> None:
    assert not load_config({"SCOUT_DEV": "1", "GOOGLE_CLIENT_ID": "x"}).dev_sign_in


def test_timing_variables_and_the_tutorial_alias_are_read() -> None:
    config = load_config({"SCOUT_DEV": "1", "WAIT_AFTER_CALL": "300", "NEXMO_FAILED_PING_SMS": "30"})
    assert (config.wait_after_call, config.failed_ping_limit) == (300, 30)
    assert load_config({"SCOUT_DEV": "1", "NIGHTSCOUT_FAILED_PING_SMS": "10", "NEXMO_FAILED_PING_SMS": "30"}
                       ).failed_ping_limit == 10
    with pytest.raises(ConfigError, match="WAIT_AFTER_CALL must be a whole number"):
        load_config({"SCOUT_DEV": "1", "WAIT_AFTER_CALL": "two minutes"})


def test_without_a_secret_key_dev_mode_keeps_one_key_beside_the_database(scratch_cwd: Path) -> None:
    first = load_config({"SCOUT_DEV": "1"}).secret_key
    assert load_config({"SCOUT_DEV": "1"}).secret_key == first  # every worker, every restart
    assert (scratch_cwd / "instance" / "dev-secret-key").read_text() == first and len(first) == 64
    elsewhere = scratch_cwd / "elsewhere" / "scout.sqlite3"
    other = load_config({"SCOUT_DEV": "1", "SCOUT_DB": str(elsewhere)}).secret_key
    assert other != first and (elsewhere.parent / "dev-secret-key").read_text() == other
    (elsewhere.parent / "dev-secret-key").write_text("short")
    with pytest.raises(ConfigError, match="holds no usable key: delete it, or set SECRET_KEY"):
        load_config({"SCOUT_DEV": "1", "SCOUT_DB": str(elsewhere)})


def test_the_firestore_request_timeout_is_read_and_checked() -> None:
    assert load_config({"SCOUT_DEV": "1"}).firestore_timeout == 10.0
    assert load_config({"SCOUT_DEV": "1", "SCOUT_FIRESTORE_TIMEOUT": "2.5"}).firestore_timeout == 2.5
    for wrong in ("ten", "0", "-1", "301"):
        with pytest.raises(ConfigError, match="SCOUT_FIRESTORE_TIMEOUT must be"):
            load_config({"SCOUT_DEV": "1", "SCOUT_FIRESTORE_TIMEOUT": wrong})


def test_firebase_credentials_select_firestore_and_scout_store_wins() -> None:
    assert load_config({"SCOUT_DEV": "1", "FIREBASE_PRIVATE_KEY": "/k.json"}).store == "firestore"
    assert load_config({"SCOUT_DEV": "1", "FIREBASE_PRIVATE_KEY": "/k.json", "SCOUT_STORE": "sqlite"}).store == "sqlite"


def test_the_app_refuses_to_start_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "SECRET_KEY"))}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", "import notifier"], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(root)}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Scout cannot start: SECRET_KEY is not set: set it to a long random string (see .env.example)."
    ]
