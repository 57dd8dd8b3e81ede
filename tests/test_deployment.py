"""gunicorn with several workers starts exactly one poller, and stops it on exit."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
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


class Gunicorn:
    """`gunicorn notifier:app` as `make run` starts it, on a free port, in dev mode."""

    def __init__(self, tmp_path: Path, **settings: str) -> None:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}  # `make run` sets none
        env.update(SCOUT_DEV="1", SCOUT_DB=str(tmp_path / "s.sqlite3"), PORT=str(port), **settings)
        self.log = (tmp_path / "gunicorn.log").open("w+")
        self.process = subprocess.Popen([sys.executable, "-m", "gunicorn", "notifier:app"], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                requests.get(f"{self.base}/healthz/live", timeout=5)
                return
            except (requests.ConnectionError, requests.Timeout):  # a worker still booting on a loaded machine
                if time.time() > deadline:
                    raise AssertionError(f"gunicorn did not answer within 30 s:\n{self.output()}") from None
                time.sleep(0.2)

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def sign_in(self, browser: requests.Session, email: str) -> str:
        """Sign in with the dev form; returns the settings page's CSRF token."""
        page = browser.get(f"{self.base}/", timeout=5).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token, page
        signed_in = browser.post(f"{self.base}/dev/login", timeout=5, data={
            "csrf_token": token.group(1), "email": email, "name": "Ana"})
        assert signed_in.status_code == 200, self.output()
        token = re.search(r'name="csrf_token" value="([^"]+)"', signed_in.text)
        assert token, signed_in.text
        return token.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        self.log.close()


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(**settings: str) -> Gunicorn:
        started.append(Gunicorn(tmp_path, **settings))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def test_gunicorn_with_3_workers_starts_one_poller(gunicorn: Callable[..., Gunicorn]) -> None:
    server = gunicorn(WEB_CONCURRENCY="3")
    deadline = time.time() + 30
    while time.time() < deadline and "poller started" not in server.output():
        time.sleep(0.2)
    time.sleep(1.0)
    kids = children(server.process.pid)
    supervisors = [p for p in kids if "supervisor_main" in cmdline(p)]
    workers = [p for p in kids if "gunicorn" in cmdline(p)]
    assert len(workers) == 3, server.output()
    assert len(supervisors) == 1
    pollers = [p for p in children(supervisors[0]) if "spawn_main" in cmdline(p) and "resource_tracker" not in cmdline(p)]
    assert len(pollers) == 1
    assert server.output().count("poller started") == 1
    server.stop()
    time.sleep(0.5)
    assert not Path(f"/proc/{supervisors[0]}").exists() or "supervisor_main" not in cmdline(supervisors[0])


def test_a_dev_sign_in_holds_across_gunicorn_workers_without_a_secret_key(
    tmp_path: Path, gunicorn: Callable[..., Gunicorn]
) -> None:
    """`make run` sets no SECRET_KEY: every worker must still accept the others' session cookie."""
    server = gunicorn(WEB_CONCURRENCY="3")
    pages = []
    for attempt in range(4):  # fresh connections, so the requests land on different workers
        with requests.Session() as browser:
            server.sign_in(browser, f"ana{attempt}@example.com")
            for _ in range(6):
                pages.append(browser.get(f"{server.base}/", timeout=5, headers={"Connection": "close"}).text)
    assert all("Sign out" in page for page in pages), server.output()
    key_file = tmp_path / "dev-secret-key"
    assert len(key_file.read_text()) == 64 and key_file.stat().st_mode & 0o077 == 0


def test_a_request_waiting_on_a_hung_nightscout_does_not_hold_up_the_others(
    gunicorn: Callable[..., Gunicorn]
) -> None:
    """One worker: while "Check my Nightscout" waits for a site that never answers, the
    worker's other threads still serve pages and health checks."""
    hung_site = socket.socket()
    hung_site.bind(("127.0.0.1", 0))
    hung_site.listen(8)  # accepts connections, never answers
    server = gunicorn(WEB_CONCURRENCY="1")
    try:
        with requests.Session() as browser:
            token = server.sign_in(browser, "ana@example.com")
            saved = browser.post(f"{server.base}/", timeout=5, data={
                "csrf_token": token, "nightscout_url": f"http://127.0.0.1:{hung_site.getsockname()[1]}",
                "phone": "+14155550100", "emergency_contact": "+14155550101", "emergency_channel": "sms",
                "units": "mg/dL", "low": "70", "high": "240"})
            assert "Saved." in saved.text, saved.text
            with ThreadPoolExecutor(1) as pool:
                check = pool.submit(browser.post, f"{server.base}/check-nightscout", data={"csrf_token": token},
                                    timeout=30)
                time.sleep(1.0)
                assert not check.done()  # still waiting for the hung site
                started = time.monotonic()
                assert requests.get(f"{server.base}/healthz", timeout=5).status_code in (200, 503)
                assert "Sign out" in requests.get(f"{server.base}/", timeout=5, cookies=browser.cookies).text
                assert time.monotonic() - started < 2.0
                assert not check.done()
                answer = check.result()
        assert "did not answer" in answer.text or "timed out" in answer.text.lower(), answer.text[-3000:]
    finally:
        hung_site.close()
