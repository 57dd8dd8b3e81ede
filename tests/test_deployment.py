"""gunicorn with several workers starts exactly one poller, and stops it on exit."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def test_gunicorn_with_3_workers_starts_one_poller(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SCOUT_DEV": "1", "SECRET_KEY": "x", "SCOUT_DB": str(tmp_path / "s.sqlite3"),
           "PORT": str(port), "WEB_CONCURRENCY": "3"}
    log = (tmp_path / "gunicorn.log").open("w+")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "notifier:app"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code in (200, 503):
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        while time.time() < deadline and "poller started" not in Path(log.name).read_text():
            time.sleep(0.2)
        time.sleep(1.0)
        kids = children(server.pid)
        supervisors = [p for p in kids if "supervisor_main" in cmdline(p)]
        workers = [p for p in kids if "gunicorn" in cmdline(p)]
        assert len(workers) == 3, Path(log.name).read_text()
        assert len(supervisors) == 1
        pollers = [p for p in children(supervisors[0]) if "spawn_main" in cmdline(p) and "resource_tracker" not in cmdline(p)]
        assert len(pollers) == 1
        assert Path(log.name).read_text().count("poller started") == 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
    time.sleep(0.5)
    assert not Path(f"/proc/{supervisors[0]}").exists() or "supervisor_main" not in cmdline(supervisors[0])


def test_the_foreground_poller_stops_cleanly_on_sigterm_and_sigint(tmp_path: Path) -> None:
    env = {**os.environ, "SCOUT_DEV": "1", "SECRET_KEY": "x", "SCOUT_DB": str(tmp_path / "s.sqlite3")}
    for signum in (signal.SIGTERM, signal.SIGINT):
        poller = subprocess.Popen([sys.executable, "-m", "flask", "--app", "notifier", "poller"], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert poller.stdout is not None
        deadline = time.time() + 30
        seen = ""
        while time.time() < deadline and "polling every minute at :30" not in seen:
            seen += poller.stdout.readline()
        poller.send_signal(signum)
        out, _ = poller.communicate(timeout=15)
        assert poller.returncode == 0, seen + out
        assert "poller stopped" in out
