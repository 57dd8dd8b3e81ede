"""The measured poller, in a process of its own so its CPU and memory are its own.

    python -m bench.cycle_worker cycles DB KINDS      two cycles; the second is measured
    python -m bench.cycle_worker sequential DB        the users one after another

`cycles` runs the poller exactly as production does (`Poller(config)`: its own store, one
process per core). The first cycle starts from an empty history; it prints `READY` and
waits for a line on stdin (the benchmark moves the sites to phase 2 meanwhile: the users
who were near the low threshold are now out of range), then the second cycle runs on the
history the first left in the store. Prints one JSON object on the last line of stdout.
Logs (every poll line, every console call, as in production) go to stderr.
"""
from __future__ import annotations

import json
import os
import sqlite3
import statistics
import sys
import time
from collections import Counter
from typing import Any, TextIO

from scout.config import Config, load_config
from scout.logs import configure_logging
from scout.poller import Poller, cpu_seconds, order_by_risk, peak_rss_mb
from scout.store.sqlite import SqliteStore

TUNING = ("SCOUT_POLL_WORKERS", "SCOUT_POLL_CONNECTIONS", "SCOUT_POLL_SLOW_CONNECTIONS", "SCOUT_POLL_PROCESSES")


PROTOCOL: TextIO = sys.stdout  # where READY and the result go (see main)


def bench_config(db_path: str) -> Config:
    # dev mode: console telephony and 127.0.0.1 Nightscout sites are allowed
    tuning = {name: os.environ[name] for name in TUNING if name in os.environ}
    return load_config({"SCOUT_DEV": "1", "SECRET_KEY": "bench", "SCOUT_DB": db_path, "SCOUT_TELEPHONY": "console",
                        **tuning})


def calls_sent(db_path: str, since: float) -> list[tuple[str, float]]:
    """(user id, when it was marked sent) for every call recorded since `since`."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT user_id, data FROM alert_log WHERE status = 'sent' AND created_at >= ?",
                          (since,)).fetchall()
    found = []
    for user_id, data in rows:
        entry = json.loads(data)
        if entry["kind"] == "call":
            found.append((user_id, entry["updated_at"]))
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def lanes(db_path: str) -> dict[str, int]:
    """How the stored history orders the next cycle (see scout.poller.order_by_risk)."""
    store = SqliteStore(db_path)
    users = [u for u in store.list_users() if u.is_watchable]
    states = store.all_states()
    store.close()
    main, slow = order_by_risk(users, states)
    at_risk = sum(1 for u in main if (s := states.get(u.id)) is not None and (s.watch or s.episode is not None))
    return {"at_risk_first": at_risk, "main_lane": len(main), "slow_lane": len(slow)}


def run_cycles(db_path: str, kinds_path: str) -> dict[str, Any]:
    with open(kinds_path) as file:
        kinds: dict[str, str] = json.load(file)
    poller = Poller(bench_config(db_path))
    first = poller.run_cycle(use_lease=True)
    first_peak = sum(p["peak_rss_mb"] for p in first.processes)
    for process in first.processes:  # from here on, VmHWM is the measured cycle's own peak
        with open(f"/proc/{process['pid']}/clear_refs", "w") as clear:
            clear.write("5")
    order = lanes(db_path)
    print("READY", file=PROTOCOL, flush=True)
    sys.stdin.readline()
    summary = poller.run_cycle(use_lease=True)
    poller.close()
    started = summary.started_at
    fast = [r.decided_at - started for r in summary.results if kinds[r.user_id] in ("fast", "low")]
    calls = calls_sent(db_path, started)
    low_users = {user_id for user_id, kind in kinds.items() if kind == "low"}
    called = {user_id for user_id, _ in calls}
    outcomes = Counter("ok" if r.ok else f"failed:{r.reason}" for r in summary.results)
    cpu = sum(p["cpu_s"] for p in summary.processes)
    return {
        "users": len(summary.results),
        "first_cycle_s": first.duration,
        "cycle_s": summary.duration,
        "error": summary.error or first.error,
        "lanes": order,
        "counts": summary.counts,
        "outcomes": dict(sorted(outcomes.items())),
        "at_risk_users": len(low_users),
        "at_risk_called": len(called & low_users),
        "others_called": len(called - low_users),
        "calls": len(calls),
        "first_call_s": min(at for _, at in calls) - started if calls else None,
        "last_call_s": max(at for _, at in calls) - started if calls else None,
        "fast_users": len(fast),
        "fast_p50_s": statistics.median(fast) if fast else None,
        "fast_p99_s": percentile(fast, 0.99) if fast else None,
        "fast_max_s": max(fast) if fast else None,
        "processes": summary.processes,
        "poller_cpu_s": cpu,
        "peak_rss_mb": sum(p["peak_rss_mb"] for p in summary.processes),
        "first_cycle_peak_rss_mb": first_peak,
        "connections": {"main": poller.connections, "slow": poller.slow_connections},
    }


def run_sequential(db_path: str) -> dict[str, Any]:
    """The tutorial's shape: one user after another, with the poller's own request and
    its deadline (15 s for the whole request, so a trickling site cannot hold it longer)."""
    poller = Poller(bench_config(db_path), processes=1)
    users = poller.users()
    started = time.monotonic()
    cpu = cpu_seconds()
    for user in users:
        poller._poll_all([user])
    wall = time.monotonic() - started
    poller.close()
    return {"users": len(users), "wall_s": wall, "cpu_s": cpu_seconds() - cpu, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    global PROTOCOL
    mode, db_path = sys.argv[1], sys.argv[2]
    # Scout logs JSON lines to stdout, and so do the poller's spawned worker processes, which
    # inherit this one's stdout: the benchmark reads READY and the result from stdout, so they
    # get the pipe to themselves and everything else written to stdout goes to the log (stderr).
    PROTOCOL = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    configure_logging()
    result = run_cycles(db_path, sys.argv[3]) if mode == "cycles" else run_sequential(db_path)
    print(json.dumps(result), file=PROTOCOL, flush=True)


if __name__ == "__main__":
    main()
