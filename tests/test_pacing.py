"""The send queue and the pacer hand out turns most urgent first: a user at 45 mg/dL must not
wait behind repeat calls, contact texts and all-clears queued before them."""
from __future__ import annotations

import random
import threading
from typing import Any

from models import Episode
from scout.alerts import URGENCY_ALL_CLEAR, urgency
from scout.pacing import Pacer, SendQueue
from scout.readings import Reading


def test_waiting_jobs_run_most_urgent_first_whatever_order_they_were_queued_in() -> None:
    queue = SendQueue(threads=1, name="test")
    gate, ran = threading.Event(), list[float]()
    try:
        blocker = queue.submit(0.0, gate.wait)  # holds the one thread while the others queue
        urgencies = [float(u) for u in range(20)]
        random.Random(7).shuffle(urgencies)
        futures = [queue.submit(u, ran.append, u) for u in urgencies]
        gate.set()
        blocker.result(timeout=10)
        for future in futures:
            future.result(timeout=10)
    finally:
        queue.close(wait=True)
    assert ran == sorted(urgencies)


def test_a_pacer_gives_the_next_slot_to_the_most_urgent_waiter() -> None:
    now = [0.0]
    pacer = Pacer(rate=1.0, clock=lambda: now[0])
    pacer.wait(0.0)  # takes the first slot; the next one is a second away
    order: list[float] = []
    lock = threading.Lock()

    def wait_for_turn(u: float) -> None:
        pacer.wait(u)
        with lock:
            order.append(u)

    waiters = [threading.Thread(target=wait_for_turn, args=(u,)) for u in (30.0, 10.0, 20.0)]
    for thread in waiters:
        thread.start()
    while len(pacer._waiting) < 3:  # every waiter queued before the clock moves
        threading.Event().wait(0.01)
    for turn in range(1, 4):
        with pacer._condition:
            now[0] += pacer.interval
            pacer._condition.notify_all()
        while len(order) < turn:
            threading.Event().wait(0.01)
    for thread in waiters:
        thread.join(timeout=10)
    assert order == [10.0, 20.0, 30.0]


def low(calls: int) -> Episode:
    return Episode(id="e", kind="low", started_at=0.0, calls=calls)


def reading(mgdl: float) -> Reading:
    return Reading(mgdl, 0.0, "Flat")


def test_urgency_puts_first_calls_before_repeats_lows_before_highs_and_the_lowest_low_first() -> None:
    high = Episode(id="h", kind="high", started_at=0.0, calls=1)
    ranked: list[tuple[str, Any]] = sorted([
        ("repeat low 45", urgency(low(3), reading(45))),
        ("first high 400", urgency(high, reading(400))),
        ("first low 60", urgency(low(1), reading(60))),
        ("first low 39", urgency(low(1), reading(39))),
        ("first high 250", urgency(high, reading(250))),
    ], key=lambda pair: pair[1])
    assert [name for name, _ in ranked] == [
        "first low 39", "first low 60", "first high 400", "first high 250", "repeat low 45"]
    assert all(value < URGENCY_ALL_CLEAR for _, value in ranked)
