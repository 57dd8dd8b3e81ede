"""CGM traces replayed through the real poller, store, SDKs and webhooks, with a
controlled clock: the shapes real Nightscout sites produce (Dexcom's LOW and HIGH,
error codes, meter and calibration records, duplicates, uploader clocks that are off)
and providers that enforce their rate limits (1 and 3 calls per second, 429 beyond)."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from models import AlertState, LogEntry
from scout.config import Config, load_config
from scout.context import WEBHOOK_NIGHTSCOUT_TIMEOUT
from scout.engine import Engine
from scout.poller import CycleSummary, Poller, rules_from
from scout.store.sqlite import SqliteStore
from scout.telephony import make_messenger
from scout.web import create_app
from tests.conftest import make_user
from tests.fake_providers import FakeProviders, callbacks_for
from tests.telephony_setup import EMERGENCY, USER_PHONE, twilio_env, vonage_env

START = 1_800_000_000.0
MINUTE = 60.0


class Site:
    """One user's Nightscout: entries as the uploader stored them, served newest date first."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.down = False

    def upload(self, sgv: float, date: float, device: str = "dexcom", **extra: Any) -> dict[str, Any]:
        entry = {"_id": f"{len(self.entries):024x}", "type": "sgv", "sgv": sgv, "date": int(date * 1000),
                 "dateString": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(date)), "device": device,
                 "direction": "Flat", **extra}
        self.entries.append(entry)
        return entry

    def answer(self, request: Request) -> Response:
        if self.down:
            return Response("upstream error", status=502)
        count = int(request.args.get("count", "10"))
        sgv_only = "/sgv.json" in request.path
        shown = [e for e in self.entries if not sgv_only or e.get("type") == "sgv"]
        shown.sort(key=lambda e: e["date"], reverse=True)
        return Response(json.dumps(shown[:count]), content_type="application/json")


class Trace:
    """Scout as deployed (the poller and the web app on one SQLite store) watching users
    whose Nightscout sites are local, with a clock the test moves."""

    def __init__(self, config: Config, fake: FakeProviders, server: HTTPServer) -> None:
        self.config, self.fake, self.server = config, fake, server
        self.store = SqliteStore(config.db_path)
        self.sites: dict[str, Site] = {}
        self.now = START
        server.expect_request(re.compile(r"^/(?P<user>[^/]+)/api/v1/entries.*")).respond_with_handler(self._route)
        self.app = create_app(config, self.store)
        self.app.testing = True
        # the web app's engine (the webhooks') reads the same controlled clock as the poller
        self.app.extensions["scout_engine"] = Engine(
            store=self.store, messenger=make_messenger(config), rules=rules_from(config), allow_private=True,
            nightscout_timeout=WEBHOOK_NIGHTSCOUT_TIMEOUT, clock=lambda: self.now)
        self.client = self.app.test_client()
        self.poller = Poller(config, store=self.store, clock=lambda: self.now, workers=4)

    def _route(self, request: Request) -> Response:
        return self.sites[request.path.split("/")[1]].answer(request)

    def add_user(self, user_id: str = "ana", **changes: Any) -> Site:
        site = self.sites[user_id] = Site()
        phone = changes.pop("phone", USER_PHONE)
        self.store.save_user(make_user(self.server.url_for(f"/{user_id}/"), id=user_id, email=f"{user_id}@example.com",
                                       name=user_id.capitalize(), phone=phone, **changes))
        return site

    def poll(self, after: float = 0.0) -> CycleSummary:
        self.now += after
        return self.poller.run_cycle()

    def log(self, user_id: str = "ana") -> list[LogEntry]:
        return sorted(self.store.user_log(user_id, limit=500), key=lambda e: e.created_at)

    def calls(self) -> list[str]:
        """What each call the provider accepted says."""
        spoken = []
        for request in self.fake.answered("twilio.calls") + self.fake.answered("vonage.calls"):
            spoken.append(request.field("Twiml") if request.api == "twilio.calls" else json.dumps(request.json["ncco"]))
        return spoken

    def texts(self, purpose: str | None = None, user_id: str = "ana") -> list[str]:
        return [e.body for e in self.log(user_id) if e.kind != "call" and (purpose is None or e.purpose == purpose)]

    def state(self, user_id: str = "ana") -> AlertState:
        return self.store.get_state(user_id)[0]

    def post(self, callback: Any) -> int:
        data = callback.form if callback.form is not None else callback.body
        return int(self.client.post(callback.path_and_query, data=data, headers=callback.headers).status_code)

    def finish_last_call(self, status: str, digits: str = "") -> list[int]:
        callbacks = callbacks_for(self.fake.last_call(), status, digits, auth_token=self.config.get("TWILIO_AUTH_TOKEN"),
                                  signature_secret=self.config.get("NEXMO_SIGNATURE_SECRET"))
        return [self.post(c) for c in callbacks]

    def close(self) -> None:
        self.poller.close()
        self.store.close()


