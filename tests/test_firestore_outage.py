"""Firestore unavailable for a cycle (issue 6): the cycle fails in bounded time and says so,
and the first cycle after Firestore is back alerts the low user once, with nothing lost.

The emulator keeps its data in memory, so it is never killed. Two outages are simulated:
- unreachable: a TCP proxy between Scout and the emulator stops, refusing new connections
  and dropping the open ones, as a network partition or a Firestore outage would;
- hung: a dedicated emulator is frozen with SIGSTOP, so connections stay open and nothing
  answers, as a hung backend would, then resumed with SIGCONT.
Scout's requests are given a 1-second limit (SCOUT_FIRESTORE_TIMEOUT) to keep the tests fast.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from models import AlertState, StoreUnavailable
from scout.config import Config, load_config
from scout.poller import CycleSummary, Poller
from scout.store.firestore import FirestoreStore
from tests.conftest import make_user
from tests.firestore_fixtures import firestore_env, start_emulator, stop_emulator
from tests.test_nightscout import entries

pytestmark = pytest.mark.emulator

REQUEST_TIMEOUT = 1.0  # SCOUT_FIRESTORE_TIMEOUT for these tests
# a failed cycle makes at most two requests to Firestore before it gives up (the lease, or a
# user's alert state and the cycle record), each given up after REQUEST_TIMEOUT
FAILED_CYCLE_BOUND = 2 * REQUEST_TIMEOUT + 2.0
RECONNECT_WAIT = 15.0  # gRPC reconnects with a backoff: a few seconds after a short outage
# the console's call goes unanswered: the contacts are texted, and the ladder calls each in turn
ONE_ALERT = sorted([("call", "alert", "sent"), *[("call", "ladder", "sent")] * 3, ("sms", "contacts", "sent"),
                    ("sms", "contacts", "sent"), ("whatsapp", "contacts", "sent")])


class TcpProxy:
    """Forwards 127.0.0.1:port to the target, until stopped. Stopped, it refuses new
    connections (nothing listens on the port) and has dropped every open one; started
    again, it listens on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listening: threading.Event | None = None
        self.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)  # the accept loop checks for stop() this often
        self.port = listener.getsockname()[1]
        self._listening = listening = threading.Event()
        listening.set()
        self._spawn(self._accept, listener, listening)

    def stop(self) -> None:
        """Refuse connections from now on and drop the open ones."""
        listening, self._listening = self._listening, None
        assert listening is not None, "the proxy is already stopped"
        accepting = self._threads[0]
        with self._lock:  # a connection being set up sees this and closes at once
            listening.clear()
        accepting.join(5)  # no new connections after this
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        assert not any(t.is_alive() for t in self._threads), "a proxy thread did not stop"
        self._threads = []

    def close(self) -> None:
        if self._listening is not None:
            self.stop()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="tcp-proxy")
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket, listening: threading.Event) -> None:
        with listener:  # closed when stopped: from then on connections are refused
            while listening.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                self._spawn(self._forward, client, listening)

    def _forward(self, client: socket.socket, listening: threading.Event) -> None:
        with client:
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                return
            with upstream:
                upstream.settimeout(None)
                with self._lock:
                    if not listening.is_set():
                        return  # stopped meanwhile: dropped
                    self._open |= {client, upstream}
                back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
                back.start()
                self._pipe(client, upstream)
                back.join()
                with self._lock:
                    self._open -= {client, upstream}

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


def store_at(host: str, tmp_path: Path) -> tuple[Config, FirestoreStore]:
    """A poller's config and a FirestoreStore whose client talks to `host`. The Firestore
    client takes the emulator's address from the environment when it is made, so the
    environment points there only while it is made."""
    config = load_config(firestore_env(tmp_path, host, SCOUT_FIRESTORE_TIMEOUT=str(REQUEST_TIMEOUT)))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FIRESTORE_EMULATOR_HOST", host)
        store = FirestoreStore.from_config(config)
        assert store.timeout == REQUEST_TIMEOUT
        assert store.db is not None
    return config, store


def answers(store: FirestoreStore) -> bool:
    try:
        store.last_cycle()
        return True
    except StoreUnavailable:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def calls_and_texts(store: FirestoreStore, user_id: str) -> list[tuple[str, str, str]]:
    return sorted((e.kind, e.purpose, e.status) for e in store.user_log(user_id))


def low_site(httpserver: HTTPServer, on_fetch: Callable[[], None] | None = None) -> str:
    """A Nightscout reporting a low; `on_fetch` runs once, when the first poll arrives."""
    pending = [on_fetch] if on_fetch else []

    def low(_request: Request) -> Response:
        while pending:
            pending.pop()()
        return Response(json.dumps(entries(54, 62, 70)), content_type="application/json")

    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_handler(low)
    return httpserver.url_for("/")


def timed_cycle(poller: Poller) -> tuple[CycleSummary, float]:
    started = time.monotonic()
    summary = poller.run_cycle()  # never raises: that is part of what is tested
    return summary, time.monotonic() - started


