"""`make replay`: simulated type 1 days through the real poller, and what they cost people.

Each patient-day (bench/t1d_days.py, simglucose with a fixed seed) is served by a local
Nightscout double on 127.0.0.1 that shows each CGM reading one minute after it was taken.
The real `Poller` polls every user each minute at :30 on a controlled clock, deciding,
recording and sending as in production, through a messenger that plays the people: a call
is answered with a 1 by day (07:00 to 22:00) most of the time and rarely at night.

Printed per patient-day, for Scout and beside it for Nightscout's simple alarms on the same
readings and the same people: calls (alarms), texts, hypoglycaemia episodes of the simulated
true glucose (below 70 and below 54 mg/dL for at least 15 minutes) and how many were caught,
the minutes from each episode's start to the first call about it, and the calls made while
the true glucose was in range. A benchmark, not a test: it prints figures, it asserts nothing.
"""
from __future__ import annotations

import calendar
import json
import logging
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.t1d_days import PATIENTS, SAMPLE_MINUTES, Day, Sample, simulate_day
from models import Contact, User
from scout.alerts import ACKNOWLEDGED, UNANSWERED
from scout.config import load_config
from scout.poller import Poller
from scout.store.sqlite import SqliteStore
from scout.telephony.base import CallPlaced

DAY = datetime(2026, 1, 5)
DAY_START = float(calendar.timegm(DAY.timetuple()))
UPLOAD_DELAY = 60.0  # seconds from a reading to its arrival on Nightscout
LOW, HIGH = 70.0, 240.0  # the users' thresholds: Scout's defaults
EPISODE_MINUTES = 15  # a hypoglycaemia episode lasts at least this long
CAUGHT_EARLY_MINUTES = 30  # a call up to this long before an episode's start counts for it
SEED = 15

# Nightscout's simple alarms (its `simplealarms` plugin) with the same range as Scout's users:
# BG_TARGET_BOTTOM/TOP 70/240, and its own BG_LOW 55 and BG_HIGH 260. A snooze lasts the first
# of Nightscout's ALARM_*_MINS options: 15 minutes for lows, 30 for highs.
NS_LEVELS = (("urgent low", lambda v: v < 55), ("low", lambda v: v < LOW),
             ("urgent high", lambda v: v > 260), ("high", lambda v: v > HIGH))
NS_SNOOZE = {"urgent low": 15, "low": 15, "high": 30, "urgent high": 30}
NS_SEVERITY = {"low": 1, "urgent low": 2, "high": 1, "urgent high": 2}


def answers(rng: random.Random, at: float) -> bool:
    """Whether the person answers an alarm at `at` with a 1: mostly by day, rarely asleep."""
    hour = ((at - DAY_START) / 3600) % 24
    return rng.random() < (0.75 if 7 <= hour < 22 else 0.15)


# --- the Nightscout double ------------------------------------------------------


