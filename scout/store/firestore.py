"""The production store: Cloud Firestore through firebase-admin.

It implements exactly the `Store` protocol of models.py. Collections:

- `scouts`: one document per user, id = the Google `sub`, with the tutorial's field names
  (email, username, phone, emerg_contact, nightscout_api, extra_contacts) plus Scout's own.
  Tutorial-era documents (auto ids, no `sub`, digits-only phones, bare-string contacts) are
  read as they are, known by their email (their `User.id` is the email), and rewritten in Scout's shape when next saved.
- `alert_states`: one document per user; compare-and-set on `version`.
- `alert_log`: one document per call or message, id = its unique key.
- `poller_leases`: the lease that lets one poller act at a time.
- `poller_cycles`: the last finished cycle, for /healthz.
- `write_guards`: one tiny document per guarded write (see `_consume_token`).
- `abuse_limits`: one counter per limited key (test calls per number and per user,
  checks per user, sign-in attempts per client address), id = the key's SHA-256, so no
  phone number or address is stored in the clear. Never removed with a user's data.
- `sessions`: one document per user who ever signed out, carrying the generation that
  signed sessions must match.

Costs: the poller keeps the user list from a snapshot listener (reads only changed users),
reads one state document per user per cycle, and writes only when something changed.

Clients are created on first use in the process that uses them, never at import time
(gRPC clients do not survive a fork).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import firebase_admin
from firebase_admin import credentials, firestore
from google.api_core import exceptions as google_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud.firestore_v1.base_query import FieldFilter

from models import (
    CHANNELS,
    CONTACT_MODES,
    UNSENT_STATUSES,
    AlertState,
    Contact,
    CycleRecord,
    LogEntry,
    StoreUnavailable,
    User,
    UserFeed,
    allowance_after,
    is_tutorial_era,
    new_log_id,
    numbers_of,
    phone_digits,
)
from scout.config import DEFAULT_FIRESTORE_TIMEOUT

log = logging.getLogger("scout.firestore")

USERS = "scouts"
ALERT_STATES = "alert_states"
STATE_BATCH = 300  # alert states read per request when the poller reads them all
ALERT_LOG = "alert_log"
LEASES = "poller_leases"
CYCLES = "poller_cycles"
WRITE_GUARDS = "write_guards"
ABUSE_LIMITS = "abuse_limits"
SESSIONS = "sessions"

GUARD_LIFETIME = dt.timedelta(days=7)  # a TTL policy on `expire_at` deletes guards after this
MAX_BATCH_WRITES = 500  # Firestore's limit on the writes of one commit
MAX_IN_VALUES = 30  # Firestore's limit on the values of one `in` filter
FIRST_SNAPSHOT_WAIT = 10.0  # seconds the poller waits for the listener's first snapshot
DEFAULT_EMULATOR_PROJECT = "scout-local"
# Seconds one Firestore request may take, its retries included, are SCOUT_FIRESTORE_TIMEOUT
# (default DEFAULT_FIRESTORE_TIMEOUT, scout.config). The library's own limits are 60 s for a read
# or a commit and 300 s for a query, retried on UNAVAILABLE all the while: a Firestore down or
# hung would hold a cycle for minutes.
TIMEOUT_VARIABLE = "SCOUT_FIRESTORE_TIMEOUT"
LONG_LIVED_STREAMS = ("listen", "write")  # the user listener's stream stays open: no deadline


class _AnonymousCredential(credentials.Base):
    """firebase-admin credential for the emulator, which checks no credentials."""

    def get_credential(self) -> AnonymousCredentials:
        return AnonymousCredentials()


class WriteConflict(Exception):
    """Another writer changed the document between our read and our write."""


def _first_error(exc: BaseException) -> BaseException:
    """The error that started it. When a transaction fails, the library rolls it back, and a
    rollback that cannot run (the transaction never began) raises a ValueError of its own
    ("no transaction ID") with the real error only as its context: report the real one."""
    while (isinstance(exc, ValueError) and exc.__cause__ is None and exc.__context__ is not None
           and not exc.__suppress_context__):
        exc = exc.__context__
    return exc


def _advice(exc: BaseException) -> str:
    if isinstance(exc, (google_errors.RetryError, google_errors.ServiceUnavailable,
                        google_errors.DeadlineExceeded, OSError)):
        return (" (Firestore is unreachable or did not answer in time: check this server's network and "
                "Firestore's status, or the emulator at FIRESTORE_EMULATOR_HOST if set. Each request is given up "
                f"after {TIMEOUT_VARIABLE} seconds, default {DEFAULT_FIRESTORE_TIMEOUT:g}; the poller tries again next cycle)")
    return ""


@contextlib.contextmanager
def _unavailable_on_error(action: str) -> Iterator[None]:
    """Turn Firestore's errors into StoreUnavailable, which the poller retries next cycle."""
    try:
        yield
    except (google_errors.GoogleAPIError, OSError, ValueError) as exc:  # ValueError: retries exhausted
        first = _first_error(exc)
        raise StoreUnavailable(f"Firestore could not {action}: {first}{_advice(first)}") from first


