"""The poller: every minute at second :30, poll every user, decide and act.

One poller acts at a time across all instances, through a lease in the store. It
runs in its own process (started once per deployment by gunicorn.conf.py, restarted
by a small supervisor if it dies) or in the foreground with `flask poller`.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import schedule

from models import AlertState, CycleRecord, LogEntry, Store, StoreUnavailable, User, UserFeed
from scout.alerts import Rules
from scout.cloudtasks import ShardQueue
from scout.config import Config
from scout.dispatch import dispatch_cycle, shard_of
from scout.engine import Engine, UserResult
from scout.nightscout import fetch_readings_async, open_async_session
from scout.readings import PollResult
from scout.store import open_store
from scout.telephony import make_messenger
from scout.telephony.base import Messenger

log = logging.getLogger("scout.poller")

LEASE_NAME = "poller"
# The holder renews its lease at the start of every cycle. 110 s outlasts one renewal
# interval with 50 s to spare (a late start, clocks a little apart), and expires before
# the standby's second cycle after the holder's last renewal: a dead holder costs at
# most one missed cycle, and its standby acts within two minutes.
LEASE_TTL = 110.0
# Threads that record, and as many again that send (a send to a provider blocks for a few
# hundred ms). Only polls with something to record reach them; more threads only fight the
# fetching loop for the GIL (measured with `make bench`: 200 threads cost a second of CPU
# at 10,000 users).
DEFAULT_WORKERS = 64
# Nightscout requests in flight at once on the asyncio loop: enough that 5% hung sites
# (each holding a socket for the 10 s read timeout) leave room for everyone else.
DEFAULT_CONNECTIONS = 1000
RESOLVER_THREADS = 64  # name lookups run in threads; 10,000 hosts need more than asyncio's default
DEFAULT_RESTART_DELAY = 2.0  # seconds before the supervisor starts a dead poller again
HOLDER_VARIABLE = "SCOUT_POLLER_HOLDER"  # set by the supervisor for the poller processes it starts
RESERVED_FILES = 256  # file descriptors kept for SQLite, logs, provider calls and lookups


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection while the users are fetched; one full collection after.

    A cycle keeps tens of thousands of objects alive at once (every request in flight,
    every result), and CPython's automatic collector walks all of them again and again:
    measured with `make bench` at 10,000 users, 1.3 to 1.5 s of the poller's 5.5 s of CPU,
    on the core that fetches, mostly before the last user was decided. Reference counting
    still frees almost everything at once; what only the collector frees (reference
    cycles, such as a caught timeout and its traceback) is about 7 objects and 1 KB per
    user, freed by the one collection at the end (0.1 s at 10,000 users)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect()


# A user's result: settled on the loop, or recorded in a recording thread and then
# perhaps handed to a sending thread, whose own Future is then the result.
Outcome = Future["UserResult | Future[UserResult]"]


def settled(decision: Outcome) -> UserResult:
    """A user's result, once recorded and, if there was anything to send, sent."""
    result = decision.result()
    return result.result() if isinstance(result, Future) else result


def rules_from(config: Config) -> Rules:
    return Rules(wait_after_call=float(config.wait_after_call), failed_ping_limit=config.failed_ping_limit)


