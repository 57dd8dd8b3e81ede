"""One measured run of the poller, in a process of its own so its peak RSS is its own.

    python -m bench.cycle_worker cycle DB          one real Poller.run_cycle over every user
    python -m bench.cycle_worker sequential DB     the same users one after another

Prints one JSON object on the last line of stdout. Logs (every poll line, every console
call and message, as in production) go to stderr, which the benchmark sends to a file.
"""
from __future__ import annotations

import json
import os
import resource
import sqlite3
import sys
import time
from typing import Any

from scout.config import Config, load_config
from scout.logs import configure_logging
from scout.poller import Poller


def bench_config(db_path: str) -> Config:
    # dev mode: console telephony and 127.0.0.1 Nightscout sites are allowed
    tuning = {name: os.environ[name] for name in ("SCOUT_POLL_WORKERS", "SCOUT_POLL_CONNECTIONS") if name in os.environ}
    return load_config({"SCOUT_DEV": "1", "SECRET_KEY": "bench", "SCOUT_DB": db_path, "SCOUT_TELEPHONY": "console",
                        **tuning})


def peak_rss_mb() -> float:
    """VmHWM: the most resident memory this process ever had."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def last_action_at(db_path: str) -> float | None:
    """When the last call or message was marked sent, from the alert log itself."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT data FROM alert_log WHERE status = 'sent'").fetchall()
    times = [json.loads(data)["updated_at"] for (data,) in rows]
    return max(times) if times else None


def behaviour_of(user_id: str) -> str:
    return user_id.split("-", 1)[0]  # users are registered as "<behaviour>-<n>"


def run_cycle(db_path: str) -> dict[str, Any]:
    poller = Poller(bench_config(db_path))
    rss_before = peak_rss_mb()
    cpu_before = cpu_seconds()
    summary = poller.run_cycle(use_lease=True)
    cpu = cpu_seconds() - cpu_before
    poller.close()
    fast = [r for r in summary.results if behaviour_of(r.user_id) in ("fast", "low")]
    last_action = last_action_at(db_path)
    outcomes: dict[str, int] = {}
    for result in summary.results:
        outcome = "ok" if result.ok else f"failed:{result.reason}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {
        "users": len(summary.results),
        "cycle_s": summary.duration,
        "error": summary.error,
        "counts": summary.counts,
        "outcomes": dict(sorted(outcomes.items())),
        "last_action_s": (last_action - summary.started_at) if last_action else None,
        "fast_decided_s": max(r.decided_at for r in fast) - summary.started_at if fast else None,
        "fast_users": len(fast),
        "poller_cpu_s": cpu,
        "rss_before_cycle_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "workers": poller.workers,
    }


def run_sequential(db_path: str) -> dict[str, Any]:
    """The tutorial's shape: one user after another, with Scout's own timeouts."""
    poller = Poller(bench_config(db_path))
    users = poller.users()
    started = time.monotonic()
    for user in users:
        poller.engine.poll_user(user)
    wall = time.monotonic() - started
    poller.close()
    return {"users": len(users), "wall_s": wall, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    mode, db_path = sys.argv[1], sys.argv[2]
    configure_logging()
    result = run_cycle(db_path) if mode == "cycle" else run_sequential(db_path)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
