"""What the page reads (the page's known defects, 2): Firestore bills every document read,
so each view reads what it shows, once. Counted on the real app and the real SQLite store
(tests.counting_store counts what the store is asked; the store answers)."""
from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug import Request, Response

from models import Contact, LogEntry
from scout.config import Config
from scout.dashboard import history_page
from scout.status import episodes
from scout.store.sqlite import SqliteStore
from scout.web import create_app
from tests.conftest import DevAuth
from tests.counting_store import CountingStore
from tests.test_web import save

USER_ID = "dev:ana@example.com"
HOUR = 3600.0


def counted_app(config: Config, store: SqliteStore) -> tuple[Flask, CountingStore]:
    counting = CountingStore(store)
    app = create_app(config, counting)
    app.testing = True
    return app, counting


def signed_in(app: Flask) -> FlaskClient:
    client = app.test_client()
    DevAuth(client).login()
    return client


def a_day_of_readings(now: float) -> list[dict[str, Any]]:
    return [{"_id": f"r{i}", "type": "sgv", "sgv": 120 + i % 7, "date": int((now - 120 - i * 300) * 1000),
             "direction": "Flat", "device": "share2"} for i in range(288)]


def nightscout(server: Any, answer: Any = None) -> None:
    now = time.time()
    server.expect_request("/api/v1/entries/sgv.json").respond_with_handler(
        answer or (lambda _r: Response(json.dumps(a_day_of_readings(now)), content_type="application/json")))


def past_alerts(store: SqliteStore, now: float, count: int = 500) -> None:
    """A month of alert log (a notice every 90 minutes until 6.5 hours ago), and a call 30 minutes ago."""
    entries = [LogEntry(f"{USER_ID}:no_data:{i}", USER_ID, "sms", "no_data", "+14155552671", "x",
                        now - 6.5 * HOUR - i * 5400, status="sent") for i in range(count)]
    entries += [LogEntry(f"{USER_ID}:low-{now - 1800:.0f}:call:1", USER_ID, "call", "alert", "+14155552671",
                         "Ana, your blood glucose is 60 milligrams per deciliter.", now - 1800, status="sent")]
    assert store.commit(USER_ID, None, 0, entries)


class OpenTab:
    """The page's own script (static/status.js), request for request: the page, then the status
    every 30 seconds, and the chart first and whenever the status's chartMark changes."""

    def __init__(self, client: FlaskClient) -> None:
        self.client, self.charts, self.mark = client, 0, None
        page = client.get("/").get_data(as_text=True)
        found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', page, re.S)
        assert found
        status = json.loads(found.group(1))["status"]
        if status["reading"].get("pending"):
            self.refresh()
        else:
            self.mark = status.get("chartMark")
            self.chart()

    def chart(self) -> None:
        answer = self.client.get("/chart.json?hours=6")
        assert answer.status_code == 200
        self.charts += 1

    def refresh(self) -> None:
        status = self.client.get("/status.json").get_json()
        if "chartMark" not in status or status["chartMark"] != self.mark:
            self.mark = status.get("chartMark")
            self.chart()


def test_the_settings_page_reads_the_recent_alert_log_once(config: Config, store: SqliteStore) -> None:
    app, counting = counted_app(config, store)
    client = signed_in(app)
    past_alerts(store, time.time())
    counting.reset()
    assert client.get("/").status_code == 200
    assert counting.calls["user_log"] == 1, counting.calls
    assert counting.documents["user_log"] == 20


def test_an_open_tab_reloads_the_chart_only_when_it_changes_and_reads_the_hours_it_shows(
        config: Config, store: SqliteStore, threaded_httpserver: Any) -> None:
    nightscout(threaded_httpserver)
    app, counting = counted_app(config, store)
    client = signed_in(app)
    save(client, nightscout_url=threaded_httpserver.url_for("/"))
    now = time.time()
    past_alerts(store, now)

    counting.reset()
    tab = OpenTab(client)
    page_reads = counting.read
    counting.reset()
    for _ in range(10):
        tab.refresh()
    assert tab.charts == 1, "nothing changed: the chart was not loaded again"
    status_reads = counting.read / 10
    counting.reset()
    tab.chart()
    chart_reads = counting.read
    assert counting.documents["user_log"] == 1, "the chart reads the one entry of its 6 hours, not 500"

    assert store.commit(USER_ID, None, 0, [LogEntry(f"{USER_ID}:outage:{now:.0f}", USER_ID, "sms", "outage",
                                                    "+14155552671", "x", now, status="sent")])
    tab.refresh()
    assert tab.charts == 3, "a new alert log entry shows on the chart at the next refresh"
    store.update_log(f"{USER_ID}:outage:{now:.0f}", status="failed", error="throttled")
    tab.refresh()
    assert tab.charts == 4, "so does a changed one"

    # One tab open for an hour: the page, 120 status refreshes, and a chart for each of the
    # 12 new readings of a 5-minute CGM (the mark changes with the newest reading's date).
    per_hour = page_reads + 120 * status_reads + 12 * chart_reads
    print(f"reads: page {page_reads}, status {status_reads:g}, chart {chart_reads}; one tab for an hour {per_hour:g}")
    assert per_hour < 1500, per_hour  # 63,710 before: every refresh reloaded the chart and its 500 log entries


