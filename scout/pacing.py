"""Pacing: calls and messages leave at the provider's rate, the most urgent first.

Providers limit how fast calls may be created: Twilio places calls at the account's
calls per second (1 by default) and queues the rest; Vonage answers 429 beyond 3 call
creations per second. When hundreds of users are low in the same minute, Scout must
neither flood the provider (and have calls refused) nor let a user at 45 mg/dL wait
behind repeat calls and all-clears.

`Pacer` hands out send slots at a fixed rate, to the most urgent waiter first.
`SendQueue` runs jobs (one user's sends; then, as a job of its own, what their call's known
outcome sets off, such as their contacts' texts) on a few threads, most urgent first, so
that the order holds even when far more users are waiting than there are threads.
Both work in one process: with N processes sending, give each rate/N (see
`SCOUT_CALLS_PER_SECOND` in docs). Across instances, the Cloud Tasks send queues hold one
rate for all of them (scout.cloudtasks.SendTasks); these pacers then pace only what a
process sends itself because a queue did not take it.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# The providers' documented defaults, used when SCOUT_CALLS_PER_SECOND /
# SCOUT_MESSAGES_PER_SECOND are not set: an account with higher limits raises them.
DEFAULT_CALLS_PER_SECOND = {"twilio": 1.0, "vonage": 3.0, "console": 1000.0}
DEFAULT_MESSAGES_PER_SECOND = {"twilio": 10.0, "vonage": 30.0, "console": 1000.0}
SEND_THREADS = 8  # jobs running at once; the rest wait in the queue, in order of urgency

# Backoff after a 429 or 5xx: doubling from 1 s, at most 20 s, unless the provider's
# Retry-After says otherwise.
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 20.0


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, 60.0)
    return min(BACKOFF_FIRST * 2 ** (attempt - 1), BACKOFF_MAX)


# Slots are spaced 5% wider than the rate: requests reach the provider with some jitter,
# and one that arrives a few ms early would be counted in the previous second and refused.
PACING_MARGIN = 1.05


class Pacer:
    """At most `rate` slots per second, each to the most urgent thread waiting (lowest
    `urgency`; equal urgencies in the order they asked)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("the send rate must be above 0 per second")
        self.interval = PACING_MARGIN / rate
        self.clock = clock
        self._condition = threading.Condition()
        self._waiting: list[tuple[float, int]] = []
        self._order = itertools.count()
        self._next_slot = 0.0

    def wait(self, urgency: float = 0.0) -> None:
        """Block until this caller's slot comes."""
        ticket = (urgency, next(self._order))
        with self._condition:
            heapq.heappush(self._waiting, ticket)
            while True:
                now = self.clock()
                if self._waiting[0] == ticket and now >= self._next_slot:
                    heapq.heappop(self._waiting)
                    self._next_slot = max(now, self._next_slot) + self.interval
                    self._condition.notify_all()
                    return
                timeout = self._next_slot - now if self._waiting[0] == ticket else None
                self._condition.wait(timeout)


@dataclass
class Pacers:
    """One pacer for calls and one for messages, for one provider in one process."""

    calls: Pacer
    messages: Pacer

    @classmethod
    def for_rates(cls, calls_per_second: float, messages_per_second: float) -> Pacers:
        return cls(Pacer(calls_per_second), Pacer(messages_per_second))

    def wait(self, kind: str, urgency: float) -> None:
        (self.calls if kind == "call" else self.messages).wait(urgency)


@dataclass(order=True)
class _Job:
    urgency: float
    order: int
    run: Callable[[], Any] = field(compare=False)
    future: Future[Any] = field(compare=False)


class SendQueue:
    """Jobs run on `threads` threads, the most urgent waiting job first."""

    def __init__(self, threads: int = SEND_THREADS, name: str = "send") -> None:
        self._jobs: list[_Job] = []
        self._condition = threading.Condition()
        self._order = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, urgency: float, fn: Callable[..., T], *args: Any, future: Future[T] | None = None) -> Future[T]:
        """Run `fn(*args)` when its turn comes; its result goes to `future` (a new one unless given)."""
        future = Future() if future is None else future
        with self._condition:
            if self._closed:
                raise RuntimeError("the send queue is closed")
            heapq.heappush(self._jobs, _Job(urgency, next(self._order), lambda: fn(*args), future))
            self._condition.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._jobs and not self._closed:
                    self._condition.wait()
                if not self._jobs:
                    return
                job = heapq.heappop(self._jobs)
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.run())
                except BaseException as exc:  # handed to whoever waits on the future
                    job.future.set_exception(exc)

    def close(self, wait: bool = False) -> None:
        """Stop the threads. Jobs not started yet are cancelled unless `wait`: what they
        would have sent is recorded in the store, and the next cycle sends it."""
        with self._condition:
            self._closed = True
            if not wait:
                for job in self._jobs:
                    job.future.cancel()
                self._jobs.clear()
            self._condition.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()
