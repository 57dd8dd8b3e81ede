"""The deployment files: app.yaml, gunicorn.conf.py's start-up checks, scripts/deploy.sh,
.env.example, and the operator commands against the Firestore emulator."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from scout.config import load_config
from tests.firestore_fixtures import firestore_env

pytestmark = pytest.mark.usefixtures("scratch_cwd")

ROOT = Path(__file__).resolve().parent.parent


def gunicorn_conf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scout_gunicorn_conf", ROOT / "gunicorn.conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_app_yaml_runs_gunicorn_on_flex_with_health_checks_that_mean_one_thing_each() -> None:
    text = (ROOT / "app.yaml").read_text()
    assert re.search(r"^runtime: python$", text, re.M) and re.search(r"^env: flex$", text, re.M)
    assert re.search(r"^entrypoint: gunicorn -c gunicorn.conf.py notifier:app$", text, re.M)
    assert re.search(r"^manual_scaling:\n  instances: 2$", text, re.M)
    assert re.search(r'^liveness_check:\n  path: "/healthz/live"$', text, re.M)
    assert re.search(r'^readiness_check:\n  path: "/healthz/ready"$', text, re.M)
    assert re.search(r'^  SCOUT_SECRETS: "secretmanager"$', text, re.M)
    assert not re.search(r"(SECRET_KEY|AUTH_TOKEN|API_SECRET|PRIVATE_KEY|SIGNATURE_SECRET)\s*:", text), "no secrets"
    version = re.search(r'runtime_version: "(3\.\d+)"', text)
    assert version and f"<3.{int(version.group(1).split('.')[1]) + 1}" in (ROOT / "pyproject.toml").read_text(), \
        "pyproject's requires-python and App Engine's runtime_version name the same Python"


@pytest.mark.parametrize(
    "env, problem",
    [
        ({}, None),  # SQLite
        ({"SCOUT_STORE": "firestore", "GOOGLE_CLOUD_PROJECT": "p"}, None),
        ({"SCOUT_STORE": "firestore", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:1"}, None),
        ({"SCOUT_STORE": "firestore"}, "neither FIREBASE_PRIVATE_KEY nor GOOGLE_CLOUD_PROJECT is set"),
        ({"FIREBASE_PRIVATE_KEY": "/nonexistent/key.json"}, "cannot be read as a service-account JSON file"),
    ],
)
def test_gunicorn_refuses_to_start_on_firestore_settings_that_cannot_work(
    tmp_path: Path, env: dict[str, str], problem: str | None
) -> None:
    config = load_config({"SCOUT_DEV": "1", "SECRET_KEY": "x", **env})
    found = gunicorn_conf().firestore_settings_problem(config)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize("name, value, reason", [("SCOUT_WEB_THREADS", "lots", "must be a whole number, got 'lots'"),
                                                ("WEB_CONCURRENCY", "0", "must be at least 1, got 0")])
def test_gunicorn_refuses_a_worker_or_thread_count_that_is_not_one_in_one_line(
    tmp_path: Path, name: str, value: str, reason: str
) -> None:
    env = {**os.environ, "SCOUT_DEV": "1", "SCOUT_DB": str(tmp_path / "s.sqlite3"), name: value}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "notifier:app"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == f"Scout cannot start: {name} {reason}."


def test_a_service_account_file_names_the_project(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "project_id": "scout-prod"}))
    config = load_config({"SCOUT_DEV": "1", "SECRET_KEY": "x", "FIREBASE_PRIVATE_KEY": str(key)})
    assert config.store == "firestore"
    assert gunicorn_conf().firestore_settings_problem(config) is None
    from scout.store.firestore import FirestoreStore

    assert FirestoreStore.from_config(config).project_id == "scout-prod"  # no client is created


FAKE_GCLOUD = ROOT / "tests" / "fake_gcloud"
PROVIDER_SECRETS = {"SCOUT_TELEPHONY": "twilio", "TWILIO_ACCOUNT_SID": "AC123", "TWILIO_AUTH_TOKEN": "token",
                    "TWILIO_NUMBER": "+15551234567"}
REQUIRED = {"SECRET_KEY": "s3cret", "SITE_URL": "https://scout.example.org", "GOOGLE_CLIENT_ID": "1.apps.googleusercontent.com"}


def gcloud_env(state: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{FAKE_GCLOUD}:{os.environ['PATH']}", "FAKE_GCLOUD_STATE": str(state), **extra}


def store_secrets(state: Path, secrets: dict[str, str]) -> None:
    (state / "secrets").mkdir(parents=True, exist_ok=True)
    for name, value in secrets.items():
        (state / "secrets" / name).write_text(value)


def deploy(state: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "scripts/deploy.sh", "scout-prod"], cwd=ROOT, env=gcloud_env(state, **extra),
                          capture_output=True, text=True, timeout=60)


def gcloud_calls(state: Path) -> list[dict[str, Any]]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_deploy_script_checks_every_secret_then_deploys_app_yaml_with_nothing_secret(tmp_path: Path) -> None:
    store_secrets(tmp_path, {**REQUIRED, **PROVIDER_SECRETS})
    done = deploy(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "deployed.yaml").read_text() == (ROOT / "app.yaml").read_text()
    checked = {c["flags"]["--secret"][0] for c in gcloud_calls(tmp_path) if c["command"] == "secrets versions describe"}
    assert checked == set(REQUIRED) | set(PROVIDER_SECRETS)
    [deployed] = [c for c in gcloud_calls(tmp_path) if c["command"] == "app deploy"]
    assert deployed["args"] == ["app.yaml"] and deployed["flags"]["--project"] == ["scout-prod"]
    accessed = [c["flags"]["--secret"][0] for c in gcloud_calls(tmp_path) if c["command"] == "secrets versions access"]
    assert accessed == ["SCOUT_TELEPHONY"], "only the provider's name is read; no secret value leaves Secret Manager"
    assert not list(ROOT.glob(".app.deploy.*"))


@pytest.mark.parametrize("missing", ["SECRET_KEY", "GOOGLE_CLIENT_ID", "SCOUT_TELEPHONY", "TWILIO_AUTH_TOKEN"])
def test_the_deploy_script_stops_on_a_missing_secret_showing_gcloud_s_error(tmp_path: Path, missing: str) -> None:
    store_secrets(tmp_path, {k: v for k, v in {**REQUIRED, **PROVIDER_SECRETS}.items() if k != missing})
    done = deploy(tmp_path)
    assert done.returncode == 1
    assert f"NOT_FOUND: Secret [projects/scout-prod/secrets/{missing}] not found" in done.stderr, "gcloud's own error"
    assert f"deploy: stopped: the secret {missing} cannot be read in project scout-prod" in done.stderr
    assert f"gcloud secrets create {missing} --data-file=- --project=scout-prod" in done.stderr
    assert not any(c["command"] == "app deploy" for c in gcloud_calls(tmp_path))


def test_the_deploy_script_stops_when_gcloud_is_not_logged_in(tmp_path: Path) -> None:
    store_secrets(tmp_path, {**REQUIRED, **PROVIDER_SECRETS})
    done = deploy(tmp_path, FAKE_GCLOUD_LOGGED_OUT="1")
    assert done.returncode == 1
    assert "You do not currently have an active account selected" in done.stderr
    assert not any(c["command"] == "app deploy" for c in gcloud_calls(tmp_path))


def test_the_deploy_script_refuses_an_unknown_provider(tmp_path: Path) -> None:
    store_secrets(tmp_path, {**REQUIRED, **PROVIDER_SECRETS, "SCOUT_TELEPHONY": "pigeon"})
    done = deploy(tmp_path)
    assert done.returncode == 1 and "SCOUT_TELEPHONY says 'pigeon'; it must be twilio or vonage" in done.stderr
    assert not any(c["command"] == "app deploy" for c in gcloud_calls(tmp_path))


def test_gcloudignore_keeps_local_settings_keys_and_tests_out_of_the_upload() -> None:
    ignored = {line.strip() for line in (ROOT / ".gcloudignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".env", ".env.*", "!.env.example", "*.pem", "*.key", "instance/", "tests/", ".venv/", ".git/",
            ".app.deploy.*"} <= ignored


def test_env_example_documents_every_variable_scout_reads() -> None:
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    sources = [*ROOT.glob("scout/**/*.py"), ROOT / "gunicorn.conf.py", ROOT / "notifier.py"]
    read = set()
    for source in sources:
        text = source.read_text()
        read |= set(re.findall(r"""(?:environ\.get|environ\[|config\.get|env\.get|env\[)\(?["']([A-Z][A-Z0-9_]+)["']""",
                               text))
    aliases = {"NEXMO_FAILED_PING_SMS"}  # documented as an alias of NIGHTSCOUT_FAILED_PING_SMS
    undocumented = read - documented - aliases
    assert not undocumented, f"document these variables in .env.example (what, default, when to set): {undocumented}"


@pytest.mark.emulator
def test_poll_once_runs_on_firestore_when_the_emulator_is_configured(
    tmp_path: Path, firestore_emulator: str, firestore_store: Any
) -> None:
    from tests.conftest import make_user

    firestore_store.save_user(make_user("", id="sub-new", email="new@example.com"))  # not watchable yet
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "FIREBASE_", "GOOGLE_"))}
    env.update(firestore_env(tmp_path, firestore_emulator), GOOGLE_CLOUD_PROJECT=firestore_store.project_id)
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "notifier", "poll", "--once"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "0 user(s)" in done.stdout
    assert firestore_store.last_cycle() is not None  # written to the emulator, not to a SQLite file
    assert not (tmp_path / "unused.sqlite3").exists()
