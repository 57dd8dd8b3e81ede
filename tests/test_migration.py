"""`flask --app notifier import-users FILE.json`: the tutorial's documents into either store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import Result
from flask import Flask

from models import Contact, User
from scout.config import Config
from scout.web import create_app

ROOT = Path(__file__).resolve().parent.parent

ANA = {"email": "ana@example.com", "username": "Ana", "phone": "50588888888", "emerg_contact": "50588888889",
       "nightscout_api": "https://ana.herokuapp.com/api/v1/entries.json",
       "extra_contacts": ["50588888890", "+1 415 555 2673"]}
BO = {"sub": "google-sub-bo", "email": "bo@example.com", "username": "Bo", "phone": "+14155552671",
      "emerg_contact": "", "nightscout_api": "https://bo.example.org", "extra_contacts": []}


def run_import(app: Flask, tmp_path: Path, data: Any, *options: str) -> Result:
    path = tmp_path / "scouts.json"
    path.write_text(json.dumps(data))
    return app.test_cli_runner().invoke(args=["import-users", str(path), *options])


def app_on(config: Config, store: Any) -> Flask:
    app = create_app(config, store)
    app.testing = True
    return app


def test_valid_tutorial_documents_are_imported_and_reported_one_by_one(
    config: Config, each_store: Any, tmp_path: Path
) -> None:
    result = run_import(app_on(config, each_store), tmp_path, {"autoid1": ANA, "autoid2": BO})
    assert result.exit_code == 0, result.output
    assert "imported      ana@example.com (record 1 (id autoid1)) (known by email until they sign in" in result.output
    assert "imported      bo@example.com (record 2 (id autoid2))" in result.output
    assert "2 of 2 record(s) imported, 0 not imported." in result.output
    assert each_store.get_user("ana@example.com") == User(
        id="ana@example.com", email="ana@example.com", name="Ana", nightscout_url=str(ANA["nightscout_api"]),
        phone="+50588888888", emergency_contact=Contact("+50588888889"),
        extra_contacts=(Contact("+50588888890"), Contact("+14155552673")))
    assert each_store.get_user("google-sub-bo").phone == "+14155552671"


def test_invalid_records_are_listed_with_the_reason_and_not_imported(
    config: Config, each_store: Any, tmp_path: Path
) -> None:
    records = [
        ANA,
        {**ANA, "email": "bad-phone@example.com", "phone": "12"},
        {**ANA, "email": "bad-url@example.com", "nightscout_api": "ftp://ana"},
        {**ANA, "email": "", "username": "nobody"},
        {**ANA, "email": "many@example.com", "extra_contacts": ["+14155552671"] * 6},
        {**ANA, "username": "Ana again"},
        "not a document",
    ]
    result = run_import(app_on(config, each_store), tmp_path, records)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()  # the report; the progress bar is on stderr
    assert lines[0].startswith("imported      ana@example.com")
    assert lines[1] == ("NOT imported  record 2: phone: '12' is not a valid phone number. "
                        "Check the digits and the country code.")
    assert lines[2].startswith("NOT imported  record 3: nightscout_api: The Nightscout address must start")
    assert lines[3] == "NOT imported  record 4: email: missing or not an email address"
    assert lines[4] == "NOT imported  record 5: extra_contacts: 6 numbers, Scout texts at most 5"
    assert lines[5].startswith("NOT imported  ana@example.com (record 6): the same email as")
    assert lines[6] == "NOT imported  record 7: not a JSON object"
    assert "1 of 7 record(s) imported, 6 not imported." in result.output
    assert "fix them in the file and run the import again" in result.output
    assert [u.email for u in each_store.list_users()] == ["ana@example.com"]


def test_a_dry_run_checks_every_record_and_saves_nothing(config: Config, each_store: Any, tmp_path: Path) -> None:
    result = run_import(app_on(config, each_store), tmp_path, [ANA, BO], "--dry-run")
    assert result.exit_code == 0 and "2 of 2 record(s) would be imported (dry run" in result.output
    assert each_store.list_users() == []


def test_a_user_who_already_signed_in_keeps_their_settings(config: Config, each_store: Any, tmp_path: Path) -> None:
    signed_in = User(id="google-sub-ana", email="ana@example.com", phone="+14155550000")
    each_store.save_user(signed_in)
    result = run_import(app_on(config, each_store), tmp_path, {"scouts": [ANA]})
    assert result.exit_code == 1
    assert "already signed in with Google as user google-sub-ana" in result.output
    assert each_store.list_users() == [signed_in]


def test_importing_twice_changes_nothing(config: Config, each_store: Any, tmp_path: Path) -> None:
    app = app_on(config, each_store)
    run_import(app, tmp_path, [ANA, BO])
    before = each_store.list_users()
    assert run_import(app, tmp_path, [ANA, BO]).exit_code == 0
    assert each_store.list_users() == before


def test_a_file_that_is_not_a_list_of_documents_is_refused_with_the_reason(app: Flask, tmp_path: Path) -> None:
    result = run_import(app, tmp_path, 42)
    assert result.exit_code == 2
    assert "cannot be imported: expected a JSON list of scouts documents" in result.output


def test_the_flask_command_imports_into_the_configured_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "scouts.json"
    path.write_text(json.dumps([ANA]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "FIREBASE_"))}
    env.update(SCOUT_DEV="1", SECRET_KEY="x", SCOUT_DB=str(tmp_path / "scout.sqlite3"))
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "notifier", "import-users", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 of 1 record(s) imported" in done.stdout
