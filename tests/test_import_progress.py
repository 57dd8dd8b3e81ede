"""`import-users` at scale (issue 13): a progress bar with count, rate and time left, and the
users saved in batches (Store.save_users) on both stores, tutorial documents upgraded in place."""
from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from scout.migration import IMPORT_BATCH, import_users
from scout.progress import Progress
from scout.store.sqlite import SqliteStore
from tests.conftest import make_user

ROOT = Path(__file__).resolve().parent.parent
BAR = re.compile(r"^\[[#.]{24}\] ([\d,]+)/([\d,]+) records  ([\d,]+)/s  (\d+:\d\d left|-:-- left|done)$")


def tutorial_records(count: int) -> list[dict[str, Any]]:
    records = [{"email": f"user{n}@example.com", "username": f"User {n}", "phone": f"1415555{n % 10000:04d}",
                "emerg_contact": "14155550100", "nightscout_api": f"https://ns{n}.example.org",
                "extra_contacts": ["+1 415 555 0101"]} for n in range(count)]
    records[7]["phone"] = "not a phone"  # bad records mixed in, in no particular place
    records[count - 3]["email"] = ""
    random.Random(13).shuffle(records)
    return records


def test_the_progress_line_shows_count_rate_and_time_left() -> None:
    now = [100.0]
    out = io.StringIO()
    bar = Progress(1000, "records", out=out, clock=lambda: now[0])
    now[0] += 10
    bar.advance(250)
    assert bar.line() == "[######..................] 250/1,000 records  25/s  0:30 left"
    now[0] += 20
    bar.advance(1000)
    assert bar.line().endswith("1,000/1,000 records  33/s  done")
    assert out.getvalue().splitlines()[-1] == bar.line()


def test_import_users_on_20000_records_shows_progress_and_saves_in_batches(tmp_path: Path) -> None:
    records = tutorial_records(20_000)
    source = tmp_path / "scouts.json"
    source.write_text(json.dumps(records))
    database = tmp_path / "s.sqlite3"
    env = {**os.environ, "SCOUT_DEV": "1", "SECRET_KEY": "k", "SCOUT_DB": str(database)}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "notifier", "import-users", str(source)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1  # two records could not be imported, and it says so
    progress = [line for line in done.stderr.splitlines() if BAR.match(line)]
    assert len(progress) >= 10, done.stderr[-2000:]
    counts = [int(BAR.match(line).group(1).replace(",", "")) for line in progress]  # type: ignore[union-attr]
    assert counts == sorted(counts) and counts[-1] == 20_000 and progress[-1].endswith("done")
    assert all(BAR.match(line).group(2) == "20,000" for line in progress)  # type: ignore[union-attr]
    assert "19998 of 20000 record(s) imported, 2 not imported." in done.stdout
    assert not any(BAR.match(line) for line in done.stdout.splitlines()), "the bar stays off the report"
    store = SqliteStore(str(database))
    assert len(store.list_users()) == 19_998
    store.close()


def test_save_users_crosses_batch_limits_and_upgrades_tutorial_documents_in_place(each_store: Any) -> None:
    """More users than one Firestore commit holds, and more tutorial emails than one `in` query."""
    store = each_store
    signed_in = make_user(id="google-sub-1", email="signed@example.com")
    store.save_user(signed_in)
    tutorial = make_user(id="old@example.com", email="old@example.com", name="Old")
    store.save_user(tutorial)  # a tutorial-era user: known by email
    before = {u.email: u for u in store.list_users()}
    count = IMPORT_BATCH + 37
    records = [("", {"email": f"u{n}@example.com", "phone": "14155550100", "nightscout_api": "https://n.example.org"})
               for n in range(count)]
    records += [("", {"email": "old@example.com", "username": "Old, imported", "phone": "14155550199"}),
                ("", {"email": "signed@example.com", "username": "Not me", "phone": "14155550198"})]
    done: list[int] = []
    results = import_users(store, records, "US", progress=done.append)
    assert done[-1] == len(records) and done == sorted(done)
    assert sum(r.imported for r in results) == count + 1
    [refused] = [r for r in results if not r.imported]
    assert "already signed in with Google as user google-sub-1" in refused.problem
    users = {u.email: u for u in store.list_users()}
    assert len(users) == count + 2
    assert users["old@example.com"].name == "Old, imported" and users["old@example.com"].phone == "+14155550199"
    assert users["signed@example.com"] == before["signed@example.com"], "a signed-in user keeps their settings"
    assert users["u5@example.com"].emergency_contact is None and users["u5@example.com"].phone == "+14155550100"
    assert store.find_user_by_email("old@example.com").id == "old@example.com"
    assert users["u0@example.com"].extra_contacts == ()
