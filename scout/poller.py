"""The poller: every minute at second :30, poll every user, decide and act.

One poller acts at a time across all instances, through a lease in the store. It
runs in its own process (started once per deployment by gunicorn.conf.py, restarted
by a small supervisor if it dies) or in the foreground with `flask poller`.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import schedule

from models import AlertState, CycleRecord, LogEntry, Store, StoredState, StoreUnavailable, User, UserFeed
from scout.alerts import Rules
from scout.cloudtasks import ShardQueue, send_tasks_for
from scout.config import Config
from scout.dispatch import dispatch_cycle, shard_of
from scout.engine import Engine, UserResult
from scout.forecast import readings_wanted
from scout.heartbeat import write_heartbeat
from scout.nightscout import fetch_readings_async, open_async_session
from scout.pacing import SEND_THREADS, Pacers, SendQueue
from scout.readings import PollFailure, PollResult, Readings
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
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections during a cycle (default 700)
# Polls of fewer users leave the collector alone: the pause saves about 0.14 ms of CPU per
# user (measured at 10,000 users) and costs two full collections (see collection_paused)
GC_PAUSE_MIN_USERS = 1000
LAG_PROBE_S = 0.1
RISK_HEAD_START_S = 1.0  # the most the users at risk are waited for before anyone else is polled
SLOW_ANSWER_S = 1.0  # a site that takes longer than this to answer goes in the slow lane
# Ordering, not alerting: a value within this margin of a threshold, or falling at least
# this fast, puts the user among the first polled next cycle (alert rules are unchanged).
WATCH_MARGIN_MGDL = 20.0
FALLING_FAST_MGDL_PER_5_MIN = 10  # 2 mg/dL a minute: Dexcom's "SingleDown" and faster
FALLING_FAST_DIRECTIONS = frozenset({"SingleDown", "DoubleDown", "TripleDown"})
RESOLVER_THREADS = 64  # name lookups run in threads; 10,000 hosts need more than asyncio's default
HOLDER_VARIABLE = "SCOUT_POLLER_HOLDER"  # set by the supervisor for the poller processes it starts
WORKER_DEADLINE_S = 120.0  # a worker silent for this long is replaced and its users polled here
STATE_BATCH_MAX = 1000  # states written in one transaction at most (see StateWriter)
RESERVED_FILES = 256  # file descriptors kept for SQLite, logs, provider calls and lookups


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """While the users are fetched, the automatic garbage collector leaves alone what
    existed before the cycle, and runs less often; one full collection after.

    A cycle keeps tens of thousands of objects alive at once (every user, every state,
    every request in flight), and CPython's collector, left as it is, walks all of them
    again and again: measured with `make bench` at 10,000 users, 1.3 to 1.5 s of the
    poller's 5.5 s of CPU. Turning it off for the whole cycle cost memory instead: every
    timed-out, refused or reset request is a reference cycle (the exception's traceback
    holds the connection's whole object graph, tens of KB), and with a third of the sites
    failing, 50,000 users meant hundreds of MB held until the cycle's end. So the objects
    from before the cycle are frozen out of the collector's sight (gc.freeze), and the
    young ones are collected every GC_YOUNG_THRESHOLD allocations."""
    with _collection_lock:
        _collection_depth[0] += 1
        if _collection_depth[0] == 1:  # the first of polls running at once in this process
            _collection_saved[:] = [gc.isenabled(), gc.get_threshold()]
            # young generations only: a full collection here walked every user's objects
            # (0.3 s at 25,000 users a process) before the first user at risk was fetched,
            # and garbage frozen with the rest is collected at the cycle's end all the same
            gc.collect(1)
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *_collection_saved[1][1:])
    try:
        yield
    finally:
        with _collection_lock:
            _collection_depth[0] -= 1
            if _collection_depth[0] == 0:  # the last one out puts the collector back
                was_enabled, thresholds = _collection_saved
                gc.unfreeze()
                gc.set_threshold(*thresholds)
                if was_enabled:
                    gc.collect()
                return_freed_memory()


# glibc's malloc gives threads arenas of their own, up to 8 per core, and a free in one is
# given back to the system only from the top of its heap. A poller process has over a hundred
# threads (recording, sending, name lookups) that allocate; with 2 arenas, a trim after each
# poll and the partial user feed, each process started its second 50,000-user cycle 65-69 MB
# smaller (docs/performance.md).
M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
MALLOC_ARENAS = 2


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS malloc arenas in this process (glibc; nothing elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def return_freed_memory() -> None:
    """Give what the cycle freed back to the system (glibc's malloc_trim), so that the next
    cycle, and its peak, start from what the process really holds."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


# Polls can run at once in one process (two Cloud Tasks shards served by one web process,
# each on its own thread and event loop): the collector is paused by the first and put
# back by the last, never restored by one poll while another still runs.
_collection_lock = threading.Lock()
_collection_depth = [0]
_collection_saved: list[Any] = []


# A user's result when it was not settled on the loop: recorded in a recording thread
# and then perhaps handed to a sending thread, whose own Future is then the result.
Outcome = Future["UserResult | Future[UserResult]"]


class FollowUp(Future[Any]):
    """A user's result still waiting for what their call's known outcome set off (deciding
    again and texting the contacts), queued after every call waiting to be placed. Their
    call is placed: the users at risk's head start does not wait for it."""


def settled(decision: Outcome | UserResult) -> UserResult:
    """A user's result, once recorded and, if there was anything to send, sent (and what a
    call's outcome set off, done). Settled on the loop, it is the result itself: no Future
    to make for most users."""
    result: Any = decision
    while isinstance(result, Future):
        result = result.result()
    return result


def partition_of(user_id: str, processes: int) -> int:
    """Which of the poller's processes polls this user (0 is the main process). A hash of
    its own, independent of scout.dispatch.shard_of, so that the users of one Cloud Tasks
    shard still spread over every process."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, person=b"scout-part").digest()
    return int.from_bytes(digest, "big") % processes


@dataclass(frozen=True)
class Selection:
    """Which users a poll covers: all, these ids, or one shard. Plain data, so it crosses
    to the worker processes."""

    user_ids: frozenset[str] | None = None
    shard: tuple[int, int] | None = None  # (shard, shards)

    def matches(self, user_id: str) -> bool:
        if self.user_ids is not None and user_id not in self.user_ids:
            return False
        return self.shard is None or shard_of(user_id, self.shard[1]) == self.shard[0]


SLOW_LANE = frozenset({"slow", "failing"})


def observed_poll(user: User, poll: PollResult, seconds: float, previous: AlertState) -> dict[str, Any]:
    """What this poll tells the next cycle about the user: how their site answered, and
    whether they need watching (see order_by_risk). A failed poll keeps the last value's
    verdict: nothing new is known about their glucose. A site that answered fast is ""
    (the default), so a healthy user's state is never written at all."""
    if isinstance(poll, PollFailure):
        return {"site": "failing", "watch": previous.watch}
    # a slow site must answer in half the time to count as fast again: one quick answer
    # near the line does not move a user between lanes (and write their state) each minute
    slow = seconds > SLOW_ANSWER_S or (previous.site == "slow" and seconds > SLOW_ANSWER_S / 2)
    return {"site": "slow" if slow else "", "watch": needs_watching(user, poll, previous)}


def needs_watching(user: User, poll: Readings, previous: AlertState) -> bool:
    latest = poll.latest
    if latest is None:  # only CGM error codes: nothing new about the value
        return previous.watch
    # near either set of thresholds when the user has night ones: which is in force changes
    # with the hour, and ordering by risk needs no clock
    low = max(user.low_mgdl, user.night_low_mgdl) if user.night_thresholds else user.low_mgdl
    high = min(user.high_mgdl, user.night_high_mgdl) if user.night_thresholds else user.high_mgdl
    near = latest.mgdl <= low + WATCH_MARGIN_MGDL or latest.mgdl >= high - WATCH_MARGIN_MGDL
    delta = poll.delta
    falling = latest.direction in FALLING_FAST_DIRECTIONS or (delta is not None and delta <= -FALLING_FAST_MGDL_PER_5_MIN)
    return near or falling


StateMap = Mapping[str, AlertState] | Mapping[str, StoredState]


def last_cycle(state: AlertState | StoredState) -> tuple[bool, bool, str]:
    """(in an alert episode, watched, how the site answered), from a stored state."""
    if isinstance(state, StoredState):
        return state.in_episode, state.watch, state.site
    return state.episode is not None, state.watch, state.site


def is_at_risk(states: StateMap | None, user_id: str) -> bool:
    state = states.get(user_id) if states is not None else None
    if state is None:
        return False
    in_episode, watch, _site = last_cycle(state)
    return in_episode or watch


def order_by_risk(users: list[User], states: StateMap | None) -> tuple[list[User], list[User]]:
    """(main lane, slow lane), from what the store says about each user's last cycle.

    The main lane starts with the users at risk: in an alert episode, or whose last value
    was out of range, near a threshold or falling fast, whatever their site's speed. Then
    everyone whose site answered fast, or who was never polled. The slow lane holds the
    sites that were slow, hung or failing, so they cannot take the sockets fast sites need.
    Without stored states (a store that cannot read them all at once) everyone is in the
    main lane, in the store's order."""
    if states is None:
        return list(users), []
    at_risk: list[User] = []
    fast: list[User] = []
    slow: list[User] = []
    for user in users:
        state = states.get(user.id)
        if state is None:
            fast.append(user)
            continue
        in_episode, watch, site = last_cycle(state)
        if in_episode or watch:
            at_risk.append(user)
        elif site in SLOW_LANE:
            slow.append(user)
        else:
            fast.append(user)
    return at_risk + fast, slow


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
    retried: int = 0  # messages sent from earlier cycles' backlog
    retried_calls: int = 0  # calls sent from it (every call placed is counted)
    enqueued: int | None = None  # shards handed to Cloud Tasks (SCOUT_DISPATCH=cloudtasks)
    error: str = ""
    # one line per process that polled: partition, users, CPU seconds, peak RSS (MB)
    processes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, Any]:
        failed = Counter(r.reason for r in self.results if not r.ok)
        return {
            "users": len(self.results),
            "ok": sum(r.ok for r in self.results),
            "failed": dict(sorted(failed.items())),
            "calls": sum(r.calls for r in self.results) + self.retried_calls,
            "messages": sum(r.messages for r in self.results) + self.retried,
            "failed_sends": sum(r.failed_sends for r in self.results),
            "queued": sum(r.queued for r in self.results),  # handed to the Cloud Tasks send queues
            "duration_s": round(self.duration, 3),
            **({"enqueued_shards": self.enqueued} if self.enqueued is not None else {}),
            "processes": len(self.processes) or 1,
        }

    def log_fields(self) -> dict[str, Any]:
        """The cycle's figures, as fields of its log line (jsonPayload in Cloud Logging)."""
        fields_: dict[str, Any] = {"event": "cycle", "acted": self.acted, **self.counts}
        if self.error:
            fields_["error"] = self.error
        return fields_

    def log_line(self) -> str:
        return json.dumps(self.log_fields(), sort_keys=True)


HISTORY_PRUNE_EVERY = 3600.0  # seconds between two deletions of old alert history


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def process_report(partition: int, results: list[UserResult], cpu_before: float) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"partition": partition, "pid": os.getpid(), "users": len(results),
            "cpu_s": round(usage.ru_utime + usage.ru_stime - cpu_before, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}


def peak_rss_mb() -> float:
    """The most resident memory this process has had (VmHWM)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Poller:
    """Polls every user each cycle, risk first, on `processes` processes (this one and
    processes - 1 workers, each with its own event loop, store client and messenger).

    With a store, messenger or clock given (tests, the one-off `poll --once`), everything
    runs in this process unless `processes` says otherwise: the workers open their own
    store and messenger from the configuration, and a clock cannot cross processes."""

    def __init__(
        self,
        config: Config,
        store: Store | None = None,
        messenger: Messenger | None = None,
        clock: Callable[[], float] = time.time,
        workers: int | None = None,
        processes: int | None = None,
        partition: tuple[int, int] = (0, 1),
    ) -> None:
        self.config = config
        limit_malloc_arenas()  # before the poller's threads start
        own_parts = store is None and messenger is None and clock is time.time
        self.processes = max(1, processes or ((config.poll_processes or usable_cores()) if own_parts else 1))
        self.partition = partition if partition != (0, 1) else (0, self.processes)
        self.store = store or open_store(config)
        self.workers = workers or config.poll_workers
        main = config.poll_connections
        slow = config.poll_slow_connections
        allowed = allowed_connections(main + slow)
        # if the open-files limit cannot be raised far enough, the slow lane gives way first
        self.connections = max(1, min(main, allowed - 1)) if allowed > 1 else 1
        self.slow_connections = max(1, allowed - self.connections)
        self.engine = Engine(
            store=self.store,
            messenger=messenger or make_messenger(config),
            rules=rules_from(config),
            allow_private=config.dev,
            clock=clock,
            # each of the poller's processes sends its share of the provider's rate
            pacers=Pacers.for_rates(config.calls_per_second / self.processes,
                                    config.messages_per_second / self.processes),
            # with send queues, Cloud Tasks paces the sends across every instance; the pacers
            # above then pace only what this process sends itself (a queue that is down)
            send_tasks=send_tasks_for(config),
        )
        self.clock = clock
        self._pruned_at = float("-inf")  # the history is pruned at the first cycle, then hourly
        # A supervised poller inherits its supervisor's holder name, so a poller restarted
        # after a crash renews its own lease at once instead of standing by until it expires.
        self.holder = config.get(HOLDER_VARIABLE) or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._feed: UserFeed | None = None
        self._feed_is_partial = False  # the feed holds only this process's partition (see users)
        self._shard_queue: ShardQueue | None = None
        self._workers: dict[int, PartitionWorker] = {}
        # seconds, per thread: each poll running at once has its own loop (see _measure_loop_lag)
        self._lag = threading.local()
        self._feed_lock = threading.Lock()
        # Recording and sending have threads of their own, so that a decision to record
        # never waits behind other users' sends (a send to a provider blocks for a few
        # hundred ms; with 500 users to alert at once, 64 threads are busy for seconds).
        self._recorders = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="record")
        # Sends wait in one queue, most urgent first (see scout.pacing), and leave at the
        # provider's rate.
        self._send_queue = SendQueue(threads=min(self.workers, SEND_THREADS))
        # Polls that change only the state (a new reading, nothing to send: most polls of a
        # healthy user) are written many to a transaction, when the store can (SQLite).
        self._state_writer = (StateWriter(self._write_states) if hasattr(self.store, "commit_states")
                              and hasattr(self.store, "stored_states") else None)

    def users(self, selection: Selection = Selection(), partition: int | None = None) -> list[User]:
        """The watchable users of `selection` that `partition` polls (all when None).

        With several processes, each one's feed holds only its own partition's users, when
        the store can (SQLite): the users of another partition (a dead worker's, polled here
        this once) or of all are read afresh."""
        own, parts = self.partition
        with self._feed_lock:  # polls running at once in one process share one feed
            if self._feed is None:
                feed_of: Callable[[Callable[[str], bool]], UserFeed] | None = getattr(self.store, "user_feed_of", None)
                if parts > 1 and feed_of is not None:
                    self._feed, self._feed_is_partial = feed_of(lambda uid: partition_of(uid, parts) == own), True
                else:
                    self._feed = self.store.user_feed()
        source = self.store.list_users() if self._feed_is_partial and partition != own else self._feed.users()
        return [u for u in source
                if u.is_watchable and selection.matches(u.id)
                and (partition is None or parts == 1 or partition_of(u.id, parts) == partition)]

    def holds_lease(self) -> bool:
        return self.store.acquire_lease(LEASE_NAME, self.holder, LEASE_TTL, self.clock())

    def run_cycle(self, use_lease: bool = True) -> CycleSummary:
        """One poll of every user. Never raises: a failure is logged and the next cycle
        starts afresh."""
        summary = CycleSummary(started_at=self.clock())
        try:
            if use_lease and not self.holds_lease():
                summary.acted = False
                return summary
            summary.retried_calls, summary.retried = self._retry_unsent()
            # `poll --once` (no lease) polls every user here, now, as the operator asked
            if self.config.dispatch == "cloudtasks" and use_lease:
                self._dispatch(summary)
            else:
                summary.results, summary.processes = self._poll_everywhere(Selection())
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
        if summary.acted:
            log.log(logging.WARNING if summary.error else logging.INFO, "poll cycle %s",
                    "failed" if summary.error else "finished", extra={"fields": summary.log_fields()})
        else:
            log.info("another poller holds the lease; standing by", extra={"fields": summary.log_fields()})
        return summary

    def _dispatch(self, summary: CycleSummary) -> None:
        """Hand the cycle's shards to Cloud Tasks instead of polling (scout.dispatch)."""
        if self._shard_queue is None:
            self._shard_queue = ShardQueue(self.config)
        shards = self.config.shards

        def poll_here(missed: set[int]) -> list[UserResult]:
            ids = frozenset(u.id for u in self.users() if shard_of(u.id, shards) in missed)
            return self._poll_everywhere(Selection(user_ids=ids))[0]

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

    def poll_users(self, user_ids: Collection[str] | None = None, shard: tuple[int, int] | None = None
                   ) -> list[UserResult]:
        """Poll these users now, risk first, on every process: the users named (all when
        None), or those of one shard, `(shard, shards)` by `shard_of`. No lease and no
        cycle record: for a caller that has its own (a Cloud Tasks shard handler). Raises
        StoreUnavailable when the users cannot be read."""
        selection = Selection(frozenset(user_ids) if user_ids is not None else None, shard)
        return self._poll_everywhere(selection)[0]

    def _retry_unsent(self) -> tuple[int, int]:
        """Send what earlier cycles recorded but did not send; (calls, messages) sent."""
        unsent: list[LogEntry] = self.store.unsent_log()
        if not unsent:
            return 0, 0
        sent = self.engine.retry_unsent(unsent)
        return sent.calls, sent.messages

    def _poll_everywhere(self, selection: Selection) -> tuple[list[UserResult], list[dict[str, Any]]]:
        """This process polls partition 0 while the workers poll theirs. A worker that dies
        or cannot start is replaced next cycle; its users are polled here, this cycle."""
        parts = self.partition[1]
        if parts == 1:
            cpu = cpu_seconds()
            results = self._poll_all(self.users(selection))
            return results, [process_report(0, results, cpu)]
        started = [index for index in range(1, parts) if self._worker(index).start_poll(selection)]
        cpu = cpu_seconds()
        results = self._poll_all(self.users(selection, partition=0))
        reports = [process_report(0, results, cpu)]
        for index in range(1, parts):
            answer = self._workers[index].results() if index in started else None
            if answer is None:
                log.error("poller worker %d did not poll its users; polling them here", index)
                self._workers.pop(index).stop()
                cpu = cpu_seconds()
                mine = self._poll_all(self.users(selection, partition=index))
                answer = (mine, process_report(index, mine, cpu) | {"fallback": True})
            results += answer[0]
            reports.append(answer[1])
        return results, reports

    def _worker(self, index: int) -> PartitionWorker:
        if index not in self._workers:
            self._workers[index] = PartitionWorker(self.config, index, self.partition[1])
        return self._workers[index]

    def _poll_all(self, users: list[User]) -> list[UserResult]:
        """Fetch every user's readings concurrently; each user's decision is made as soon as
        that user's answer arrives, so a hung site delays nobody."""
        if not users:
            return []
        # a small poll (a Cloud Tasks shard of a small deployment) is cheaper without the
        # pause: its two full collections cost a web process 50-100 ms, most of the poll
        paused = collection_paused() if len(users) >= GC_PAUSE_MIN_USERS else contextlib.nullcontext()
        with paused:
            return asyncio.run(self._poll_all_async(users))

    async def _poll_all_async(self, users: list[User]) -> list[UserResult]:
        loop = asyncio.get_running_loop()
        # asyncio.run shuts this pool down with the loop: a fresh one each cycle
        loop.set_default_executor(ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="resolve"))
        states = self._read_states(users)
        main, slow = order_by_risk(users, states)
        at_risk = sum(1 for user in main if is_at_risk(states, user.id))
        decisions: list[Outcome | UserResult | None] = [None] * len(users)
        # A fixed set of fetchers per lane, each taking the next user when its last one is
        # done, rather than a task per user queued on a semaphore: as many requests in
        # flight either way, without 10,000 tasks made, scheduled and woken. The fetchers
        # of a lane share its one iterator; the loop runs one of them at a time. Once the
        # main lane is empty its fetchers help the slow lane: no fast site waits any more.
        main_queue = iter(enumerate(main))
        slow_queue = iter(enumerate(slow, start=len(main)))
        # The users at risk (first in the main lane) get a head start: until they are
        # decided and their calls placed, or RISK_HEAD_START_S has passed, no other request
        # starts, so a thousand other sockets opening at once do not share the core with them.
        risk_fetched = asyncio.Event()
        pending_risk = [at_risk]
        if not at_risk:
            risk_fetched.set()

        def one_risk_settled() -> None:
            pending_risk[0] -= 1
            if not pending_risk[0]:
                risk_fetched.set()

        def when_settled(outcome: Future[Any]) -> None:
            # runs in whichever thread settles it; the count is kept on the loop
            result = outcome.result() if not outcome.cancelled() and outcome.exception() is None else None
            if isinstance(result, Future) and not isinstance(result, FollowUp):
                result.add_done_callback(when_settled)
            else:
                loop.call_soon_threadsafe(one_risk_settled)

        async def fetch(index: int, user: User, session: aiohttp.ClientSession) -> None:
            outcome = await self._fetch_then_decide(user, session, states)
            decisions[index] = outcome
            if index < at_risk:
                if isinstance(outcome, UserResult):
                    one_risk_settled()
                else:
                    outcome.add_done_callback(when_settled)

        async def after_head_start() -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(risk_fetched.wait(), RISK_HEAD_START_S)

        async def main_fetcher(session: aiohttp.ClientSession, number: int) -> None:
            if number >= at_risk:
                await after_head_start()
            for index, user in main_queue:
                await fetch(index, user, session)
            for index, user in slow_queue:
                await fetch(index, user, session)

        async def slow_fetcher(session: aiohttp.ClientSession) -> None:
            await after_head_start()
            for index, user in slow_queue:
                await fetch(index, user, session)

        lag = asyncio.create_task(self._measure_loop_lag())
        async with open_async_session(self.connections + self.slow_connections,
                                      allow_private=self.engine.allow_private,
                                      is_public=self.engine.is_public) as session:
            await asyncio.gather(*(main_fetcher(session, n) for n in range(min(self.connections, len(main)))),
                                 *(slow_fetcher(session) for _ in range(min(self.slow_connections, len(slow)))))
        lag.cancel()
        return [settled(decision) for decision in decisions if decision is not None]

    async def _measure_loop_lag(self) -> None:
        """How late the loop has lately been running what is ready: on a busy core a fast
        site's answer waits that long before it is read, and must not make the site look
        slow (and move its user to the slow lane, with a write, every busy minute)."""
        loop = asyncio.get_running_loop()
        self._lag.value = 0.0
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self._lag.value = max(loop.time() - before - LAG_PROBE_S, self._lag.value / 2)

    def _read_states(self, users: list[User]) -> dict[str, AlertState] | dict[str, StoredState] | None:
        """The alert states of these users in one read, when the store offers it (see
        SqliteStore.all_states): only this process's share, so that Firestore bills each
        state once per cycle however many processes poll. With their versions when the
        store can also write many states at once (SqliteStore.commit_states): then a poll
        that changes only the state is written in a group commit (see StateWriter)."""
        ids = {user.id for user in users}
        if self._state_writer is not None:
            stored: dict[str, StoredState] = self.store.stored_states(ids)  # type: ignore[attr-defined]
            return stored
        read_all = getattr(self.store, "all_states", None)
        return read_all(ids) if read_all is not None else None

    async def _fetch_then_decide(self, user: User, session: aiohttp.ClientSession,
                                 states: dict[str, AlertState] | dict[str, StoredState] | None
                                 ) -> Outcome | UserResult:
        """Fetch on the loop, then decide. A poll that changes nothing is settled right here
        on the state read at the start of the cycle (pure, no I/O); anything to record or
        send goes to the recording threads, which re-read the state before writing. The loop
        does not wait for them: a plain Future, not an asyncio one, keeps that cheap, and
        fewer hand-offs mean the loop rarely waits for the GIL behind busy threads."""
        started = self.clock()
        fetch_started = time.monotonic()  # the site's own speed, whatever clock decides
        try:
            poll: PollResult = await fetch_readings_async(
                user, session, allow_private=self.engine.allow_private, timeout=self.engine.nightscout_timeout,
                count=readings_wanted(user))
        except Exception as exc:  # a bug in reading one site never stops the others
            log.exception("fetch failed user=%s", user.id)
            return UserResult(user.id, user.email, ok=False, reason="error", summary=f"error: {exc}")
        # each state is read once, here, and let go: the cycle holds only the states of the
        # users still to decide
        known = states.pop(user.id, None) if states is not None else None
        version: int | None = None  # the version decided on, when the state writer can write it
        if isinstance(known, StoredState):
            previous, version = known.state(), known.version
        else:
            previous = known or AlertState()
            if states is not None and self._state_writer is not None:
                version = 0  # never stored

        observed = observed_poll(user, poll, time.monotonic() - fetch_started - getattr(self._lag, "value", 0.0),
                                 previous)
        if states is not None:
            try:
                ahead = self.engine.decide_ahead(user, poll, previous, observed)
            except Exception:  # left to the full path, which reports the error
                ahead = None
            if ahead is not None:
                result, new_state = ahead
                if new_state is None:  # nothing changed: settled here, no write
                    return self._finish(result, started)
                if version is not None and self._state_writer is not None:
                    return self._state_writer.submit(StateWrite(user, poll, observed, started, result,
                                                                new_state, version))
        return self._recorders.submit(self._record_one, user, poll, observed, started)

    def _write_states(self, writes: list[StateWrite]) -> None:
        """The StateWriter's group commit, in its thread: each write's Future gets the user's
        result; a user whose state changed since the cycle read it (a reply, a call's
        outcome) is decided again on the stored state, by the full path."""
        try:
            stale = self.store.commit_states(  # type: ignore[attr-defined]
                [(w.user.id, w.state, w.version) for w in writes])
        except Exception:  # the full path tries each user again and reports what fails
            log.warning("a group commit of %d alert states failed; recording them one by one", len(writes),
                        exc_info=True)
            stale = {w.user.id for w in writes}
        decided_at = self.clock()
        for write in writes:
            if write.user.id in stale:
                write.done.set_result(self._record_one(write.user, write.poll, write.observed, write.started))
            else:
                write.result.decided_at = decided_at  # decided and recorded
                write.done.set_result(self._finish(write.result, write.started))

    def _record_one(self, user: User, poll: PollResult, observed: dict[str, Any],
                    started: float) -> UserResult | Future[Any]:
        """Decide and record (in a recording thread); what is to be sent is handed to the
        sending threads, whose Future is then this user's result."""
        try:
            result, entries = self.engine.record_poll(user, poll, observed)
        except Exception as exc:  # one broken user never stops the others
            return self._finish(self._failed(user, exc), started)
        if entries:
            urgency = min(entry.urgency for entry in entries)
            return self._send_queue.submit(urgency, self._send_one, user, poll, result, entries, started)
        return self._finish(result, started)

    def _send_one(self, user: User, poll: PollResult, result: UserResult, entries: list[LogEntry],
                  started: float) -> UserResult | Future[Any]:
        """One user's sends, in a sending thread. What a call's known outcome sets off (the
        contacts' texts) is a job of its own, queued behind every call waiting: a send thread
        is not held by one user's contacts while another user's call waits (issue 11)."""
        steps: list[tuple[float, Callable[[], object]]] = []
        try:
            self.engine.deliver(user, entries, poll, result, later=lambda urgency, step: steps.append((urgency, step)))
        except Exception as exc:  # recorded all the same: a later cycle sends what is left
            result = self._failed_sending(user, exc, result)
        if steps:
            try:
                return self._send_queue.submit(min(urgency for urgency, _ in steps), self._follow_up, user, result,
                                               steps, started, future=FollowUp())
            except RuntimeError:  # the queue is closing: follow up here rather than drop it
                return self._follow_up(user, result, steps, started)
        return self._finish(result, started)

    def _follow_up(self, user: User, result: UserResult, steps: list[tuple[float, Callable[[], object]]],
                   started: float) -> UserResult:
        try:
            for _urgency, step in steps:
                step()
        except Exception as exc:  # the call is placed and marked; its outcome is settled later
            result = self._failed_sending(user, exc, result)
        return self._finish(result, started)

    def _failed_sending(self, user: User, exc: Exception, result: UserResult) -> UserResult:
        failed = self._failed(user, exc)
        failed.decided_at = result.decided_at
        return failed

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
                 result.user_id, result.ok, result.reason or "-", result.calls, result.messages, result.elapsed,
                 extra={"fields": {
                     "event": "poll", "user": result.user_id, "ok": result.ok, "reason": result.reason or "",
                     "calls": result.calls, "messages": result.messages, "elapsed_s": round(result.elapsed, 3)}})
        log.debug("poll user=%s summary=%s", result.user_id, result.summary)  # glucose values: DEBUG only

    def release(self) -> None:
        try:
            self.store.release_lease(LEASE_NAME, self.holder)
        except StoreUnavailable:
            pass

    def close(self) -> None:
        for worker in self._workers.values():
            worker.stop()
        self._workers.clear()
        self._recorders.shutdown(wait=False, cancel_futures=True)
        self._send_queue.close()
        if self._state_writer is not None:
            self._state_writer.close()
        if self._feed is not None:
            self._feed.close()
        if self._shard_queue is not None:
            self._shard_queue.close()
        if self.engine.send_tasks is not None:
            self.engine.send_tasks.close()