class Sites:
    """One Nightscout per patient-day at http://127.0.0.1:PORT/<index>/, on the replay clock."""

    def __init__(self, days: list[Day], clock: ReplayClock) -> None:
        sites = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                index, _, rest = parts.path.strip("/").partition("/")
                if rest != "api/v1/entries/sgv.json" or not index.isdigit() or int(index) >= len(days):
                    self.send_error(404)
                    return
                count = int(parse_qs(parts.query).get("count", ["10"])[0])
                body = json.dumps(sites.entries(days[int(index)], count)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.clock = clock
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def entries(self, day: Day, count: int) -> list[dict[str, object]]:
        shown = [s for s in day.samples if s.uploaded and DAY_START + s.minute * 60 + UPLOAD_DELAY <= self.clock.now]
        newest = shown[-count:][::-1]
        return [entry(s, shown[len(shown) - 2 - i] if len(shown) - 2 - i >= 0 else None)
                for i, s in enumerate(newest)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def direction(sample: Sample, before: Sample | None) -> str:
    """The trend arrow a Dexcom gives, from the change per minute since the reading before."""
    if before is None or sample.minute - before.minute > 11:
        return "NONE"
    rate = (sample.cgm - before.cgm) / (sample.minute - before.minute)
    for limit, name in ((3, "DoubleUp"), (2, "SingleUp"), (1, "FortyFiveUp"), (-1, "Flat"), (-2, "FortyFiveDown"),
                        (-3, "SingleDown")):
        if rate > limit:
            return name
    return "DoubleDown"


def entry(sample: Sample, before: Sample | None) -> dict[str, object]:
    date_ms = int((DAY_START + sample.minute * 60) * 1000)
    return {"_id": f"{date_ms:x}", "type": "sgv", "sgv": sample.cgm, "date": date_ms, "device": "dexcom",
            "direction": direction(sample, before)}


# --- the people -------------------------------------------------------------------


@dataclass
class ReplayClock:
    now: float = DAY_START


@dataclass
class SentCall:
    at: float
    to: str
    kind: str  # the episode's kind: low | high
    acknowledged: bool


@dataclass
class SimulatedPeople:
    """A messenger whose calls reach simulated people (a Messenger, not a stand-in for Scout's
    code: the poller, engine and store under replay are the real ones)."""

    clock: ReplayClock
    name: str = "replay"
    calls: list[SentCall] = field(default_factory=list)
    texts: list[tuple[float, str, str]] = field(default_factory=list)
    _rngs: dict[str, random.Random] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def place_call(self, to: str, speech: str, call_key: str) -> CallPlaced:
        with self._lock:
            rng = self._rngs.setdefault(to, random.Random(f"{SEED}:{to}"))
            acknowledged = answers(rng, self.clock.now)
            kind = call_key.split(":")[1].split("-")[0]
            self.calls.append(SentCall(self.clock.now, to, kind, acknowledged))
            call_id = f"replay-call-{len(self.calls)}"
        if acknowledged:
            return CallPlaced(call_id, ACKNOWLEDGED, "pressed 1")
        return CallPlaced(call_id, UNANSWERED, "asleep or away")

    def send_message(self, to: str, channel: str, body: str) -> str:
        with self._lock:
            self.texts.append((self.clock.now, to, body))
            return f"replay-text-{len(self.texts)}"


# --- what happened --------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    start: float  # seconds since the epoch
    end: float


def episodes(day: Day, below: float) -> list[Episode]:
    """Runs of the true glucose below `below` lasting at least EPISODE_MINUTES."""
    found, start = [], None
    for sample in day.samples:
        at = DAY_START + sample.minute * 60
        if sample.true_mgdl < below and start is None:
            start = at
        elif sample.true_mgdl >= below and start is not None:
            if at - start >= EPISODE_MINUTES * 60:
                found.append(Episode(start, at))
            start = None
    end = DAY_START + day.samples[-1].minute * 60 + SAMPLE_MINUTES * 60
    if start is not None and end - start >= EPISODE_MINUTES * 60:
        found.append(Episode(start, end))
    return found


def true_glucose_at(day: Day, at: float) -> float:
    minute = (at - DAY_START) / 60
    before = [s for s in day.samples if s.minute <= minute]
    return (before[-1] if before else day.samples[0]).true_mgdl


def first_call_minutes(episode: Episode, low_calls: list[float]) -> float | None:
    times = [at for at in low_calls if episode.start - CAUGHT_EARLY_MINUTES * 60 <= at <= episode.end]
    return (min(times) - episode.start) / 60 if times else None


@dataclass
class Figures:
    calls: int
    texts: int | None
    delays: dict[int, list[float | None]]  # per threshold (70, 54), minutes to the first call, None if missed
    in_range_calls: int
    contact_calls: int | None = None  # calls to the user's contacts (Scout's ladder); None: no such thing

    def row(self, label: str, who: str) -> str:
        texts = "-" if self.texts is None else str(self.texts)
        contact_calls = "-" if self.contact_calls is None else str(self.contact_calls)
        cells = [f"{label:<20}{who:<13}{self.calls:>6}{contact_calls:>9}{texts:>7}"]
        for below in (70, 54):
            delays = self.delays[below]
            caught = sum(d is not None for d in delays)
            minutes = " ".join("miss" if d is None else f"{d:.0f}" for d in delays) or "-"
            cells.append(f"{len(delays):>7}{caught:>7}  {minutes:<17}")
        cells.append(f"{self.in_range_calls:>9}")
        return "".join(cells)


def figures(day: Day, calls: list[tuple[float, str]], texts: int | None, contact_calls: int | None = None) -> Figures:
    """The figures of one patient-day from the calls to the person (time, kind of episode)."""
    low_calls = [at for at, kind in calls if kind == "low"]
    delays = {below: [first_call_minutes(e, low_calls) for e in episodes(day, below)] for below in (70, 54)}
    in_range = sum(LOW <= true_glucose_at(day, at) <= HIGH for at, _ in calls)
    return Figures(len(calls), texts, delays, in_range, contact_calls)


def nightscout_simple_alarms(day: Day) -> list[tuple[float, str]]:
    """When Nightscout's simple alarms would sound on the same readings, for the same person:
    a new alarm at a reading out of range unless one is sounding or snoozed at that level or
    worse; answered (snoozed) as often as Scout's calls are, else it sounds until back in range."""
    rng = random.Random(f"{SEED}:nightscout:{day.patient}")
    alarms: list[tuple[float, str]] = []
    sounding, snoozed_level, snoozed_until = "", "", 0.0
    for sample in (s for s in day.samples if s.uploaded):
        at = DAY_START + sample.minute * 60 + UPLOAD_DELAY
        level = next((name for name, test in NS_LEVELS if test(sample.cgm)), "")
        if not level:
            sounding, snoozed_level, snoozed_until = "", "", 0.0
            continue
        worse_than = sounding or (snoozed_level if at < snoozed_until else "")
        if worse_than and worse_than.split()[-1] == level.split()[-1] and NS_SEVERITY[level] <= NS_SEVERITY[worse_than]:
            continue
        alarms.append((at, level.split()[-1]))
        if answers(rng, at):
            sounding, snoozed_level, snoozed_until = "", level, at + NS_SNOOZE[level] * 60
        else:
            sounding = level
    return alarms


# --- the replay ---------------------------------------------------------------------


# Each patient-day is watched twice in the same replay: by Scout's defaults, and with the
# early warnings on (a low predicted within 20 minutes, a fast drop of 3 mg/dL a minute).
VARIANTS: dict[str, dict[str, Any]] = {"Scout": {}, "Scout+early": {"predict_low_minutes": 20, "fast_drop": True}}


def phone_of(variant: int, index: int, role: int = 5) -> str:
    """Numbers by variant, patient-day and role (5: the user, 6: emergency contact, 7: extra)."""
    return f"+1415{role}{variant}{index:05d}"


def register(store: SqliteStore, days: list[Day], port: int) -> None:
    for variant, settings in enumerate(VARIANTS.values()):
        for index in range(len(days)):
            store.save_user(User(
                id=f"replay-{variant}-{index}", email=f"patient{variant}-{index}@replay.example",
                name=f"Patient {index}", nightscout_url=f"http://127.0.0.1:{port}/{index}/",
                phone=phone_of(variant, index), emergency_contact=Contact(phone_of(variant, index, 6), "sms"),
                extra_contacts=(Contact(phone_of(variant, index, 7), "whatsapp"),), low_mgdl=LOW, high_mgdl=HIGH,
                **settings,
            ))


def replay(days: list[Day], workdir: Path) -> SimulatedPeople:
    clock = ReplayClock()
    sites = Sites(days, clock)
    people = SimulatedPeople(clock)
    config = load_config({"SCOUT_DEV": "1", "SECRET_KEY": "replay", "SCOUT_DB": str(workdir / "replay.sqlite3")})
    store = SqliteStore(config.db_path)
    register(store, days, sites.port)
    poller = Poller(config, store=store, messenger=people, clock=lambda: clock.now, workers=4)
    try:
        for minute in range(24 * 60):
            clock.now = DAY_START + minute * 60 + 30
            poller.run_cycle()
    finally:
        poller.close()
        store.close()
        sites.stop()
    return people


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    days_each = int(os.environ.get("REPLAY_DAYS", "2"))
    started = time.monotonic()
    days = [simulate_day(patient, SEED + n) for n in range(days_each) for patient in PATIENTS]
    simulated = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="scout-replay-") as workdir:
        people = replay(days, Path(workdir))
    replayed = time.monotonic() - started - simulated
    print(f"Scout replay: {len(days)} simulated patient-days (simglucose, seed {SEED}, imperfect meal boluses), "
          f"range {LOW:.0f}-{HIGH:.0f} mg/dL, polled each minute by the real poller")
    print("Calls answered with a 1: 75% from 07:00 to 22:00, 15% at night. 'first call' lists, per episode of the "
          "true glucose, the minutes from its start to the first low call (negative: before it; miss: none).")
    header = (f"{'patient-day':<20}{'who':<13}{'calls':>6}{'contacts':>9}{'texts':>7}"
              f"{'<70: n':>7}{'caught':>7}  {'first call (min)':<17}{'<54: n':>7}{'caught':>7}  {'first call (min)':<17}"
              f"{'in-range':>9}")
    print(header)
    print("-" * len(header))
    totals: dict[str, list[Figures]] = {**{name: [] for name in VARIANTS}, "NS simple": []}
    for index, day in enumerate(days):
        label = f"{day.patient}/{day.seed}"
        for variant, name in enumerate(VARIANTS):
            phone = phone_of(variant, index)
            calls = [(c.at, c.kind) for c in people.calls if c.to == phone]
            everyone = {phone, phone_of(variant, index, 6), phone_of(variant, index, 7)}
            texts = sum(to in everyone for _, to, _ in people.texts)
            contact_calls = sum(c.to in everyone - {phone} for c in people.calls)
            totals[name].append(figures(day, calls, texts, contact_calls))
            print(totals[name][-1].row(label if variant == 0 else "", name))
        ns = figures(day, nightscout_simple_alarms(day), None)
        totals["NS simple"].append(ns)
        print(ns.row("", "NS simple"))
    print("-" * len(header))
    for who, rows in totals.items():
        caught = {b: [d for f in rows for d in f.delays[b]] for b in (70, 54)}
        summary = ", ".join(
            f"<{b}: {sum(d is not None for d in caught[b])}/{len(caught[b])} caught, median first call "
            f"{statistics.median([d for d in caught[b] if d is not None]):.0f} min"
            if any(d is not None for d in caught[b]) else f"<{b}: 0/{len(caught[b])} caught"
            for b in (70, 54))
        text_total = "-" if rows[0].texts is None else str(sum(f.texts or 0 for f in rows))
        contacts = "" if rows[0].contact_calls is None else f", contact calls {sum(f.contact_calls or 0 for f in rows)}"
        print(f"{who:<12} calls {sum(f.calls for f in rows)}{contacts}, texts {text_total}, {summary}, "
              f"in-range calls {sum(f.in_range_calls for f in rows)}")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"simulation {simulated:.0f} s, replay {replayed:.0f} s; {load}")


if __name__ == "__main__":
    main()
