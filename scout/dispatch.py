"""Sharing each cycle's polls across instances through Cloud Tasks (SCOUT_DISPATCH=cloudtasks).

The poller holding the lease does not poll: at :30 it enqueues one task per shard of users
(users are put in shards by a stable hash of their id). Cloud Tasks hands each shard to
whichever App Engine instance is free, at POST /tasks/poll-shard (scout.tasks), and retries
a shard whose handler failed or died. A shard that cannot be enqueued at all (Cloud Tasks
down) is polled by the lease holder itself, so a queue outage never stops the alerts.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scout.cloudtasks import EnqueueError, ShardQueue, ShardTask
from scout.engine import UserResult

log = logging.getLogger("scout.dispatch")



def shard_of(user_id: str, shards: int) -> int:
    """The user's shard: the same on every instance and after every restart (unlike hash())."""
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def cycle_name(started_at: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(started_at))


# --- the lease holder: enqueue the cycle's shards ---------------------------------------


@dataclass
class Dispatched:
    enqueued: int = 0
    already_there: int = 0  # a task of the same name existed: enqueued before in this cycle
    polled_here: list[UserResult] = field(default_factory=list)  # shards Cloud Tasks did not take


def dispatch_cycle(queue: ShardQueue, started_at: float, shards: int,
                   poll_here: Callable[[set[int]], list[UserResult]]) -> Dispatched:
    """Enqueue one task per shard; the shards that could not be enqueued are polled here
    (`poll_here` gets their numbers), so that no user goes unpolled this cycle. After the
    first failure the rest are not tried: a Cloud Tasks that is down or slow would
    otherwise hold every shard's alerts for its timeout, one shard after another."""
    cycle, done = cycle_name(started_at), Dispatched()
    missed: set[int] = set()
    for shard in range(shards):
        if missed:
            missed.add(shard)
            continue
        try:
            if queue.enqueue(ShardTask(cycle, shard, shards, started_at)):
                done.enqueued += 1
            else:
                done.already_there += 1
        except EnqueueError as exc:
            log.error("%s; polling it and the %d shards after it here", exc, shards - shard - 1)
            missed.add(shard)
    if missed:
        done.polled_here = poll_here(missed)
    log.info("cycle %s dispatched in %d shards", cycle, shards, extra={"fields": {
        "event": "dispatch", "cycle": cycle, "shards": shards, "enqueued": done.enqueued,
        "already_there": done.already_there, "polled_here": sorted(missed)}})
    return done


# --- any instance: what a shard's poll did (scout.tasks polls it through the poller) ---


def shard_counts(results: list[UserResult]) -> dict[str, Any]:
    failed = Counter(r.reason for r in results if not r.ok)
    return {"users": len(results), "ok": sum(r.ok for r in results), "failed": dict(sorted(failed.items())),
            "calls": sum(r.calls for r in results), "messages": sum(r.messages for r in results),
            "queued": sum(r.queued for r in results)}  # handed to the send queues (scout.tasks sends them)
