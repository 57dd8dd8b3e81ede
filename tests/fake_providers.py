"""A local stand-in for the Twilio and Vonage APIs, for the tests and for trying Scout
by hand with `SCOUT_TWILIO_BASE_URL` / `SCOUT_VONAGE_BASE_URL`.

It records every request the real SDKs send it and answers the way the providers do
(201 with a call sid, 202 with a message uuid...). It can be told to fail: a 500
once, then success; or a Twilio 21211 for one number, for good.

It can enforce a provider's rate limit (`limit_rate`): Vonage's 3 call creations per
second, or an account's 1 call per second, answering 429 (with Retry-After) beyond it.

It also plays the provider's side of a call: `callbacks_for` builds the signed
webhooks the provider would post when the call ends (Twilio: the Gather action with
`Digits`, then the status callback; Vonage: the input event, then the call event).

Run it by hand:

    .venv/bin/python -m tests.fake_providers serve --port 4010
    .venv/bin/python -m tests.fake_providers finish no-answer      # in another terminal

`finish` posts the signed callbacks of the last call placed to Scout's webhooks.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from twilio.request_validator import RequestValidator

TWILIO_STATUSES = ("completed", "busy", "failed", "no-answer", "canceled")
VONAGE_STATUSES = ("completed", "busy", "cancelled", "failed", "rejected", "timeout", "unanswered", "machine")


@dataclass
class Recorded:
    """One request as the fake provider received it."""

    api: str  # twilio.calls | twilio.messages | vonage.calls | vonage.messages | unknown
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the fake answered
    answer: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # time.monotonic() when it arrived

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True)

    def field(self, name: str) -> str:
        """A form field (Twilio) by name: its single value."""
        values = self.form.get(name, [])
        return values[0] if values else ""

    @property
    def json(self) -> Any:
        return json.loads(self.body or b"null")

    @property
    def recipient(self) -> str:
        if self.api.startswith("twilio"):
            return self.field("To")
        data = self.json or {}
        to = data.get("to")
        return str(to[0].get("number", "")) if isinstance(to, list) and to else str(to or "")

    @property
    def basic_auth(self) -> tuple[str, str]:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return "", ""
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user, password


@dataclass
class Failure:
    api: str
    status: int
    body: dict[str, Any]
    times: int | None  # None: for good
    to: str | None = None  # only requests to this recipient


@dataclass
class FakeProviders:
    """A threaded HTTP server answering like the Twilio and Vonage REST APIs."""

    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    echo: bool = False  # print each request (the command-line runner)
    rate_limits: dict[str, float] = field(default_factory=dict)  # api -> accepted requests per second

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._held_api: str | None = None  # see hold_next
        self.held = threading.Event()
        self.release = threading.Event()
        self._accepted: dict[str, list[float]] = {}
        self._server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeProviders:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-providers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._thread is not None:  # shutdown() waits for serve_forever, so only when it runs
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    # --- telling it to fail ----------------------------------------------------

    def fail(self, api: str, status: int, body: dict[str, Any] | None = None, times: int | None = 1,
             to: str | None = None) -> None:
        """Answer the next `times` requests to `api` (all of them if None) with an error."""
        with self._lock:
            self.failures.append(Failure(api, status, body or {"message": "fake failure"}, times, to))

    def fail_twilio(self, api: str, code: int, message: str, to: str | None = None, status: int = 400,
                    times: int | None = None) -> None:
        """A Twilio error document, e.g. 21211 'The To number is not a valid phone number'."""
        self.fail(api, status, {"code": code, "message": message, "status": status,
                                "more_info": f"https://www.twilio.com/docs/errors/{code}"}, times, to)

    def limit_rate(self, api: str, per_second: float) -> None:
        """Accept at most `per_second` requests to `api` in any one second, and answer the
        rest 429 with Retry-After, as Vonage does beyond 3 call creations per second."""
        with self._lock:
            self.rate_limits[api] = per_second

    def hold_next(self, api: str) -> None:
        """Hold the next request to `api` until `release` is set, then drop its connection
        without an answer and without acting on it (status 0): a request the provider never
        completed, e.g. because the sender died while it was on its way."""
        with self._lock:
            self._held_api = api
        self.held.clear()
        self.release.clear()

    def _hold(self, api: str) -> bool:
        with self._lock:
            if self._held_api != api:
                return False
            self._held_api = None
        self.held.set()
        self.release.wait(120)
        return True

    def throttled(self, api: str | None = None) -> list[Recorded]:
        """The requests answered 429."""
        return [r for r in self.received(api) if r.status == 429]

    # --- what it received ---------------------------------------------------------

    def received(self, api: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if api is None or r.api == api]

    def answered(self, api: str) -> list[Recorded]:
        """The requests to `api` that succeeded."""
        return [r for r in self.received(api) if 200 <= r.status < 300]

    def last_call(self) -> Recorded:
        calls = [r for r in self.received() if r.api in ("twilio.calls", "vonage.calls") and r.status < 300]
        if not calls:
            raise LookupError("no call has been placed yet")
        return calls[-1]

    # --- answering ------------------------------------------------------------------

    def _answer(self, recorded: Recorded) -> tuple[int, dict[str, Any]]:
        with self._lock:
            recorded.at = time.monotonic()
            self.requests.append(recorded)
            for failure in self.failures:
                if failure.api == recorded.api and failure.to in (None, recorded.recipient) and failure.times != 0:
                    if failure.times is not None:
                        failure.times -= 1
                    return failure.status, failure.body
            if self._over_limit(recorded):
                return 429, _throttled_body(recorded.api)
        return _success(recorded)

    def _over_limit(self, recorded: Recorded) -> bool:
        """Called with the lock held: whether `recorded` exceeds its API's rate (one
        second's sliding window); if not, it counts toward it."""
        limit = self.rate_limits.get(recorded.api)
        if limit is None:
            return False
        accepted = self._accepted.setdefault(recorded.api, [])
        recent = [t for t in accepted if recorded.at - t < 1.0]
        if len(recent) + 1 > limit:
            return True
        recent.append(recorded.at)
        self._accepted[recorded.api] = recent
        return False


