"""Health checks that mean one thing each (issue 13): liveness never depends on the store or
the poller, readiness on the store only (bounded, cached), the poller's freshness is its own
report. A stalled poller never takes the site down; a store outage makes the instance not
ready, never restarted."""
from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from models import CycleRecord
from scout.config import load_config
from scout.health import CACHE_SECONDS, READY_TIMEOUT, StoreProbe
from scout.heartbeat import heartbeat_path, write_heartbeat
from scout.store.sqlite import SqliteStore
from scout.web import create_app
from tests.conftest import dev_env
from tests.test_deployment import Gunicorn, gunicorn  # noqa: F401 (gunicorn is a fixture)

FRESH_PATHS = ["/healthz/live", "/healthz/ready", "/healthz/poller", "/healthz"]


def statuses(client: FlaskClient) -> dict[str, int]:
    return {path: client.get(path).status_code for path in FRESH_PATHS}


def body(response: Any) -> dict[str, Any]:
    found = response.get_json()
    assert isinstance(found, dict), response.get_data(as_text=True)
    return found


def uncached(app: Flask) -> None:
    """Every request reads the store again (the cache is a parameter of the probe)."""
    from scout.context import get_store

    def store() -> Any:
        with app.app_context():
            return get_store()

    app.extensions["scout_health"] = StoreProbe(store, cache_seconds=0)


def test_a_stalled_poller_leaves_the_instance_live_and_ready_and_says_so_on_its_own_report(
    app: Flask, client: FlaskClient, store: SqliteStore
) -> None:
    uncached(app)
    config = app.config["SCOUT"]
    ten_minutes_ago = time.time() - 600
    store.record_cycle(CycleRecord(ten_minutes_ago, {"users": 3}))
    write_heartbeat(config, ten_minutes_ago, acted=True, error="")
    assert statuses(client) == {"/healthz/live": 200, "/healthz/ready": 200, "/healthz/poller": 503, "/healthz": 503}
    report = body(client.get("/healthz/poller"))
    assert report["fresh"] is False
    assert report["last_cycle"]["fresh"] is False and 599 < report["last_cycle"]["seconds_ago"] < 700
    assert report["last_cycle"]["summary"] == {"users": 3}
    assert report["this_instance"]["fresh"] is False

    # the other instance polls (its cycle is recorded), but this instance's poller is dead
    store.record_cycle(CycleRecord(time.time() - 20, {"users": 3}))
    report = body(client.get("/healthz/poller"))
    assert report["last_cycle"]["fresh"] is True and report["this_instance"]["fresh"] is False
    assert client.get("/healthz/poller").status_code == 503

    # this instance's poller stands by each minute: all fresh
    write_heartbeat(config, time.time() - 30, acted=False, error="")
    assert statuses(client) == {path: 200 for path in FRESH_PATHS}
    assert body(client.get("/healthz/poller"))["this_instance"]["acted"] is False


def test_no_cycle_yet_is_reported_as_not_fresh_with_the_reason(app: Flask, client: FlaskClient) -> None:
    report = body(client.get("/healthz/poller"))
    assert report["last_cycle"] == {"fresh": False, "error": "no poll cycle has finished yet"}
    assert report["this_instance"]["error"] == "this instance's poller has not run a cycle yet"
    assert client.get("/healthz/ready").status_code == 200


def test_an_instance_that_runs_no_poller_reports_only_the_last_cycle(tmp_path: Path) -> None:
    config = load_config(dev_env(tmp_path, SCOUT_POLLER="off"))
    store = SqliteStore(config.db_path)
    store.record_cycle(CycleRecord(time.time(), {"users": 0}))
    client = create_app(config, store).test_client()
    report = body(client.get("/healthz/poller"))
    assert "this_instance" not in report and report["fresh"] is True
    store.close()


@pytest.fixture
def dead_port() -> int:
    """A port where nothing listens: connections are refused, as when the store is unreachable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def hung_server() -> Iterator[int]:
    """Accepts connections and never answers, as a hung backend does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield int(listener.getsockname()[1])
    listener.close()


def firestore_app(tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Flask:
    # the Firestore client reads the emulator address from the process environment: put it back afterwards
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", host)
    config = load_config(dev_env(tmp_path, SCOUT_STORE="firestore", FIRESTORE_EMULATOR_HOST=host, **extra))
    app = create_app(config)
    app.testing = True
    return app


def test_a_store_that_refuses_connections_makes_the_instance_not_ready_but_still_live(
    tmp_path: Path, dead_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = firestore_app(tmp_path, f"127.0.0.1:{dead_port}", monkeypatch, SCOUT_FIRESTORE_TIMEOUT="2").test_client()
    started = time.monotonic()
    answer = client.get("/healthz/ready")
    assert answer.status_code == 503 and body(answer)["ready"] is False
    assert "Firestore" in body(answer)["store"] or "did not answer" in body(answer)["store"]
    assert time.monotonic() - started < READY_TIMEOUT + 1.5
    assert client.get("/healthz/live").status_code == 200
    poller = client.get("/healthz/poller")
    assert poller.status_code == 503 and body(poller)["last_cycle"]["fresh"] is False
    assert client.get("/healthz").status_code == 503


def test_a_hung_store_is_answered_within_the_bound_and_probed_once_per_cache_window(
    tmp_path: Path, hung_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the store's own limit at 10 s (the default), readiness answers within its own
    3 s bound, and the many probes of one cache window cost one read in flight at a time."""
    app = firestore_app(tmp_path, f"127.0.0.1:{hung_server}", monkeypatch)
    client = app.test_client()
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: app.test_client().get("/healthz/ready"), range(8)))
    took = time.monotonic() - started
    assert [a.status_code for a in answers] == [503] * 8
    assert all(body(a)["store"] == f"the store did not answer within {READY_TIMEOUT:g} s" for a in answers)
    assert READY_TIMEOUT - 0.2 < took < READY_TIMEOUT + 1.5, took
    probe: StoreProbe = app.extensions["scout_health"]
    assert probe.reads == 1, "one read in flight, however many health checks wait for it"
    live_started = time.monotonic()
    assert client.get("/healthz/live").status_code == 200
    assert time.monotonic() - live_started < 0.5


def test_readiness_is_cached_for_a_few_seconds(app: Flask, client: FlaskClient, store: SqliteStore) -> None:
    assert client.get("/healthz/ready").status_code == 200
    probe: StoreProbe = app.extensions["scout_health"]
    for _ in range(20):
        client.get("/healthz/ready")
        client.get("/healthz/poller")
    assert probe.reads == 1
    assert probe.cache_seconds == CACHE_SECONDS


def test_gunicorn_with_a_polling_instance_reports_its_own_poller_fresh(
    tmp_path: Path, gunicorn: Callable[..., Gunicorn]  # noqa: F811
) -> None:
    server = gunicorn(WEB_CONCURRENCY="2", SCOUT_POLL_INTERVAL="0.5")
    deadline = time.time() + 30
    report: dict[str, Any] = {}
    while time.time() < deadline:
        answer = requests.get(f"{server.base}/healthz/poller", timeout=5)
        report = answer.json()
        if answer.status_code == 200:
            break
        time.sleep(0.5)
    assert report.get("fresh") is True, (report, server.output()[-3000:])
    assert report["this_instance"]["acted"] is True
    assert Path(heartbeat_path(load_config(dev_env(tmp_path)))).exists()
    assert requests.get(f"{server.base}/healthz/live", timeout=5).status_code == 200
    assert requests.get(f"{server.base}/healthz/ready", timeout=5).status_code == 200
