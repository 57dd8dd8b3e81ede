"""Scout's configuration, read once from the environment (and `.env`).

Explicit settings win over anything detected. A missing setting that would make
Scout unsafe stops the start with one line naming the variable.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from scout.pacing import DEFAULT_CALLS_PER_SECOND, DEFAULT_MESSAGES_PER_SECOND

DEFAULT_DB_PATH = "instance/scout.sqlite3"
# Seconds one Firestore request may take, retries included (see scout.store.firestore.bound_requests).
DEFAULT_FIRESTORE_TIMEOUT = 10.0
MAX_FIRESTORE_TIMEOUT = 300.0
DEFAULT_SESSION_MAX_AGE = 7 * 24 * 3600  # seconds a sign-in lasts at most
# Cloud Tasks dispatch (scout.dispatch): shards of users per cycle, and the queue they go to.
DEFAULT_SHARDS = 16
MAX_SHARDS = 1000
DEFAULT_TASKS_QUEUE = "scout-poll"
# Calls and messages can each go through a queue of their own, whose dispatch rate is the
# provider's rate for them (providers limit calls and messages separately).
SEND_QUEUE_VARIABLES = ("SCOUT_TASKS_CALL_QUEUE", "SCOUT_TASKS_MESSAGE_QUEUE")
EMULATOR_PROJECT = "scout-local"  # the project and location names used with a local Cloud Tasks emulator
EMULATOR_LOCATION = "local"
DEFAULT_HISTORY_DAYS = 90
# Threads that record, and as many again that send (a send to a provider blocks for a few
# hundred ms). More threads only fight the fetching loop for the GIL (measured with `make
# bench`: 200 threads cost a second of CPU at 10,000 users).
DEFAULT_POLL_WORKERS = 64
# Nightscout requests in flight at once on each poller process's loop, in the main lane (users
# at risk, then sites that answered fast last cycle, then new users)...
DEFAULT_POLL_CONNECTIONS = 1000
# ...and in the slow lane (sites slow, hung or failing last cycle): they hold their sockets up
# to the 15 s deadline, so they get many, but their own. With the benchmark's mix, 35% of users
# are in this lane, and at 50,000 users on 2 processes they need about 2,000 sockets each.
DEFAULT_POLL_SLOW_CONNECTIONS = 3000
DEFAULT_RESTART_DELAY = 2.0  # seconds before the supervisor starts a dead poller again
DEFAULT_PORT = 8080
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """Configuration that Scout refuses to start with. The message names the variable."""


TELEPHONY_VARIABLES: dict[str, tuple[str, ...]] = {
    "twilio": ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_NUMBER"),
    "vonage": (
        "NEXMO_API_KEY",
        "NEXMO_API_SECRET",
        "NEXMO_APPLICATION_ID",
        "NEXMO_PRIVATE_KEY",
        "NEXMO_NUMBER",
        "NEXMO_SIGNATURE_SECRET",
    ),
}


@dataclass(frozen=True)
class Config:
    dev: bool = False
    secret_key: str = ""
    site_url: str = ""
    google_client_id: str = ""
    store: str = "sqlite"
    db_path: str = "instance/scout.sqlite3"
    firebase_private_key: str = ""
    telephony: str = "console"
    wait_after_call: int = 120
    failed_ping_limit: int = 60
    default_region: str = "US"
    firestore_timeout: float = DEFAULT_FIRESTORE_TIMEOUT
    session_max_age: int = DEFAULT_SESSION_MAX_AGE
    allowed_countries: frozenset[str] = frozenset()  # empty: every country (see SCOUT_ALLOWED_COUNTRIES)
    client_ip_header: str = ""  # the header a trusted front end puts the client's address in
    dispatch: str = "embedded"  # or "cloudtasks": the lease holder enqueues shards (scout.dispatch)
    shards: int = DEFAULT_SHARDS
    tasks_queue: str = ""  # projects/P/locations/L/queues/Q, with SCOUT_DISPATCH=cloudtasks
    tasks_service: str = ""  # the App Engine service the tasks go to; empty: the default service
    tasks_emulator_host: str = ""
    # the send queues (projects/P/locations/L/queues/Q), empty: those sends leave from the
    # process that recorded them, through its own pacer (scout.cloudtasks.SendTasks)
    tasks_call_queue: str = ""
    tasks_message_queue: str = ""
    history_days: int = DEFAULT_HISTORY_DAYS  # alert log entries older than this are deleted
    operator_name: str = ""  # who runs this Scout, shown on every page
    support_email: str = ""  # where its users write, shown on every page
    poller: str = "embedded"
    poll_workers: int = DEFAULT_POLL_WORKERS
    poll_connections: int = DEFAULT_POLL_CONNECTIONS
    poll_slow_connections: int = DEFAULT_POLL_SLOW_CONNECTIONS
    poll_processes: int = 0  # processes that poll, this one included; 0: one per usable core
    poll_interval: float | None = None  # None: every minute at second :30
    restart_delay: float = DEFAULT_RESTART_DELAY
    log_level: str = "INFO"
    calls_per_second: float = 1.0  # SCOUT_CALLS_PER_SECOND; the default depends on the provider
    messages_per_second: float = 10.0  # SCOUT_MESSAGES_PER_SECOND
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def get(self, name: str, default: str = "") -> str:
        """A raw variable, for provider modules that read their own credentials."""
        return self.env.get(name, default)

    @property
    def dev_sign_in(self) -> bool:
        return self.dev and not self.google_client_id


N = TypeVar("N", int, float)


def _number(env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], expected: str,
            within: Callable[[N], bool], bounds: str, advice: str = "") -> N:
    """One numeric variable: `default` when unset; otherwise `parse` must read it (else 'NAME
    must be <expected>') and the value must be `within` its bounds (else 'NAME must be <bounds>')."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {expected}, got {raw!r}.") from None
    if not within(value):
        raise ConfigError(f"{name} must be {bounds}, got {raw}{advice}.")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return _number(env, name, default, int, "a whole number", lambda v: v >= minimum, f"at least {minimum}")


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    """A count of things (workers, connections): a whole number of at least 1."""
    return _int(env, name, default, minimum=1)


def _seconds(env: Mapping[str, str], name: str, default: float, maximum: float) -> float:
    return _number(env, name, default, float, "a number of seconds such as 10", lambda v: 0 < v <= maximum,
                   f"more than 0 and at most {maximum:g} seconds")


def _rate(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number per second such as 3 or 0.5", lambda v: 0 < v <= 1000,
                   "more than 0 and at most 1000 per second", ": set it to your provider account's limit")


def _choose_store(env: Mapping[str, str]) -> str:
    store = env.get("SCOUT_STORE", "").strip().lower()
    if store and store not in ("sqlite", "firestore"):
        raise ConfigError(f"SCOUT_STORE must be 'sqlite' or 'firestore', got {store!r}.")
    if store:
        return store
    return "firestore" if env.get("FIREBASE_PRIVATE_KEY") else "sqlite"


def _choose_telephony(env: Mapping[str, str]) -> str:
    chosen = env.get("SCOUT_TELEPHONY", "").strip().lower()
    if chosen and chosen not in ("console", *TELEPHONY_VARIABLES):
        raise ConfigError(
            f"SCOUT_TELEPHONY must be 'console', 'twilio' or 'vonage', got {chosen!r}."
        )
    if chosen:
        return chosen
    for provider, names in TELEPHONY_VARIABLES.items():
        if any(env.get(name) for name in names):
            return provider
    return "console"


def _check_telephony(env: Mapping[str, str], telephony: str, dev: bool) -> None:
    if telephony == "console":
        if not dev:
            raise ConfigError(
                "No telephony provider is configured: set SCOUT_TELEPHONY to 'twilio' or "
                "'vonage' with its credentials (console telephony only runs with SCOUT_DEV=1)."
            )
        return
    for name in TELEPHONY_VARIABLES[telephony]:
        if not env.get(name, "").strip():
            raise ConfigError(f"{name} is not set but {telephony} telephony needs it; see .env.example.")
    if telephony == "twilio":
        _check_twilio(env)
    else:
        _check_vonage(env)


def _check_number(env: Mapping[str, str], name: str, plus_optional: bool = False) -> None:
    """Provider sender numbers must be full international numbers: '+' and digits."""
    raw = env.get(name, "").strip()
    if not raw:
        return
    number = f"+{raw}" if plus_optional and not raw.startswith("+") else raw
    if not re.fullmatch(r"\+[1-9]\d{6,14}", number):
        raise ConfigError(f"{name} must be a phone number in E.164 form such as +15551234567, got {raw!r}.")


def _check_base_url(env: Mapping[str, str], name: str) -> None:
    raw = env.get(name, "").strip()
    if raw and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", raw):
        raise ConfigError(f"{name} must be an http(s) base URL such as http://127.0.0.1:4010, got {raw!r}.")


def _check_twilio(env: Mapping[str, str]) -> None:
    if not env["TWILIO_ACCOUNT_SID"].strip().startswith("AC"):
        raise ConfigError("TWILIO_ACCOUNT_SID must be the account SID that starts with AC (Twilio console, "
                          "Account info).")
    _check_number(env, "TWILIO_NUMBER")
    _check_number(env, "TWILIO_WHATSAPP_NUMBER")
    _check_base_url(env, "SCOUT_TWILIO_BASE_URL")


def _check_vonage(env: Mapping[str, str]) -> None:
    key = env["NEXMO_PRIVATE_KEY"].strip()
    if not key.startswith("-----BEGIN"):  # the key itself is accepted as well as a path to it
        try:
            with open(key, encoding="utf-8") as handle:
                head = handle.read(64)
        except OSError as exc:
            raise ConfigError(f"NEXMO_PRIVATE_KEY names {key!r}, which cannot be read ({exc.strerror}): "
                              "point it at the Vonage application's private.key file.") from None
        if "PRIVATE KEY" not in head:
            raise ConfigError(f"NEXMO_PRIVATE_KEY names {key!r}, which is not a PEM private key: "
                              "point it at the Vonage application's private.key file.")
    _check_number(env, "NEXMO_NUMBER", plus_optional=True)
    _check_number(env, "NEXMO_WHATSAPP_NUMBER", plus_optional=True)
    _check_base_url(env, "SCOUT_VONAGE_BASE_URL")


@dataclass(frozen=True)
class TasksSettings:
    dispatch: str = "embedded"
    shards: int = DEFAULT_SHARDS
    queue: str = ""
    service: str = ""
    emulator_host: str = ""
    call_queue: str = ""
    message_queue: str = ""


def _name(env: Mapping[str, str], name: str, default: str, pattern: str, example: str) -> str:
    raw = env.get(name, "").strip() or default
    if raw and not re.fullmatch(pattern, raw):
        raise ConfigError(f"{name} must be a name such as {example!r} (letters, digits and hyphens), got {raw!r}.")
    return raw


def _tasks_settings(env: Mapping[str, str]) -> TasksSettings:
    """SCOUT_DISPATCH and, with cloudtasks, where the shard tasks go (see docs/deploy.md)."""
    dispatch = env.get("SCOUT_DISPATCH", "").strip().lower() or "embedded"
    if dispatch not in ("embedded", "cloudtasks"):
        raise ConfigError(f"SCOUT_DISPATCH must be 'embedded' or 'cloudtasks', got {dispatch!r}.")
    shards = _int(env, "SCOUT_SHARDS", DEFAULT_SHARDS, minimum=1)
    if shards > MAX_SHARDS:
        raise ConfigError(f"SCOUT_SHARDS must be at most {MAX_SHARDS}, got {shards}.")
    if dispatch == "embedded":
        for name in SEND_QUEUE_VARIABLES:
            if env.get(name, "").strip():
                raise ConfigError(f"{name} is set but SCOUT_DISPATCH is not cloudtasks: the send queues are Cloud "
                                  "Tasks queues; set SCOUT_DISPATCH=cloudtasks or unset it.")
        return TasksSettings(shards=shards)
    emulator = env.get("SCOUT_TASKS_EMULATOR_HOST", "").strip()
    if emulator and not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}", emulator):
        raise ConfigError(f"SCOUT_TASKS_EMULATOR_HOST must be host:port such as 127.0.0.1:8123, got {emulator!r}.")
    project = env.get("GOOGLE_CLOUD_PROJECT", "").strip() or (EMULATOR_PROJECT if emulator else "")
    if not project:
        raise ConfigError("SCOUT_DISPATCH=cloudtasks but GOOGLE_CLOUD_PROJECT is not set: set it to the "
                          "project that holds the Cloud Tasks queue (App Engine sets it).")
    location = _name(env, "SCOUT_TASKS_LOCATION", EMULATOR_LOCATION if emulator else "", r"[a-z][a-z0-9-]{1,62}",
                     "us-central1")
    if not location:
        raise ConfigError("SCOUT_DISPATCH=cloudtasks but SCOUT_TASKS_LOCATION is not set: set it to the queue's "
                          "location, e.g. us-central1 (see docs/deploy.md).")
    queue = _name(env, "SCOUT_TASKS_QUEUE", DEFAULT_TASKS_QUEUE, r"[A-Za-z0-9-]{1,100}", DEFAULT_TASKS_QUEUE)
    service = _name(env, "SCOUT_TASKS_SERVICE", "", r"[a-z0-9][a-z0-9-]{0,62}", "default")
    parent = f"projects/{project}/locations/{location}/queues/"
    call_queue, message_queue = (_name(env, name, "", r"[A-Za-z0-9-]{1,100}", example)
                                 for name, example in zip(SEND_QUEUE_VARIABLES, ("scout-calls", "scout-messages"), strict=True))
    if queue in (call_queue, message_queue) or (call_queue and call_queue == message_queue):
        raise ConfigError("SCOUT_TASKS_QUEUE, SCOUT_TASKS_CALL_QUEUE and SCOUT_TASKS_MESSAGE_QUEUE must name three "
                          "different queues: each queue has its own dispatch rate (see docs/deploy.md).")
    return TasksSettings(dispatch, shards, parent + queue, service, emulator,
                         parent + call_queue if call_queue else "", parent + message_queue if message_queue else "")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(name, "").strip()
    value = raw.lower() if raw else default
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {allowed}, got {raw!r}.")
    return value


