"""Risk first and both cores (issue 11): the order of a cycle comes from what the store says
about each user's last cycle, and the users are split over worker processes."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from scout.config import Config, ConfigError, load_config
from scout.poller import Poller, partition_of, shard_of
from scout.store.sqlite import SqliteStore
from tests.conftest import dev_env, make_user
from tests.firestore_fixtures import firestore_env
from tests.test_nightscout import entries


class Sites:
    """One local Nightscout per user (by path), each answering as it is told, and a
    record of the order in which the poller asked them."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.values: dict[str, tuple[int, ...]] = {}
        self.hung: set[str] = set()
        self.asked: list[str] = []
        self.lock = threading.Lock()
        server.expect_request(re.compile(r"^/[^/]+/api/v1/entries/sgv\.json$")).respond_with_handler(self.answer)

    def answer(self, request: Request) -> Response:
        name = request.path.split("/")[1]
        with self.lock:
            self.asked.append(name)
        if name in self.hung:
            time.sleep(2.5)  # past the poller's deadline in these tests (1 s + 1 s)
        return Response(json.dumps(entries(*self.values.get(name, (150, 150)))), content_type="application/json")

    def add(self, store: SqliteStore, name: str, *values: int) -> None:
        self.values[name] = values or (150, 150)
        store.save_user(make_user(self.server.url_for(f"/{name}/"), id=name, email=f"{name}@example.com"))

    def round(self) -> list[str]:
        with self.lock:
            asked, self.asked = self.asked, []
        return asked


@pytest.fixture
def sites(threaded_httpserver: HTTPServer) -> Sites:
    return Sites(threaded_httpserver)


def one_lane_config(tmp_path: Any, **extra: str) -> Config:
    # one socket per lane: the order the sites are asked in is the order of the lanes
    return load_config(dev_env(tmp_path, SCOUT_POLL_CONNECTIONS="1", SCOUT_POLL_SLOW_CONNECTIONS="1", **extra))


def test_users_near_a_threshold_or_falling_fast_are_polled_first_next_cycle_wherever_they_sort(
    tmp_path: Any, store: SqliteStore, sites: Sites
) -> None:
    for n in range(12):
        sites.add(store, f"a{n:02d}", 150, 150)  # steady, in range: sorted first by id
    sites.add(store, "y-falling", 130, 145)  # in range, but 15 mg/dL down in 5 minutes
    sites.add(store, "z-near", 84, 86)  # 14 mg/dL above the low threshold
    sites.add(store, "x-high", 230, 228)  # 10 under the high threshold
    poller = Poller(one_lane_config(tmp_path), store=store)
    poller.run_cycle()
    assert sorted(sites.round()) == sorted(sites.values)  # a first cycle with no history: everyone, once
    watched = {"y-falling", "z-near", "x-high"}
    assert {name for name in sites.values if store.get_state(name)[0].watch} == watched
    poller.run_cycle()
    asked = sites.round()
    assert set(asked[:3]) == watched, asked
    assert sorted(asked) == sorted(sites.values)


def test_a_user_in_an_alert_episode_is_polled_first_even_when_their_site_was_slow(
    tmp_path: Any, store: SqliteStore, sites: Sites
) -> None:
    for n in range(8):
        sites.add(store, f"a{n:02d}")
    sites.add(store, "z-low", 54, 60)
    poller = Poller(one_lane_config(tmp_path), store=store)
    poller.engine.nightscout_timeout = (1.0, 1.0)
    poller.run_cycle()
    assert [e.purpose for e in store.user_log("z-low")].count("alert") == 1
    sites.round()
    sites.values["z-low"] = (150, 150)  # back in range on a site that is now hung
    sites.hung.add("z-low")
    poller.run_cycle()
    assert sites.round()[0] == "z-low"
    sites.hung.clear()
    poller.run_cycle()  # after a failed poll the episode is still open: still first
    assert sites.round()[0] == "z-low"