@dataclass
class StateWrite:
    """A poll decided on the loop whose only effect is a new state, waiting to be written."""

    user: User
    poll: PollResult
    observed: dict[str, Any]
    started: float
    result: UserResult
    state: AlertState
    version: int  # of the state it was decided on
    done: Future[UserResult | Future[UserResult]] = field(default_factory=Future)


class StateWriter:
    """One thread that writes the states of polls with nothing to send, as many as have
    arrived since its last write in one transaction (a group commit, at most
    STATE_BATCH_MAX): a write costs one transaction per batch instead of one per user,
    and a user waits for at most the write before theirs. Every state is compare-and-set
    on the version it was decided on, so nothing written meanwhile is lost."""

    def __init__(self, write: Callable[[list[StateWrite]], None]) -> None:
        self._write = write
        self._queue: queue.SimpleQueue[StateWrite | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def submit(self, write: StateWrite) -> Future[UserResult | Future[UserResult]]:
        with self._lock:
            if not self._started:
                self._thread.start()
                self._started = True
        self._queue.put(write)
        return write.done

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < STATE_BATCH_MAX:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self._write(batch)
            except BaseException as exc:  # never leave a poll waiting forever
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(exc)
            if stop:
                return

    def close(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(10)


class PartitionWorker:
    """A process that polls one partition of the users whenever the main poller asks.

    Spawned, not forked: it opens its own store client (gRPC clients do not survive a
    fork), its own messenger and its own event loop. If the main process dies, the pipe
    closes and the worker stops."""

    def __init__(self, config: Config, index: int, parts: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.index = index
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_partition_main, args=(config, index, parts, child),
                                       name=f"scout-poller-{index}", daemon=True)
        self.process.start()
        child.close()

    def start_poll(self, selection: Selection) -> bool:
        try:
            self.conn.send(selection)
            return True
        except (OSError, ValueError):
            return False

    def results(self, deadline: float = WORKER_DEADLINE_S) -> tuple[list[UserResult], dict[str, Any]] | None:
        """The worker's results, or None if it died, failed or overran the deadline."""
        waited = 0.0
        while waited < deadline:
            try:
                if self.conn.poll(0.5):
                    answer: tuple[list[UserResult], dict[str, Any]] | None = self.conn.recv()
                    return answer
            except (EOFError, OSError):
                return None
            if not self.process.is_alive():
                return None
            waited += 0.5
        return None

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


def _partition_main(config: Config, index: int, parts: int, conn: Any) -> None:
    from scout.logs import configure_logging

    configure_logging()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process says when to stop
    poller = Poller(config, processes=parts, partition=(index, parts))
    try:
        while True:
            try:
                selection = conn.recv()
            except (EOFError, OSError):
                break  # the main process is gone
            if selection is None:
                break
            cpu = cpu_seconds()
            try:
                results = poller._poll_all(poller.users(selection, partition=index))
            except Exception:  # reported to the main process, which polls these users itself
                log.exception("poller worker %d could not poll its users", index)
                conn.send(None)
                continue
            conn.send((results, process_report(index, results, cpu)))
            del results  # not held until the next cycle's are made
    finally:
        poller.close()


def run_forever(config: Config, stop: threading.Event | None = None, poller: Poller | None = None) -> None:
    """Run a cycle at second :30 of every minute until stopped (SIGTERM, SIGINT)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    poller = poller or Poller(config)
    parent = os.getppid()
    interval = config.poll_interval
    # Cycles run one at a time in this thread: a cycle that overruns the minute delays the
    # next one instead of overlapping it.
    scheduler = schedule.Scheduler()
    scheduler.every().minute.at(":30").do(_cycle_and_heartbeat, poller, config)
    next_drill = time.monotonic()  # SCOUT_POLL_INTERVAL: seconds between cycle starts (drills)
    when = f"every {interval:g} s" if interval else "every minute at :30"
    log.info("poller started holder=%s; polling %s", poller.holder, when)
    try:
        while not stop.is_set():
            if interval:
                if time.monotonic() >= next_drill:
                    next_drill = time.monotonic() + interval
                    _cycle_and_heartbeat(poller, config)
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


def _cycle_and_heartbeat(poller: Poller, config: Config) -> None:
    """One cycle, then a note on this instance's disk that its poller ran (scout.heartbeat)."""
    summary = poller.run_cycle()
    try:
        write_heartbeat(config, time.time(), summary.acted, summary.error)
    except OSError as exc:  # a full disk must not stop the alerts
        log.warning("the poller heartbeat cannot be written: %s", exc)


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
        # not a daemon: the poller starts worker processes of its own, which a daemonic
        # process may not; this loop stops it itself (below)
        child = context.Process(target=_poller_main, name="scout-poller", daemon=False)
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
    from scout.config import restart_delay as configured_restart_delay
    from scout.logs import configure_logging

    configure_logging()
    if restart_delay is None:
        restart_delay = configured_restart_delay(os.environ)
    _supervise(restart_delay)


def start_supervised_poller() -> subprocess.Popen[bytes]:
    """Start the poller supervisor from gunicorn's master, once per deployment.

    It is a plain subprocess rather than a fork of the master, so the gunicorn
    workers forked later inherit no handle on it."""
    return subprocess.Popen([sys.executable, "-c", "from scout.poller import supervisor_main; supervisor_main()"])