def _throttled_body(api: str) -> dict[str, Any]:
    if api.startswith("twilio"):
        return {"code": 20429, "message": "Too Many Requests", "status": 429,
                "more_info": "https://www.twilio.com/docs/errors/20429"}
    return {"type": "https://developer.nexmo.com/api-errors/#throttled", "title": "Throttled",
            "detail": "You have exceeded the number of requests allowed per second."}


def _classify(method: str, path: str) -> str:
    if method != "POST":
        return "unknown"
    if path.startswith("/2010-04-01/Accounts/") and path.endswith("/Calls.json"):
        return "twilio.calls"
    if path.startswith("/2010-04-01/Accounts/") and path.endswith("/Messages.json"):
        return "twilio.messages"
    if path == "/v1/calls":
        return "vonage.calls"
    if path == "/v1/messages":
        return "vonage.messages"
    return "unknown"


def _success(recorded: Recorded) -> tuple[int, dict[str, Any]]:
    if recorded.api == "twilio.calls":
        sid = "CA" + uuid.uuid4().hex
        return 201, {"sid": sid, "status": "queued", "to": recorded.field("To"), "from": recorded.field("From")}
    if recorded.api == "twilio.messages":
        return 201, {"sid": "SM" + uuid.uuid4().hex, "status": "queued", "to": recorded.field("To"),
                     "body": recorded.field("Body")}
    if recorded.api == "vonage.calls":
        return 201, {"uuid": str(uuid.uuid4()), "status": "started", "direction": "outbound",
                     "conversation_uuid": "CON-" + str(uuid.uuid4())}
    if recorded.api == "vonage.messages":
        return 202, {"message_uuid": str(uuid.uuid4())}
    return 404, {"message": f"the fake provider does not know {recorded.method} {recorded.path}"}


