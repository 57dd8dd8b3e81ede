"""Scout keeps alerting through crashes and outages (issue 6).

Each test uses short intervals and timeouts through Scout's own settings, so it runs in
seconds; the speed of the poller is measured by `make bench`, not here.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from models import AlertState
from scout.config import Config, load_config
from scout.poller import CycleSummary, Poller, run_forever
from scout.store.sqlite import SqliteStore
from tests.conftest import dev_env, make_user
from tests.fake_providers import FakeProviders
from tests.telephony_setup import twilio_env
from tests.test_deployment import children, cmdline
from tests.test_nightscout import entries

ROOT = Path(__file__).resolve().parent.parent


def logged_json(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """Every captured record as the one JSON line Scout writes for it."""
    from scout.logs import JsonFormatter

    formatter = JsonFormatter()
    return [json.loads(formatter.format(record)) for record in caplog.records]


def calls_and_texts(store: SqliteStore, user_id: str) -> list[tuple[str, str, str]]:
    return sorted((e.kind, e.purpose, e.status) for e in store.user_log(user_id))


# One low through the console, which nobody can answer: the user's call, the ladder's calls
# to the three contacts (each unanswered in turn), and the three contacts' texts.
ONE_ALERT = sorted([("call", "alert", "sent"), *[("call", "ladder", "sent")] * 3, ("sms", "contacts", "sent"),
                    ("sms", "contacts", "sent"), ("whatsapp", "contacts", "sent")])


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


# --- the poller process killed mid-cycle ------------------------------------------------


def poller_processes(supervisor: int) -> list[int]:
    return [p for p in children(supervisor) if "spawn_main" in cmdline(p) and "resource_tracker" not in cmdline(p)]


@pytest.fixture
def supervisor_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **dev_env(tmp_path), "SCOUT_POLL_INTERVAL": "0.5", "SCOUT_RESTART_DELAY": "0.2"}


def test_a_poller_killed_mid_cycle_is_restarted_and_calls_each_user_once_for_the_episode(
    tmp_path: Path, threaded_httpserver: HTTPServer, supervisor_env: dict[str, str]
) -> None:
    store = SqliteStore(supervisor_env["SCOUT_DB"])
    in_fetch, release = threading.Event(), threading.Event()

    def held_low(_request: Request) -> Response:
        # the first poll of this site hangs until the test has killed the poller
        if not in_fetch.is_set():
            in_fetch.set()
            release.wait(20)
        return Response(json.dumps(entries(52)), content_type="application/json")

    threaded_httpserver.expect_request("/quick/api/v1/entries/sgv.json").respond_with_json(entries(54))
    threaded_httpserver.expect_request("/held/api/v1/entries/sgv.json").respond_with_handler(held_low)
    store.save_user(make_user(threaded_httpserver.url_for("/quick/"), id="quick", email="quick@example.com"))
    store.save_user(make_user(threaded_httpserver.url_for("/held/"), id="held", email="held@example.com"))

    log = (tmp_path / "supervisor.log").open("wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-c", "from scout.poller import supervisor_main; supervisor_main()"],
        cwd=ROOT, env=supervisor_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # mid-cycle: "quick" was called and its contacts texted, "held" is still being fetched
        wait_for(lambda: in_fetch.is_set() and len(store.user_log("quick")) == len(ONE_ALERT), 30, "the first cycle")
        [first] = poller_processes(supervisor.pid)
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        release.set()
        wait_for(lambda: [p for p in poller_processes(supervisor.pid) if p != first], 60, "a new poller process")
        restarted_after = time.monotonic() - killed_at
        wait_for(lambda: len(store.user_log("held")) == len(ONE_ALERT), 30, "the restarted poller to alert 'held'")
        time.sleep(1.5)  # several more cycles of the restarted poller
    finally:
        supervisor.terminate()
        supervisor.wait(20)
        log.close()
    assert restarted_after < 60
    for user_id in ("quick", "held"):
        # one call for the episode, each contact called and texted once, everything sent: none twice,
        # none forgotten
        assert calls_and_texts(store, user_id) == ONE_ALERT, (tmp_path / "supervisor.log").read_text()[-3000:]


# --- the store unavailable for a cycle ----------------------------------------------------


@pytest.fixture
def low_site(httpserver: HTTPServer) -> HTTPServer:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(54, 62, 70))
    return httpserver


class WriteLock:
    """Another connection holding SQLite's write lock, as a stuck process would."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)

    def __enter__(self) -> WriteLock:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO leases (name, holder, expires_at) VALUES ('lock-test', 'x', 0)")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.db.execute("ROLLBACK")
        self.db.close()