def bound_requests(client: Any, timeout: float) -> bool:
    """Give every request `client` makes a deadline of `timeout` seconds, retries included,
    so a Firestore that is down or hung fails a cycle in bounded time instead of holding it.

    The library's limits are set per method inside its transport, and cannot be passed to
    the begin, commit and rollback calls a transaction makes on its own: they are
    tightened there, keeping each method's choice of which errors to retry. The
    long-lived streams (the snapshot listener) keep theirs. Returns False, with a warning,
    if this version of the library is not laid out as expected."""
    try:
        transport = client._firestore_api.transport
        streams = {getattr(transport, name) for name in LONG_LIVED_STREAMS}
        for method, call in transport._wrapped_methods.items():
            if method in streams:
                continue
            call._timeout = timeout if call._timeout is None else min(float(call._timeout), timeout)
            if call._retry is not None:
                call._retry = call._retry.with_timeout(timeout)
    except (AttributeError, TypeError, ValueError) as exc:
        log.warning("Firestore requests keep the library's own limits (up to 300 s each), not %s=%g: "
                    "google-cloud-firestore is not laid out as Scout expects (%s). Pin the version in "
                    "requirements.txt or update bound_requests.", TIMEOUT_VARIABLE, timeout, exc)
        return False
    return True


# --- users: the tutorial's field names, Scout's values ------------------------------


def _tutorial_phone(value: Any) -> str:
    """The tutorial stored numbers as digits with the country code and no '+' (what
    Vonage expects); Scout stores E.164."""
    text = str(value or "").strip()
    return f"+{text}" if text.isdigit() else text


def _contact(value: Any, channel: Any = None, name: Any = None, mode: Any = None) -> Contact | None:
    contact = Contact.from_value(value)
    if contact is None:
        return None
    chosen = channel if channel in CHANNELS else contact.channel
    return Contact(_tutorial_phone(contact.phone), chosen, contact.name or str(name or ""),
                   mode if mode in CONTACT_MODES else contact.mode)


def user_from_document(doc_id: str, data: dict[str, Any]) -> User:
    """A `scouts` document as a User. A tutorial-era document has no `sub`: until its
    owner signs in with Google it is known by its email (models.is_tutorial_era)."""
    email = str(data.get("email") or "").strip()
    user_id = str(data.get("sub") or "") or email or doc_id
    extra = [_contact(c) for c in data.get("extra_contacts") or []]
    return User(
        id=user_id,
        email=email,
        name=str(data.get("username") or ""),
        nightscout_url=str(data.get("nightscout_api") or "").strip(),
        nightscout_token=str(data.get("nightscout_token") or ""),
        nightscout_api_secret=str(data.get("nightscout_api_secret") or ""),
        phone=_tutorial_phone(data.get("phone")),
        emergency_contact=_contact(data.get("emerg_contact"), data.get("emerg_contact_channel"),
                                    data.get("emerg_contact_name"), data.get("emerg_contact_mode")),
        extra_contacts=tuple(c for c in extra if c),
        units=str(data.get("units") or "mg/dL"),
        low_mgdl=float(data.get("low_mgdl") or User.low_mgdl),
        high_mgdl=float(data.get("high_mgdl") or User.high_mgdl),
        urgent_low_mgdl=float(data.get("urgent_low_mgdl") or User.urgent_low_mgdl),
        paused_until=float(data.get("paused_until") or 0.0),
        nightscout_notes=bool(data.get("nightscout_notes", User.nightscout_notes)),
        predict_low_minutes=int(data.get("predict_low_minutes") or User.predict_low_minutes),
        fast_drop=bool(data.get("fast_drop", User.fast_drop)),
        fast_drop_rate_mgdl=float(data.get("fast_drop_rate_mgdl") or User.fast_drop_rate_mgdl),
        fast_drop_minutes=int(data.get("fast_drop_minutes") or User.fast_drop_minutes),
        high_repeat_minutes=int(data.get("high_repeat_minutes") or User.high_repeat_minutes),
        high_snooze_minutes=int(data.get("high_snooze_minutes") or User.high_snooze_minutes),
        urgent_high_mgdl=float(data.get("urgent_high_mgdl") or User.urgent_high_mgdl),
        urgent_high_minutes=int(data.get("urgent_high_minutes", User.urgent_high_minutes) or 0),
        time_zone=str(data.get("time_zone") or User.time_zone),
        night_thresholds=bool(data.get("night_thresholds", User.night_thresholds)),
        night_start=str(data.get("night_start") or User.night_start),
        night_end=str(data.get("night_end") or User.night_end),
        night_low_mgdl=float(data.get("night_low_mgdl") or User.night_low_mgdl),
        night_high_mgdl=float(data.get("night_high_mgdl") or User.night_high_mgdl),
    )


