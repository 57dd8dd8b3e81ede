"""The poller's group commit: polls that change only a user's state (a new reading, nothing
to send) are written many users to a transaction, compare-and-set on the version each was
decided on, so that nothing another process wrote meanwhile is lost."""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
import threading
import time
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from models import AlertState, CallRecord, Contact, Episode, LogEntry, User
from scout.config import load_config
from scout.poller import Poller
from scout.store.sqlite import SqliteStore
from tests.conftest import dev_env, make_user


def hostile_state(rng: random.Random) -> AlertState:
    call = CallRecord(key="sub-ana:low-1:call:2", placed_at=rng.uniform(0, 2e9), outcome="unanswered",
                      detail="no-answer ✓", escalated=True, queued=rng.random() < 0.5)
    episode = Episode(id="low-1", kind="low", started_at=1.5, calls=2, last_call_at=None, call=call,
                      alerted=[["+14155552672", "sms"], ["+14155552673", "whatsapp"]], why="falling fast",
                      urgent=True)
    seen = [[f"id{n}", rng.uniform(0, 2e9), rng.choice([39, 401, 118.5, 3]), rng.uniform(0, 2e9), n % 2]
            for n in range(rng.randint(0, 15))]
    return AlertState(episode=episode if rng.random() < 0.7 else None, failed_polls=rng.randint(0, 90),
                      failing_since=None, last_failure="timeout", site=rng.choice(["", "slow", "failing"]),
                      watch=rng.random() < 0.5, seen=seen, last_arrival_at=rng.uniform(0, 2e9),
                      clock_skew_told=True, last_call_at=None)


def test_the_fast_as_dict_gives_exactly_what_dataclasses_asdict_gives_and_shares_no_list() -> None:
    rng = random.Random(11)
    for _ in range(200):
        state = hostile_state(rng)
        plain = state.as_dict()
        assert plain == dataclasses.asdict(state)
        assert json.dumps(plain, sort_keys=True) == json.dumps(dataclasses.asdict(state), sort_keys=True)
        assert AlertState.from_dict(json.loads(json.dumps(plain))) == state
        if state.seen:  # a change to the plain copy never reaches the state
            plain["seen"][0][0] = "changed"
            assert state.seen[0][0] != "changed"
        if state.episode is not None:
            plain["episode"]["alerted"][0][0] = "changed"
            assert state.episode.alerted[0][0] == "+14155552672"
    user = make_user(extra_contacts=(Contact("+14155552673", "whatsapp", "Bo"),))
    assert user.as_dict()["extra_contacts"] == [{"phone": "+14155552673", "channel": "whatsapp", "mode": "call",
                                                   "name": "Bo"}]
    assert User.from_dict(user.as_dict()) == user
    logged = LogEntry(key="k", user_id="u", kind="call", purpose="alert", recipient="+1", body="b", created_at=1.0)
    assert logged.as_dict() == dataclasses.asdict(logged)


def test_a_group_commit_writes_each_state_moves_each_version_and_skips_the_stale(tmp_path: Any) -> None:
    store = SqliteStore(str(tmp_path / "scout.sqlite3"))
    other = SqliteStore(str(tmp_path / "scout.sqlite3"))  # another process's handle on the same file
    try:
        assert store.commit("ana", AlertState(site="slow"), 0, [])
        assert store.commit("ben", AlertState(watch=True), 0, [])
        read = {user_id: (stored.state(), stored.version, stored.in_episode, stored.watch, stored.site)
                for user_id, stored in store.stored_states().items()}
        assert read == {"ana": (AlertState(site="slow"), 1, False, False, "slow"),
                        "ben": (AlertState(watch=True), 1, False, True, "")}
        assert set(store.stored_states({"ben", "never-polled"})) == {"ben"}
        assert other.commit("ben", AlertState(watch=True, clock_skew_told=True), 1, [])  # written meanwhile
        stale = store.commit_states([("ana", AlertState(site=""), 1), ("ben", AlertState(site="slow"), 1),
                                     ("cai", AlertState(failed_polls=1), 0), ("dee", AlertState(), 3)])
        assert stale == {"ben", "dee"}
        assert store.get_state("ana") == (AlertState(site=""), 2)
        assert store.get_state("ben") == (AlertState(watch=True, clock_skew_told=True), 2)  # kept, not overwritten
        assert store.get_state("cai") == (AlertState(failed_polls=1), 1)
        assert store.get_state("dee") == (AlertState(), 0)  # never stored: nothing written
        # the same user twice in one batch: the first is written, the second is stale
        assert store.commit_states([("ana", AlertState(watch=True), 2), ("ana", AlertState(site="failing"), 2)]) \
            == {"ana"}
        assert store.get_state("ana") == (AlertState(watch=True), 3)
        assert store.commit_states([]) == set()
        # more users than one query's parameters allow
        many = [(f"u{n:04d}", AlertState(failed_polls=n), 0) for n in range(1200)]
        random.Random(3).shuffle(many)
        assert store.commit_states(many) == set()
        assert {uid: s.state().failed_polls for uid, s in store.stored_states().items() if uid.startswith("u")} \
            == {f"u{n:04d}": n for n in range(1200)}
        assert store.stored_states({"cai"})["cai"].version == 1
        in_episode = hostile_state(random.Random(1))
        in_episode.episode = Episode(id="low-9", kind="low", started_at=1.0)
        assert store.commit("eve", in_episode, 0, [])
        eve = store.stored_states({"eve"})["eve"]
        assert (eve.in_episode, eve.state()) == (True, in_episode)
    finally:
        other.close()
        store.close()