@pytest.mark.parametrize("use_lease", [True, False], ids=["locked-at-the-lease", "locked-at-each-decision"])
def test_a_locked_store_fails_one_cycle_loudly_and_the_next_cycle_alerts_with_nothing_lost(
    config: Config, low_site: HTTPServer, caplog: pytest.LogCaptureFixture, use_lease: bool
) -> None:
    store = SqliteStore(config.db_path, timeout=0.2)
    store.save_user(make_user(low_site.url_for("/")))
    poller = Poller(config, store=store)
    caplog.set_level(logging.INFO)
    with WriteLock(config.db_path):
        failed = poller.run_cycle(use_lease=use_lease)
    assert failed.error  # reported in the cycle's summary and log line, not raised
    assert store.user_log("sub-ana") == []  # nothing half-done: no action recorded without its state
    cycle_lines = [line for line in logged_json(caplog) if line.get("event") == "cycle"]
    assert cycle_lines and "error" in cycle_lines[-1]

    recovered = poller.run_cycle(use_lease=use_lease)
    assert recovered.error == ""
    assert calls_and_texts(store, "sub-ana") == ONE_ALERT


@contextlib.contextmanager
def disk_full(db_path: str) -> Iterator[int]:
    """No file of this process may grow past the database's current size, as on a full disk.

    The tests run as root, for whom file permissions stop nothing; a file-size limit
    (RLIMIT_FSIZE) stops root too. SQLite in WAL mode appends every write to the -wal
    file, so once no file may grow past the largest of the database's files, every write
    fails (EFBIG, which SQLite reports as a disk I/O error). SIGXFSZ is ignored meanwhile,
    or the kernel would kill the process instead of failing the write. Both are put back
    whatever happens."""
    size = max(os.path.getsize(path) for path in (db_path, db_path + "-wal") if os.path.exists(path))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
        yield size
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


@pytest.mark.parametrize("use_lease", [True, False], ids=["full-at-the-lease", "full-at-each-decision"])
def test_a_full_disk_fails_one_cycle_loudly_and_the_next_cycle_alerts_with_nothing_lost(
    config: Config, low_site: HTTPServer, caplog: pytest.LogCaptureFixture, use_lease: bool
) -> None:
    store = SqliteStore(config.db_path)
    store.save_user(make_user(low_site.url_for("/")))
    poller = Poller(config, store=store)
    caplog.set_level(logging.INFO)
    limit_before, handler_before = resource.getrlimit(resource.RLIMIT_FSIZE), signal.getsignal(signal.SIGXFSZ)
    # only the cycle runs under the limit: pytest's own capture files must stay writable
    with disk_full(config.db_path) as full_at:
        failed = poller.run_cycle(use_lease=use_lease)
        wal_after = os.path.getsize(config.db_path + "-wal")
    assert resource.getrlimit(resource.RLIMIT_FSIZE) == limit_before
    assert signal.getsignal(signal.SIGXFSZ) == handler_before
    assert wal_after <= full_at  # the limit held: nothing was written past it
    assert "could not be written" in failed.error and "disk" in failed.error, failed.error  # reported, not raised
    assert store.user_log("sub-ana") == []  # nothing half-done: no action recorded without its state
    assert store.get_state("sub-ana") == (AlertState(), 0)  # nor a state without its actions
    cycle_lines = [line for line in logged_json(caplog) if line.get("event") == "cycle"]
    assert cycle_lines and "disk" in cycle_lines[-1]["error"]

    recovered = poller.run_cycle(use_lease=use_lease)
    assert recovered.error == ""
    assert calls_and_texts(store, "sub-ana") == ONE_ALERT
    poller.run_cycle(use_lease=use_lease)
    assert len(store.user_log("sub-ana")) == len(ONE_ALERT)  # and the cycle after sends nothing again
    poller.close()


# --- the telephony provider down ----------------------------------------------------------


def test_texts_that_fail_while_the_provider_is_down_are_kept_and_sent_once_when_it_is_back(
    tmp_path: Path, low_site: HTTPServer, fake: FakeProviders
) -> None:
    config = load_config(twilio_env(tmp_path, fake))
    store = SqliteStore(config.db_path)
    store.save_user(make_user(low_site.url_for("/")))
    clock = [time.time()]
    poller = Poller(config, store=store, clock=lambda: clock[0])
    # the engine's parameters: a 2-second call window and message budget, short backoffs
    poller.engine.call_window, poller.engine.message_budget = 2.0, 2.0
    poller.engine.sleep = lambda seconds: time.sleep(min(seconds, 0.2))
    fake.fail("twilio.calls", 503, times=None)
    fake.fail("twilio.messages", 503, times=None)
    down = poller.run_cycle()
    log = {e.purpose + ":" + e.recipient: e for e in store.user_log("sub-ana")}
    # the call was retried until its window passed, never taken for a refusal: the contacts
    # are due at once, told that Scout could not reach Ana; their texts failed too, and are
    # kept in the log for the next cycle
    assert log["alert:+14155552671"].status == "expired"
    assert len([r for r in fake.received("twilio.calls") if r.status == 503]) >= 2
    assert sorted(e.status for e in log.values() if e.purpose == "contacts") == ["failed", "failed", "failed"]
    assert all("could not reach Ana by phone" in e.body for e in log.values() if e.purpose == "contacts")
    # Ana's call and the ladder's three could not be placed; the texts failed
    assert all(e.status == "expired" for e in log.values() if e.purpose == "ladder")
    assert down.counts["messages"] == 0 and down.counts["failed_sends"] == 4 + 3

    fake.failures.clear()
    clock[0] += 60
    back = poller.run_cycle()
    clock[0] += 60
    poller.run_cycle()
    texts = fake.answered("twilio.messages")
    assert sorted(r.field("To").removeprefix("whatsapp:") for r in texts if r.status < 300) == [
        "+14155552672", "+14155552673", "+14155552674"]  # each once, none dropped, none twice
    assert back.retried == 3
    assert sorted(e.status for e in store.user_log("sub-ana") if e.purpose == "contacts") == ["sent", "sent", "sent"]


