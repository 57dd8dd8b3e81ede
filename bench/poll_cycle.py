"""`make bench`: one real poll cycle for 1,000 and 10,000 users against simulated sites.

For each size it registers users in a fresh SQLite store (75% fast, 10% slow, 5% hung,
5% failing, 5% out of range), runs one `Poller.run_cycle` with console telephony in a
separate process, and prints the wall time, users per second, when the last alert was
sent, when the last fast user's decision was made, the poller's peak RSS and the count
of each outcome. A one-after-another loop with the same timeouts runs on a stratified
sample of the same workload and is extrapolated linearly to the full size: the
sequential loop over 10,000 users would take well over an hour.

Results go to stdout and to bench-results.json. Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from models import Contact, User
from scout.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = ROOT / "bench-results.json"
SIZES = (1_000, 10_000)
SAMPLE_SIZE = 40  # users in the one-after-another baseline sample
MIX = {"slow": 0.10, "hung": 0.05, "failing": 0.05, "low": 0.05}  # the rest are fast
FAILING = ("e500", "html", "garbage")
SECONDS_PER_TICK = os.sysconf("SC_CLK_TCK")

# the targets of issue 6, on a 2-core machine, for 10,000 users
TARGET_CYCLE_S = 20.0
TARGET_FAST_DECIDED_S = 5.0
TARGET_RSS_MB = 300.0


def behaviours(size: int, seed: int = 6) -> list[str]:
    """The behaviour of each user's site, in the issue's proportions, shuffled."""
    counts = {name: round(size * share) for name, share in MIX.items()}
    kinds: list[str] = []
    for name, count in counts.items():
        if name == "failing":
            kinds += [FAILING[i % len(FAILING)] for i in range(count)]
        else:
            kinds += [name] * count
    kinds += ["fast"] * (size - len(kinds))
    random.Random(seed).shuffle(kinds)
    return kinds


def stratified_sample(kinds: list[str], size: int) -> list[int]:
    """Indexes of `size` users with the same mix as the whole, to time one by one."""
    wanted = behaviours(size, seed=7)
    by_kind: dict[str, list[int]] = {}
    for index, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(index)
    return [by_kind[kind].pop() for kind in wanted]


def register(db_path: str, port: int, kinds: list[str], indexes: list[int]) -> None:
    store = SqliteStore(db_path)
    for n in indexes:
        kind = kinds[n]
        store.save_user(User(
            id=f"{kind}-{n:05d}", email=f"user{n}@bench.example", name=f"User {n}",
            nightscout_url=f"http://127.0.0.1:{port}/{kind}/{n}", phone=f"+1415555{n % 10000:04d}",
            emergency_contact=Contact(f"+1415666{n % 10000:04d}", "sms"),
            extra_contacts=(Contact(f"+1415777{n % 10000:04d}", "whatsapp"),),
        ))
    store.close()


class Sites:
    """The simulated Nightscout sites, in a process of their own."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.sites"], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline().split()[1])

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / SECONDS_PER_TICK  # utime + stime

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_worker(mode: str, db_path: str, log_path: Path) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    with log_path.open("w") as log:
        done = subprocess.run([sys.executable, "-m", "bench.cycle_worker", mode, db_path], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=log, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), time.monotonic() - started


