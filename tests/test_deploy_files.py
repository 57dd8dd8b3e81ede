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


def test_app_yaml_runs_gunicorn_on_flex_with_health_checks_and_two_manual_instances() -> None:
    text = (ROOT / "app.yaml").read_text()
    assert re.search(r"^runtime: python$", text, re.M) and re.search(r"^env: flex$", text, re.M)
    assert re.search(r"^entrypoint: gunicorn -c gunicorn.conf.py notifier:app$", text, re.M)
    assert re.search(r"^manual_scaling:\n  instances: 2$", text, re.M)
    assert text.count('path: "/healthz"') == 2
    assert not re.search(r"(SECRET_KEY|AUTH_TOKEN|API_SECRET|PRIVATE_KEY)\s*:", text), "no secrets in app.yaml"
    assert text.rstrip().splitlines()[-1].startswith("  "), "env_variables must stay the last block"


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


@pytest.mark.parametrize("name, value", [("SCOUT_WEB_THREADS", "lots"), ("WEB_CONCURRENCY", "0")])
def test_gunicorn_refuses_a_worker_or_thread_count_that_is_not_one_in_one_line(
    tmp_path: Path, name: str, value: str
) -> None:
    env = {**os.environ, "SCOUT_DEV": "1", "SCOUT_DB": str(tmp_path / "s.sqlite3"), name: value}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "notifier:app"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == f"Scout cannot start: {name} must be a whole number of at least 1, got {value!r}."


def test_a_service_account_file_names_the_project(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "project_id": "scout-prod"}))
    config = load_config({"SCOUT_DEV": "1", "SECRET_KEY": "x", "FIREBASE_PRIVATE_KEY": str(key)})
    assert config.store == "firestore"
    assert gunicorn_conf().firestore_settings_problem(config) is None
    from scout.store.firestore import FirestoreStore

    assert FirestoreStore.from_config(config).project_id == "scout-prod"  # no client is created


FAKE_GCLOUD = """#!/usr/bin/env bash
# A stand-in for gcloud: secrets come from $SECRETS_DIR, `app deploy` copies its file to $DEPLOYED.
if [ "$1 $2 $3" = "secrets versions access" ]; then
  name="${5#--secret=}"
  [ -f "$SECRETS_DIR/$name" ] && exec cat "$SECRETS_DIR/$name"
  echo "NOT_FOUND: secret $name" >&2; exit 1
fi
if [ "$1 $2" = "app deploy" ]; then cp "$3" "$DEPLOYED"; echo "$@" > "$DEPLOYED.args"; exit 0; fi
exit 2
"""


def test_the_deploy_script_passes_secret_manager_values_into_a_temporary_app_yaml(tmp_path: Path) -> None:
    bin_dir, secrets = tmp_path / "bin", tmp_path / "secrets"
    bin_dir.mkdir()
    secrets.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    pem = "-----BEGIN PRIVATE KEY-----\nMIIB\"quoted\"\n-----END PRIVATE KEY-----\n"
    (secrets / "SECRET_KEY").write_text("s3cret")
    (secrets / "NEXMO_PRIVATE_KEY").write_text(pem)
    deployed = tmp_path / "deployed.yaml"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SECRETS_DIR": str(secrets),
           "DEPLOYED": str(deployed)}
    done = subprocess.run(["bash", "scripts/deploy.sh", "scout-prod"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = deployed.read_text()
    assert text.startswith((ROOT / "app.yaml").read_text())
    added = dict(line.strip().split(": ", 1) for line in text[len((ROOT / "app.yaml").read_text()):].splitlines())
    assert {name: json.loads(value) for name, value in added.items()} == {
        "SECRET_KEY": "s3cret", "NEXMO_PRIVATE_KEY": pem.rstrip("\n")}
    assert "--project=scout-prod" in (tmp_path / "deployed.yaml.args").read_text()
    assert not list(ROOT.glob(".app.deploy.*")), "the file holding the secrets is deleted"


def test_env_example_documents_every_variable_scout_reads() -> None:
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    sources = [*ROOT.glob("scout/*.py"), ROOT / "gunicorn.conf.py", ROOT / "notifier.py"]
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