def test_two_requests_that_miss_the_readings_cache_at_once_read_nightscout_once(
        config: Config, store: SqliteStore, threaded_httpserver: Any) -> None:
    asked: list[float] = []
    second = threading.Event()
    now = time.time()

    def answer(_request: Request) -> Response:
        asked.append(time.monotonic())
        if len(asked) >= 2:
            second.set()
        second.wait(2)  # a slow site: the first answer waits for a second request, or 2 s (the page waits 5)
        return Response(json.dumps(a_day_of_readings(now)), content_type="application/json")

    nightscout(threaded_httpserver, answer)
    app, _counting = counted_app(config, store)
    clients = [signed_in(app) for _ in range(3)]
    save(clients[0], nightscout_url=threaded_httpserver.url_for("/"))
    start = threading.Barrier(len(clients))
    answers: list[Any] = [None] * len(clients)

    def ask(index: int) -> None:
        start.wait()
        answers[index] = clients[index].get("/status.json").get_json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(asked) == 1, f"Nightscout was read {len(asked)} times for one user at once"
    assert all(a is not None and a["reading"].get("value") == "120" for a in answers), answers


def episode_log(count: int, now: float) -> list[LogEntry]:
    """`count` low episodes, newest first in time: a call, three contact texts, an all-clear,
    with notices in between."""
    entries = []
    for i in range(count):
        start = round(now - (i + 1) * 2 * HOUR)
        ep = f"{USER_ID}:low-{start}"
        entries.append(LogEntry(f"{ep}:call:1", USER_ID, "call", "alert", "+14155552671",
                                f"Ana, your blood glucose is {50 + i % 20} milligrams per deciliter.", start))
        entries += [LogEntry(f"{ep}:contacts:1:+1415555267{n}", USER_ID, "sms", "contacts", f"+1415555267{n}",
                             "x", start + 300 + n) for n in (2, 3, 4)]
        entries.append(LogEntry(f"{ep}:all_clear:+14155552672", USER_ID, "sms", "all_clear", "+14155552672", "x",
                                start + 1800))
        if i % 3 == 0:
            entries.append(LogEntry(f"{USER_ID}:no_data:{start - 600}", USER_ID, "sms", "no_data", "+14155552671",
                                    "x", start - 600))
    return entries


def shown_as(groups: list[Any]) -> list[tuple[str, int]]:
    return [(g.id, len(g.entries)) for g in groups]


def test_history_reads_the_entries_its_page_shows_not_two_thousand(config: Config, store: SqliteStore) -> None:
    app, counting = counted_app(config, store)
    client = signed_in(app)
    now = time.time()
    entries = episode_log(360, now)  # 2,040 entries
    assert store.commit(USER_ID, None, 0, entries)
    everything = episodes(store.user_log(USER_ID, 5000))

    counting.reset()
    page = client.get("/history").get_data(as_text=True)
    first_reads = counting.documents["user_log"]
    assert 'id="older"' in page and 'id="newer"' not in page
    counting.reset()
    client.get("/history?page=2")
    print(f"history reads: page 1 {first_reads}, page 2 {counting.documents['user_log']} (before: 2000 each)")
    assert first_reads <= 250, first_reads

    with app.test_request_context():
        for number in (1, 2, 7):
            shown, older = history_page(USER_ID, number)
            assert shown_as(shown) == shown_as(everything[(number - 1) * 10: number * 10]), number
            assert older
        few = [e for e in entries if e.created_at > now - 5 * 2 * HOUR]  # a newer user: everything on one page
    store.delete_user(USER_ID)
    assert store.commit(USER_ID, None, 0, few)
    with app.test_request_context():
        shown, older = history_page(USER_ID, 1)
    assert shown_as(shown) == shown_as(episodes(few)) and not older


def test_a_text_from_a_contact_reads_its_senders_record_not_every_user(scout: Any) -> None:
    from tests.telephony_setup import EMERGENCY
    from tests.test_replies import reply, unanswered_call

    for i in range(200):  # other people Scout watches, one of whom lists the same emergency contact
        other = scout.store.get_user("sub-ana")
        scout.store.save_user(type(other)(id=f"sub-{i}", email=f"u{i}@example.com", phone=f"+1415666{i:04d}",
                                          emergency_contact=Contact(EMERGENCY) if i == 7 else None))
    scout.nightscout.clock = lambda: scout.now
    scout.nightscout.show(62, 70)
    unanswered_call(scout)
    counting = CountingStore(scout.store)
    scout.app = create_app(scout.config, counting)
    scout.app.testing = True
    scout.client = scout.app.test_client()
    assert reply(scout, EMERGENCY, "OK") in (200, 204)
    assert scout.store.get_state("sub-ana")[0].episode.acknowledged_at is not None
    assert counting.calls["list_users"] == 0 and counting.documents["find_users_by_phone"] == 2, counting.calls


def test_an_older_sqlite_file_gets_its_number_index_once(tmp_path: Any) -> None:
    import sqlite3

    from tests.conftest import make_user

    path = str(tmp_path / "old.sqlite3")
    SqliteStore(path).save_user(make_user())
    raw = sqlite3.connect(path)
    raw.execute("DELETE FROM user_numbers")  # as a file from before the index: users, no numbers
    raw.execute("PRAGMA user_version = 0")
    raw.commit()
    raw.close()
    assert [u.id for u in SqliteStore(path).find_users_by_phone("+14155552673")] == ["sub-ana"]
