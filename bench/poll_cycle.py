"""`make bench`: the poll cycle at 1,000, 10,000 and 50,000 users, with a realistic mix.

The mix (issue 11): 60% fast sites (5-50 ms), 15% slow (1-8 s before the headers), 5% hung,
3% trickling (headers, then a byte every 2 s), 2% huge (a 50 MB body), 3% refusing the
connection, 2% resetting it mid-response, 3% answering 500/502/503, 2% answering an HTML
page, and 5% out of range (on fast sites). A fifth of the users share one host:port; the
others are spread over the simulator's other ports. User ids are random (like Google's),
registered in random order, so nothing about a user's place in the store says how their
site behaves.

For each size: a fresh SQLite store, then two cycles of the real poller (`Poller(config)`,
console telephony, one process per core) in a process of its own. The first starts from
no history, as after a fresh install; between the two, the out-of-range users, who were
near the low threshold and falling, drop to 58 mg/dL. The second cycle is measured: when
the last at-risk user was called, when the fast users were decided, the cycle, the peak
RSS of every poller process together, and CPU per user. The simulated sites run in
processes of their own; their CPU is printed beside the poller's, with the machine's load.

The one-after-another baseline polls a 40-user sample of the same mix, one at a time
with Scout's timeouts, once; it is extrapolated linearly to each size (the real thing
would take hours at 10,000 users).

Results go to stdout and to bench-results.json. Traffic goes only to 127.0.0.1.
Set BENCH_SIZES (e.g. "1000,10000") to run fewer sizes.
"""
from __future__ import annotations

import json
import os
import platform
import random
import resource
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
SIZES = (1_000, 10_000, 50_000)
SAMPLE_SIZE = 40  # users in the one-after-another baseline sample
SITE_PROCESSES = 2
PORTS_PER_PROCESS = 16
SHARED_HOST_SHARE = 0.20
MIX = {  # the rest are fast
    "low": 0.05, "slow": 0.15, "hung": 0.05, "trickle": 0.03, "huge": 0.02, "refused": 0.03, "reset": 0.02,
    "e5xx": 0.03, "html": 0.02,
}
SERVER_ERRORS = ("e500", "e502", "e503")
FAST_KINDS = ("fast", "low")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# issue 11's targets on a 2-core machine
TARGETS = {
    10_000: {"last_call_s": 3.0, "fast_max_s": 5.0, "cycle_s": 20.0},
    50_000: {"fast_max_s": 15.0, "cycle_s": 50.0, "peak_rss_mb": 400.0},
}


def behaviours(size: int, seed: int = 11) -> list[str]:
    """Each user's site behaviour in the issue's proportions, shuffled."""
    kinds: list[str] = []
    for name, share in MIX.items():
        count = round(size * share)
        kinds += [SERVER_ERRORS[i % 3] for i in range(count)] if name == "e5xx" else [name] * count
    kinds += ["fast"] * (size - len(kinds))
    random.Random(seed).shuffle(kinds)
    return kinds


def stratified_sample(kinds: list[str], size: int) -> list[int]:
    """Indexes of `size` users with the same mix as the whole."""
    wanted = behaviours(size, seed=7)
    by_kind: dict[str, list[int]] = {}
    for index, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(index)
    return [by_kind[kind].pop() for kind in wanted]


