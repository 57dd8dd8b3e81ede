"""The Firestore emulator for the tests: started once per session, emptied between tests.

It is the npm package @firestore-emulator/server, installed by scripts/test-deps.sh
(`npm ci` in tests/emulator) and started with tests/emulator/server.js. If it cannot
start, every test that needs it fails with the reason: none is skipped.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scout.config import Config, load_config
from scout.store.firestore import ALERT_LOG, ALERT_STATES, CYCLES, LEASES, USERS, WRITE_GUARDS, FirestoreStore
from scout.store.sqlite import SqliteStore

EMULATOR_DIR = Path(__file__).resolve().parent / "emulator"
EMULATOR_PROJECT = "scout-test"
ALL_COLLECTIONS = (USERS, ALERT_STATES, ALERT_LOG, LEASES, CYCLES, WRITE_GUARDS)
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_emulator(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def start_emulator(log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the Firestore tests need Node.js 18+ for the emulator.")
    if not (EMULATOR_DIR / "node_modules" / "@firestore-emulator" / "server").is_dir():
        pytest.fail("the Firestore emulator is not installed: run `bash scripts/test-deps.sh` "
                    "(it runs `npm ci` in tests/emulator).")
    port = _free_port()
    with log_path.open("wb") as log_file:  # the child keeps its own copy of the handle
        process = subprocess.Popen([node, "server.js", str(port)], cwd=EMULATOR_DIR, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Firestore emulator exited with code {process.returncode}:\n{log_path.read_text()}")
        if _answers(port):
            return process, port
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"the Firestore emulator did not answer on port {port} within {START_TIMEOUT:.0f} s:\n"
                f"{log_path.read_text()}")


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The emulator's host:port, also set as FIRESTORE_EMULATOR_HOST for this session."""
    process, port = start_emulator(tmp_path_factory.mktemp("emulator") / "emulator.log")
    host = f"127.0.0.1:{port}"
    previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    try:
        yield host
    finally:
        if previous is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = previous
        stop_emulator(process)


def firestore_env(tmp_path: Any, emulator_host: str, **extra: str) -> dict[str, str]:
    return {"SCOUT_DEV": "1", "SECRET_KEY": "test-secret", "SCOUT_DB": str(tmp_path / "unused.sqlite3"),
            "SCOUT_STORE": "firestore", "FIRESTORE_EMULATOR_HOST": emulator_host,
            "GOOGLE_CLOUD_PROJECT": EMULATOR_PROJECT, **extra}


@pytest.fixture
def firestore_config(tmp_path: Any, firestore_emulator: str) -> Config:
    return load_config(firestore_env(tmp_path, firestore_emulator))


def clear_emulator(store: FirestoreStore) -> None:
    """Delete every document Scout writes, found by querying (the emulator has no ListDocuments)."""
    for name in ALL_COLLECTIONS:
        documents = list(store.collection(name).stream())
        for start in range(0, len(documents), 400):
            batch = store.db.batch()
            for document in documents[start:start + 400]:
                batch.delete(document.reference)
            batch.commit()


@pytest.fixture
def firestore_store(firestore_config: Config) -> Iterator[FirestoreStore]:
    """A FirestoreStore on the emulator, empty at the start of the test."""
    store = FirestoreStore.from_config(firestore_config)
    clear_emulator(store)
    yield store
    clear_emulator(store)
    store.close()


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def each_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """The same test on each store: the embedded SQLite file and Firestore (the emulator)."""
    if request.param == "sqlite":
        store = SqliteStore(str(tmp_path / "contract.sqlite3"))
        yield store
        store.close()
    else:
        yield request.getfixturevalue("firestore_store")


def second_handle(store: Any) -> Any:
    """Another connection to the same data, as a second process would have."""
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path)
    return FirestoreStore(store.credential_factory, store.project_id, store.timeout)