def restart_delay(env: Mapping[str, str]) -> float:
    """SCOUT_RESTART_DELAY: seconds before the supervisor starts a dead poller again."""
    return _seconds(env, "SCOUT_RESTART_DELAY", DEFAULT_RESTART_DELAY, 600.0)


def poll_interval(env: Mapping[str, str]) -> float | None:
    """SCOUT_POLL_INTERVAL: seconds between cycle starts, for tests and drills; unset
    (production) means every minute at second :30."""
    if not env.get("SCOUT_POLL_INTERVAL", "").strip():
        return None
    return _seconds(env, "SCOUT_POLL_INTERVAL", 60.0, 3600.0)


def log_level(env: Mapping[str, str]) -> str:
    return _choice(env, "SCOUT_LOG_LEVEL", tuple(level.lower() for level in LOG_LEVELS), "info").upper()


def is_dev(env: Mapping[str, str]) -> bool:
    return env.get("SCOUT_DEV", "").strip() in ("1", "true", "yes")


@dataclass(frozen=True)
class ServerSettings:
    """What gunicorn.conf.py needs before any Scout code runs: where to listen, how many
    workers and threads."""

    bind: str
    workers: int
    threads: int
    forwarded_allow_ips: str
    log_level: str


def server_settings(env: Mapping[str, str]) -> ServerSettings:
    """gunicorn's settings. In dev mode (passwordless sign-in) Scout listens on 127.0.0.1
    only, whatever PORT says; otherwise on every interface at PORT, as App Engine expects."""
    port = _int(env, "PORT", DEFAULT_PORT, minimum=1)
    if port > 65535:
        raise ConfigError(f"PORT must be a TCP port from 1 to 65535, got {port}.")
    host = "127.0.0.1" if is_dev(env) or not env.get("PORT", "").strip() else "0.0.0.0"
    return ServerSettings(bind=f"{host}:{port}", workers=_count(env, "WEB_CONCURRENCY", 2),
                          threads=_count(env, "SCOUT_WEB_THREADS", 8),
                          forwarded_allow_ips=env.get("FORWARDED_ALLOW_IPS", "").strip() or "*",
                          log_level=log_level(env))


