"""The poll cycle end to end: a SQLite file, a real local Nightscout, console telephony."""
from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from models import Contact
from scout.config import Config
from scout.poller import Poller, collection_paused
from scout.store.sqlite import SqliteStore
from scout.telephony.base import CallPlaced
from scout.telephony.console import ConsoleMessenger
from tests.conftest import make_user
from tests.test_nightscout import entries


@pytest.fixture
def low_site(httpserver: HTTPServer) -> HTTPServer:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(54, 62, 70, direction="SingleDown"))
    return httpserver


def sent(store: SqliteStore, user_id: str = "sub-ana") -> list[tuple[str, str, str, str]]:
    return sorted((e.kind, e.purpose, e.recipient, e.status) for e in store.user_log(user_id))


def test_a_low_calls_once_and_the_unanswered_console_call_texts_every_contact(
    config: Config, store: SqliteStore, low_site: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    store.save_user(make_user(low_site.url_for("/api/v1/entries.json")))
    caplog.set_level(logging.DEBUG)  # the console shows what it says at DEBUG: values stay out of INFO logs
    summary = Poller(config, store=store).run_cycle()
    # nobody can answer the console: the ladder calls each contact in turn, each unanswered
    assert sent(store) == [
        ("call", "alert", "+14155552671", "sent"),
        ("call", "ladder", "+14155552672", "sent"),
        ("call", "ladder", "+14155552673", "sent"),
        ("call", "ladder", "+14155552674", "sent"),
        ("sms", "contacts", "+14155552672", "sent"),
        ("sms", "contacts", "+14155552674", "sent"),
        ("whatsapp", "contacts", "+14155552673", "sent"),
    ]
    assert summary.counts["calls"] == 4 and summary.counts["messages"] == 3
    call = next(e for e in store.user_log("sub-ana") if e.purpose == "alert")
    assert call.provider == "console" and call.provider_id.startswith("console-call-")
    assert call.outcome == "unanswered"
    assert "Ana, your blood glucose is 54 milligrams per deciliter and falling" in caplog.text
    assert store.last_cycle() is not None


def test_a_second_cycle_within_120_s_calls_nobody_even_after_a_restart(
    config: Config, store: SqliteStore, low_site: HTTPServer
) -> None:
    store.save_user(make_user(low_site.url_for("/")))
    Poller(config, store=store).run_cycle()
    before = sent(store)
    # a new poller on the same file, as after a restart of the app
    restarted = Poller(config, store=SqliteStore(config.db_path))
    summary = restarted.run_cycle()
    assert sent(store) == before
    assert summary.counts["calls"] == 0 and summary.counts["messages"] == 0


def test_the_next_call_comes_after_wait_after_call(config: Config, store: SqliteStore, low_site: HTTPServer) -> None:
    store.save_user(make_user(low_site.url_for("/")))
    clock = [time.time()]
    poller = Poller(config, store=store, clock=lambda: clock[0])
    poller.run_cycle()
    clock[0] += 121
    poller.run_cycle()
    assert [e.purpose for e in store.user_log("sub-ana")].count("alert") == 2


HANG_S = 8.0


def test_one_hung_or_broken_site_delays_nobody_else(
    config: Config, store: SqliteStore, threaded_httpserver: HTTPServer
) -> None:
    httpserver = threaded_httpserver

    def hang(_request: Any) -> Any:
        time.sleep(HANG_S)

    httpserver.expect_request("/hung/api/v1/entries/sgv.json").respond_with_handler(hang)
    httpserver.expect_request("/html/api/v1/entries/sgv.json").respond_with_data("<html>", content_type="text/html")
    httpserver.expect_request("/low/api/v1/entries/sgv.json").respond_with_json(entries(54))
    store.save_user(make_user(httpserver.url_for("/hung/"), id="hung", email="hung@example.com"))
    store.save_user(make_user(httpserver.url_for("/html/"), id="html", email="html@example.com"))
    store.save_user(make_user("not a url", id="bad", email="bad@example.com"))
    store.save_user(make_user(httpserver.url_for("/low/"), id="low", email="low@example.com"))
    poller = Poller(config, store=store)
    poller.engine.nightscout_timeout = (1.0, 1.0)
    started = time.monotonic()
    summary = poller.run_cycle()
    by_user = {r.user_id: r for r in summary.results}
    assert [e.purpose for e in store.user_log("low")].count("alert") == 1
    assert by_user["low"].decided_at < by_user["hung"].decided_at  # not held up by the hung site
    assert by_user["hung"].reason == "timeout"
    assert by_user["html"].reason == "not_json"
    assert by_user["bad"].reason == "refused_url"
    assert summary.counts["failed"] == {"not_json": 1, "refused_url": 1, "timeout": 1}
    assert store.get_state("html")[0].failed_polls == 1
    # the hung request was given up at its 1 s timeout, not waited out: a margin of seconds
    # for a loaded machine, yet the cycle ends well before the site would have answered
    assert time.monotonic() - started < HANG_S - 2


def test_a_user_changed_on_the_page_is_polled_with_the_new_settings_next_cycle(
    config: Config, store: SqliteStore, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/steady/api/v1/entries/sgv.json").respond_with_json(entries(110))
    httpserver.expect_request("/low/api/v1/entries/sgv.json").respond_with_json(entries(54))
    store.save_user(make_user(httpserver.url_for("/steady/")))
    poller = Poller(config, store=store)
    poller.run_cycle()
    assert store.user_log("sub-ana") == []
    store.save_user(make_user(httpserver.url_for("/low/")))
    poller.run_cycle()
    assert [e.purpose for e in store.user_log("sub-ana")].count("alert") == 1


def test_users_without_a_nightscout_url_or_phone_are_not_polled(config: Config, store: SqliteStore) -> None:
    store.save_user(make_user("", id="new", email="new@example.com"))
    summary = Poller(config, store=store).run_cycle()
    assert summary.results == []


class HeldCalls(ConsoleMessenger):
    """The console, except that the first call it places waits until released, as a
    provider's API can take its time."""

    def __init__(self) -> None:
        self.placing = threading.Event()
        self.release = threading.Event()
        self.held_to = ""

    def place_call(self, to: str, speech: str, call_key: str) -> CallPlaced:
        if not self.placing.is_set():
            self.held_to = to
            self.placing.set()
            assert self.release.wait(10), "the held call was never released"
        return super().place_call(to, speech, call_key)


def test_a_decision_is_recorded_while_another_users_alert_is_still_being_sent(
    config: Config, store: SqliteStore, low_site: HTTPServer
) -> None:
    store.save_user(make_user(low_site.url_for("/"), id="ana", email="ana@example.com", phone="+14155550001"))
    store.save_user(make_user(low_site.url_for("/"), id="ben", email="ben@example.com", phone="+14155550002"))
    messenger = HeldCalls()
    poller = Poller(config, store=store, messenger=messenger, workers=1)  # one thread records, one sends
    with ThreadPoolExecutor(1) as background:
        cycle = background.submit(poller.run_cycle)
        try:
            assert messenger.placing.wait(10)
            held = "ana" if messenger.held_to == "+14155550001" else "ben"
            other = "ben" if held == "ana" else "ana"
            # the other user's call is decided and recorded, though the one sending thread is busy
            deadline = time.monotonic() + 5
            while not [e for e in store.user_log(other) if e.kind == "call"] and time.monotonic() < deadline:
                time.sleep(0.02)
            assert [(e.purpose, e.status) for e in store.user_log(other) if e.kind == "call"] == [("alert", "pending")]
        finally:
            messenger.release.set()
        summary = cycle.result(10)
    poller.close()
    # each user's call and the ladder's three (the console's calls all go unanswered)
    assert summary.error == "" and summary.counts["calls"] == 2 * 4 and summary.counts["messages"] == 6
    assert all(e.status == "sent" for user in ("ana", "ben") for e in store.user_log(user))


class Node:
    """Half of a reference cycle, as a failed request's exception and its traceback make."""

    def __init__(self) -> None:
        self.other: Node | None = None


def test_a_cycle_frees_its_reference_cycles_as_it_goes_and_leaves_older_objects_alone() -> None:
    thresholds = gc.get_threshold()
    assert gc.isenabled()
    with collection_paused():
        assert gc.isenabled() and gc.get_freeze_count() > 0  # what came before is not walked
        first, second = Node(), Node()
        first.other, second.other = second, first
        probe = weakref.ref(first)
        del first, second
        garbage = [[n] for n in range(100_000)]  # a cycle's worth of allocations
        assert probe() is None, "a reference cycle was kept until the end of the cycle"
        del garbage
    assert gc.isenabled() and gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds
    with pytest.raises(RuntimeError), collection_paused():
        raise RuntimeError("a cycle that fails")
    assert gc.isenabled() and gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds


def test_polls_running_at_once_in_one_process_leave_the_collector_as_they_found_it() -> None:
    """Two Cloud Tasks shards served at once by one web process: each poll pauses the
    collector on its own thread; the first out must not restore it under the other, nor the
    second restore the first's cycle settings for good."""
    thresholds = gc.get_threshold()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def first() -> None:
        with collection_paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with collection_paused():
            second_in.set()
            first_out.wait(10)
            seen["after the first left"] = (gc.get_freeze_count() > 0, gc.get_threshold() != thresholds)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen["after the first left"] == (True, True)  # still paused for the poll still running
    assert gc.isenabled() and gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds


class OrderedSends(HeldCalls):
    """HeldCalls that also notes every call and message in the order the provider got them."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def place_call(self, to: str, speech: str, call_key: str) -> CallPlaced:
        placed = super().place_call(to, speech, call_key)
        with self._lock:
            self.order.append(("call", to))
        return placed

    def send_message(self, to: str, channel: str, body: str) -> str:
        sent_id = super().send_message(to, channel, body)
        with self._lock:
            self.order.append((channel, to))
        return sent_id


@pytest.mark.parametrize("mode", ["text", "call"])
def test_every_waiting_users_call_is_placed_before_any_contact_is_texted(
    config: Config, store: SqliteStore, low_site: HTTPServer, mode: str
) -> None:
    # Five users low at once and one sending thread: the first call is held until every
    # user's call is recorded, so all five wait in the send queue together. The unanswered
    # console call of the first must not hold the thread while its contacts are texted:
    # the other four are called first, then every user's contacts (issue 11).
    # With "Text only" contacts the order is each user's call, then the texts; with "Call and
    # text" the ladder's calls to contacts come after every user's own call too.
    names = ["ana", "ben", "cy", "dee", "eve"]
    for n, name in enumerate(names):
        store.save_user(make_user(low_site.url_for("/"), id=name, email=f"{name}@example.com",
                                  phone=f"+1415555000{n}", emergency_contact=Contact(f"+1415555100{n}", mode=mode),
                                  extra_contacts=(Contact(f"+1415555200{n}", "whatsapp", mode=mode),
                                                  Contact(f"+1415555300{n}", mode=mode))))
    messenger = OrderedSends()
    poller = Poller(config, store=store, messenger=messenger, workers=1)
    with ThreadPoolExecutor(1) as background:
        cycle = background.submit(poller.run_cycle)
        try:
            assert messenger.placing.wait(10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                    any(e.kind == "call" for e in store.user_log(name)) for name in names):
                time.sleep(0.02)
        finally:
            messenger.release.set()
        summary = cycle.result(20)
    poller.close()
    ladder_calls = 15 if mode == "call" else 0  # console calls go unanswered: each user's 3 contacts
    assert summary.error == "" and summary.counts["calls"] == 5 + ladder_calls and summary.counts["messages"] == 15
    kinds = [kind for kind, _to in messenger.order]
    assert sorted(messenger.order[:5]) == [("call", f"+1415555000{n}") for n in range(5)], messenger.order
    assert sum(kind == "call" for kind in kinds) == 5 + ladder_calls
    assert len(kinds) == 20 + ladder_calls and all(e.status == "sent" for name in names for e in store.user_log(name))
    # each user's contacts heard after that user's own call, never before
    for name in names:
        call = next(e for e in store.user_log(name) if e.purpose == "alert")
        texts = [e for e in store.user_log(name) if e.purpose == "contacts"]
        assert len(texts) == 3 and all(t.created_at >= call.updated_at for t in texts)
