"""Firestore's requests bounded by SCOUT_FIRESTORE_TIMEOUT (issue 13). Scout sets the client's
per-method deadlines and retries once (bound_requests) because the library's transactions take
no per-call timeout (docs/operations.md). This test fails if the locked google-cloud-firestore
is replaced by one laid out differently, and shows a transaction against a hung Firestore
giving up in bounded time."""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models import StoreUnavailable
from scout.config import load_config
from scout.store.firestore import FirestoreStore, bound_requests
from tests.conftest import dev_env


@pytest.fixture
def hung_firestore(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    host = f"127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", host)  # restored after the test
    yield host
    listener.close()


def store_at(tmp_path: Path, host: str, timeout: str) -> FirestoreStore:
    config = load_config(dev_env(tmp_path, SCOUT_STORE="firestore", FIRESTORE_EMULATOR_HOST=host,
                                 SCOUT_FIRESTORE_TIMEOUT=timeout))
    return FirestoreStore.from_config(config)


def test_every_unary_method_of_the_locked_client_is_bounded(tmp_path: Path, hung_firestore: str) -> None:
    store = store_at(tmp_path, hung_firestore, "1.5")
    client = store.db  # connecting sends nothing; bound_requests has run
    assert bound_requests(client, 1.5), "google-cloud-firestore is not laid out as bound_requests expects"
    transport = client._firestore_api.transport
    wrapped = transport._wrapped_methods
    for name in ("begin_transaction", "commit", "rollback", "get_document", "batch_get_documents", "run_query",
                 "batch_write"):
        call = wrapped.get(getattr(transport, name))
        assert call is not None, f"{name} is not among the client's bounded methods any more"
        assert call._timeout is not None and call._timeout <= 1.5, name
        assert call._retry is None or call._retry.timeout <= 1.5, name
    streams = {transport.listen, transport.write}
    assert all(call._timeout <= 1.5 for method, call in wrapped.items() if method not in streams)
    store.close()


def test_a_transaction_against_a_hung_firestore_gives_up_in_bounded_time(tmp_path: Path, hung_firestore: str) -> None:
    """The lease is a transaction: BeginTransaction gets no per-call timeout from the library."""
    store = store_at(tmp_path, hung_firestore, "1")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="Firestore could not take the poller lease"):
        store.acquire_lease("poller", "me", 110.0, time.time())
    assert time.monotonic() - started < 6.0
    store.close()