def allowed_connections(wanted: int) -> int:
    """How many sockets the poller may hold open: `wanted`, unless the open-files limit
    is lower and cannot be raised. Every connection to a hung site holds one socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - RESERVED_FILES))


@dataclass
class CycleSummary:
    started_at: float
    duration: float = 0.0
    acted: bool = True  # False when another instance holds the lease
    results: list[UserResult] = field(default_factory=list)
    retried: int = 0
    enqueued: int | None = None  # shards handed to Cloud Tasks (SCOUT_DISPATCH=cloudtasks)
    error: str = ""

    @property
    def counts(self) -> dict[str, Any]:
        failed = Counter(r.reason for r in self.results if not r.ok)
        return {
            "users": len(self.results),
            "ok": sum(r.ok for r in self.results),
            "failed": dict(sorted(failed.items())),
            "calls": sum(r.calls for r in self.results),
            "messages": sum(r.messages for r in self.results) + self.retried,
            "failed_sends": sum(r.failed_sends for r in self.results),
            "duration_s": round(self.duration, 3),
            **({"enqueued_shards": self.enqueued} if self.enqueued is not None else {}),
        }

    def log_line(self) -> str:
        fields_: dict[str, Any] = {"event": "cycle", "acted": self.acted, **self.counts}
        if self.error:
            fields_["error"] = self.error
        return json.dumps(fields_, sort_keys=True)


HISTORY_PRUNE_EVERY = 3600.0  # seconds between two deletions of old alert history


class Poller:
    def __init__(
        self,
        config: Config,
        store: Store | None = None,
        messenger: Messenger | None = None,
        clock: Callable[[], float] = time.time,
        workers: int | None = None,
    ) -> None:
        self.config = config
        self.store = store or open_store(config)
        self.workers = workers or int(config.get("SCOUT_POLL_WORKERS") or DEFAULT_WORKERS)
        self.connections = allowed_connections(int(config.get("SCOUT_POLL_CONNECTIONS") or DEFAULT_CONNECTIONS))
        self.engine = Engine(
            store=self.store,
            messenger=messenger or make_messenger(config),
            rules=rules_from(config),
            allow_private=config.dev,
            clock=clock,
        )
        self.clock = clock
        self._pruned_at = float("-inf")  # the history is pruned at the first cycle, then hourly
        # A supervised poller inherits its supervisor's holder name, so a poller restarted
        # after a crash renews its own lease at once instead of standing by until it expires.
        self.holder = config.get(HOLDER_VARIABLE) or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._feed: UserFeed | None = None
        self._shard_queue: ShardQueue | None = None
        # Recording and sending have threads of their own, so that a decision to record
        # never waits behind other users' sends (a send to a provider blocks for a few
        # hundred ms; with 500 users to alert at once, 64 threads are busy for seconds).
        self._recorders = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="record")
        self._senders = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="send")

    def users(self) -> list[User]:
        if self._feed is None:
            self._feed = self.store.user_feed()
        return [u for u in self._feed.users() if u.is_watchable]

    def holds_lease(self) -> bool:
        return self.store.acquire_lease(LEASE_NAME, self.holder, LEASE_TTL, self.clock())

    def run_cycle(self, use_lease: bool = True) -> CycleSummary:
        """One poll of every user. Never raises: a failure is logged and the next cycle
        starts afresh."""
        summary = CycleSummary(started_at=self.clock())
        try:
            if use_lease and not self.holds_lease():
                summary.acted = False
                log.info("another poller holds the lease; standing by")
                return summary
            summary.retried = self._retry_unsent()
            # `poll --once` (no lease) polls every user here, now, as the operator asked
            if self.config.dispatch == "cloudtasks" and use_lease:
                self._dispatch(summary)
            else:
                summary.results = self._poll_all(self.users())
            summary.duration = self.clock() - summary.started_at
            self.store.record_cycle(CycleRecord(self.clock(), summary.counts))
            self._prune_history()
        except StoreUnavailable as exc:
            summary.error = str(exc)
            log.error("cycle failed: %s; the next cycle will try again", exc)
        except Exception as exc:  # the poller must survive anything one cycle throws
            summary.error = f"{type(exc).__name__}: {exc}"
            log.exception("cycle failed unexpectedly; the next cycle will try again")
        summary.duration = self.clock() - summary.started_at
        log.info("%s", summary.log_line())
        return summary

    def _dispatch(self, summary: CycleSummary) -> None:
        """Hand the cycle's shards to Cloud Tasks instead of polling (scout.dispatch)."""
        if self._shard_queue is None:
            self._shard_queue = ShardQueue(self.config)
        shards = self.config.shards

        def poll_here(missed: set[int]) -> list[UserResult]:
            return self._poll_all([u for u in self.users() if shard_of(u.id, shards) in missed])

        dispatched = dispatch_cycle(self._shard_queue, summary.started_at, shards, poll_here)
        summary.enqueued = dispatched.enqueued + dispatched.already_there
        summary.results = dispatched.polled_here

    def _prune_history(self) -> None:
        """Once an hour, delete the alert history older than SCOUT_HISTORY_DAYS."""
        now = self.clock()
        if now - self._pruned_at < HISTORY_PRUNE_EVERY:
            return
        self._pruned_at = now
        deleted = self.store.delete_log_before(now - self.config.history_days * 86400)
        if deleted:
            log.info("deleted %d alert history entries older than %d days", deleted, self.config.history_days)

    def _retry_unsent(self) -> int:
        unsent: list[LogEntry] = self.store.unsent_log()
        return self.engine.retry_unsent(unsent) if unsent else 0

    def _poll_all(self, users: list[User]) -> list[UserResult]:
        """Fetch every user's readings concurrently; each user's decision is made as soon as
        that user's answer arrives, so a hung site delays nobody."""
        with collection_paused():
            return asyncio.run(self._poll_all_async(users))

    async def _poll_all_async(self, users: list[User]) -> list[UserResult]:
        loop = asyncio.get_running_loop()
        # asyncio.run shuts this pool down with the loop: a fresh one each cycle
        loop.set_default_executor(ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="resolve"))
        states = self._read_states()
        decisions: list[Outcome | None] = [None] * len(users)
        # A fixed set of fetchers, each taking the next user when its last one is done,
        # rather than a task per user queued on a semaphore: `connections` requests are in
        # flight at once either way, without 10,000 tasks made, scheduled and woken.
        # Every fetcher shares the one iterator; the loop runs one of them at a time.
        queue = iter(enumerate(users))

        async def fetcher(session: aiohttp.ClientSession) -> None:
            for index, user in queue:
                decisions[index] = await self._fetch_then_decide(user, session, states)

        async with open_async_session(self.connections, allow_private=self.engine.allow_private) as session:
            await asyncio.gather(*(fetcher(session) for _ in range(min(self.connections, len(users)))))
        return [settled(decision) for decision in decisions if decision is not None]

    def _read_states(self) -> dict[str, AlertState] | None:
        """All alert states in one read, when the store offers it (see SqliteStore.all_states)."""
        read_all = getattr(self.store, "all_states", None)
        return read_all() if read_all is not None else None

    async def _fetch_then_decide(self, user: User, session: aiohttp.ClientSession,
                                 states: dict[str, AlertState] | None) -> Outcome:
        """Fetch on the loop, then decide. A poll that changes nothing is settled right here
        on the state read at the start of the cycle (pure, no I/O); anything to record or
        send goes to the recording threads, which re-read the state before writing. The loop
        does not wait for them: a plain Future, not an asyncio one, keeps that cheap, and
        fewer hand-offs mean the loop rarely waits for the GIL behind busy threads."""
        started = self.clock()
        try:
            poll: PollResult = await fetch_readings_async(
                user, session, allow_private=self.engine.allow_private, timeout=self.engine.nightscout_timeout)
        except Exception as exc:  # a bug in reading one site never stops the others
            log.exception("fetch failed user=%s", user.id)
            failed: Outcome = Future()
            failed.set_result(UserResult(user.id, user.email, ok=False, reason="error", summary=f"error: {exc}"))
            return failed
        if states is not None:
            quiet = self._settle_quietly(user, poll, states.get(user.id) or AlertState(), started)
            if quiet is not None:
                done: Outcome = Future()
                done.set_result(quiet)
                return done
        return self._recorders.submit(self._record_one, user, poll, started)

    def _settle_quietly(self, user: User, poll: PollResult, state: AlertState, started: float) -> UserResult | None:
        try:
            result = self.engine.decide_without_writing(user, poll, state)
        except Exception:  # leave it to the full path, which reports the error
            return None
        if result is not None:
            result.elapsed = self.clock() - started
            self._log_poll(result)
        return result

    def _record_one(self, user: User, poll: PollResult, started: float) -> UserResult | Future[UserResult]:
        """Decide and record (in a recording thread); what is to be sent is handed to the
        sending threads, whose Future is then this user's result."""
        try:
            result, entries = self.engine.record_poll(user, poll)
        except Exception as exc:  # one broken user never stops the others
            return self._finish(self._failed(user, exc), started)
        if entries:
            return self._senders.submit(self._send_one, user, poll, result, entries, started)
        return self._finish(result, started)

    def _send_one(self, user: User, poll: PollResult, result: UserResult, entries: list[LogEntry],
                  started: float) -> UserResult:
        try:
            self.engine.deliver(user, entries, poll, result)
        except Exception as exc:  # recorded all the same: a later cycle sends what is left
            decided_at = result.decided_at
            result = self._failed(user, exc)
            result.decided_at = decided_at
        return self._finish(result, started)

    @staticmethod
    def _failed(user: User, exc: Exception) -> UserResult:
        log.exception("poll failed user=%s", user.id)
        return UserResult(user.id, user.email, ok=False, reason="error", summary=f"error: {exc}")

    def _finish(self, result: UserResult, started: float) -> UserResult:
        result.elapsed = self.clock() - started  # from the start of the fetch, not of the decision
        self._log_poll(result)
        return result

    @staticmethod
    def _log_poll(result: UserResult) -> None:
        log.info("poll user=%s ok=%s reason=%s calls=%d messages=%d elapsed=%.3f",
                 result.user_id, result.ok, result.reason or "-", result.calls, result.messages, result.elapsed)
        log.debug("poll user=%s summary=%s", result.user_id, result.summary)  # glucose values: DEBUG only

    def release(self) -> None:
        try:
            self.store.release_lease(LEASE_NAME, self.holder)
        except StoreUnavailable:
            pass

    def close(self) -> None:
        self._recorders.shutdown(wait=False, cancel_futures=True)
        self._senders.shutdown(wait=False, cancel_futures=True)
        if self._feed is not None:
            self._feed.close()
        if self._shard_queue is not None:
            self._shard_queue.close()