class Sites:
    """The simulated Nightscout sites: SITE_PROCESSES processes of PORTS_PER_PROCESS ports."""

    def __init__(self) -> None:
        self.processes = []
        self.ports: list[int] = []
        self.refused_port = 0
        for _ in range(SITE_PROCESSES):
            process = subprocess.Popen([sys.executable, "-m", "bench.sites", str(PORTS_PER_PROCESS)], cwd=ROOT,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       stderr=subprocess.DEVNULL)
            assert process.stdout is not None
            words = process.stdout.readline().split()
            self.ports += [int(w) for w in words[1:words.index("REFUSED")]]
            self.refused_port = int(words[-1])
            self.processes.append(process)

    def url(self, kind: str, n: int, rng: random.Random) -> str:
        if kind == "refused":
            port = self.refused_port
        elif rng.random() < SHARED_HOST_SHARE:
            port = self.ports[0]  # the one shared host:port
        else:
            port = rng.choice(self.ports[1:])
        return f"http://127.0.0.1:{port}/{kind}/{n}"

    def phase(self, number: int) -> None:
        for process in self.processes:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(f"phase {number}\n")
            process.stdin.flush()
            process.stdout.readline()  # PHASE n: the change is made

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
        return total

    def stop(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def register(db_path: str, sites: Sites, kinds: list[str], indexes: list[int], seed: int) -> dict[str, str]:
    """Users with random ids, saved in random order; returns id -> behaviour."""
    rng = random.Random(seed)
    order = list(indexes)
    rng.shuffle(order)
    store = SqliteStore(db_path)
    ids: dict[str, str] = {}
    for n in order:
        user_id = f"{rng.getrandbits(64):021d}"
        ids[user_id] = kinds[n]
        store.save_user(User(
            id=user_id, email=f"user{n}@bench.example", name=f"User {n}",
            nightscout_url=sites.url(kinds[n], n, rng), phone=f"+1415555{n % 10000:04d}",
            emergency_contact=Contact(f"+1415666{n % 10000:04d}", "sms"),
            extra_contacts=(Contact(f"+1415777{n % 10000:04d}", "whatsapp"),),
        ))
    store.close()
    return ids


def socket_limits() -> str:
    """What bounds the poller's sockets on this machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    found = [f"open files {soft} (hard {hard}) per process"]
    for name, path in (("ephemeral ports", "/proc/sys/net/ipv4/ip_local_port_range"),
                       ("listen backlog (somaxconn)", "/proc/sys/net/core/somaxconn"),
                       ("tcp_tw_reuse", "/proc/sys/net/ipv4/tcp_tw_reuse")):
        try:
            found.append(f"{name} {' - '.join(Path(path).read_text().split())}")
        except OSError:
            pass
    return "; ".join(found)


def load() -> str:
    with open("/proc/loadavg") as file:
        return " ".join(file.read().split()[:3])


def measure_size(size: int, sites: Sites, workdir: Path) -> dict[str, Any]:
    sites.phase(1)
    kinds = behaviours(size)
    db_path = str(workdir / f"scout-{size}.sqlite3")
    kinds_path = workdir / f"kinds-{size}.json"
    kinds_path.write_text(json.dumps(register(db_path, sites, kinds, list(range(size)), seed=size)))
    load_before = load()
    with (workdir / f"cycle-{size}.log").open("w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "bench.cycle_worker", "cycles", db_path, str(kinds_path)],
                                  cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        assert worker.stdin is not None and worker.stdout is not None
        if worker.stdout.readline().strip() != "READY":
            raise SystemExit(f"the poller stopped during the first cycle; see {log.name}")
        sites.phase(2)  # the users near the low threshold are now out of range
        sites_cpu = sites.cpu_seconds()
        wall = time.monotonic()
        worker.stdin.write("go\n")
        worker.stdin.flush()
        output = worker.stdout.read()
        worker.wait()
        wall = time.monotonic() - wall
        sites_cpu = sites.cpu_seconds() - sites_cpu
    if worker.returncode != 0:
        raise SystemExit(f"the poller failed (exit {worker.returncode}); see {log.name}")
    cycle = json.loads(output.strip().splitlines()[-1])
    errors = [line for line in Path(log.name).read_text().splitlines() if " ERROR " in line]
    return {"users": size, "mix": {kind: kinds.count(kind) for kind in sorted(set(kinds))}, "cycle": cycle,
            "errors": len(errors), "first_error": errors[0] if errors else "",
            "sites_cpu_s": sites_cpu, "measured_wall_s": wall, "load_before": load_before, "load_after": load(),
            "poller_cpu_ms_per_user": 1000 * cycle["poller_cpu_s"] / size}


def measure_baseline(sites: Sites, workdir: Path) -> dict[str, Any]:
    kinds = behaviours(1_000)
    sample = stratified_sample(kinds, SAMPLE_SIZE)
    db_path = str(workdir / "sample.sqlite3")
    register(db_path, sites, kinds, sample, seed=7)
    with (workdir / "sequential.log").open("w") as log:
        done = subprocess.run([sys.executable, "-m", "bench.cycle_worker", "sequential", db_path], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=log, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["mix"] = {kind: [kinds[i] for i in sample].count(kind) for kind in sorted({kinds[i] for i in sample})}
    result["seconds_per_user"] = result["wall_s"] / result["users"]
    return result


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def report(result: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    c = result["cycle"]
    wall = c["cycle_s"]
    poller_cores = c["poller_cpu_s"] / wall
    sites_cores = result["sites_cpu_s"] / wall
    processes = ", ".join(f"#{p['partition']} {p['users']} users {p['cpu_s']:.1f} s CPU {p['peak_rss_mb']:.0f} MB"
                          for p in c["processes"])
    lanes = c["lanes"]
    lines = [
        f"== {result['users']:,} users; load before {result['load_before']}, after {result['load_after']} "
        f"(uptime: 1, 5, 15 min)",
        f"  lanes from the first cycle's history  {lanes['at_risk_first']} at risk first, "
        f"{lanes['main_lane'] - lanes['at_risk_first']} fast or new, {lanes['slow_lane']} in the slow lane",
        f"  cycle                                 {seconds(wall)}" + (f"  ERROR {c['error']}" if c["error"] else "")
        + f"   (first cycle, no history: {seconds(c['first_cycle_s'])})",
        f"  at-risk users called                  {c['at_risk_called']} of {c['at_risk_users']} "
        f"(other calls: {c['others_called']}); first {seconds(c['first_call_s'])}, "
        f"last {seconds(c['last_call_s'])} after the cycle start",
        f"  fast users decided (p50 / p99 / max)  {seconds(c['fast_p50_s'])} / {seconds(c['fast_p99_s'])} / "
        f"{seconds(c['fast_max_s'])} ({c['fast_users']} users)",
        f"  peak RSS, all poller processes        {c['peak_rss_mb']:.0f} MB (first cycle, every state new: "
        f"{c['first_cycle_peak_rss_mb']:.0f} MB)",
        f"  poller CPU                            {c['poller_cpu_s']:.2f} s = {result['poller_cpu_ms_per_user']:.3f} "
        f"ms per user  [{processes}]",
        f"  the 2 cores during the cycle          poller {poller_cores:.2f} cores, simulated sites "
        f"{sites_cores:.2f} cores ({result['sites_cpu_s']:.1f} s in {SITE_PROCESSES} processes), the rest "
        "other work on the machine",
        f"  sockets per poller process            {c['connections']['main']} main lane + "
        f"{c['connections']['slow']} slow lane",
        f"  outcomes                              {', '.join(f'{k} {v}' for k, v in c['outcomes'].items())}",
    ]
    if result["errors"]:
        lines.append(f"  ERROR lines in the poller's log       {result['errors']}; the first: {result['first_error'][:300]}")
    if baseline is not None:
        extrapolated = baseline["seconds_per_user"] * result["users"]
        lines.append(f"  one after another (extrapolated)      {extrapolated:,.0f} s, {extrapolated / wall:,.0f}x "
                     f"this cycle ({baseline['users']}-user sample took {baseline['wall_s']:.1f} s)")
    return "\n".join(lines)


def verdict(results: list[dict[str, Any]]) -> str:
    lines = []
    names = {"last_call_s": "every at-risk call within", "fast_max_s": "every fast user decided within",
             "cycle_s": "cycle within", "peak_rss_mb": "peak RSS under"}
    for result in results:
        for name, target in TARGETS.get(result["users"], {}).items():
            value = result["cycle"][name]
            unit = " MB" if name == "peak_rss_mb" else " s"
            met = value is not None and value <= target
            miss = "" if met or value is None else f", missed by {value - target:.1f}{unit}"
            lines.append(f"  [{'met' if met else 'MISSED'}] {result['users']:,} users: {names[name]} "
                         f"{target:g}{unit}: {value:.2f}{unit}{miss}")
    if len(results) > 1:
        small, big = results[0], results[-1]
        ratio = big["poller_cpu_ms_per_user"] / small["poller_cpu_ms_per_user"]
        lines.append(f"  [{'met' if 0.67 <= ratio <= 1.5 else 'MISSED'}] CPU per user flat: "
                     f"{small['poller_cpu_ms_per_user']:.3f} ms at {small['users']:,} -> "
                     f"{big['poller_cpu_ms_per_user']:.3f} ms at {big['users']:,} ({ratio:.2f}x)")
    return "\n".join(lines)


def main() -> None:
    sizes = tuple(int(s) for s in os.environ.get("BENCH_SIZES", "").split(",") if s.strip()) or SIZES
    cores = os.cpu_count() or 1
    print(f"Scout poll-cycle benchmark on {cores} cores ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}; poller: one process per core; sites: {SITE_PROCESSES} processes "
          f"x {PORTS_PER_PROCESS} ports", flush=True)
    print(f"Socket limits: {socket_limits()}", flush=True)
    results = []
    sites = Sites()
    try:
        with tempfile.TemporaryDirectory(prefix="scout-bench-") as workdir:
            for size in sizes:
                result = measure_size(size, sites, Path(workdir))
                results.append(result)
                print(report(result, None), flush=True)
            baseline = measure_baseline(sites, Path(workdir))
    finally:
        sites.stop()
    print(f"One after another: {baseline['users']} users of the same mix took {baseline['wall_s']:.1f} s "
          f"({baseline['seconds_per_user']:.2f} s per user); extrapolated:")
    for result in results:
        extrapolated = baseline["seconds_per_user"] * result["users"]
        print(f"  {result['users']:,} users: {extrapolated:,.0f} s, {extrapolated / result['cycle']['cycle_s']:,.0f}x "
              "the concurrent cycle")
    print("Targets (issue 11):\n" + verdict(results))
    RESULTS_FILE.write_text(json.dumps({"cores": cores, "python": platform.python_version(),
                                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "results": results, "baseline": baseline}, indent=2) + "\n")
    print(f"Results written to {RESULTS_FILE.name}")


if __name__ == "__main__":
    main()