def check_failed_cycle(summary: CycleSummary, took: float, caplog: pytest.LogCaptureFixture,
                       observer: FirestoreStore) -> None:
    assert took < FAILED_CYCLE_BOUND, f"the cycle took {took:.1f} s: a Firestore request was not bounded"
    assert summary.error.startswith("Firestore could not"), summary.error
    assert "SCOUT_FIRESTORE_TIMEOUT" in summary.error  # says what to check and what Scout does next
    cycle_lines = [fields for r in caplog.records if (fields := getattr(r, "fields", {})).get("event") == "cycle"]
    assert cycle_lines and cycle_lines[-1]["error"] == summary.error
    assert any(r.levelno == logging.ERROR and r.getMessage().startswith("cycle failed") for r in caplog.records)
    # nothing half-done: no action recorded, and no state without its actions
    assert observer.user_log("sub-ana") == []
    assert observer.get_state("sub-ana") == (AlertState(), 0)


def check_recovery(poller: Poller, observer: FirestoreStore) -> None:
    recovered = poller.run_cycle()
    assert recovered.error == ""
    assert recovered.counts["calls"] == 4 and recovered.counts["messages"] == 3
    assert calls_and_texts(observer, "sub-ana") == ONE_ALERT
    again = poller.run_cycle()
    assert again.error == "" and again.counts["calls"] == again.counts["messages"] == 0
    assert calls_and_texts(observer, "sub-ana") == ONE_ALERT  # none twice


# --- unreachable: the proxy stops ---------------------------------------------------------


@pytest.fixture
def proxy(firestore_emulator: str) -> Iterator[TcpProxy]:
    host, port = firestore_emulator.rsplit(":", 1)
    tcp_proxy = TcpProxy((host, int(port)))
    yield tcp_proxy
    tcp_proxy.close()


@pytest.mark.parametrize("when", ["at-the-lease", "mid-cycle"])
def test_firestore_unreachable_fails_one_cycle_in_bounded_time_and_the_next_alerts_once(
    tmp_path: Path, firestore_store: FirestoreStore, proxy: TcpProxy, httpserver: HTTPServer,
    caplog: pytest.LogCaptureFixture, when: str
) -> None:
    """`firestore_store` talks to the emulator directly: it sets the scene and checks the result."""
    config, store = store_at(proxy.host, tmp_path)
    # mid-cycle: the lease and the user list were read, then Firestore goes while the site is read
    site = low_site(httpserver, on_fetch=proxy.stop if when == "mid-cycle" else None)
    firestore_store.save_user(make_user(site))
    poller = Poller(config, store=store)
    try:
        caplog.set_level(logging.INFO)
        if when == "at-the-lease":
            proxy.stop()
        failed, took = timed_cycle(poller)
        check_failed_cycle(failed, took, caplog, firestore_store)
        if when == "mid-cycle":
            assert [r.reason for r in failed.results] == ["error"]  # the user's poll failed on the store

        proxy.start()
        wait_for(lambda: answers(store), RECONNECT_WAIT, "Scout's Firestore client to reconnect through the proxy")
        check_recovery(poller, firestore_store)
    finally:
        poller.close()
        store.close()


# --- hung: the emulator frozen ------------------------------------------------------------


@contextlib.contextmanager
def dedicated_emulator(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """An emulator of this test's own (the session's must not be frozen): host and pid."""
    process, port = start_emulator(tmp_path / "frozen-emulator.log")
    try:
        yield f"127.0.0.1:{port}", process.pid
    finally:
        os.kill(process.pid, signal.SIGCONT)  # a stopped process would not act on SIGTERM
        stop_emulator(process)


@pytest.mark.parametrize("when", ["at-the-lease", "mid-cycle"])
def test_firestore_hung_fails_one_cycle_in_bounded_time_and_the_next_alerts_once(
    tmp_path: Path, httpserver: HTTPServer, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    with dedicated_emulator(tmp_path) as (host, pid), contextlib.ExitStack() as cleanup:
        config, store = store_at(host, tmp_path)
        cleanup.callback(store.close)
        poller = Poller(config, store=store)
        cleanup.callback(poller.close)
        frozen = threading.Event()

        def freeze() -> None:
            os.kill(pid, signal.SIGSTOP)
            frozen.set()

        def thaw() -> None:
            if frozen.is_set():
                os.kill(pid, signal.SIGCONT)
                frozen.clear()

        cleanup.callback(thaw)  # first of all, whatever happens
        store.save_user(make_user(low_site(httpserver, on_fetch=freeze if when == "mid-cycle" else None)))
        caplog.set_level(logging.INFO)
        if when == "at-the-lease":
            freeze()
        failed, took = timed_cycle(poller)
        assert frozen.is_set()
        thaw()
        check_failed_cycle(failed, took, caplog, store)
        if when == "mid-cycle":
            assert [r.reason for r in failed.results] == ["error"]

        wait_for(lambda: answers(store), RECONNECT_WAIT, "the resumed emulator to answer")
        check_recovery(poller, store)