def user_to_document(user: User, now: float) -> dict[str, Any]:
    emergency = user.emergency_contact
    document: dict[str, Any] = {
        "email": user.email,
        "username": user.name,
        "phone": user.phone,
        "emerg_contact": emergency.phone if emergency else "",
        "emerg_contact_channel": emergency.channel if emergency else "sms",
        "emerg_contact_name": emergency.name if emergency else "",
        "emerg_contact_mode": emergency.mode if emergency else "call",
        "nightscout_api": user.nightscout_url,
        "nightscout_token": user.nightscout_token,
        "nightscout_api_secret": user.nightscout_api_secret,
        "extra_contacts": [c.as_dict() for c in user.extra_contacts],
        "units": user.units,
        "low_mgdl": user.low_mgdl,
        "high_mgdl": user.high_mgdl,
        "urgent_low_mgdl": user.urgent_low_mgdl,
        "paused_until": user.paused_until,
        "nightscout_notes": user.nightscout_notes,
        "predict_low_minutes": user.predict_low_minutes,
        "fast_drop": user.fast_drop,
        "fast_drop_rate_mgdl": user.fast_drop_rate_mgdl,
        "fast_drop_minutes": user.fast_drop_minutes,
        "high_repeat_minutes": user.high_repeat_minutes,
        "high_snooze_minutes": user.high_snooze_minutes,
        "urgent_high_mgdl": user.urgent_high_mgdl,
        "urgent_high_minutes": user.urgent_high_minutes,
        "time_zone": user.time_zone,
        "night_thresholds": user.night_thresholds,
        "night_start": user.night_start,
        "night_end": user.night_end,
        "night_low_mgdl": user.night_low_mgdl,
        "night_high_mgdl": user.night_high_mgdl,
        # the digits of every number above, for find_users_by_phone (an inbound text's sender)
        "numbers": numbers_of(user),
        "updated_at": now,
    }
    if not is_tutorial_era(user):  # a tutorial-era user has no Google subject id yet
        document["sub"] = user.id
    return document


def _is_tutorial_document(data: dict[str, Any]) -> bool:
    return not data.get("sub")


def log_document_id(key: str) -> str:
    """Alert log keys contain ':' and '@', which Firestore accepts; '/' it does not."""
    return quote(key, safe=":@+.-_ ")


def _entry_from_document(data: dict[str, Any]) -> LogEntry:
    known = LogEntry.__dataclass_fields__
    return LogEntry(**{k: v for k, v in data.items() if k in known})