def dev_secret_key(db_path: str) -> str:
    """The session key for dev mode when SECRET_KEY is unset, kept beside the dev database.

    Every gunicorn worker must sign sessions with the same key, or a sign-in made on one
    worker is lost on the next request served by another. The first process to start writes
    a random key; the others, and later restarts, read it, so dev sign-ins also survive a restart.
    """
    folder = os.path.dirname(os.path.abspath(db_path))
    path = os.path.join(folder, "dev-secret-key")
    os.makedirs(folder, exist_ok=True)
    for _ in range(50):
        try:
            with open(path, encoding="ascii") as existing:
                key = existing.read().strip()
            if len(key) >= 32:
                return key
        except FileNotFoundError:
            pass
        draft = f"{path}.{os.getpid()}"
        with open(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="ascii") as out:
            out.write(os.urandom(32).hex())
        try:
            os.link(draft, path)  # atomic, and fails if another worker got there first
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    raise ConfigError(f"{path} holds no usable key: delete it, or set SECRET_KEY.")


def _countries(env: Mapping[str, str]) -> frozenset[str]:
    """SCOUT_ALLOWED_COUNTRIES: region codes (US, GB, DE) whose numbers Scout may call and text."""
    import phonenumbers

    raw = env.get("SCOUT_ALLOWED_COUNTRIES", "")
    codes = frozenset(code.strip().upper() for code in re.split(r"[,\s]+", raw) if code.strip())
    unknown = sorted(codes - phonenumbers.SUPPORTED_REGIONS)
    if unknown:
        raise ConfigError(f"SCOUT_ALLOWED_COUNTRIES names unknown regions {', '.join(unknown)}: use two-letter "
                          "region codes separated by commas, e.g. US,CA,GB.")
    return codes