def measure_size(size: int, sites: Sites, workdir: Path) -> dict[str, Any]:
    kinds = behaviours(size)
    db_path = str(workdir / f"scout-{size}.sqlite3")
    register(db_path, sites.port, kinds, list(range(size)))
    sites_cpu_before = sites.cpu_seconds()
    cycle, process_wall = run_worker("cycle", db_path, workdir / f"cycle-{size}.log")
    sites_cpu = sites.cpu_seconds() - sites_cpu_before

    sample_db = str(workdir / f"sample-{size}.sqlite3")
    sample = stratified_sample(kinds, SAMPLE_SIZE)
    register(sample_db, sites.port, kinds, sample)
    sequential, _ = run_worker("sequential", sample_db, workdir / f"sequential-{size}.log")
    extrapolated = sequential["wall_s"] * size / sequential["users"]
    return {
        "users": size,
        "mix": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
        "cycle": cycle,
        "users_per_s": size / cycle["cycle_s"],
        "poller_process_wall_s": process_wall,
        "poller_cpu_ms_per_user": 1000 * cycle["poller_cpu_s"] / size,
        "sites_cpu_s": sites_cpu,
        "sequential": {
            "sample_users": sequential["users"],
            "sample_mix": {kind: [kinds[i] for i in sample].count(kind) for kind in sorted(set(kinds))},
            "sample_wall_s": sequential["wall_s"],
            "extrapolated_wall_s": extrapolated,
            "extrapolated": True,
        },
        "speedup_vs_sequential": extrapolated / cycle["cycle_s"],
    }


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def report(result: dict[str, Any]) -> str:
    cycle, seq = result["cycle"], result["sequential"]
    outcomes = ", ".join(f"{name} {count}" for name, count in cycle["outcomes"].items())
    lines = [
        f"== {result['users']:,} users ({', '.join(f'{k} {v}' for k, v in result['mix'].items())})",
        f"  cycle wall time                  {seconds(cycle['cycle_s'])}" + (f"  ERROR {cycle['error']}" if cycle["error"] else ""),
        f"  users polled per second          {result['users_per_s']:.0f}",
        f"  cycle start -> last alert sent   {seconds(cycle['last_action_s'])}",
        f"  every fast user decided by       {seconds(cycle['fast_decided_s'])} ({cycle['fast_users']} fast users)",
        f"  poller peak RSS                  {cycle['peak_rss_mb']:.0f} MB (before the cycle {cycle['rss_before_cycle_mb']:.0f} MB)",
        f"  poller CPU                       {cycle['poller_cpu_s']:.2f} s ({result['poller_cpu_ms_per_user']:.2f} ms per user)",
        f"  simulated sites' CPU             {result['sites_cpu_s']:.2f} s",
        f"  outcomes                         {outcomes}",
        f"  calls / messages sent            {cycle['counts']['calls']} / {cycle['counts']['messages']}",
        f"  one-after-another baseline       {seconds(seq['extrapolated_wall_s'])} EXTRAPOLATED linearly from a "
        f"{seq['sample_users']}-user sample of the same mix that took {seq['sample_wall_s']:.1f} s",
        f"  concurrent cycle vs baseline     {result['speedup_vs_sequential']:.0f}x faster",
    ]
    return "\n".join(lines)


def verdict(results: list[dict[str, Any]]) -> str:
    big = max(results, key=lambda r: r["users"])
    cycle = big["cycle"]
    checks = [
        (f"{big['users']:,} users' cycle within {TARGET_CYCLE_S:g} s", cycle["cycle_s"] <= TARGET_CYCLE_S,
         seconds(cycle["cycle_s"])),
        (f"every fast decision within {TARGET_FAST_DECIDED_S:g} s",
         (cycle["fast_decided_s"] or 0) <= TARGET_FAST_DECIDED_S, seconds(cycle["fast_decided_s"])),
        (f"poller RSS under {TARGET_RSS_MB:g} MB", cycle["peak_rss_mb"] < TARGET_RSS_MB, f"{cycle['peak_rss_mb']:.0f} MB"),
    ]
    if len(results) > 1:
        small = min(results, key=lambda r: r["users"])
        ratio = big["poller_cpu_ms_per_user"] / small["poller_cpu_ms_per_user"]
        checks.append(("poller CPU per user roughly constant (linear cost)", 0.5 <= ratio <= 1.5,
                       f"{small['poller_cpu_ms_per_user']:.2f} -> {big['poller_cpu_ms_per_user']:.2f} ms per user"))
    return "\n".join(f"  [{'met' if ok else 'MISSED'}] {name}: {value}" for name, ok, value in checks)


def main() -> None:
    cores = os.cpu_count() or 1
    print(f"Scout poll-cycle benchmark on {cores} cores ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}", flush=True)
    results = []
    sites = Sites()
    try:
        with tempfile.TemporaryDirectory(prefix="scout-bench-") as workdir:
            for size in SIZES:
                result = measure_size(size, sites, Path(workdir))
                results.append(result)
                print(report(result), flush=True)
    finally:
        sites.stop()
    print("Targets (issue 6):\n" + verdict(results))
    RESULTS_FILE.write_text(json.dumps({"cores": cores, "python": platform.python_version(),
                                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "results": results}, indent=2) + "\n")
    print(f"Results written to {RESULTS_FILE.name}")


if __name__ == "__main__":
    main()