def test_a_state_written_by_another_process_during_the_poll_is_kept_and_the_poll_decided_again(
    tmp_path: Any, threaded_httpserver: HTTPServer
) -> None:
    """Between the cycle's read of the states and the group commit, another process writes
    some users' states (as the web app does for a reply). Those users are decided again
    on what is stored: neither that write nor the poll's new readings are lost."""
    db_path = str(tmp_path / "scout.sqlite3")
    store = SqliteStore(db_path)
    web = SqliteStore(db_path)  # the web app's own handle
    names = [f"u{n:02d}" for n in range(30)]
    interfered = set(random.Random(5).sample(names, 10))
    arm = threading.Event()
    counter = itertools.count()
    started_ms = int(time.time() * 1000) - 5 * 60_000
    lock = threading.Lock()

    def answer(request: Request) -> Response:
        name = request.path.split("/")[1]
        if arm.is_set() and name in interfered:
            with lock:
                state, version = web.get_state(name)
                assert web.commit(name, dataclasses.replace(state, clock_skew_told=True), version, [])
        n = next(counter)  # new entries each request, a second apart: every poll changes the readings seen
        body = [{"_id": f"{name}-{n}-{i}", "type": "sgv", "sgv": 150, "date": started_ms + 1000 * n - 300_000 * i,
                 "direction": "Flat"} for i in range(3)]
        return Response(json.dumps(body), content_type="application/json")

    for name in names:
        store.save_user(make_user(threaded_httpserver.url_for(f"/{name}/"), id=name, email=f"{name}@example.com"))
    threaded_httpserver.expect_request(re.compile(r"^/[^/]+/api/v1/entries/sgv\.json$")).respond_with_handler(answer)
    poller = Poller(load_config(dev_env(tmp_path)), store=store)
    assert poller._state_writer is not None  # SQLite: the group commit is the path under test
    try:
        poller.run_cycle()
        before = {name: store.get_state(name) for name in names}
        assert all(version == 1 for _, version in before.values())
        arm.set()
        summary = poller.run_cycle()
        assert sorted(r.user_id for r in summary.results) == names and all(r.ok for r in summary.results)
        for name in names:
            state, version = store.get_state(name)
            new_keys = {record[0] for record in state.seen} - {record[0] for record in before[name][0].seen}
            assert len(new_keys) == 3, name  # the poll's new readings were recorded
            if name in interfered:
                assert state.clock_skew_told and version == 3, name  # the other write, then the poll's
            else:
                assert not state.clock_skew_told and version == 2, name
    finally:
        poller.close()
        web.close()
        store.close()


def test_a_partial_user_feed_holds_only_the_users_it_keeps_and_follows_their_changes(tmp_path: Any) -> None:
    store = SqliteStore(str(tmp_path / "scout.sqlite3"))
    try:
        for n in range(10):
            store.save_user(make_user(id=f"u{n}", email=f"u{n}@example.com"))
        feed = store.user_feed_of(lambda user_id: int(user_id[1:]) % 2 == 0)
        assert [u.id for u in feed.users()] == ["u0", "u2", "u4", "u6", "u8"]
        store.save_user(make_user(id="u4", email="u4@example.com", name="Renamed"))
        store.save_user(make_user(id="u12", email="u12@example.com"))
        store.save_user(make_user(id="u13", email="u13@example.com"))
        store.delete_user("u6")
        users = {u.id: u for u in feed.users()}
        assert sorted(users) == ["u0", "u12", "u2", "u4", "u8"] and users["u4"].name == "Renamed"
    finally:
        store.close()