# --- a cycle that overruns its interval ---------------------------------------------------


class TimedPoller(Poller):
    """A real Poller that notes when each of its cycles ran."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spans: list[tuple[float, float]] = []

    def run_cycle(self, use_lease: bool = True) -> CycleSummary:
        started = time.monotonic()
        summary = super().run_cycle(use_lease)
        self.spans.append((started, time.monotonic()))
        return summary


def test_a_cycle_longer_than_the_interval_delays_the_next_one_instead_of_overlapping_it(
    tmp_path: Path, threaded_httpserver: HTTPServer
) -> None:
    def slow_site(_request: Request) -> Response:
        time.sleep(0.6)
        return Response(json.dumps(entries(110)), content_type="application/json")

    threaded_httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_handler(slow_site)
    config = load_config(dev_env(tmp_path, SCOUT_POLL_INTERVAL="0.1"))
    store = SqliteStore(config.db_path)
    store.save_user(make_user(threaded_httpserver.url_for("/")))
    poller = TimedPoller(config, store=store)
    stop = threading.Event()
    runner = threading.Thread(target=run_forever, args=(config, stop, poller))
    runner.start()
    wait_for(lambda: len(poller.spans) >= 3, 30, "three cycles")
    stop.set()
    runner.join(30)
    spans = sorted(poller.spans)
    assert all(end - start >= 0.5 for start, end in spans)  # each one overran the 0.1 s interval
    assert all(next_start >= end for (_, end), (next_start, _) in itertools.pairwise(spans))


# --- the clock stepping back --------------------------------------------------------------


def test_a_clock_stepping_back_an_hour_neither_repeats_the_call_nor_holds_the_next_one_for_an_hour(
    config: Config, store: SqliteStore, low_site: HTTPServer
) -> None:
    store.save_user(make_user(low_site.url_for("/")))
    clock = [time.time()]
    poller = Poller(config, store=store, clock=lambda: clock[0])

    def calls() -> int:
        return [e.purpose for e in store.user_log("sub-ana")].count("alert")

    def texts() -> int:
        return [e.purpose for e in store.user_log("sub-ana")].count("contacts")

    poller.run_cycle()
    assert (calls(), texts()) == (1, 3)
    clock[0] -= 3600  # the machine's time steps back an hour
    poller.run_cycle()
    assert (calls(), texts()) == (1, 3)  # the cooldown is not re-fired by the jump
    clock[0] += 60
    poller.run_cycle()
    assert calls() == 1  # nor does it fire early: 60 s after the jump is inside WAIT_AFTER_CALL
    clock[0] += 61
    poller.run_cycle()
    assert calls() == 2  # 121 s after the jump, not an hour: the next call comes on time
    assert texts() == 3  # contacts are texted again only after the 15-minute repeat limit


# --- observability ------------------------------------------------------------------------


def test_each_cycle_and_each_action_log_one_json_line(
    config: Config, store: SqliteStore, low_site: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    store.save_user(make_user(low_site.url_for("/")))
    store.save_user(make_user("http://127.0.0.1:9/", id="down", email="down@example.com"))
    caplog.set_level(logging.INFO)
    Poller(config, store=store).run_cycle()
    lines = logged_json(caplog)
    [cycle] = [line for line in lines if line.get("event") == "cycle"]
    assert cycle["users"] == 2 and cycle["ok"] == 1 and cycle["failed"] == {"unreachable": 1}
    assert cycle["calls"] == 4 and cycle["messages"] == 3 and cycle["duration_s"] >= 0
    actions = [line for line in lines if line.get("event") == "action"]
    assert sorted(a["stage"] for a in actions) == ["recorded"] * len(ONE_ALERT) + ["sent"] * len(ONE_ALERT)
    for action in actions:
        assert {"user", "key", "kind", "purpose", "to"} <= action.keys()