def _handler_for(fake: FakeProviders) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self._handle()

        def do_GET(self) -> None:
            self._handle()

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlsplit(self.path).path
            recorded = Recorded(_classify(self.command, path), self.command, self.path,
                                {k.lower(): v for k, v in self.headers.items()}, body)
            if fake._hold(recorded.api):
                with fake._lock:
                    fake.requests.append(recorded)  # status 0: dropped, never acted on
                self.close_connection = True
                return
            status, answer = fake._answer(recorded)
            recorded.status, recorded.answer = status, answer
            if fake.echo:
                _print_request(recorded, answer)
            data = json.dumps(answer).encode()
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the tests read the recorded requests instead

    return Handler


def call_id_of(recorded: Recorded) -> str:
    """The call sid (Twilio) or uuid (Vonage) the fake gave a call it accepted."""
    return str(recorded.answer.get("sid") or recorded.answer.get("uuid") or "")


# --- the provider's side of a call: signed callbacks ----------------------------------


@dataclass
class Callback:
    """One webhook request as the provider would send it."""

    url: str  # the full public URL, as Scout gave it to the provider
    headers: dict[str, str]
    form: dict[str, str] | None = None  # Twilio posts forms
    body: bytes | None = None  # Vonage posts JSON

    @property
    def path_and_query(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


def twilio_signed(url: str, form: dict[str, str], auth_token: str) -> Callback:
    signature = RequestValidator(auth_token).compute_signature(url, form)
    return Callback(url, {"X-Twilio-Signature": signature}, form=form)


def vonage_signed(url: str, payload: dict[str, Any], signature_secret: str, iat: float | None = None) -> Callback:
    body = json.dumps(payload).encode()
    claims = {"iat": int(iat if iat is not None else time.time()), "jti": str(uuid.uuid4()), "iss": "Vonage",
              "payload_hash": hashlib.sha256(body).hexdigest(), "api_key": "fake", "application_id": "fake"}
    token = jwt.encode(claims, signature_secret, algorithm="HS256")
    return Callback(url, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, body=body)


def callbacks_for(call: Recorded, status: str, digits: str = "", answered_by: str = "", *,
                  auth_token: str = "", signature_secret: str = "") -> list[Callback]:
    """The webhooks the provider posts when the call `call` ends with `status`,
    after the callee pressed `digits` (if any)."""
    call_id = call_id_of(call)
    if call.api == "twilio.calls":
        token = auth_token or call.basic_auth[1]  # Twilio signs with the account's auth token
        common = {"CallSid": call_id, "AccountSid": call.basic_auth[0], "From": call.field("From"),
                  "To": call.field("To"), "Direction": "outbound-api"}
        found: list[Callback] = []
        if digits:
            gather = _twilio_gather_url(call.field("Twiml"))
            found.append(twilio_signed(gather, {**common, "Digits": digits, "CallStatus": "in-progress"}, token))
        final = {**common, "CallStatus": status, "CallDuration": "20"}
        if answered_by:
            final["AnsweredBy"] = answered_by
        found.append(twilio_signed(call.field("StatusCallback"), final, token))
        return found
    ncco, data = call.json["ncco"], call.json
    found = []
    common = {"uuid": call_id, "conversation_uuid": call.answer.get("conversation_uuid", ""),
              "from": data["from"]["number"], "to": data["to"][0]["number"],
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
    if digits:
        input_url = next(a["eventUrl"][0] for a in ncco if a["action"] == "input")
        found.append(vonage_signed(input_url, {**common, "dtmf": {"digits": digits, "timed_out": False},
                                               "speech": {"results": []}}, signature_secret))
    found.append(vonage_signed(data["event_url"][0], {**common, "status": status, "direction": "outbound"},
                               signature_secret))
    return found


def _twilio_gather_url(twiml: str) -> str:
    from xml.etree import ElementTree

    gather = ElementTree.fromstring(twiml).find("Gather")
    if gather is None:
        raise ValueError("the call's TwiML has no <Gather>")
    return gather.attrib["action"]


# --- by hand -----------------------------------------------------------------------------


def _print_request(recorded: Recorded, answer: dict[str, Any]) -> None:
    print(f"{recorded.status} {recorded.api:16} {recorded.method} {recorded.path}", flush=True)
    if recorded.api.startswith("twilio"):
        for name, values in recorded.form.items():
            print(f"    {name}: {values[0]}", flush=True)
    elif recorded.body:
        print("    " + json.dumps(recorded.json, indent=2).replace("\n", "\n    "), flush=True)
    if recorded.status < 300:
        print(f"    -> {json.dumps(answer)}", flush=True)


def _serve(args: argparse.Namespace) -> None:
    fake = FakeProviders(args.host, args.port, echo=True)
    control = ControlledFake(fake, args.signature_secret)
    print(f"fake Twilio and Vonage APIs on {fake.url}; set SCOUT_TWILIO_BASE_URL={fake.url} "
          f"or SCOUT_VONAGE_BASE_URL={fake.url}", flush=True)
    control.serve()


class ControlledFake:
    """The command-line fake: also answers POST /_fake/finish by posting the last call's
    signed callbacks to Scout, as the provider would when the call ends."""

    def __init__(self, fake: FakeProviders, signature_secret: str) -> None:
        self.fake, self.signature_secret = fake, signature_secret
        original = fake._answer

        def answer(recorded: Recorded) -> tuple[int, dict[str, Any]]:
            if recorded.path.startswith("/_fake/finish"):
                return self._finish(parse_qs(urlsplit(recorded.path).query))
            return original(recorded)

        fake._answer = answer  # type: ignore[method-assign]

    def _finish(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        import requests

        def arg(name: str) -> str:
            return query.get(name, [""])[0]

        try:
            call = self.fake.last_call()
        except LookupError as exc:
            return 409, {"message": str(exc)}
        posted = []
        for callback in callbacks_for(call, arg("status"), arg("digits"), arg("answered_by"),
                                      signature_secret=self.signature_secret):
            response = requests.post(callback.url, data=callback.form if callback.form is not None else callback.body,
                                     headers=callback.headers, timeout=30)
            posted.append({"url": callback.url, "status": response.status_code})
            print(f"posted {callback.url} -> {response.status_code}", flush=True)
        return 200, {"posted": posted}

    def serve(self) -> None:
        try:
            self.fake._server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.fake._server.server_close()


def _finish(args: argparse.Namespace) -> None:
    import requests

    query = {"status": args.status, "digits": args.digits, "answered_by": args.answered_by}
    response = requests.post(f"http://{args.host}:{args.port}/_fake/finish", params=query, timeout=60)
    print(json.dumps(response.json(), indent=2))
    if response.status_code != 200:
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    import os

    parser = argparse.ArgumentParser(prog="python -m tests.fake_providers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="answer like the Twilio and Vonage APIs, printing every request")
    serve.add_argument("--signature-secret", default=os.environ.get("NEXMO_SIGNATURE_SECRET", ""),
                       help="Vonage signature secret to sign callbacks with (default: $NEXMO_SIGNATURE_SECRET)")
    finish = commands.add_parser("finish", help="end the last call: post its signed callbacks to Scout")
    finish.add_argument("status", help=f"Twilio: {', '.join(TWILIO_STATUSES)}; Vonage: {', '.join(VONAGE_STATUSES)}")
    finish.add_argument("--digits", default="", help="the key the callee pressed first, e.g. 1")
    finish.add_argument("--answered-by", default="", help="Twilio AnsweredBy, e.g. machine_end_beep")
    for command in (serve, finish):
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=4010)
    args = parser.parse_args(argv)
    (_serve if args.command == "serve" else _finish)(args)


if __name__ == "__main__":
    main()