def test_sites_that_hung_last_cycle_take_none_of_the_sockets_the_fast_sites_need(
    tmp_path: Any, store: SqliteStore, sites: Sites
) -> None:
    for name in ("a-hung", "b-hung", "c-hung"):  # first by id: today they would take the one socket
        sites.add(store, name)
        sites.hung.add(name)
    for n in range(6):
        sites.add(store, f"fast{n}")
    poller = Poller(one_lane_config(tmp_path), store=store)
    poller.engine.nightscout_timeout = (1.0, 1.0)
    poller.run_cycle()
    assert {store.get_state(f"{c}-hung")[0].site for c in "abc"} == {"failing"}
    # written once, at Scout's first poll of them (the readings seen, for freshness by arrival)
    assert all(store.get_state(f"fast{n}")[1] == 1 for n in range(6))
    summary = poller.run_cycle()
    decided = {r.user_id: r.decided_at for r in summary.results}
    assert max(decided[f"fast{n}"] for n in range(6)) < min(decided[f"{c}-hung"] for c in "abc")
    assert {r.reason for r in summary.results if r.user_id.endswith("-hung")} == {"timeout"}


def test_what_the_last_cycle_looked_like_is_written_only_when_it_changes(
    tmp_path: Any, store: SqliteStore, sites: Sites
) -> None:
    sites.add(store, "steady", 150, 150)
    sites.add(store, "near", 85, 88)
    poller = Poller(one_lane_config(tmp_path), store=store)
    poller.run_cycle()
    versions = {name: store.get_state(name)[1] for name in ("steady", "near")}
    # a healthy user in range is written once, at the first poll (the readings seen), then never
    # while nothing new arrives
    assert versions == {"steady": 1, "near": 1}
    poller.run_cycle()
    poller.run_cycle()
    assert {name: store.get_state(name)[1] for name in versions} == versions  # nothing new: no write
    sites.values["near"] = (150, 150)
    poller.run_cycle()
    state, version = store.get_state("near")
    assert (state.watch, state.site) == (False, "") and version > versions["near"]
    # a restarted poller (a new process) orders from the store, not from memory
    restarted = Poller(one_lane_config(tmp_path), store=SqliteStore(str(tmp_path / "scout.sqlite3")))
    restarted.run_cycle()
    assert store.get_state("near")[1] == version


def two_process_config(tmp_path: Any) -> Config:
    return load_config(dev_env(tmp_path, SCOUT_POLL_PROCESSES="2"))


def test_two_processes_poll_every_user_exactly_once_and_record_one_cycle(
    tmp_path: Any, store: SqliteStore, sites: Sites
) -> None:
    names = [f"u{n:02d}" for n in range(16)]
    for name in names:
        sites.add(store, name, *((55, 62) if name in ("u03", "u11") else (150, 150)))
    poller = Poller(two_process_config(tmp_path))  # its own store and messenger: workers open theirs
    try:
        summary = poller.run_cycle()
        assert summary.error == ""
        assert sorted(r.user_id for r in summary.results) == names
        assert sorted(sites.round()) == names
        assert [p["partition"] for p in summary.processes] == [0, 1]
        assert all(p["users"] > 0 for p in summary.processes)
        assert {p["pid"] for p in summary.processes} != {os.getpid()}  # a second process did poll
        for name in names:
            calls = [e for e in store.user_log(name) if e.purpose == "alert"]
            assert len(calls) == (1 if name in ("u03", "u11") else 0), name
        recorded = store.last_cycle()
        assert recorded is not None and recorded.summary["users"] == 16 and recorded.summary["processes"] == 2
        assert summary.counts["calls"] == 2 * 4  # each low user's call, and the ladder's three (console: unanswered)
    finally:
        poller.close()


