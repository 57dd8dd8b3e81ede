"""Firestore-only behaviour, on the emulator: what a poll cycle costs in billed reads and
writes, tutorial-era documents, and the core end-to-end poll cycle."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from models import Contact, User
from scout.config import Config
from scout.poller import Poller
from scout.store.firestore import USERS, FirestoreStore
from scout.web import create_app
from tests.conftest import make_user
from tests.test_nightscout import entries

pytestmark = pytest.mark.emulator


class _CountingCall:
    """The Listen stream, seen through: counts the documents Firestore would bill."""

    def __init__(self, call: Any, meter: FirestoreMeter) -> None:
        self._call, self._meter = call, meter

    def __iter__(self) -> _CountingCall:
        return self

    def __next__(self) -> Any:
        response = next(self._call)
        self._meter.listened(response)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _CountingTransport:
    def __init__(self, transport: Any, meter: FirestoreMeter) -> None:
        self._transport, self._meter = transport, meter

    @property
    def listen(self) -> Callable[..., Any]:
        start = self._transport.listen
        return lambda *args, **kwargs: _CountingCall(start(*args, **kwargs), self._meter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class FirestoreMeter:
    """Counts billed reads and writes at the client's RPCs, as Firestore bills them:
    a read per document fetched by id (found or not), a read per document a query
    returns (at least one per query), a read per document a listener receives as added
    or changed, and a write per write in a commit (guards, sets, creates, deletes).

    The emulator has no resume tokens: after every write anywhere it re-sends the whole
    listened collection. Documents it re-sends unchanged (same update time) are counted
    apart in `listener_resends`: Firestore does not send them, nor bill them."""

    def __init__(self, store: FirestoreStore) -> None:
        self.reads = self.writes = self.listener_reads = self.listener_resends = 0
        self._listened: dict[str, Any] = {}
        api = store.db._firestore_api
        api.batch_get_documents = self._counting(api.batch_get_documents, self._fetched)
        api.run_query = self._counting(api.run_query, self._queried)
        original_commit = api.commit

        def commit(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get("request") or args[0]
            self.writes += len(request["writes"] if isinstance(request, dict) else request.writes)
            return original_commit(*args, **kwargs)

        api.commit = commit
        api._transport = _CountingTransport(api._transport, self)

    @staticmethod
    def _counting(method: Callable[..., Any], count: Callable[[list[Any]], None]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Iterator[Any]:
            responses = list(method(*args, **kwargs))
            count(responses)
            return iter(responses)

        return counted

    def _fetched(self, responses: list[Any]) -> None:
        self.reads += sum(1 for r in responses if r._pb.WhichOneof("result") in ("found", "missing"))

    def _queried(self, responses: list[Any]) -> None:
        self.reads += max(1, sum(1 for r in responses if r._pb.HasField("document")))

    def listened(self, response: Any) -> None:
        if response._pb.WhichOneof("response_type") != "document_change":
            return
        document = response._pb.document_change.document
        version = (document.update_time.seconds, document.update_time.nanos)
        if self._listened.get(document.name) == version:
            self.listener_resends += 1
        else:
            self._listened[document.name] = version
            self.listener_reads += 1

    def take(self) -> dict[str, int]:
        counts = {"reads": self.reads, "writes": self.writes, "listener_reads": self.listener_reads}
        self.reads = self.writes = self.listener_reads = self.listener_resends = 0
        return counts


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- cost -----------------------------------------------------------------------------------

STEADY_USERS = 100


@pytest.fixture
def steady_poller(config: Config, firestore_store: FirestoreStore, threaded_httpserver: HTTPServer
                  ) -> Iterator[tuple[Poller, FirestoreMeter]]:
    threaded_httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(110, 108, 107))
    for i in range(STEADY_USERS):
        firestore_store.save_user(make_user(threaded_httpserver.url_for("/"), id=f"sub-{i:03}",
                                            email=f"user{i}@example.com"))
    meter = FirestoreMeter(firestore_store)
    poller = Poller(config, store=firestore_store)
    yield poller, meter
    poller.close()


def test_a_steady_cycle_of_100_users_costs_one_state_read_each_and_three_writes(
    steady_poller: tuple[Poller, FirestoreMeter], capsys: pytest.CaptureFixture[str]
) -> None:
    poller, meter = steady_poller
    first = poller.run_cycle()
    assert first.counts["ok"] == STEADY_USERS and first.counts["calls"] == 0
    startup = meter.take()
    # the listener reads every user once, at start; each user's alert state is written once,
    # at Scout's first poll of them (the readings seen, for freshness by arrival)
    assert startup["listener_reads"] == STEADY_USERS
    assert startup["writes"] <= STEADY_USERS + 3
    measured = []
    for _cycle in range(3):
        summary = poller.run_cycle()
        assert summary.acted and summary.counts["ok"] == STEADY_USERS
        measured.append(meter.take())
    with capsys.disabled():
        print(f"\nFirestore cost, {STEADY_USERS} steady users: start-up cycle {startup}, "
              f"next cycles {measured}")
    for cost in measured:
        # one alert-state read per user, the lease read and the unsent-alerts query
        assert cost["reads"] <= STEADY_USERS + 2, cost
        assert cost["listener_reads"] == 0, cost  # no user document is re-read
        # the lease renewal (lease + its guard) and the cycle record; no alert state
        assert cost["writes"] <= 3, cost


def test_a_user_who_changes_their_settings_costs_the_listener_one_read(
    steady_poller: tuple[Poller, FirestoreMeter], firestore_store: FirestoreStore
) -> None:
    poller, meter = steady_poller
    poller.run_cycle()
    meter.take()
    changed = make_user(poller.users()[0].nightscout_url, id="sub-007", email="user7@example.com",
                        phone="+14155550000")
    firestore_store.save_user(changed)
    wait_until(lambda: any(u.phone == "+14155550000" for u in poller.users()))
    poller.run_cycle()
    cost = meter.take()
    assert cost["listener_reads"] == 1, cost


# --- tutorial-era documents -------------------------------------------------------------------


TUTORIAL_DOCUMENT = {
    "email": "ana@example.com",
    "username": "Ana",
    "phone": "50588888888",
    "emerg_contact": "50588888889",
    "nightscout_api": "https://ana.herokuapp.com/api/v1/entries.json",
    "extra_contacts": ["50588888890", "50588888891"],
}


def tutorial_user(user_id: str = "ana@example.com") -> User:
    return User(
        id=user_id, email="ana@example.com", name="Ana",
        nightscout_url="https://ana.herokuapp.com/api/v1/entries.json", phone="+50588888888",
        emergency_contact=Contact("+50588888889"),
        extra_contacts=(Contact("+50588888890"), Contact("+50588888891")),
    )


def scouts_documents(store: FirestoreStore) -> list[tuple[str, dict[str, Any]]]:
    return [(d.id, d.to_dict()) for d in store.collection(USERS).stream()]


def test_a_tutorial_era_document_is_read_as_a_user_known_by_email(firestore_store: FirestoreStore) -> None:
    firestore_store.collection(USERS).add(TUTORIAL_DOCUMENT)  # an auto id, as the tutorial made
    assert firestore_store.list_users() == [tutorial_user()]
    assert firestore_store.get_user("ana@example.com") == tutorial_user()
    assert firestore_store.find_user_by_email("ana@example.com") == tutorial_user()


def test_a_tutorial_era_document_never_written_by_scout_is_found_by_its_numbers(firestore_store: FirestoreStore
                                                                               ) -> None:
    firestore_store.collection(USERS).add(TUTORIAL_DOCUMENT)  # no `numbers` field: the tutorial wrote it
    for sender in ("+50588888888", "50588888889", "whatsapp:+50588888890", "+505 8888 8891"):
        assert firestore_store.find_users_by_phone(sender) == [tutorial_user()], sender
    assert firestore_store.find_users_by_phone("+50588888800") == []


def test_signing_in_adopts_a_tutorial_era_document_under_the_google_id_in_scouts_shape(
    config: Config, firestore_store: FirestoreStore
) -> None:
    from scout.pages import find_or_create_user

    firestore_store.collection(USERS).add(TUTORIAL_DOCUMENT)
    app = create_app(config, firestore_store)
    with app.app_context():
        user = find_or_create_user("google-sub-1", "ana@example.com", "Ana")
    assert user == tutorial_user("google-sub-1")
    [(doc_id, document)] = scouts_documents(firestore_store)
    assert doc_id == "google-sub-1"
    assert document["sub"] == "google-sub-1" and document["email"] == "ana@example.com"
    assert document["phone"] == "+50588888888" and document["emerg_contact"] == "+50588888889"
    # a tutorial-era contact had no mode: it is called on the ladder ("call"), as every contact by default
    assert document["extra_contacts"] == [{"phone": "+50588888890", "channel": "sms", "mode": "call"},
                                          {"phone": "+50588888891", "channel": "sms", "mode": "call"}]
    assert document["nightscout_api"] == TUTORIAL_DOCUMENT["nightscout_api"]
    assert firestore_store.get_user("google-sub-1") == tutorial_user("google-sub-1")


def test_saving_a_tutorial_era_user_before_sign_in_upgrades_their_document_in_place(
    firestore_store: FirestoreStore
) -> None:
    _time, ref = firestore_store.collection(USERS).add(TUTORIAL_DOCUMENT)
    firestore_store.save_user(tutorial_user())
    [(doc_id, document)] = scouts_documents(firestore_store)
    assert doc_id == ref.id and "sub" not in document
    assert document["phone"] == "+50588888888"
    assert firestore_store.list_users() == [tutorial_user()]


# --- the core poll cycle, end to end on Firestore ------------------------------------------------


def test_a_low_calls_once_and_the_unanswered_console_call_texts_every_contact_on_firestore(
    config: Config, firestore_store: FirestoreStore, httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(
        entries(54, 62, 70, direction="SingleDown"))
    firestore_store.save_user(make_user(httpserver.url_for("/api/v1/entries.json")))
    caplog.set_level(logging.DEBUG)  # the console shows what it says at DEBUG: values stay out of INFO logs
    poller = Poller(config, store=firestore_store)
    try:
        summary = poller.run_cycle()
        again = poller.run_cycle()  # within WAIT_AFTER_CALL: nobody is called or texted again
    finally:
        poller.close()
    log = sorted((e.kind, e.purpose, e.recipient, e.status) for e in firestore_store.user_log("sub-ana"))
    assert log == [  # nobody can answer the console: the ladder calls each contact in turn
        ("call", "alert", "+14155552671", "sent"),
        ("call", "ladder", "+14155552672", "sent"),
        ("call", "ladder", "+14155552673", "sent"),
        ("call", "ladder", "+14155552674", "sent"),
        ("sms", "contacts", "+14155552672", "sent"),
        ("sms", "contacts", "+14155552674", "sent"),
        ("whatsapp", "contacts", "+14155552673", "sent"),
    ]
    assert summary.counts["calls"] == 4 and summary.counts["messages"] == 3
    assert again.counts["calls"] == 0 and again.counts["messages"] == 0
    call = next(e for e in firestore_store.user_log("sub-ana") if e.purpose == "alert")
    assert call.outcome == "unanswered" and firestore_store.find_log_by_provider_id(call.provider_id) == call
    assert "Ana, your blood glucose is 54 milligrams per deciliter and falling" in caplog.text
    assert firestore_store.last_cycle() is not None


def test_a_user_feed_whose_listener_stopped_reads_the_users_directly_and_listens_again(
    firestore_store: FirestoreStore
) -> None:
    firestore_store.save_user(make_user())
    feed = firestore_store.user_feed()
    try:
        assert [u.id for u in feed.users()] == ["sub-ana"]
        feed.close()  # the listener is gone, as after a stream error it could not recover from
        assert [u.id for u in feed.users()] == ["sub-ana"]  # read directly
        firestore_store.save_user(make_user(id="sub-bo", email="bo@example.com"))
        wait_until(lambda: [u.id for u in feed.users()] == ["sub-ana", "sub-bo"])  # and listening again
    finally:
        feed.close()


def test_a_user_saved_before_the_number_index_is_indexed_by_the_feed_and_found_by_a_contacts_number(
        firestore_store: FirestoreStore) -> None:
    from scout.store.firestore import user_to_document

    ana = make_user("http://ana.example/", extra_contacts=(Contact("+14155552674", name="Bo"),))
    cy = make_user("http://cy.example/", id="sub-cy", email="cy@example.com", phone="+14155552690",
                   emergency_contact=None, extra_contacts=(Contact("+14155552691", "whatsapp"),))
    for user in (ana, cy):  # as a Scout older than the index wrote them: no `numbers`
        document = user_to_document(user, time.time())
        del document["numbers"]
        firestore_store.collection(USERS).document(user.id).set(document)
    assert firestore_store.find_users_by_phone("+14155552674") == []  # an extra contact: not found yet
    feed = firestore_store.user_feed()
    try:
        assert {u.id for u in feed.users()} == {ana.id, cy.id}
        deadline = time.monotonic() + 20
        while firestore_store.find_users_by_phone("+14155552674") == [] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert firestore_store.find_users_by_phone("+14155552674") == [ana]
        assert firestore_store.find_users_by_phone("whatsapp:+14155552691") == [cy]  # Cy's contact, by the index
        stored = firestore_store.collection(USERS).document(cy.id).get().to_dict()
        assert stored is not None and stored["numbers"] == ["14155552690", "14155552691"]
        assert firestore_store.get_user(cy.id) == cy  # nothing else changed
    finally:
        feed.close()