def poll_interval(config: Config) -> float | None:
    """SCOUT_POLL_INTERVAL seconds between cycle starts, for tests and drills; unset
    (production) means every minute at second :30."""
    raw = config.get("SCOUT_POLL_INTERVAL").strip()
    return float(raw) if raw else None


def run_forever(config: Config, stop: threading.Event | None = None, poller: Poller | None = None) -> None:
    """Run a cycle at second :30 of every minute until stopped (SIGTERM, SIGINT)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    poller = poller or Poller(config)
    parent = os.getppid()
    interval = poll_interval(config)
    # Cycles run one at a time in this thread: a cycle that overruns the minute delays the
    # next one instead of overlapping it.
    scheduler = schedule.Scheduler()
    scheduler.every().minute.at(":30").do(poller.run_cycle)
    next_drill = time.monotonic()  # SCOUT_POLL_INTERVAL: seconds between cycle starts (drills)
    when = f"every {interval:g} s" if interval else "every minute at :30"
    log.info("poller started holder=%s; polling %s", poller.holder, when)
    try:
        while not stop.is_set():
            if interval:
                if time.monotonic() >= next_drill:
                    next_drill = time.monotonic() + interval
                    poller.run_cycle()
                idle: float | None = next_drill - time.monotonic()
            else:
                scheduler.run_pending()
                idle = scheduler.idle_seconds
            if os.getppid() != parent:
                log.warning("the process that started the poller is gone; stopping")
                break
            stop.wait(min(1.0, max(0.05, idle if idle is not None else 1.0)))
    finally:
        poller.release()
        poller.close()
        log.info("poller stopped")


# --- one poller per deployment ----------------------------------------------------


def _poller_main() -> None:
    from scout.config import load_config
    from scout.logs import configure_logging

    configure_logging()
    run_forever(load_config())


def _supervise(restart_delay: float) -> None:
    """Keep one poller process running; restart it if it dies."""
    context = multiprocessing.get_context("spawn")
    # spawned children inherit the environment: each poller this supervisor starts
    # holds the lease under the same name (see Poller.holder)
    os.environ.setdefault(HOLDER_VARIABLE, f"{os.uname().nodename}:supervisor-{os.getpid()}")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    parent = os.getppid()
    while not stopping.is_set() and os.getppid() == parent:
        child = context.Process(target=_poller_main, name="scout-poller", daemon=True)
        child.start()
        log.info("poller process started pid=%s", child.pid)
        while child.is_alive() and not stopping.is_set() and os.getppid() == parent:
            child.join(0.5)
        if child.is_alive():
            child.terminate()
            child.join(10)
            break
        log.error("poller process pid=%s died with exit code %s; restarting", child.pid, child.exitcode)
        stopping.wait(restart_delay)


def supervisor_main(restart_delay: float | None = None) -> None:
    """The supervisor's entry point. SCOUT_RESTART_DELAY (seconds, default 2) is the
    pause before a dead poller is started again."""
    from scout.logs import configure_logging

    configure_logging()
    if restart_delay is None:
        restart_delay = float(os.environ.get("SCOUT_RESTART_DELAY") or DEFAULT_RESTART_DELAY)
    _supervise(restart_delay)


def start_supervised_poller() -> subprocess.Popen[bytes]:
    """Start the poller supervisor from gunicorn's master, once per deployment.

    It is a plain subprocess rather than a fork of the master, so the gunicorn
    workers forked later inherit no handle on it."""
    return subprocess.Popen([sys.executable, "-c", "from scout.poller import supervisor_main; supervisor_main()"])