def test_a_worker_killed_mid_cycle_loses_nobody_and_is_replaced(
    tmp_path: Any, store: SqliteStore, sites: Sites
) -> None:
    names = [f"u{n:02d}" for n in range(10)]
    for name in names:
        sites.add(store, name)
    poller = Poller(two_process_config(tmp_path))
    try:
        poller.run_cycle()
        sites.round()
        worker = poller._workers[1].process
        os.kill(worker.pid or 0, signal.SIGKILL)
        worker.join(10)
        summary = poller.run_cycle()
        assert sorted(r.user_id for r in summary.results) == names
        assert sorted(sites.round()) == names  # each once: the dead worker's users were polled here
        assert summary.processes[1].get("fallback") is True
        summary = poller.run_cycle()
        assert sorted(r.user_id for r in summary.results) == names
        assert "fallback" not in summary.processes[1] and summary.processes[1]["pid"] != worker.pid
    finally:
        poller.close()


def test_polling_one_shard_at_a_time_covers_every_user_once(tmp_path: Any, store: SqliteStore, sites: Sites) -> None:
    names = [f"u{n:02d}" for n in range(20)]
    for name in names:
        sites.add(store, name)
    poller = Poller(one_lane_config(tmp_path), store=store)
    polled = [r.user_id for shard in range(4) for r in poller.poll_users(shard=(shard, 4))]
    assert sorted(polled) == names
    assert sorted(sites.round()) == names
    assert {shard_of(name, 4) for name in names} == {0, 1, 2, 3}
    assert [r.user_id for r in poller.poll_users(["u07", "u13"])] in (["u07", "u13"], ["u13", "u07"])


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_process_count_that_is_not_a_whole_number_of_at_least_1_is_refused_with_its_name(
    tmp_path: Any, value: str
) -> None:
    with pytest.raises(ConfigError, match="SCOUT_POLL_PROCESSES"):
        load_config(dev_env(tmp_path, SCOUT_POLL_PROCESSES=value))


@pytest.mark.parametrize("value", ["lots", "0", "-5"])
def test_a_slow_lane_size_that_is_not_a_whole_number_of_at_least_1_stops_the_start(tmp_path: Any, value: str) -> None:
    with pytest.raises(ConfigError, match="SCOUT_POLL_SLOW_CONNECTIONS"):
        load_config(dev_env(tmp_path, SCOUT_POLL_SLOW_CONNECTIONS=value))


def test_a_body_announced_as_50_mb_is_refused_before_a_byte_of_it_is_read(tmp_path: Any, store: SqliteStore) -> None:
    # the site sends the head of a 50 MB answer, then nothing: reading any of the body
    # would wait for the deadline and end as a timeout
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\n\r\n[")
                held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        store.save_user(make_user(f"http://127.0.0.1:{port}/"))
        poller = Poller(one_lane_config(tmp_path), store=store)
        poller.engine.nightscout_timeout = (2.0, 2.0)
        summary = poller.run_cycle()
        assert summary.results[0].reason == "not_json"
        assert "far too large" in summary.results[0].summary
        assert store.get_state("sub-ana")[0].site == "failing"
    finally:
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.emulator
def test_on_firestore_each_process_opens_its_own_client_and_the_order_is_read_from_the_store(
    tmp_path: Any, firestore_emulator: str, firestore_store: Any, sites: Sites
) -> None:
    names = [f"u{n:02d}" for n in range(10)]
    for name in names:
        sites.add(firestore_store, name, *((84, 86) if name == "u09" else (150, 150)))
    config = load_config(firestore_env(tmp_path, firestore_emulator, SCOUT_POLL_PROCESSES="2",
                                       SCOUT_POLL_CONNECTIONS="1", SCOUT_POLL_SLOW_CONNECTIONS="1"))
    poller = Poller(config)  # the main process's client is made here, the worker's in the worker
    try:
        summary = poller.run_cycle()
        assert summary.error == "" and sorted(r.user_id for r in summary.results) == names
        assert len({p["pid"] for p in summary.processes}) == 2
        assert firestore_store.all_states()["u09"].watch is True
        # every user's state is written once, at the first poll (the readings seen)
        assert set(firestore_store.all_states()) == set(names)
        sites.round()
        summary = poller.run_cycle()
        assert sorted(r.user_id for r in summary.results) == names
        same_process = {name for name in names if partition_of(name, 2) == partition_of("u09", 2)}
        assert [name for name in sites.round() if name in same_process][0] == "u09"
    finally:
        poller.close()