class SnapshotUserFeed:
    """The user list kept current by a snapshot listener on `scouts`.

    Firestore sends the listener every user once, then only the users that change, so
    a steady poller reads no user documents at all. If the listener has not delivered
    its first snapshot in time, or has stopped, the feed reads the users directly once
    and starts a new listener: a broken listener never leaves the poller without users.
    """

    def __init__(self, store: FirestoreStore, first_snapshot_wait: float = FIRST_SNAPSHOT_WAIT) -> None:
        self._store = store
        self._first_snapshot_wait = first_snapshot_wait
        self._lock = threading.Lock()
        self._users: list[User] = []
        self._ready = threading.Event()
        self._watch: Any = None
        self.snapshots = 0
        self._listen()

    def _listen(self) -> None:
        self._ready.clear()
        self._watch = self._store.collection(USERS).on_snapshot(self._on_snapshot)

    def _on_snapshot(self, documents: list[Any], _changes: list[Any], _read_time: Any) -> None:
        users = self._store.users_from_documents(documents)
        with self._lock:
            self._users = users
            self.snapshots += 1
        self._ready.set()
        unindexed = [d for d in documents if "numbers" not in (d.to_dict() or {})
                     and not _is_tutorial_document(d.to_dict() or {})]
        if unindexed:  # written by a Scout older than the index: off the listener's thread
            threading.Thread(target=self._store.index_numbers, args=(unindexed,), name="index-numbers",
                             daemon=True).start()

    @property
    def listening(self) -> bool:
        return self._watch is not None and self._watch.is_active

    def users(self) -> list[User]:
        if self._ready.wait(self._first_snapshot_wait) and self.listening:
            with self._lock:
                return list(self._users)
        log.warning("the user listener is not delivering; reading the users directly and listening again")
        self.close()
        self._listen()
        return self._store.list_users()

    def close(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            with contextlib.suppress(Exception):
                watch.unsubscribe()


class FirestoreStore:
    """Scout's store in Cloud Firestore (or the emulator when FIRESTORE_EMULATOR_HOST is set)."""

    def __init__(self, credential_factory: Callable[[], credentials.Base], project_id: str,
                 timeout: float = DEFAULT_FIRESTORE_TIMEOUT) -> None:
        self.credential_factory = credential_factory
        self.project_id = project_id
        self.timeout = timeout  # seconds one request may take, retries included
        self._lock = threading.Lock()
        self._app: firebase_admin.App | None = None
        self._db: Any = None
        self._pid = 0

    @classmethod
    def from_config(cls, config: Any) -> FirestoreStore:
        """The emulator with anonymous credentials when FIRESTORE_EMULATOR_HOST is set;
        else the service account in FIREBASE_PRIVATE_KEY; else the application default
        credentials (on App Engine: the app's own service account)."""
        emulator = config.get("FIRESTORE_EMULATOR_HOST")
        project = config.get("GOOGLE_CLOUD_PROJECT")
        timeout = config.firestore_timeout
        if emulator:
            # the Firestore client reads the emulator address from the process environment only
            os.environ["FIRESTORE_EMULATOR_HOST"] = emulator
            return cls(_AnonymousCredential, project or DEFAULT_EMULATOR_PROJECT, timeout)
        key_path = config.firebase_private_key
        if key_path:
            return cls(lambda: credentials.Certificate(key_path), project or _project_in_key(key_path), timeout)
        if not project:
            raise StoreUnavailable(
                "Firestore is selected but neither FIREBASE_PRIVATE_KEY (a service-account JSON file) "
                "nor GOOGLE_CLOUD_PROJECT is set: set one of them (see docs/deploy.md)."
            )
        return cls(credentials.ApplicationDefault, project, timeout)

    # --- the client: one per process, created on first use --------------------------

    @property
    def db(self) -> Any:
        with self._lock:
            if self._db is None or self._pid != os.getpid():
                self._connect()
            return self._db

    def _connect(self) -> None:
        # a client inherited through fork() is unusable; leave it and make this process's own
        self._pid = os.getpid()
        name = f"scout-{self._pid}-{uuid.uuid4().hex[:8]}"
        with _unavailable_on_error("connect"):
            self._app = firebase_admin.initialize_app(self.credential_factory(), {"projectId": self.project_id},
                                                      name=name)
            self._db = firestore.client(self._app)
            bound_requests(self._db, self.timeout)

    def collection(self, name: str) -> Any:
        return self.db.collection(name)

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):
                    self._db.close()
                with contextlib.suppress(Exception):
                    firebase_admin.delete_app(self._app)
            self._db = self._app = None

    def _run_transaction(self, action: str, body: Callable[[Any], Any]) -> Any:
        with _unavailable_on_error(action):
            return firestore.transactional(body)(self.db.transaction())

    # --- write guards -----------------------------------------------------------------
    #
    # A guarded document carries a random `write_token`. A writer that read token T
    # first creates `write_guards/T` (create fails if it exists), then writes a new token.
    # Of two writers that read the same T, exactly one can create the guard. Firestore's
    # transactions already serialise them; the guard also makes the compare-and-set hold
    # on servers whose transactions do not (the emulator the tests run against). It costs
    # one extra write per guarded change: alert state changes, claims and lease renewals.

    def _consume_token(self, transaction: Any, token: str) -> str:
        guard = self.collection(WRITE_GUARDS).document(token)
        expire_at = dt.datetime.now(dt.UTC) + GUARD_LIFETIME
        transaction.create(guard, {"expire_at": expire_at})
        return uuid.uuid4().hex

    def _guarded_write(self, transaction: Any, ref: Any, snapshot: Any, data: dict[str, Any]) -> None:
        """Write `data` to `ref` only if nobody wrote it since `snapshot` was read.
        Must be the transaction's first write: the emulator applies a batch in order."""
        if snapshot.exists:
            data["write_token"] = self._consume_token(transaction, _current_token(snapshot))
            transaction.set(ref, data)
        else:
            data["write_token"] = uuid.uuid4().hex
            transaction.create(ref, data)

    # --- users ------------------------------------------------------------------------

    def users_from_documents(self, documents: list[Any]) -> list[User]:
        users = []
        for document in documents:
            try:
                users.append(user_from_document(document.id, document.to_dict() or {}))
            except (TypeError, ValueError) as exc:  # one malformed document never hides the others
                log.error("scouts/%s cannot be read as a user and is skipped: %s", document.id, exc)
        return users

    def _tutorial_documents(self, email: str, transaction: Any = None) -> list[Any]:
        query = self.collection(USERS).where(filter=FieldFilter("email", "==", email))
        found = query.stream(transaction=transaction) if transaction else query.stream()
        return [d for d in found if _is_tutorial_document(d.to_dict() or {})]

    def get_user(self, user_id: str) -> User | None:
        with _unavailable_on_error("read a user"):
            snapshot = self.collection(USERS).document(user_id).get()
            if snapshot.exists:
                return user_from_document(snapshot.id, snapshot.to_dict() or {})
            if "@" in user_id:  # a tutorial-era user, known by email
                legacy = self._tutorial_documents(user_id)
                return user_from_document(legacy[0].id, legacy[0].to_dict() or {}) if legacy else None
        return None

    def find_user_by_email(self, email: str) -> User | None:
        with _unavailable_on_error("find a user by email"):
            found = list(self.collection(USERS).where(filter=FieldFilter("email", "==", email)).stream())
        # prefer the document of a user who has signed in with Google
        found.sort(key=lambda d: _is_tutorial_document(d.to_dict() or {}))
        return user_from_document(found[0].id, found[0].to_dict() or {}) if found else None

    def index_numbers(self, documents: list[Any]) -> int:
        """Give user documents written before Scout kept `numbers` (find_users_by_phone's
        index) that field, so a reply from one of their contacts is recognised. Each write
        holds only if the document is unchanged since it was read: a newer save wrote its
        own `numbers`. The user feed calls this for what its listener delivers; it returns
        how many were indexed and never raises."""
        indexed = 0
        for document in documents:
            try:
                user = user_from_document(document.id, document.to_dict() or {})
                with _unavailable_on_error("index a user's numbers"):
                    document.reference.update({"numbers": numbers_of(user)},
                                              option=self.db.write_option(last_update_time=document.update_time))
                indexed += 1
            except Exception as exc:  # a changed, deleted or unreadable document: its next save indexes it
                log.info("scouts/%s: numbers not indexed (%s); its next save will", document.id, exc)
        if indexed:
            log.info("indexed the numbers of %d user(s) saved by an older Scout", indexed)
        return indexed

    def find_users_by_phone(self, phone: str) -> list[User]:
        """The users whose `numbers` hold the phone's digits (one indexed query, not a read of
        every user). A tutorial-era document Scout has never written has no `numbers`: its
        own and emergency numbers, and bare-number extra contacts, are matched in the two
        spellings the tutorial used ('14155552671', '+14155552671')."""
        digits = phone_digits(phone)
        if not digits:
            return []
        spellings = [digits, f"+{digits}"]
        users = self.collection(USERS)
        queries = [users.where(filter=FieldFilter("numbers", "array_contains", digits)),
                   users.where(filter=FieldFilter("phone", "in", spellings)),
                   users.where(filter=FieldFilter("emerg_contact", "in", spellings)),
                   users.where(filter=FieldFilter("extra_contacts", "array_contains_any", spellings))]
        found: dict[str, Any] = {}
        with _unavailable_on_error("find users by phone number"):
            for query in queries:
                for document in query.stream():
                    found.setdefault(document.id, document)
        matching = [u for u in self.users_from_documents(list(found.values())) if digits in numbers_of(u)]
        return sorted(matching, key=lambda u: u.id)

    def save_user(self, user: User) -> None:
        """Write the user in Scout's shape. A tutorial-era user (known by email) is written
        over their own tutorial document, whatever its id: the document is upgraded in place.

        Adoption on sign-in saves the user under their Google id and then deletes the
        tutorial-era user (`delete_user(email)`), which finds that document by email: it is
        never deleted here, so a sign-in that may not adopt (an unverified email) cannot
        remove it."""
        document = user_to_document(user, time.time())
        if not is_tutorial_era(user):
            with _unavailable_on_error("save a user"):
                self.collection(USERS).document(user.id).set(document)
            return

        def upgrade(transaction: Any) -> None:
            legacy = self._tutorial_documents(user.email, transaction)
            target = legacy[0].id if legacy else user.id
            transaction.set(self.collection(USERS).document(target), document)

        self._run_transaction("save a user", upgrade)

    def save_users(self, users: list[User]) -> None:
        """Write the users as save_user would, in batched commits of up to 500 writes: one
        round trip per 500 users instead of one (and a transaction) each. A tutorial-era user
        is written over their own tutorial document, found with one query per 30 emails.
        Unlike save_user this is not one transaction per user: meant for `import-users`, run
        before people sign in, not alongside sign-ins."""
        now = time.time()
        targets = self._tutorial_document_ids([u.email for u in users if is_tutorial_era(u)])
        for start in range(0, len(users), MAX_BATCH_WRITES):
            with _unavailable_on_error("save a batch of users"):
                batch = self.db.batch()
                for user in users[start:start + MAX_BATCH_WRITES]:
                    target = targets.get(user.email, user.id) if is_tutorial_era(user) else user.id
                    batch.set(self.collection(USERS).document(target), user_to_document(user, now))
                batch.commit()

    def _tutorial_document_ids(self, emails: list[str]) -> dict[str, str]:
        """The id of each email's tutorial document, if it has one (`in` takes 30 values at most)."""
        found: dict[str, str] = {}
        for start in range(0, len(emails), MAX_IN_VALUES):
            chunk = emails[start:start + MAX_IN_VALUES]
            with _unavailable_on_error("find the tutorial documents of the users to save"):
                documents = self.collection(USERS).where(filter=FieldFilter("email", "in", chunk)).stream()
                for document in documents:
                    data = document.to_dict() or {}
                    if _is_tutorial_document(data):
                        found.setdefault(str(data.get("email")), document.id)
        return found

    def delete_user(self, user_id: str) -> None:
        """Delete the user (for a tutorial-era user, their document found by email), their
        alert state and their alert log. The user document goes first: once it is gone
        nobody is polled, whatever happens to the rest."""
        with _unavailable_on_error("delete a user"):
            refs = [self.collection(USERS).document(user_id)]
            if "@" in user_id:
                refs += [d.reference for d in self._tutorial_documents(user_id)]
            refs.append(self.collection(ALERT_STATES).document(user_id))
            entries = self.collection(ALERT_LOG).where(filter=FieldFilter("user_id", "==", user_id)).stream()
            refs += [entry.reference for entry in entries]
            for start in range(0, len(refs), MAX_BATCH_WRITES):
                batch = self.db.batch()
                for ref in refs[start:start + MAX_BATCH_WRITES]:
                    batch.delete(ref)
                batch.commit()

    def list_users(self) -> list[User]:
        with _unavailable_on_error("list the users"):
            documents = list(self.collection(USERS).stream())
        return sorted(self.users_from_documents(documents), key=lambda u: u.id)

    def user_feed(self) -> UserFeed:
        with _unavailable_on_error("listen to the users"):
            return SnapshotUserFeed(self)

    # --- alert state --------------------------------------------------------------------

    def get_state(self, user_id: str) -> tuple[AlertState, int]:
        with _unavailable_on_error("read an alert state"):
            snapshot = self.collection(ALERT_STATES).document(user_id).get()
        if not snapshot.exists:
            return AlertState(), 0
        data = snapshot.to_dict() or {}
        return AlertState.from_dict(json.loads(data.get("state") or "{}")), int(data.get("version") or 0)

    def all_states(self, user_ids: Collection[str] | None = None) -> dict[str, AlertState]:
        """The stored alert states of `user_ids` (every one when None), read in batches:
        one document read each, as many as reading them one by one during the cycle would
        cost, and the poller needs them all at its start to order the users by risk."""
        with _unavailable_on_error("read the alert states"):
            if user_ids is None:
                snapshots = list(self.collection(ALERT_STATES).stream())
            else:
                ids = list(user_ids)
                snapshots = []
                for start in range(0, len(ids), STATE_BATCH):
                    refs = [self.collection(ALERT_STATES).document(i) for i in ids[start:start + STATE_BATCH]]
                    snapshots += [snap for snap in self.db.get_all(refs) if snap.exists]
        states = {}
        for snapshot in snapshots:
            data = snapshot.to_dict() or {}
            states[snapshot.id] = AlertState.from_dict(json.loads(data.get("state") or "{}"))
        return states

    def commit(self, user_id: str, state: AlertState | None, version: int, entries: list[LogEntry]) -> bool:
        """Write `state` (if given) and record `entries`, all or nothing. Returns False,
        writing nothing, when the state changed since `version` was read. Entries whose
        key is already recorded are skipped: an action is recorded once."""
        state_ref = self.collection(ALERT_STATES).document(user_id)
        log_refs = {entry.key: self.collection(ALERT_LOG).document(log_document_id(entry.key)) for entry in entries}

        def write(transaction: Any) -> bool:
            # every read comes before any write, as Firestore transactions require
            snapshot = state_ref.get(transaction=transaction) if state is not None else None
            recorded = {s.id for s in transaction.get_all(list(log_refs.values())) if s.exists} if log_refs else set()
            if snapshot is not None and state is not None:
                current = int((snapshot.to_dict() or {}).get("version") or 0) if snapshot.exists else 0
                if current != version:
                    return False
                self._guarded_write(transaction, state_ref, snapshot, {
                    "user_id": user_id, "version": version + 1, "state": json.dumps(state.as_dict()),
                    "updated_at": time.time(),
                })
            for entry in entries:
                ref = log_refs[entry.key]
                if ref.id not in recorded:
                    transaction.create(ref, (entry if entry.id else replace(entry, id=new_log_id())).as_dict())
            return True

        try:
            return bool(self._run_transaction("record the alert state", write))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, google_errors.AlreadyExists):
                return False  # another writer won: the caller reads the state again and decides again
            raise

    # --- alert log ----------------------------------------------------------------------

    def _log_ref(self, key: str) -> Any:
        return self.collection(ALERT_LOG).document(log_document_id(key))

    def get_log(self, key: str) -> LogEntry | None:
        with _unavailable_on_error("read the alert log"):
            snapshot = self._log_ref(key).get()
        return _entry_from_document(snapshot.to_dict() or {}) if snapshot.exists else None

    def update_log(self, key: str, **changes: Any) -> None:
        # only the named fields are written, so concurrent updates of other fields are kept
        with _unavailable_on_error("update the alert log"):
            try:
                self._log_ref(key).update({**changes, "updated_at": time.time()})
            except google_errors.NotFound:
                return

    def claim_log(self, key: str, now: float, hold: float) -> LogEntry | None:
        """Take an unsent entry for sending, so two processes never send it both.
        Returns None if it is sent, refused for good, or being sent by someone else."""
        ref = self._log_ref(key)

        def claim(transaction: Any) -> LogEntry | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            entry = _entry_from_document(snapshot.to_dict() or {})
            if not entry.claimable or entry.claimed_until > now:
                return None
            entry = replace(entry, status="sending", claimed_until=now + hold, attempts=entry.attempts + 1,
                            updated_at=now)
            self._guarded_write(transaction, ref, snapshot, entry.as_dict())
            return entry

        try:
            result: LogEntry | None = self._run_transaction("claim an alert for sending", claim)
            return result
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, google_errors.AlreadyExists):
                return None  # another process claimed it first
            raise

    def _entries(self, query: Any, action: str) -> list[LogEntry]:
        with _unavailable_on_error(action):
            return [_entry_from_document(d.to_dict() or {}) for d in query.stream()]

    def find_log_by_provider_id(self, provider_id: str) -> LogEntry | None:
        if not provider_id:
            return None
        query = self.collection(ALERT_LOG).where(filter=FieldFilter("provider_id", "==", provider_id)).limit(1)
        found = self._entries(query, "find an alert by its provider id")
        return found[0] if found else None

    def user_log(self, user_id: str, limit: int = 50, since: float = 0.0) -> list[LogEntry]:
        # needs the composite index (user_id ascending, created_at descending): firestore.indexes.json
        query = self.collection(ALERT_LOG).where(filter=FieldFilter("user_id", "==", user_id))
        if since:  # Firestore bills each document read: the chart reads only its hours
            query = query.where(filter=FieldFilter("created_at", ">=", since))
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING).limit(limit)
        return self._entries(query, "read a user's alert log")

    def delete_log_before(self, cutoff: float) -> int:
        """Delete every alert log entry created before `cutoff`, a batch at a time (a
        single-field query: no composite index needed)."""
        deleted = 0
        with _unavailable_on_error("delete old alert history"):
            while True:
                query = self.collection(ALERT_LOG).where(filter=FieldFilter("created_at", "<", cutoff)).limit(MAX_BATCH_WRITES)
                refs = [document.reference for document in query.stream()]
                if not refs:
                    return deleted
                batch = self.db.batch()
                for ref in refs:
                    batch.delete(ref)
                batch.commit()
                deleted += len(refs)

    def unsent_log(self) -> list[LogEntry]:
        """Every entry not yet sent, of all users, oldest first: one query per cycle
        (sorted here, so the query needs no composite index)."""
        query = self.collection(ALERT_LOG).where(filter=FieldFilter("status", "in", list(UNSENT_STATUSES)))
        return sorted(self._entries(query, "read the unsent alerts"), key=lambda e: e.created_at)

    # --- the poller lease and cycle records ----------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        """Take or renew the lease; False while another holder's lease runs."""
        ref = self.collection(LEASES).document(name)

        def acquire(transaction: Any) -> bool:
            snapshot = ref.get(transaction=transaction)
            lease = snapshot.to_dict() or {}
            if snapshot.exists and lease.get("holder") != holder and float(lease.get("expires_at") or 0) > now:
                return False
            self._guarded_write(transaction, ref, snapshot, {"holder": holder, "expires_at": now + ttl})
            return True

        try:
            return bool(self._run_transaction("take the poller lease", acquire))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, google_errors.AlreadyExists):
                return False  # another poller took or renewed it at the same moment
            raise

    def release_lease(self, name: str, holder: str) -> None:
        """Let the lease lapse now, if we hold it. The document stays, so its write
        token keeps guarding it."""
        ref = self.collection(LEASES).document(name)

        def release(transaction: Any) -> None:
            snapshot = ref.get(transaction=transaction)
            if snapshot.exists and (snapshot.to_dict() or {}).get("holder") == holder:
                self._guarded_write(transaction, ref, snapshot, {"holder": "", "expires_at": 0.0})

        try:
            self._run_transaction("release the poller lease", release)
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, google_errors.AlreadyExists):
                raise  # on a conflict another poller has just taken the lease: nothing to release

    # --- abuse limits and sessions (never removed with a user's data) ----------------------

    def take_allowance(self, key: str, now: float, window: float, limit: int) -> float:
        ref = self.collection(ABUSE_LIMITS).document(hashlib.sha256(key.encode("utf-8")).hexdigest())

        def take(transaction: Any) -> float:
            snapshot = ref.get(transaction=transaction)
            data = snapshot.to_dict() or {}
            current = (float(data["window_start"]), int(data["count"])) if snapshot.exists else None
            record, wait = allowance_after(current, now, window, limit)
            if record is not None:
                # expire_at: a TTL policy deletes the counter once its window is over
                expire_at = dt.datetime.fromtimestamp(record[0] + window, dt.UTC)
                self._guarded_write(transaction, ref, snapshot,
                                    {"window_start": record[0], "count": record[1], "expire_at": expire_at})
            return wait

        for _attempt in range(5):
            try:
                return float(self._run_transaction("count a use against its limit", take))
            except StoreUnavailable as exc:
                if not isinstance(exc.__cause__, google_errors.AlreadyExists):
                    raise  # AlreadyExists: another request counted at the same moment; count again
        return window  # still contended after five tries: refuse rather than let a burst through

    def session_generation(self, user_id: str) -> int:
        with _unavailable_on_error("read the session generation"):
            snapshot = self.collection(SESSIONS).document(user_id).get()
        return int((snapshot.to_dict() or {}).get("generation") or 0) if snapshot.exists else 0

    def end_sessions(self, user_id: str) -> int:
        ref = self.collection(SESSIONS).document(user_id)
        with _unavailable_on_error("end the sessions"):
            ref.set({"generation": firestore.Increment(1)}, merge=True)
        return self.session_generation(user_id)

    def record_cycle(self, record: CycleRecord) -> None:
        with _unavailable_on_error("record the poll cycle"):
            self.collection(CYCLES).document("last").set(
                {"finished_at": record.finished_at, "summary": json.dumps(record.summary)})

    def last_cycle(self) -> CycleRecord | None:
        with _unavailable_on_error("read the last poll cycle"):
            snapshot = self.collection(CYCLES).document("last").get()
        if not snapshot.exists:
            return None
        data = snapshot.to_dict() or {}
        return CycleRecord(float(data["finished_at"]), json.loads(data.get("summary") or "{}"))


def _current_token(snapshot: Any) -> str:
    """The document's write token; one written before tokens existed (or by hand) is
    known by its path and creation time, which no later incarnation shares."""
    token = (snapshot.to_dict() or {}).get("write_token")
    if token:
        return str(token)
    created = snapshot.create_time.timestamp() if snapshot.create_time else 0.0
    return log_document_id(f"{snapshot.reference.parent.id}:{snapshot.id}:{created:.6f}")


def _project_in_key(path: str) -> str:
    """The project id written in a service-account JSON file."""
    try:
        with open(path, encoding="utf-8") as key_file:
            return str(json.load(key_file).get("project_id") or "")
    except (OSError, ValueError) as exc:
        raise StoreUnavailable(
            f"FIREBASE_PRIVATE_KEY={path} cannot be read as a service-account JSON file: {exc}. "
            "Download the key from the Firebase console (Project settings, Service accounts)."
        ) from exc