def _read_secret_manager() -> None:
    """With SCOUT_SECRETS=secretmanager, fill the unset variables from Secret Manager, once:
    the processes started from this one (gunicorn's workers, the poller) inherit them. The
    read runs in a process of its own (scout.secret_manager.main)."""
    import json
    import subprocess
    import sys

    from scout import secret_manager

    try:
        if not secret_manager.wanted(os.environ):
            return
    except secret_manager.SecretsError as exc:
        raise ConfigError(str(exc)) from None
    try:
        done = subprocess.run([sys.executable, "-m", "scout.secret_manager"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=60)
    except subprocess.TimeoutExpired:
        raise ConfigError("Secret Manager did not answer within 60 s: check this server's network and "
                          "Secret Manager's status.") from None
    lines = done.stderr.strip().splitlines()
    if done.returncode != 0:
        raise ConfigError(lines[-1] if lines else f"reading Secret Manager failed (exit {done.returncode}).")
    found: dict[str, str] = json.loads(done.stdout)
    os.environ.update(found)
    os.environ[secret_manager.READ_MARKER] = ",".join(sorted(found)) or "-"


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from `env` (default: os.environ after loading `.env`)."""
    if env is None:
        from dotenv import load_dotenv

        load_dotenv(override=False)
        _read_secret_manager()
        env = dict(os.environ)
    dev = is_dev(env)
    secret_key = env.get("SECRET_KEY", "")
    if not secret_key:
        if not dev:
            raise ConfigError("SECRET_KEY is not set: set it to a long random string (see .env.example).")
        secret_key = dev_secret_key(env.get("SCOUT_DB", "") or DEFAULT_DB_PATH)
    telephony = _choose_telephony(env)
    _check_telephony(env, telephony, dev)
    store = _choose_store(env)
    site_url = env.get("SITE_URL", "").rstrip("/")
    if not dev and not site_url:
        raise ConfigError("SITE_URL is not set: set it to the public https address of this Scout.")
    if not dev and not env.get("GOOGLE_CLIENT_ID"):
        raise ConfigError("GOOGLE_CLIENT_ID is not set: users cannot sign in without it (see docs/deploy.md, Google sign-in).")
    tasks = _tasks_settings(env)
    failed_pings_name = (
        "NIGHTSCOUT_FAILED_PING_SMS" if env.get("NIGHTSCOUT_FAILED_PING_SMS") else "NEXMO_FAILED_PING_SMS"
    )
    return Config(
        dev=dev,
        secret_key=secret_key,
        site_url=site_url or "http://127.0.0.1:8080",
        google_client_id=env.get("GOOGLE_CLIENT_ID", ""),
        store=store,
        db_path=env.get("SCOUT_DB", "") or DEFAULT_DB_PATH,
        firebase_private_key=env.get("FIREBASE_PRIVATE_KEY", ""),
        telephony=telephony,
        wait_after_call=_int(env, "WAIT_AFTER_CALL", 120, minimum=1),
        failed_ping_limit=_int(env, failed_pings_name, 60, minimum=1),
        default_region=(env.get("SCOUT_DEFAULT_REGION", "") or "US").upper(),
        firestore_timeout=_seconds(env, "SCOUT_FIRESTORE_TIMEOUT", DEFAULT_FIRESTORE_TIMEOUT, MAX_FIRESTORE_TIMEOUT),
        session_max_age=_int(env, "SCOUT_SESSION_MAX_AGE", DEFAULT_SESSION_MAX_AGE, minimum=60),
        allowed_countries=_countries(env),
        client_ip_header=env.get("SCOUT_CLIENT_IP_HEADER", "").strip(),
        dispatch=tasks.dispatch,
        shards=tasks.shards,
        tasks_queue=tasks.queue,
        tasks_service=tasks.service,
        tasks_emulator_host=tasks.emulator_host,
        tasks_call_queue=tasks.call_queue,
        tasks_message_queue=tasks.message_queue,
        history_days=_int(env, "SCOUT_HISTORY_DAYS", DEFAULT_HISTORY_DAYS, minimum=1),
        operator_name=env.get("SCOUT_OPERATOR_NAME", "").strip(),
        support_email=_support_email(env),
        poller=_choice(env, "SCOUT_POLLER", ("embedded", "off"), "embedded"),
        poll_workers=_count(env, "SCOUT_POLL_WORKERS", DEFAULT_POLL_WORKERS),
        poll_connections=_count(env, "SCOUT_POLL_CONNECTIONS", DEFAULT_POLL_CONNECTIONS),
        poll_slow_connections=_count(env, "SCOUT_POLL_SLOW_CONNECTIONS", DEFAULT_POLL_SLOW_CONNECTIONS),
        poll_processes=_count(env, "SCOUT_POLL_PROCESSES", 1) if env.get("SCOUT_POLL_PROCESSES", "").strip() else 0,
        poll_interval=poll_interval(env),
        restart_delay=restart_delay(env),
        log_level=log_level(env),
        calls_per_second=_rate(env, "SCOUT_CALLS_PER_SECOND", DEFAULT_CALLS_PER_SECOND[telephony]),
        messages_per_second=_rate(env, "SCOUT_MESSAGES_PER_SECOND", DEFAULT_MESSAGES_PER_SECOND[telephony]),
        env=dict(env),
    )


def _support_email(env: Mapping[str, str]) -> str:
    email = env.get("SCOUT_SUPPORT_EMAIL", "").strip()
    if email and not re.fullmatch(r"[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+", email):
        raise ConfigError(f"SCOUT_SUPPORT_EMAIL={email!r} is not an email address: set it to where users can write, "
                          "e.g. help@example.org, or leave it unset.")
    return email
