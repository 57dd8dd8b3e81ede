"""Configuration: explicit settings win, and anything unsafe stops the start with one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scout.config import ConfigError, load_config, server_settings

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


# --- every setting in scout/config.py (issue 13) ------------------------------------------

@pytest.mark.parametrize("name, value, problem", [
    ("SCOUT_POLL_INTERVAL", "abc", "SCOUT_POLL_INTERVAL must be a number of seconds such as 10, got 'abc'."),
    ("SCOUT_POLL_INTERVAL", "0", "SCOUT_POLL_INTERVAL must be more than 0 and at most 3600 seconds, got 0."),
    ("SCOUT_POLL_WORKERS", "0", "SCOUT_POLL_WORKERS must be at least 1, got 0."),
    ("SCOUT_POLL_WORKERS", "many", "SCOUT_POLL_WORKERS must be a whole number, got 'many'."),
    ("SCOUT_POLL_CONNECTIONS", "1e3", "SCOUT_POLL_CONNECTIONS must be a whole number, got '1e3'."),
    ("SCOUT_RESTART_DELAY", "-1", "SCOUT_RESTART_DELAY must be more than 0 and at most 600 seconds, got -1."),
    ("SCOUT_RESTART_DELAY", "soon", "SCOUT_RESTART_DELAY must be a number of seconds such as 10, got 'soon'."),
    ("SCOUT_POLLER", "maybe", "SCOUT_POLLER must be one of 'embedded', 'off', got 'maybe'."),
    ("SCOUT_LOG_LEVEL", "LOUD", "SCOUT_LOG_LEVEL must be one of 'debug', 'info', 'warning', 'error', got 'LOUD'."),
])
def test_a_bad_poller_or_logging_setting_is_refused_naming_it(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({"SCOUT_DEV": "1", "SECRET_KEY": "k", name: value})
    assert str(refused.value) == problem


def test_poller_settings_are_read_in_one_place() -> None:
    config = load_config({"SCOUT_DEV": "1", "SECRET_KEY": "k", "SCOUT_POLL_INTERVAL": "0.5", "SCOUT_POLL_WORKERS": "8",
                          "SCOUT_POLL_CONNECTIONS": "200", "SCOUT_RESTART_DELAY": "0.2", "SCOUT_POLLER": "OFF",
                          "SCOUT_LOG_LEVEL": "warning"})
    assert (config.poll_interval, config.poll_workers, config.poll_connections, config.restart_delay) == (0.5, 8, 200, 0.2)
    assert (config.poller, config.log_level) == ("off", "WARNING")
    defaults = load_config({"SCOUT_DEV": "1", "SECRET_KEY": "k"})
    assert (defaults.poll_interval, defaults.poll_workers, defaults.poll_connections) == (None, 64, 1000)
    assert (defaults.restart_delay, defaults.poller, defaults.log_level) == (2.0, "embedded", "INFO")


@pytest.mark.parametrize("env, bind", [
    ({"SCOUT_DEV": "1", "PORT": "8081"}, "127.0.0.1:8081"),  # dev mode signs people in without a password
    ({"SCOUT_DEV": "1"}, "127.0.0.1:8080"),
    ({"PORT": "8080"}, "0.0.0.0:8080"),  # App Engine sets PORT and reaches gunicorn from outside the container
    ({}, "127.0.0.1:8080"),
])
def test_gunicorn_binds_loopback_in_dev_mode_whatever_port_says(env: dict[str, str], bind: str) -> None:
    assert server_settings(env).bind == bind


@pytest.mark.parametrize("name, value", [("PORT", "http"), ("PORT", "70000"), ("SCOUT_POLL_INTERVAL", "abc"),
                                         ("SCOUT_LOG_LEVEL", "chatty")])
def test_gunicorn_refuses_a_bad_setting_in_one_line(tmp_path: Path, name: str, value: str) -> None:
    """SCOUT_POLL_INTERVAL=abc used to crash the poller every 2.5 s while the site looked healthy."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SCOUT_DEV": "1", "SECRET_KEY": "k", "SCOUT_DB": str(tmp_path / "s.sqlite3"), name: value}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "notifier:app"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"Scout cannot start: {name} must be"), line