@pytest.fixture
def trace(telephony_config: Config, fake: FakeProviders, httpserver: HTTPServer) -> Iterator[Trace]:
    instance = Trace(telephony_config, fake, httpserver)
    yield instance
    instance.close()


def make_trace(tmp_path: Path, fake: FakeProviders, server: HTTPServer, provider: str, key_pem: bytes,
               **env: str) -> Trace:
    settings = twilio_env(tmp_path, fake, **env) if provider == "twilio" else vonage_env(tmp_path, fake, key_pem, **env)
    return Trace(load_config(settings), fake, server)


NO_ANSWER = {"twilio": "no-answer", "vonage": "unanswered"}


# --- Dexcom's sentinels and error codes ---------------------------------------------------


def test_a_dexcom_low_calls_and_says_below_40(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(45, START - 6 * MINUTE)
    site.upload(39, START - MINUTE)  # Dexcom LOW, stored as 39
    summary = trace.poll()
    assert summary.counts["calls"] == 1
    (spoken,) = trace.calls()
    assert "your blood glucose is below 40 milligrams per deciliter" in spoken


def test_a_dexcom_low_in_mmol_says_below_2_2(trace: Trace) -> None:
    site = trace.add_user(units="mmol/L", low_mgdl=3.9 * 18, high_mgdl=10 * 18)
    site.upload(39, START - MINUTE, device="share2")
    trace.poll()
    assert "below 2.2 millimoles per liter" in trace.calls()[0]


def test_a_dexcom_high_calls_and_says_above_400(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(401, START - MINUTE)
    trace.poll()
    assert "above 400 milligrams per deciliter" in trace.calls()[0]


def test_error_codes_never_call_and_the_no_reading_text_names_the_error(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(120, START - 2 * MINUTE)
    trace.poll()
    for minute in range(1, 36):
        if minute % 5 == 0:
            site.upload(9 if minute > 20 else 5, START + minute * MINUTE)  # ?NC, then hourglass
        summary = trace.poll(after=MINUTE)
        assert summary.counts["calls"] == 0
    (text,) = trace.texts("no_data")
    assert "no new glucose reading for 30 minutes" in text
    assert "Your sensor reports an error: hourglass (?AD)" in text
    assert trace.calls() == []


def test_meter_and_calibration_records_and_duplicates_are_not_readings(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(110, START - 10 * MINUTE)
    site.entries.append({"_id": "m1", "type": "mbg", "mbg": 45, "date": int((START - 60) * 1000)})
    site.entries.append({"_id": "c1", "type": "cal", "slope": 850, "intercept": 3000, "date": int(START * 1000)})
    trace.poll()
    assert trace.calls() == []
    # the same reading uploaded twice (two uploaders) is one arrival, not a new reading each time
    site.upload(108, START + 4 * MINUTE)
    trace.poll(after=5 * MINUTE)
    site.upload(108, START + 4 * MINUTE, device="xDrip-DexcomG6")
    trace.poll(after=MINUTE)
    assert trace.state().last_arrival_at == START + 5 * MINUTE
    keys = [record[0] for record in trace.state().seen]
    assert len(keys) == len(set(keys)) == 2  # the duplicate shares the first upload's record


def test_a_value_just_above_the_high_threshold_is_high(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(240.4, START - MINUTE, device="xDrip-LibreReceiver")
    trace.poll()
    assert len(trace.calls()) == 1 and "240.4 milligrams per deciliter" in trace.calls()[0]


# --- freshness by arrival ----------------------------------------------------------------------


def test_a_future_dated_entry_does_not_hide_a_real_low_that_arrives_after_it(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(110, START - 5 * MINUTE)
    trace.poll()
    site.upload(118, START + 10 * MINUTE)  # the uploader's clock slipped ten minutes ahead, once
    trace.poll(after=MINUTE)
    site.upload(62, START + 2 * MINUTE - 60)  # a real low, read a minute ago
    summary = trace.poll(after=MINUTE)
    assert summary.counts["calls"] == 1
    assert "your blood glucose is 62 milligrams per deciliter" in trace.calls()[0]


@pytest.mark.parametrize("behind_minutes", [20, 40])
def test_an_uploader_clock_behind_neither_silences_the_call_nor_floods_texts(trace: Trace, behind_minutes: int) -> None:
    site = trace.add_user()
    trace.poll()  # Scout starts watching before the readings start
    calls_at = []
    for minute in range(0, 30):
        if minute % 5 == 0:
            site.upload(65, trace.now - behind_minutes * MINUTE)
        summary = trace.poll(after=MINUTE)
        if summary.counts["calls"]:
            calls_at.append(minute)
    assert calls_at and calls_at[0] == 0  # the first low that arrives is called at once
    assert trace.texts("no_data") == []
    # told once that the clock is off, with the truth about by how much
    (notice,) = trace.texts("clock")
    assert f"about {behind_minutes} minutes behind" in notice or f"about {behind_minutes + 1} minutes behind" in notice
    # and the call speaks the age the reading really has
    assert "65 milligrams per deciliter and steady, just now" in trace.calls()[0]


def test_a_clock_ahead_is_told_once_and_readings_are_timed_by_arrival(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(150, trace.now - 4 * MINUTE)
    trace.poll()
    for minute in range(0, 20):
        if minute % 5 == 0:
            site.upload(150, trace.now + MINUTE + 30 * MINUTE)
        trace.poll(after=MINUTE)
    (notice,) = trace.texts("clock")
    assert "minutes ahead" in notice
    # the readings stop: the gap is counted from their arrival, not from their future dates
    for _ in range(31):
        trace.poll(after=MINUTE)
    assert len(trace.texts("no_data")) == 1


def test_no_new_reading_is_texted_once_per_real_gap(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(120, START - MINUTE)
    trace.poll()
    for _ in range(45):
        trace.poll(after=MINUTE)
    assert len(trace.texts("no_data")) == 1


# --- one WAIT_AFTER_CALL per user ------------------------------------------------------------


def test_a_low_turning_high_waits_for_wait_after_call(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(60, START - MINUTE)
    assert trace.poll().counts["calls"] == 1
    trace.finish_last_call(NO_ANSWER[trace.config.telephony])
    site.upload(260, START)  # a wrong reading, or a very fast rise: a high a minute later
    assert trace.poll(after=MINUTE).counts["calls"] == 0
    assert trace.poll(after=MINUTE).counts["calls"] == 1  # 120 s after the first call


# --- only the poller's polls count toward the outage limit ---------------------------------


def test_a_webhooks_failed_read_does_not_count_toward_the_outage_text(
        tmp_path: Path, fake: FakeProviders, httpserver: HTTPServer, vonage_key_pem: bytes, provider: str) -> None:
    trace = make_trace(tmp_path, fake, httpserver, provider, vonage_key_pem, NIGHTSCOUT_FAILED_PING_SMS="3")
    try:
        site = trace.add_user()
        site.upload(55, START - MINUTE)
        trace.poll()
        site.down = True
        trace.poll(after=MINUTE)
        trace.poll(after=MINUTE)
        assert trace.state().failed_polls == 2
        trace.finish_last_call(NO_ANSWER[provider])  # the webhook reads Nightscout, which fails
        assert trace.state().failed_polls == 2
        assert trace.texts("outage") == []
        trace.poll(after=MINUTE)
        assert len(trace.texts("outage")) == 1  # the third failed poll of the poller's own
    finally:
        trace.close()


# --- throttled calls -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider_name, limit, users, configured_rate", [
    ("vonage", 3, 12, ""), ("twilio", 1, 4, ""), ("vonage", 3, 12, "10"), ("twilio", 1, 4, "5"),
])
def test_throttled_calls_are_paced_and_retried_never_reported_unanswered(
        tmp_path: Path, fake: FakeProviders, httpserver: HTTPServer, vonage_key_pem: bytes,
        provider_name: str, limit: int, users: int, configured_rate: str) -> None:
    """12 users low in one cycle against Vonage's 3 calls/s (4 against Twilio's 1/s): with
    Scout's default pace nobody is throttled; with a pace set too high, the 429s are
    retried. Either way everyone is called exactly once, the lowest first, and no
    contact hears of an unanswered call that was never placed."""
    fake.limit_rate(f"{provider_name}.calls", limit)
    env = {"SCOUT_CALLS_PER_SECOND": configured_rate} if configured_rate else {}
    trace = make_trace(tmp_path, fake, httpserver, provider_name, vonage_key_pem, **env)
    try:
        for i in range(users):
            site = trace.add_user(f"user{i:02d}", phone=f"+1415555{3000 + i:04d}")
            site.upload(40 + 2 * ((i * 7) % users), START - MINUTE)
        summary = trace.poll()
        assert summary.counts["calls"] == users and summary.counts["failed_sends"] == 0
        accepted = fake.answered(f"{provider_name}.calls")
        assert sorted(r.recipient.lstrip("+") for r in accepted) == sorted(
            f"1415555{3000 + i:04d}" for i in range(users))
        if configured_rate:
            assert fake.throttled(), "a pace above the provider's limit was throttled"
        for i in range(users):
            (call,) = [e for e in trace.log(f"user{i:02d}") if e.kind == "call"]
            assert call.status == "sent" and call.provider_id and "refused" not in call.error
        assert [e for i in range(users) for e in trace.log(f"user{i:02d}") if e.purpose == "contacts"] == []
    finally:
        trace.close()


def test_a_call_that_cannot_be_placed_tells_the_contacts_the_truth(
        tmp_path: Path, fake: FakeProviders, httpserver: HTTPServer, vonage_key_pem: bytes) -> None:
    fake.fail("vonage.calls", 429, {"type": "https://developer.nexmo.com/api-errors/#throttled", "title": "Throttled"},
              times=None)
    trace = make_trace(tmp_path, fake, httpserver, "vonage", vonage_key_pem)
    # the engine's parameters: a 3-second window (measured in real time) and short backoffs
    trace.poller.engine.call_window = 3.0
    trace.poller.engine.sleep = lambda seconds: time.sleep(min(seconds, 0.2))
    try:
        site = trace.add_user()
        site.upload(50, START - MINUTE)
        summary = trace.poll()
        assert len(fake.throttled("vonage.calls")) >= 2  # retried, not given up at the first 429
        assert summary.counts["calls"] == 0
        (call,) = [e for e in trace.log() if e.purpose == "alert"]
        assert call.status == "expired" and call.error.startswith("not placed within")
        # the ladder went on through every contact, each call given up in its turn, never twice
        ladder = [e for e in trace.log() if e.purpose == "ladder"]
        assert sorted(e.recipient for e in ladder) == sorted(c.phone for c in trace.store.get_user("ana").ladder)  # type: ignore[union-attr]
        assert all(e.status == "expired" for e in ladder)
        texts = trace.texts("contacts")
        assert len(texts) == 3
        assert all(t.startswith("Scout alert: Scout could not reach Ana by phone about a low blood glucose.")
                   for t in texts)
        assert not any("did not answer" in t for t in texts)
    finally:
        trace.close()


# --- calls settled once --------------------------------------------------------------------------


def test_a_crash_while_placing_a_call_never_calls_again_after_the_user_pressed_1(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(52, START - MINUTE)
    user = trace.store.get_user("ana")
    assert user is not None
    engine: Engine = trace.poller.engine
    # the poller decides and records the call, claims it, and the provider places it ...
    _result, entries = engine.record_poll(user, trace.poller.engine.fetch(user))
    (call,) = [e for e in entries if e.kind == "call"]
    claimed = trace.store.claim_log(call.key, trace.now, 90)
    assert claimed is not None and claimed.status == "sending"
    make_messenger(trace.config).place_call(claimed.recipient, claimed.body, claimed.key)
    # ... and the process dies before it records the provider's call id. The user presses 1.
    assert all(code in (200, 204) for code in trace.finish_last_call("completed", digits="1"))
    settled = trace.store.get_log(call.key)
    assert settled is not None and settled.status == "sent" and settled.provider_id
    assert settled.outcome == "acknowledged"
    # the next cycles (a restarted poller) place no second call
    placed = len(trace.calls())
    trace.poll(after=MINUTE)
    trace.poll(after=MINUTE)
    assert len(trace.calls()) == placed == 1


def test_a_call_left_sending_with_no_sign_of_placement_is_placed_once_and_counted(trace: Trace) -> None:
    site = trace.add_user()
    site.upload(52, START - MINUTE)
    user = trace.store.get_user("ana")
    assert user is not None
    engine: Engine = trace.poller.engine
    _result, entries = engine.record_poll(user, engine.fetch(user))
    (call,) = [e for e in entries if e.kind == "call"]
    assert trace.store.claim_log(call.key, trace.now, 90) is not None  # then the process died
    summary = trace.poll(after=100)  # the claim has lapsed; still inside the call's window
    assert len(trace.calls()) == 1
    assert summary.counts["calls"] == 1
    trace.poll(after=MINUTE)
    assert len(trace.calls()) == 1


# --- Vonage webhook tokens -------------------------------------------------------------------------


def test_an_old_vonage_webhook_token_is_refused(
        tmp_path: Path, fake: FakeProviders, httpserver: HTTPServer, vonage_key_pem: bytes) -> None:
    from tests.fake_providers import vonage_signed

    trace = make_trace(tmp_path, fake, httpserver, "vonage", vonage_key_pem)
    try:
        site = trace.add_user()
        site.upload(50, START - MINUTE)
        trace.poll()
        (final,) = callbacks_for(fake.last_call(), "unanswered",
                                 signature_secret=trace.config.get("NEXMO_SIGNATURE_SECRET"))
        secret = trace.config.get("NEXMO_SIGNATURE_SECRET")
        payload = json.loads(final.body or b"{}")
        old = vonage_signed(final.url, payload, secret, iat=time.time() - 15 * 60)  # signed 15 minutes ago
        assert trace.post(old) == 403
        assert trace.texts("contacts") == []
        recent = vonage_signed(final.url, payload, secret, iat=time.time() - 30)
        assert trace.post(recent) == 204
        assert len(trace.texts("contacts")) == 3
        assert EMERGENCY in [e.recipient for e in trace.log() if e.purpose == "contacts"]
    finally:
        trace.close()
