"""Health checks that mean one thing each.

- `/healthz/live`: this instance's web process answers. No I/O: restarting an instance
  cannot fix a store outage, so liveness never depends on the store (App Engine's
  liveness_check).
- `/healthz/ready`: this instance can serve: its store answers. The probe is bounded
  (READY_TIMEOUT) and its answer is kept for CACHE_SECONDS, so health checks cost at most
  one store read per process every few seconds (App Engine's readiness_check).
- `/healthz/poller`: the poller's freshness, for monitoring and alerting (a Cloud
  Monitoring uptime check, docs/operations.md), never for restarting instances: the last
  poll cycle (any instance) and this instance's own poller (its heartbeat file).
- `/healthz`: everything at once (ready and poller fresh), for people and for monitors set
  up before the split. App Engine must not use it: a stalled poller would take the site down.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from models import CycleRecord, Store
from scout.config import Config
from scout.context import get_config, get_store
from scout.heartbeat import read_heartbeat

FRESH_WITHIN = 180.0  # a poll cycle should finish every minute; three missed is an alarm
READY_TIMEOUT = 3.0  # App Engine gives a health check 5 s
CACHE_SECONDS = 5.0

bp = Blueprint("health", __name__)


@dataclass(frozen=True)
class Probe:
    """What one read of the store found: the last cycle record, or why it failed."""

    at: float
    ok: bool
    record: CycleRecord | None = None
    error: str = ""


class StoreProbe:
    """Reads the last cycle record in a thread of its own, waits at most `timeout`, and
    keeps the answer for `cache_seconds`. While a read is in flight, callers wait for that
    one instead of starting another: a hung store holds at most one thread per process."""

    def __init__(self, store: Callable[[], Store], timeout: float = READY_TIMEOUT,
                 cache_seconds: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Probe | None = None
        self._in_flight: threading.Event | None = None
        self.reads = 0

    def result(self) -> Probe:
        with self._lock:
            last = self._last
            if last is not None and self._clock() - last.at < self.cache_seconds:
                return last
            done = self._in_flight
            if done is None:
                done = self._in_flight = threading.Event()
                threading.Thread(target=self._read, args=(done,), name="store-probe", daemon=True).start()
        if done.wait(self.timeout):
            assert self._last is not None
            return self._last
        return Probe(self._clock(), ok=False, error=f"the store did not answer within {self.timeout:g} s")

    def _read(self, done: threading.Event) -> None:
        try:
            self.reads += 1
            probe = Probe(self._clock(), ok=True, record=self._store().last_cycle())
        except Exception as exc:  # any failure to read means "not ready", with the reason
            probe = Probe(self._clock(), ok=False, error=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._last = probe
            self._in_flight = None
        done.set()


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def poller_report(config: Config, probe: Probe, now: float) -> dict[str, Any]:
    """The poller's freshness: the last cycle any instance finished, and this instance's
    poller (when it runs one)."""
    report: dict[str, Any] = {"fresh_within_s": FRESH_WITHIN}
    if not probe.ok:
        cycle: dict[str, Any] = {"fresh": False, "error": probe.error}
    elif probe.record is None:
        cycle = {"fresh": False, "error": "no poll cycle has finished yet"}
    else:
        age = now - probe.record.finished_at
        cycle = {"fresh": age <= FRESH_WITHIN, "finished_at": _iso(probe.record.finished_at),
                 "seconds_ago": round(age, 1), "summary": probe.record.summary}
    report["last_cycle"] = cycle
    fresh = bool(cycle["fresh"])
    if config.poller == "embedded":
        beat = read_heartbeat(config)
        if beat is None:
            mine: dict[str, Any] = {"fresh": False, "error": "this instance's poller has not run a cycle yet"}
        else:
            age = now - float(beat["at"])
            mine = {"fresh": age <= FRESH_WITHIN, "ran_at": _iso(float(beat["at"])), "seconds_ago": round(age, 1),
                    "acted": bool(beat.get("acted")), "error": str(beat.get("error") or "")}
        report["this_instance"] = mine
        fresh = fresh and bool(mine["fresh"])
    report["fresh"] = fresh
    return report


def _probe() -> Probe:
    probe: StoreProbe | None = current_app.extensions.get("scout_health")
    if probe is None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def store() -> Store:
            with app.app_context():
                return get_store()

        probe = current_app.extensions.setdefault("scout_health", StoreProbe(store))
    return probe.result()


def _answer(body: dict[str, Any], healthy: bool) -> tuple[Response, int]:
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, 200 if healthy else 503


@bp.get("/healthz/live")
def live() -> tuple[Response, int]:
    return _answer({"live": True}, True)


@bp.get("/healthz/ready")
def ready() -> tuple[Response, int]:
    probe = _probe()
    body: dict[str, Any] = {"ready": probe.ok, "store": "reachable" if probe.ok else probe.error}
    return _answer(body, probe.ok)


@bp.get("/healthz/poller")
def poller() -> tuple[Response, int]:
    report = poller_report(get_config(), _probe(), time.time())
    return _answer(report, report["fresh"])


@bp.get("/healthz")
def overall() -> tuple[Response, int]:
    probe = _probe()
    report = poller_report(get_config(), probe, time.time())
    healthy = probe.ok and report["fresh"]
    return _answer({"healthy": healthy, "ready": probe.ok, "poller": report}, healthy)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
