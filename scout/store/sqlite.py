"""The embedded store: one SQLite file shared by the web app and the poller."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from typing import Any

from models import (
    AlertState,
    CycleRecord,
    LogEntry,
    StoredState,
    StoreUnavailable,
    User,
    UserFeed,
    allowance_after,
    new_log_id,
    numbers_of,
    phone_digits,
)

STATE_BATCH = 500  # user ids per query in commit_states (SQLite allows at least 999 parameters)


class _RereadingFeed:
    """A user feed that re-reads the users each time: right for a local SQLite file. A
    row whose text has not changed since the last read is not parsed again (at 50,000
    users parsing was most of a poll cycle's first second); what is kept to tell is a
    digest of the text, not the text (14 MB at 25,000 users)."""

    def __init__(self, store: SqliteStore, keep: Callable[[str], bool] | None = None) -> None:
        self._store = store
        self._keep = keep
        self._known: dict[str, tuple[bytes, User]] = {}

    def users(self) -> list[User]:
        known: dict[str, tuple[bytes, User]] = {}
        keep = self._keep
        for user_id, data in self._store._query("SELECT id, data FROM users ORDER BY id"):
            if keep is not None and not keep(user_id):
                continue
            seen = self._known.get(user_id)
            digest = hashlib.blake2b(data.encode(), digest_size=16).digest()
            known[user_id] = seen if seen is not None and seen[0] == digest else (digest, User.from_dict(json.loads(data)))
        self._known = known
        return [user for _, user in known.values()]

    def close(self) -> None:
        pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS users_email ON users (email);
CREATE TABLE IF NOT EXISTS user_numbers (
    digits TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (digits, user_id)
);
CREATE INDEX IF NOT EXISTS user_numbers_user ON user_numbers (user_id);
CREATE TABLE IF NOT EXISTS alert_state (
    user_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_log (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    provider_id TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_log_user ON alert_log (user_id, created_at);
CREATE INDEX IF NOT EXISTS alert_log_provider ON alert_log (provider_id);
CREATE INDEX IF NOT EXISTS alert_log_unsent ON alert_log (status);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS abuse_limits (
    key TEXT PRIMARY KEY,
    window_start REAL NOT NULL,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    user_id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cycles (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    finished_at REAL NOT NULL,
    summary TEXT NOT NULL
);
"""


def _sqlite_advice(exc: sqlite3.Error) -> str:
    """What to do about a failed SQLite call, by its error code: the message alone
    ("disk I/O error") does not say."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return " (another process held the write lock past the busy timeout; the poller tries again next cycle)"
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")):
        return (" (check that the disk has free space and that the file, its -wal and -shm files and its folder "
                "are writable; the poller tries again next cycle)")
    return ""


class SqliteStore:
    """The embedded store: one SQLite file shared by the web app and the poller."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        # One writer at a time in this process. SQLite lets one connection write at a time
        # anyway, but a connection that finds the file locked sleeps in its busy handler
        # (1, 2, 5 ... 100 ms) whether or not the lock is freed meanwhile: with the poller's
        # threads writing at once, a write took twice as long, and the bench's 500
        # out-of-range users were decided up to a second later. Waiting on this lock
        # instead, the next writer starts as soon as the last one commits. Writers in other
        # processes (the web app) are still waited for by SQLite's busy timeout.
        self._write_lock, self._write_lock_pid = threading.Lock(), os.getpid()
        # the cross-process writer lock file (see _other_processes_waited_for), per process
        self._writer_fd: int | None = None
        self._writer_pid: int | None = None
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        try:
            self._connection().executescript(SCHEMA)
            self._index_numbers_once()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {path} could not be opened: {exc}{_sqlite_advice(exc)}") from exc

    def _index_numbers_once(self) -> None:
        """A file written before the number index (user_version 0) gets it filled once."""
        if self._connection().execute("PRAGMA user_version").fetchone()[0] >= 1:
            return
        with self._transaction() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] >= 1:
                return  # another process filled it meanwhile
            users = [User.from_dict(json.loads(data)) for (data,) in db.execute("SELECT data FROM users")]
            self._write_numbers(db, users)
            db.execute("PRAGMA user_version = 1")

    @staticmethod
    def _write_numbers(db: sqlite3.Connection, users: list[User]) -> None:
        db.executemany("DELETE FROM user_numbers WHERE user_id = ?", [(user.id,) for user in users])
        db.executemany("INSERT OR IGNORE INTO user_numbers (digits, user_id) VALUES (?, ?)",
                       [(digits, user.id) for user in users for digits in numbers_of(user)])

    # connections: one per thread, opened lazily (so nothing crosses a fork)
    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._write_lock_pid != os.getpid():  # a forked child: no writer of the parent's is running here
            self._write_lock, self._write_lock_pid = threading.Lock(), os.getpid()
        lock = self._write_lock
        if not lock.acquire(timeout=self.timeout):
            raise StoreUnavailable(f"SQLite store {self.path} is unavailable: other writes in this process held it "
                                   f"for over {self.timeout:g} s")
        try:
            with self._other_processes_waited_for(), self._locked_transaction() as db:
                yield db
        finally:
            lock.release()

    @contextlib.contextmanager
    def _other_processes_waited_for(self) -> Iterator[None]:
        """Hold the file's writer lock (`<db>-writer`, flock) across processes. SQLite's
        own busy handler sleeps 1 to 100 ms a time while another process writes; with the
        poller's processes all writing at once (calls to place), that sleeping, not the
        writing, took most of the time. This lock is retried every millisecond or two, so
        the next process writes as soon as the last commits. If the lock file cannot be
        made (a read-only folder), SQLite's busy timeout alone decides, as before."""
        handle = self._writer_file()
        if handle is None:
            yield
            return
        deadline, pause = time.monotonic() + self.timeout, 0.0005
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"SQLite store {self.path} is unavailable: another process held its "
                                           f"write lock for over {self.timeout:g} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
            except OSError:  # a file system without locks: SQLite's busy timeout decides
                yield
                return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

    def _writer_file(self) -> int | None:
        if self._writer_pid != os.getpid():
            self._writer_pid = os.getpid()
            try:
                self._writer_fd = os.open(f"{self.path}-writer", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                self._writer_fd = None
        return self._writer_fd

    @contextlib.contextmanager
    def _locked_transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path} is unavailable: {exc}{_sqlite_advice(exc)}") from exc
        try:
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise StoreUnavailable(
                f"SQLite store {self.path} could not be written: {exc}{_sqlite_advice(exc)}") from exc
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path} could not be read: {exc}{_sqlite_advice(exc)}") from exc

    # users
    def get_user(self, user_id: str) -> User | None:
        rows = self._query("SELECT data FROM users WHERE id = ?", (user_id,))
        return User.from_dict(json.loads(rows[0][0])) if rows else None

    def find_user_by_email(self, email: str) -> User | None:
        # the user who signed in with Google before a tutorial-era record of the same email
        rows = self._query("SELECT data FROM users WHERE email = ? ORDER BY id = email LIMIT 1", (email,))
        return User.from_dict(json.loads(rows[0][0])) if rows else None

    def find_users_by_phone(self, phone: str) -> list[User]:
        digits = phone_digits(phone)
        if not digits:
            return []
        rows = self._query("SELECT users.data FROM user_numbers JOIN users ON users.id = user_numbers.user_id "
                           "WHERE user_numbers.digits = ? ORDER BY users.id", (digits,))
        return [User.from_dict(json.loads(data)) for (data,) in rows]

    def save_user(self, user: User) -> None:
        self.save_users([user])

    def save_users(self, users: list[User]) -> None:
        """Every user in one transaction (an import saves thousands)."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO users (id, email, data, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET email = excluded.email, data = excluded.data, "
                "updated_at = excluded.updated_at",
                [(user.id, user.email, json.dumps(user.as_dict()), now) for user in users],
            )
            self._write_numbers(db, users)

    def delete_user(self, user_id: str) -> None:
        with self._transaction() as db:
            for table, column in (("users", "id"), ("user_numbers", "user_id"), ("alert_state", "user_id"),
                                  ("alert_log", "user_id")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (user_id,))

    def list_users(self) -> list[User]:
        return [User.from_dict(json.loads(data)) for (data,) in self._query("SELECT data FROM users ORDER BY id")]

    def user_feed(self) -> UserFeed:
        return _RereadingFeed(self)

    def user_feed_of(self, keep: Callable[[str], bool]) -> UserFeed:
        """A feed of the users whose id `keep` accepts: a poller process parses and holds
        only its own share (at 50,000 users, the others' would cost it 45 MB)."""
        return _RereadingFeed(self, keep)

    # alert state
    def get_state(self, user_id: str) -> tuple[AlertState, int]:
        rows = self._query("SELECT data, version FROM alert_state WHERE user_id = ?", (user_id,))
        if not rows:
            return AlertState(), 0
        return AlertState.from_dict(json.loads(rows[0][0])), int(rows[0][1])

    def all_states(self, user_ids: Collection[str] | None = None) -> dict[str, AlertState]:
        """Every stored alert state (of `user_ids`, when given) in one query. The poller
        reads them once per cycle to order the users by risk and to skip, without a round
        trip each, the users whose poll changes nothing. Optional in the Store interface:
        without it the users are polled in the store's order and read one by one."""
        rows = self._query("SELECT user_id, data FROM alert_state")
        return {user_id: AlertState.from_dict(json.loads(data)) for user_id, data in rows
                if user_ids is None or user_id in user_ids}

    def stored_states(self, user_ids: Collection[str] | None = None) -> dict[str, StoredState]:
        """As all_states, each state as stored, with its version, for commit_states: the
        poller parses each when it decides on that user (see StoredState)."""
        rows = self._query("SELECT user_id, data, version FROM alert_state")
        return {user_id: StoredState.of(data, int(version)) for user_id, data, version in rows
                if user_ids is None or user_id in user_ids}

    def commit_states(self, states: list[tuple[str, AlertState, int]]) -> set[str]:
        """Write many users' states, each as `commit(user_id, state, version, [])` would, in
        one transaction: the poller's group commit of the polls that changed a state and
        send nothing (one transaction per user held the write lock for most of a cycle).
        Returns the ids whose state changed since `version` was read: those are not
        written, and the caller decides on them again."""
        rows = [(user_id, version, json.dumps(state.as_dict())) for user_id, state, version in states]
        stale: set[str] = set()
        with self._transaction() as db:
            current: dict[str, int] = {}
            ids = [row[0] for row in rows]
            for start in range(0, len(ids), STATE_BATCH):
                chunk = ids[start:start + STATE_BATCH]
                current.update(db.execute(f"SELECT user_id, version FROM alert_state WHERE user_id IN "
                                          f"({','.join('?' * len(chunk))})", chunk).fetchall())
            fresh = []
            for user_id, version, data in rows:
                if current.get(user_id, 0) != version or user_id in stale:
                    stale.add(user_id)  # changed meanwhile, or named twice: decided again by the caller
                else:
                    fresh.append((user_id, version + 1, data))
                    current[user_id] = -1  # a second entry for the same user is stale
            db.executemany(
                "INSERT INTO alert_state (user_id, version, data) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, data = excluded.data", fresh)
        return stale

    def commit(self, user_id: str, state: AlertState | None, version: int, entries: list[LogEntry]) -> bool:
        """Write `state` (if given) and record `entries`, all or nothing.

        Returns False, writing nothing, when the state changed since `version` was read.
        Entries whose key is already recorded are skipped: an action is recorded once.
        """
        # serialised before the write lock is taken: other writers wait for less
        data = json.dumps(state.as_dict()) if state is not None else ""
        logged = [(entry.key, entry.id, entry.user_id, entry.created_at, entry.status, entry.provider_id,
                   json.dumps(entry.as_dict()))
                  for entry in (entry if entry.id else replace(entry, id=new_log_id()) for entry in entries)]
        with self._transaction() as db:
            if state is not None:
                row = db.execute("SELECT version FROM alert_state WHERE user_id = ?", (user_id,)).fetchone()
                if (int(row[0]) if row else 0) != version:
                    return False
                db.execute(
                    "INSERT INTO alert_state (user_id, version, data) VALUES (?, ?, ?) "
                    "ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, data = excluded.data",
                    (user_id, version + 1, data),
                )
            db.executemany(
                "INSERT OR IGNORE INTO alert_log (key, id, user_id, created_at, status, provider_id, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", logged)
        return True

    # alert log
    def _entries(self, sql: str, args: tuple[Any, ...]) -> list[LogEntry]:
        return [LogEntry(**json.loads(data)) for (data,) in self._query(sql, args)]

    def get_log(self, key: str) -> LogEntry | None:
        found = self._entries("SELECT data FROM alert_log WHERE key = ?", (key,))
        return found[0] if found else None

    def update_log(self, key: str, **changes: Any) -> None:
        with self._transaction() as db:
            row = db.execute("SELECT data FROM alert_log WHERE key = ?", (key,)).fetchone()
            if row is None:
                return
            entry = replace(LogEntry(**json.loads(row[0])), **changes, updated_at=time.time())
            db.execute(
                "UPDATE alert_log SET status = ?, provider_id = ?, data = ? WHERE key = ?",
                (entry.status, entry.provider_id, json.dumps(entry.as_dict()), key),
            )

    def claim_log(self, key: str, now: float, hold: float) -> LogEntry | None:
        """Take an unsent entry for sending, so two processes never send it both.
        Returns None if it is sent, refused for good, or being sent by someone else."""
        with self._transaction() as db:
            row = db.execute("SELECT data FROM alert_log WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            entry = LogEntry(**json.loads(row[0]))
            if not entry.claimable or entry.claimed_until > now:
                return None
            entry = replace(entry, status="sending", claimed_until=now + hold, attempts=entry.attempts + 1,
                            updated_at=now)
            db.execute("UPDATE alert_log SET status = ?, data = ? WHERE key = ?",
                       (entry.status, json.dumps(entry.as_dict()), key))
        return entry

    def find_log_by_provider_id(self, provider_id: str) -> LogEntry | None:
        if not provider_id:
            return None
        found = self._entries("SELECT data FROM alert_log WHERE provider_id = ? LIMIT 1", (provider_id,))
        return found[0] if found else None

    def user_log(self, user_id: str, limit: int = 50, since: float = 0.0) -> list[LogEntry]:
        return self._entries(
            "SELECT data FROM alert_log WHERE user_id = ? AND created_at >= ? ORDER BY created_at DESC LIMIT ?",
            (user_id, since, limit),
        )

    def delete_log_before(self, cutoff: float) -> int:
        """Delete every alert log entry created before `cutoff` (the history's retention)."""
        with self._transaction() as db:
            return int(db.execute("DELETE FROM alert_log WHERE created_at < ?", (cutoff,)).rowcount)

    def unsent_log(self) -> list[LogEntry]:
        """Every entry not yet sent, of all users, oldest first: one query per cycle."""
        return self._entries(
            "SELECT data FROM alert_log WHERE status IN ('pending', 'queued', 'failed', 'sending') ORDER BY created_at", ()
        )

    # lease and cycles
    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        with self._transaction() as db:
            row = db.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row and row[0] != holder and row[1] > now:
                return False
            db.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                (name, holder, now + ttl),
            )
        return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    # --- abuse limits and sessions (never removed with a user's data) ----------------------

    def take_allowance(self, key: str, now: float, window: float, limit: int) -> float:
        # stored by its hash: a deleted user's phone number does not stay behind in clear
        key = hashlib.sha256(key.encode("utf-8")).hexdigest()
        with self._transaction() as db:
            row = db.execute("SELECT window_start, count FROM abuse_limits WHERE key = ?", (key,)).fetchone()
            record, wait = allowance_after((float(row[0]), int(row[1])) if row else None, now, window, limit)
            if record is not None:
                db.execute("INSERT INTO abuse_limits (key, window_start, count) VALUES (?, ?, ?) ON CONFLICT (key) "
                           "DO UPDATE SET window_start = excluded.window_start, count = excluded.count",
                           (key, *record))
        return wait

    def session_generation(self, user_id: str) -> int:
        rows = self._query("SELECT generation FROM sessions WHERE user_id = ?", (user_id,))
        return int(rows[0][0]) if rows else 0

    def end_sessions(self, user_id: str) -> int:
        with self._transaction() as db:
            db.execute("INSERT INTO sessions (user_id, generation) VALUES (?, 1) ON CONFLICT (user_id) "
                       "DO UPDATE SET generation = generation + 1", (user_id,))
            return int(db.execute("SELECT generation FROM sessions WHERE user_id = ?", (user_id,)).fetchone()[0])

    def record_cycle(self, record: CycleRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO cycles (id, finished_at, summary) VALUES (1, ?, ?) ON CONFLICT (id) "
                "DO UPDATE SET finished_at = excluded.finished_at, summary = excluded.summary",
                (record.finished_at, json.dumps(record.summary)),
            )

    def last_cycle(self) -> CycleRecord | None:
        rows = self._query("SELECT finished_at, summary FROM cycles WHERE id = 1")
        return CycleRecord(rows[0][0], json.loads(rows[0][1])) if rows else None

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        if self._writer_pid == os.getpid() and self._writer_fd is not None:
            os.close(self._writer_fd)
            self._writer_fd, self._writer_pid = None, None  # opened again if the store is used again
