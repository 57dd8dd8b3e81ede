"""Real parts for the Cloud Tasks tests (tests/test_dispatch.py), all on 127.0.0.1:

- `TasksEmulator`: gcloud-tasks-emulator, in its own venv (scripts/test-deps.sh), with the
  shard queue (and the send queues, when asked) created. It dispatches each queue's tasks
  one at a time and ignores queue rates: what it shows is who sends, and how often, not at
  what pace;
- `AppEngineFront`: stands in for App Engine's front end. Its task port spreads the
  emulator's requests for each route over the instances, round robin, skipping instances
  that are gone,
  and answers 502 when an instance dies mid-request (as App Engine does, so Cloud Tasks
  retries). Its public port does the same for "outside" requests, but first removes every
  X-AppEngine-* header, as App Engine does for requests from the internet;
- `Instance`: `gunicorn notifier:app`, as app.yaml starts it, in its own process group so a
  test can kill the whole instance;
- `CountingNightscout`: one Nightscout site per user under /u/<id>/, counting each user's
  reads (and noting when each arrived), able to answer some users slowly and to hold one
  user's read until a test lets it go.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tests.test_deployment import free_port

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_PYTHON = ROOT / ".venv" / "tasks-emulator" / "bin" / "python"
QUEUE = "projects/scout-local/locations/local/queues/scout-poll"
CALL_QUEUE = "projects/scout-local/locations/local/queues/scout-calls"
MESSAGE_QUEUE = "projects/scout-local/locations/local/queues/scout-messages"
HOP_BY_HOP = {"connection", "host", "content-length", "transfer-encoding", "keep-alive"}


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class TasksEmulator:
    def __init__(self, log_path: Path, target_port: int, max_retries: int = 10,
                 queues: tuple[str, ...] = (QUEUE,)) -> None:
        if not EMULATOR_PYTHON.exists():
            raise AssertionError("the Cloud Tasks emulator is not installed: run `bash scripts/test-deps.sh`")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            [str(EMULATOR_PYTHON), str(ROOT / "tests" / "tasks_emulator" / "serve.py"), str(self.port),
             str(target_port), ",".join(queues), str(max_retries)],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: "Starting API server" in self.output() or self.process.poll() is not None, 30,
                 "the Cloud Tasks emulator to start")
        assert self.process.poll() is None, self.output()

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@dataclass
class Forwarded:
    task: str  # X-AppEngine-TaskName as the instance received it ("" if none)
    retry: str
    instance: int
    status: int
    path: str = ""
    queue: str = ""  # X-AppEngine-QueueName
    answer: bytes = b""  # the instance's answer


class AppEngineFront:
    def __init__(self) -> None:
        self.instances: list[str] = []  # base URLs
        self.forwarded: list[Forwarded] = []
        self.in_flight: Counter[int] = Counter()
        self._turns: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()
        self.task_port = self._serve(strip_app_engine_headers=False)
        self.public_port = self._serve(strip_app_engine_headers=True)

    def _serve(self, strip_app_engine_headers: bool) -> int:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                front.forward(self, strip_app_engine_headers)

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers = getattr(self, "_servers", []) + [server]
        return int(server.server_address[1])

    def forward(self, incoming: BaseHTTPRequestHandler, strip: bool) -> None:
        body = incoming.rfile.read(int(incoming.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in incoming.headers.items() if k.lower() not in HOP_BY_HOP
                   and not (strip and k.lower().startswith("x-appengine-"))}
        sent = {k.lower(): v for k, v in headers.items()}
        sent = {name: sent.get(name.lower(), "") for name in ("X-AppEngine-TaskName", "X-AppEngine-TaskRetryCount",
                                                              "X-AppEngine-QueueName")}
        status, answer = 503, b"no instance is serving"
        with self._lock:
            turn = self._turns.setdefault(incoming.path, itertools.count())
        for _ in range(len(self.instances)):
            index = next(turn) % len(self.instances)
            host, port = self.instances[index].rsplit("/", 1)[-1].split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            with self._lock:
                self.in_flight[index] += 1
            try:
                connection.request(incoming.command, incoming.path, body=body, headers=headers)
                response = connection.getresponse()
                status, answer = response.status, response.read()
            except ConnectionRefusedError:
                continue  # that instance is gone: the next one
            except (OSError, http.client.HTTPException):
                status, answer = 502, b"the instance died during the request"
            finally:
                connection.close()
                with self._lock:
                    self.in_flight[index] -= 1
            with self._lock:
                self.forwarded.append(Forwarded(sent.get("X-AppEngine-TaskName", ""),
                                                sent.get("X-AppEngine-TaskRetryCount", ""), index, status,
                                                incoming.path, sent.get("X-AppEngine-QueueName", ""), answer))
            break
        incoming.send_response(status)
        incoming.send_header("Content-Length", str(len(answer)))
        incoming.end_headers()
        incoming.wfile.write(answer)

    def done_tasks(self) -> set[str]:
        with self._lock:
            return {f.task for f in self.forwarded if f.status == 200 and f.task}

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


class Instance:
    """One App Engine instance: gunicorn serving Scout, its embedded poller off (the test
    runs the lease holder's cycles itself, or starts one instance with the poller on)."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"{name}.log"
        self.log = self.log_path.open("w")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "GOOGLE_", "FIREBASE_",
                                                                              "FIRESTORE_"))}
        full_env = {**inherited, **env, "PORT": str(self.port)}
        self.process = subprocess.Popen([sys.executable, "-m", "gunicorn", "notifier:app"], cwd=ROOT, env=full_env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            assert self.process.poll() is None, f"gunicorn {name} stopped:\n{self.output()}"
            try:
                requests.get(f"{self.base}/healthz", timeout=5)
                return True
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still importing
                return False

        try:
            wait_for(answers, 60, f"gunicorn {name} to answer", interval=0.2)
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        """The whole instance dies at once: master and workers, no clean-up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


class CountingNightscout:
    def __init__(self) -> None:
        self.reads: Counter[str] = Counter()
        self.low: set[str] = set()  # users whose latest reading is 55 mg/dL
        self.failing: set[str] = set()  # users whose site answers 500
        self.delay: dict[str, float] = {}  # users whose site takes this many seconds to answer
        self.arrivals: list[tuple[str, float]] = []  # (user, time.time()) of every read, in order
        self.hold: str | None = None  # this user's first read waits for `release`
        self.held = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        nightscout = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                nightscout.answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, user_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/u/{user_id}/"

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        parts = request.path.split("/")
        user_id = parts[2] if len(parts) > 2 and parts[1] == "u" else ""
        with self._lock:
            self.reads[user_id] += 1
            self.arrivals.append((user_id, time.time()))
            first = self.reads[user_id] == 1
        if user_id == self.hold and first:
            self.held.set()
            self.release.wait(60)
        if user_id in self.delay:
            time.sleep(self.delay[user_id])
        now_ms = int(time.time() * 1000)
        sgv = 55 if user_id in self.low else 120
        entries = [{"sgv": sgv, "date": now_ms - 60_000, "direction": "Flat", "type": "sgv", "device": "dexcom"},
                   {"sgv": sgv, "date": now_ms - 360_000, "direction": "Flat", "type": "sgv", "device": "dexcom"}]
        status, body = (500, b"down") if user_id in self.failing else (200, json.dumps(entries).encode())
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        except OSError:
            pass  # the instance that asked is gone

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
