"""One poller acts at a time across instances: two pollers on one store (SQLite and the
Firestore emulator), the lease holder killed, the standby taking over."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from scout.config import Config
from scout.poller import LEASE_TTL, Poller
from tests.conftest import make_user
from tests.firestore_fixtures import second_handle
from tests.test_nightscout import entries

ROOT = Path(__file__).resolve().parent.parent
CYCLE = 60.0


class Clock:
    """The pollers' shared clock, moved a cycle at a time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def next_cycle(self) -> None:
        self.now += CYCLE


@pytest.fixture
def low_user(each_store: Any, httpserver: HTTPServer) -> Any:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(54, 62, 70))
    each_store.save_user(make_user(httpserver.url_for("/")))
    return each_store


@pytest.fixture
def pollers(config: Config, low_user: Any) -> Iterator[tuple[Poller, Poller, Clock]]:
    clock = Clock(time.time())
    first = Poller(config, store=low_user, clock=clock)
    second = Poller(config, store=second_handle(low_user), clock=clock)
    yield first, second, clock
    for poller in (first, second):
        poller.close()
    second.store.close()


def calls(store: Any) -> int:
    return [e.purpose for e in store.user_log("sub-ana")].count("alert")


def test_only_the_lease_holder_acts(pollers: tuple[Poller, Poller, Clock], low_user: Any) -> None:
    holder, standby, clock = pollers
    for _cycle in range(3):
        assert holder.run_cycle().acted
        assert not standby.run_cycle().acted
        clock.next_cycle()
    # one call, then WAIT_AFTER_CALL (120 s) later a second: all from the holder
    assert calls(low_user) == 2


def test_a_standby_takes_over_within_two_cycles_when_the_holder_stops_renewing(
    pollers: tuple[Poller, Poller, Clock], low_user: Any
) -> None:
    holder, standby, clock = pollers
    assert holder.run_cycle().acted
    # the holder dies now: it never runs another cycle and never releases the lease
    missed = 0
    while True:
        clock.next_cycle()
        if standby.run_cycle().acted:
            break
        missed += 1
        assert missed <= 1, "the standby did not take over within two cycles"
    assert missed == 1  # the lease (110 s) outlived one of the holder's cycles, no more


def test_a_poller_that_lost_its_lease_stops_acting_at_once(
    pollers: tuple[Poller, Poller, Clock], low_user: Any
) -> None:
    holder, standby, clock = pollers
    assert holder.run_cycle().acted
    clock.now += LEASE_TTL + 1  # the holder stalled longer than its lease
    assert standby.run_cycle().acted
    before = calls(low_user)
    clock.now += 1  # the stalled holder wakes up for its next cycle
    summary = holder.run_cycle()
    assert not summary.acted and summary.results == []
    assert calls(low_user) == before


def test_a_released_lease_lets_the_standby_act_in_its_next_cycle(
    pollers: tuple[Poller, Poller, Clock], low_user: Any
) -> None:
    holder, standby, clock = pollers
    assert holder.run_cycle().acted
    holder.release()  # a clean shutdown (SIGTERM) releases the lease
    clock.next_cycle()
    assert standby.run_cycle().acted


CHILD_POLLER = """
import sys, time
from scout.config import load_config
from scout.poller import Poller
summary = Poller(load_config()).run_cycle()
print("acted" if summary.acted else "standby", flush=True)
time.sleep(600)
"""


def first_word(stdout: Any) -> bytes:
    """The child's own answer: the first line that is not a JSON log line (its poller
    processes log to the same standard output)."""
    for line in stdout:
        if not line.startswith(b"{"):
            return bytes(line.strip())
    return b""


def child_env(store: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "FIREBASE_", "GOOGLE_"))}
    env.update(SCOUT_DEV="1", SECRET_KEY="x", PYTHONPATH=str(ROOT))
    if hasattr(store, "project_id"):
        env.update(SCOUT_STORE="firestore", GOOGLE_CLOUD_PROJECT=store.project_id,
                   FIRESTORE_EMULATOR_HOST=os.environ["FIRESTORE_EMULATOR_HOST"])
    else:
        env.update(SCOUT_STORE="sqlite", SCOUT_DB=store.path)
    return env


def test_a_killed_poller_process_is_replaced_by_the_standby_within_two_cycles(
    config: Config, low_user: Any, tmp_path: Path
) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD_POLLER], cwd=tmp_path, stdout=subprocess.PIPE,
                             env=child_env(low_user))
    try:
        assert child.stdout is not None and first_word(child.stdout) == b"acted"
        assert calls(low_user) == 1
        clock = Clock(time.time())
        standby = Poller(config, store=second_handle(low_user), clock=clock)
        assert not standby.run_cycle().acted  # the child holds the lease
        child.kill()  # SIGKILL: no clean shutdown, the lease is not released
        child.wait(10)
        acted_after = None
        for cycle in range(1, 4):
            clock.next_cycle()
            if standby.run_cycle().acted:
                acted_after = cycle
                break
        standby.close()
        standby.store.close()
        assert acted_after is not None and acted_after <= 2  # at most one cycle missed
        assert calls(low_user) == 2  # the standby called: WAIT_AFTER_CALL had passed
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
