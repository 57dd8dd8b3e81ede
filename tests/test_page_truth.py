"""The page says what the poller does (the page's known defects, 1): the status panel and
"Check my Nightscout" time a reading the way the poller does, by its arrival when the
uploader's clock is off, through the real app, the real poller and a local Nightscout."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient
from werkzeug import Request, Response

from models import User
from scout.config import Config
from scout.poller import Poller
from scout.store.sqlite import SqliteStore
from tests.conftest import DevAuth
from tests.test_web import check, save


def nightscout(httpserver: Any) -> list[dict[str, Any]]:
    """A Nightscout serving whatever the test puts in the returned list (newest first). A
    server of its own per test: the page caches a site's readings for a minute by address."""
    served: list[dict[str, Any]] = []

    def answer(_request: Request) -> Response:
        return Response(json.dumps(served), content_type="application/json")

    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_handler(answer)
    return served


def sgv(entry_id: str, value: int, date: float, direction: str = "SingleDown") -> dict[str, Any]:
    return {"_id": entry_id, "type": "sgv", "sgv": value, "date": int(date * 1000), "direction": direction,
            "device": "share2"}


def poll(config: Config, store: SqliteStore, clock: Callable[[], float] = time.time) -> None:
    poller = Poller(config, store=store, workers=1, clock=clock)
    try:
        summary = poller.run_cycle(use_lease=False)
    finally:
        poller.close()
    assert not summary.error, summary.error


def alert_calls(store: SqliteStore, user: User) -> list[Any]:
    return [e for e in store.user_log(user.id, 100) if e.purpose == "alert"]


def signed_up(client: FlaskClient, auth: DevAuth, store: SqliteStore, httpserver: Any) -> User:
    auth.login()
    save(client, nightscout_url=httpserver.url_for("/"))
    user = store.find_user_by_email("ana@example.com")
    assert user is not None and user.is_watchable
    return user


def test_an_uploader_clock_20_minutes_behind_calls_and_the_page_says_so(
        client: FlaskClient, auth: DevAuth, store: SqliteStore, config: Config, threaded_httpserver: Any) -> None:
    user = signed_up(client, auth, store, threaded_httpserver)
    served = nightscout(threaded_httpserver)
    skew, start = 20 * 60, time.time()
    served.append(sgv("e1", 120, start - skew - 300, "Flat"))
    poll(config, store)  # Scout starts watching: that reading is 25 minutes old by its date
    assert alert_calls(store, user) == []
    served.insert(0, sgv("e2", 54, time.time() - skew))  # arrives now, dated 20 minutes ago
    poll(config, store)
    assert len(alert_calls(store, user)) == 1, "the poller times the new reading by its arrival, and calls"

    reading = client.get("/status.json").get_json()["reading"]
    assert reading["fresh"] and reading["ageMinutes"] <= 1, reading
    assert reading["range"] == "urgent-low" and "would not call" not in reading["judgement"]
    result = check(client)
    assert "Scout would call you for it" in result and "newest reading is old" not in result, result

    served.insert(0, sgv("e3", 52, time.time() - skew))  # a second late-stamped arrival: the clock is off
    poll(config, store)
    reading = client.get("/status.json").get_json()["reading"]
    assert "clock is about 20 minutes behind" in reading["clock"], reading
    assert "clock is about 20 minutes behind" in check(client)


def test_a_reading_that_arrived_20_minutes_ago_is_stale_whatever_its_date_says(
        client: FlaskClient, auth: DevAuth, store: SqliteStore, config: Config, threaded_httpserver: Any) -> None:
    """The reverse: an uploader clock 10 minutes ahead dates a reading that reached Scout 20
    minutes ago '10 minutes ago'. Scout does not call for it; the page must not say it would."""
    user = signed_up(client, auth, store, threaded_httpserver)
    served = nightscout(threaded_httpserver)
    now = time.time()
    served.append(sgv("e1", 54, now - 10 * 60))
    poll(config, store, clock=lambda: now - 20 * 60)  # 20 minutes ago: in the future by its date
    assert len(alert_calls(store, user)) == 1
    poll(config, store)  # now, with no new reading since
    assert len(alert_calls(store, user)) == 1, "the poller finds the reading stale and does not call again"

    reading = client.get("/status.json").get_json()["reading"]
    assert not reading["fresh"] and reading["ageMinutes"] >= 19, reading
    assert "so Scout would not call for it" in reading["judgement"]
    result = check(client)
    assert "newest reading is old" in result and "Scout would call you" not in result, result
