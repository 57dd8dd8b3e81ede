"""One contract, two stores: every test here runs on SQLite and on Firestore (the emulator)."""
from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from models import AlertState, Contact, CycleRecord, Episode, LogEntry, User
from tests.conftest import make_user
from tests.firestore_fixtures import second_handle

T0 = 1_700_000_000.0


def entry(key: str, user_id: str = "sub-ana", created_at: float = T0, **changes: Any) -> LogEntry:
    values: dict[str, Any] = dict(key=key, user_id=user_id, kind="sms", purpose="contacts",
                                  recipient="+14155552672", body="Ana's glucose is 54", created_at=created_at)
    values.update(changes)
    return LogEntry(**values)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def all_at_once(count: int, action: Callable[[int], Any]) -> list[Any]:
    """Run `action(i)` in `count` threads released together, as concurrent processes would."""
    start = threading.Barrier(count)

    def run(index: int) -> Any:
        start.wait()
        return action(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


# --- users --------------------------------------------------------------------------


def test_a_saved_user_reads_back_identically_by_id_email_and_list(each_store: Any) -> None:
    user = make_user("https://ana.example.com", nightscout_token="tok-1", units="mmol/L", low_mgdl=72.0,
                     high_mgdl=180.0)
    each_store.save_user(user)
    assert each_store.get_user("sub-ana") == user
    assert each_store.find_user_by_email("ana@example.com") == user
    assert each_store.list_users() == [user]
    assert each_store.get_user("nobody") is None and each_store.find_user_by_email("no@example.com") is None


def test_saving_a_user_again_replaces_their_settings_and_keeps_every_contact(each_store: Any) -> None:
    each_store.save_user(make_user())
    five = tuple(Contact(f"+1415555267{i}", "whatsapp" if i % 2 else "sms") for i in range(5))
    each_store.save_user(make_user(phone="+14155550000", extra_contacts=five))
    saved = each_store.get_user("sub-ana")
    assert saved.phone == "+14155550000" and saved.extra_contacts == five
    assert len(each_store.list_users()) == 1


def test_deleting_a_user_removes_their_alert_state_and_log(each_store: Any) -> None:
    each_store.save_user(make_user())
    assert each_store.commit("sub-ana", AlertState(failed_polls=1), 0, [entry("sub-ana:x")])
    each_store.delete_user("sub-ana")
    assert each_store.get_user("sub-ana") is None
    assert each_store.get_state("sub-ana") == (AlertState(), 0)
    assert each_store.user_log("sub-ana") == []


def test_a_tutorial_era_user_is_adopted_once_under_their_google_id(each_store: Any) -> None:
    legacy = make_user(id="ana@example.com")  # known by email until they sign in
    each_store.save_user(legacy)
    assert each_store.get_user("ana@example.com") == legacy
    adopted = replace(legacy, id="google-sub-1")
    each_store.save_user(adopted)  # as scout.pages.find_or_create_user adopts: save, then delete
    each_store.delete_user(legacy.id)
    assert each_store.list_users() == [adopted]
    assert each_store.find_user_by_email("ana@example.com") == adopted
    assert each_store.get_user("ana@example.com") is None


def test_saving_another_user_with_the_same_email_leaves_the_tutorial_era_user_alone(each_store: Any) -> None:
    legacy = make_user(id="ana@example.com")
    each_store.save_user(legacy)
    each_store.save_user(User(id="google-sub-2", email="ana@example.com"))  # e.g. an unverified email
    assert each_store.get_user("ana@example.com") == legacy
    assert len(each_store.list_users()) == 2
    # a lookup by email prefers the user who signed in with Google, on every store
    found = each_store.find_user_by_email("ana@example.com")
    assert found is not None and found.id == "google-sub-2"


def test_the_user_feed_lists_users_and_follows_changes(each_store: Any) -> None:
    each_store.save_user(make_user())
    feed = each_store.user_feed()
    try:
        assert [u.id for u in feed.users()] == ["sub-ana"]
        each_store.save_user(make_user(id="sub-bo", email="bo@example.com"))
        each_store.save_user(make_user(phone="+14155550000"))
        assert wait_for(lambda: sorted((u.id, u.phone) for u in feed.users())
                        == [("sub-ana", "+14155550000"), ("sub-bo", "+14155552671")])
        each_store.delete_user("sub-bo")
        assert wait_for(lambda: [u.id for u in feed.users()] == ["sub-ana"])
    finally:
        feed.close()


# --- alert state ---------------------------------------------------------------------


def low_episode(calls: int = 1) -> AlertState:
    return AlertState(episode=Episode(id="ep1", kind="low", started_at=T0, calls=calls, last_call_at=T0,
                                      alerted=[["+14155552672", "sms"]]))


def test_alert_state_starts_empty_and_each_commit_moves_the_version_on(each_store: Any) -> None:
    assert each_store.get_state("sub-ana") == (AlertState(), 0)
    assert each_store.commit("sub-ana", low_episode(), 0, [])
    assert each_store.get_state("sub-ana") == (low_episode(), 1)
    assert each_store.commit("sub-ana", low_episode(calls=2), 1, [])
    assert each_store.get_state("sub-ana") == (low_episode(calls=2), 2)


def test_a_commit_on_a_stale_version_writes_neither_state_nor_log(each_store: Any) -> None:
    assert each_store.commit("sub-ana", low_episode(), 0, [])
    assert not each_store.commit("sub-ana", AlertState(failed_polls=3), 0, [entry("sub-ana:late")])
    assert each_store.get_state("sub-ana") == (low_episode(), 1)
    assert each_store.get_log("sub-ana:late") is None


def commit_as_writer(writers: list[Any], version: int, i: int) -> bool:
    state = AlertState(failed_polls=100 * version + i)
    return bool(writers[i].commit("sub-ana", state, version, [entry(f"sub-ana:{version}:{i}")]))


def test_of_concurrent_writers_on_one_users_state_exactly_one_wins(each_store: Any) -> None:
    writers = [second_handle(each_store) for _ in range(6)]
    try:
        for version in (0, 1):  # the first write creates the state, the second replaces it
            assert each_store.get_state("sub-ana")[1] == version
            results = all_at_once(len(writers), functools.partial(commit_as_writer, writers, version))
            assert results.count(True) == 1, results
            winner = results.index(True)
            assert each_store.get_state("sub-ana") == (AlertState(failed_polls=100 * version + winner), version + 1)
            assert [e.key for e in each_store.user_log("sub-ana") if e.key.startswith(f"sub-ana:{version}:")] == [
                f"sub-ana:{version}:{winner}"]
    finally:
        for writer in writers:
            writer.close()


# --- alert log ---------------------------------------------------------------------------


def test_an_alert_key_is_recorded_once_and_the_first_record_is_kept(each_store: Any) -> None:
    assert each_store.commit("sub-ana", AlertState(failed_polls=1), 0, [entry("sub-ana:ep1:call:1", body="first")])
    assert each_store.commit("sub-ana", AlertState(failed_polls=2), 1, [entry("sub-ana:ep1:call:1", body="second"),
                                                                        entry("sub-ana:ep1:call:2")])
    assert [e.body for e in each_store.user_log("sub-ana") if e.key == "sub-ana:ep1:call:1"] == ["first"]
    assert len(each_store.user_log("sub-ana")) == 2
    assert each_store.get_log("sub-ana:ep1:call:1").id  # every entry gets an id


def test_entries_can_be_recorded_without_a_state_change(each_store: Any) -> None:
    assert each_store.commit("sub-ana", None, 0, [entry("sub-ana:test")])
    assert each_store.commit("sub-ana", None, 0, [entry("sub-ana:test", body="again")])
    assert [e.body for e in each_store.user_log("sub-ana")] == ["Ana's glucose is 54"]
    assert each_store.get_state("sub-ana") == (AlertState(), 0)


def test_log_entries_are_found_by_provider_id_and_listed_newest_first(each_store: Any) -> None:
    entries = [entry(f"sub-ana:{i}", created_at=T0 + i) for i in range(4)]
    assert each_store.commit("sub-ana", None, 0, entries + [entry("sub-bo:0", user_id="sub-bo")])
    each_store.update_log("sub-ana:2", status="sent", provider="twilio", provider_id="CA123")
    found = each_store.find_log_by_provider_id("CA123")
    assert found is not None and found.key == "sub-ana:2" and found.status == "sent" and found.updated_at > 0
    assert each_store.find_log_by_provider_id("") is None and each_store.find_log_by_provider_id("CA999") is None
    assert [e.key for e in each_store.user_log("sub-ana", limit=3)] == ["sub-ana:3", "sub-ana:2", "sub-ana:1"]


def test_a_users_log_since_a_time_holds_only_the_entries_from_then_on(each_store: Any) -> None:
    assert each_store.commit("sub-ana", None, 0, [entry(f"sub-ana:{i}", created_at=T0 + i * 60) for i in range(6)])
    assert each_store.commit("sub-bo", None, 0, [entry("sub-bo:0", user_id="sub-bo", created_at=T0 + 600)])
    assert [e.key for e in each_store.user_log("sub-ana", 50, since=T0 + 180)] == [
        "sub-ana:5", "sub-ana:4", "sub-ana:3"]  # from `since` on, the entry at exactly `since` included
    assert [e.key for e in each_store.user_log("sub-ana", 2, since=T0 + 60)] == ["sub-ana:5", "sub-ana:4"]
    assert each_store.user_log("sub-ana", 50, since=T0 + 3600) == []


def test_users_are_found_by_any_of_their_numbers_in_any_spelling(each_store: Any) -> None:
    ana = make_user("https://ana.example.com")  # +14155552671, contacts ...72 (emergency), ...73, ...74
    bo = make_user("https://bo.example.com", id="sub-bo", email="bo@example.com", phone="+14155552673",
                   emergency_contact=Contact("+14155552699"), extra_contacts=())
    each_store.save_users([ana, bo])
    assert each_store.find_users_by_phone("+14155552671") == [ana]
    assert each_store.find_users_by_phone("whatsapp:+1 415-555-2672") == [ana]
    assert each_store.find_users_by_phone("14155552674") == [ana]  # an extra contact, as Vonage spells it
    assert each_store.find_users_by_phone("+14155552673") == [ana, bo]  # Ana's contact and Bo himself
    assert each_store.find_users_by_phone("+14155550000") == [] and each_store.find_users_by_phone("whatsapp:") == []
    moved = replace(ana, phone="+14155552600", extra_contacts=())  # a changed number is found by its new value only
    each_store.save_user(moved)
    assert each_store.find_users_by_phone("+14155552671") == [] and each_store.find_users_by_phone("+14155552600") == [moved]
    assert each_store.find_users_by_phone("+14155552673") == [bo]
    each_store.delete_user("sub-bo")
    assert each_store.find_users_by_phone("+14155552699") == []


def test_unsent_entries_of_every_user_come_in_one_list_oldest_first(each_store: Any) -> None:
    assert each_store.commit("sub-bo", None, 0, [entry("sub-bo:0", user_id="sub-bo", created_at=T0 + 5)])
    assert each_store.commit("sub-ana", None, 0, [entry(f"sub-ana:{i}", created_at=T0 + i) for i in range(3)])
    each_store.update_log("sub-ana:0", status="sent")
    each_store.update_log("sub-ana:1", status="failed")
    each_store.update_log("sub-ana:2", status="permanent")
    assert [e.key for e in each_store.unsent_log()] == ["sub-ana:1", "sub-bo:0"]


def test_an_entry_recorded_for_a_send_queue_is_unsent_and_claimable_until_sent(each_store: Any) -> None:
    """A "queued" entry (handed to a Cloud Tasks send queue) is listed with the unsent ones,
    so the lease holder can send it if the queue never does, and one claim takes it."""
    assert each_store.commit("sub-ana", None, 0, [entry("sub-ana:q", status="queued"), entry("sub-ana:p", created_at=T0 + 1)])
    assert [(e.key, e.status) for e in each_store.unsent_log()] == [("sub-ana:q", "queued"), ("sub-ana:p", "pending")]
    claimed = each_store.claim_log("sub-ana:q", T0 + 10, 45)
    assert claimed is not None and (claimed.status, claimed.attempts, claimed.claimed_until) == ("sending", 1, T0 + 55)
    assert each_store.claim_log("sub-ana:q", T0 + 11, 45) is None
    each_store.update_log("sub-ana:q", status="sent", claimed_until=0.0)
    assert [e.key for e in each_store.unsent_log()] == ["sub-ana:p"]


def test_updating_an_unknown_log_key_does_nothing(each_store: Any) -> None:
    each_store.update_log("missing", status="sent")
    assert each_store.get_log("missing") is None


def test_only_one_of_several_concurrent_claims_takes_an_entry(each_store: Any) -> None:
    assert each_store.commit("sub-ana", None, 0, [entry("sub-ana:x")])
    claimers = [second_handle(each_store) for _ in range(6)]
    try:
        claims = all_at_once(len(claimers), lambda i: claimers[i].claim_log("sub-ana:x", T0 + 10, 90))
    finally:
        for claimer in claimers:
            claimer.close()
    taken = [c for c in claims if c is not None]
    assert len(taken) == 1, claims
    assert taken[0].status == "sending" and taken[0].attempts == 1 and taken[0].claimed_until == T0 + 100


def test_a_claim_holds_until_it_expires_and_a_sent_entry_is_never_claimed(each_store: Any) -> None:
    assert each_store.commit("sub-ana", None, 0, [entry("sub-ana:x")])
    assert each_store.claim_log("sub-ana:x", T0, 90) is not None
    assert each_store.claim_log("sub-ana:x", T0 + 89, 90) is None  # someone is sending it
    again = each_store.claim_log("sub-ana:x", T0 + 91, 90)  # the sender died: take it over
    assert again is not None and again.attempts == 2
    each_store.update_log("sub-ana:x", status="sent", claimed_until=0.0)
    assert each_store.claim_log("sub-ana:x", T0 + 500, 90) is None
    assert each_store.claim_log("missing", T0, 90) is None


# --- lease and cycles ------------------------------------------------------------------------


def test_the_lease_is_held_renewed_expires_and_is_taken_over(each_store: Any) -> None:
    assert each_store.acquire_lease("poller", "a", 150, T0)
    assert not each_store.acquire_lease("poller", "b", 150, T0 + 60)  # a holds it
    assert each_store.acquire_lease("poller", "a", 150, T0 + 60)  # a renews until T0 + 210
    assert not each_store.acquire_lease("poller", "b", 150, T0 + 209)
    assert each_store.acquire_lease("poller", "b", 150, T0 + 211)  # a stopped renewing: b takes over
    assert not each_store.acquire_lease("poller", "a", 150, T0 + 212)  # and a stays out


def test_a_released_lease_can_be_taken_at_once(each_store: Any) -> None:
    assert each_store.acquire_lease("poller", "a", 150, T0)
    each_store.release_lease("poller", "b")  # not b's to release
    assert not each_store.acquire_lease("poller", "b", 150, T0 + 1)
    each_store.release_lease("poller", "a")
    assert each_store.acquire_lease("poller", "b", 150, T0 + 2)


def test_of_standbys_racing_for_an_expired_lease_exactly_one_wins(each_store: Any) -> None:
    assert each_store.acquire_lease("poller", "old", 150, T0)
    standbys = [second_handle(each_store) for _ in range(6)]
    try:
        results = all_at_once(len(standbys), lambda i: standbys[i].acquire_lease("poller", f"s{i}", 150, T0 + 200))
    finally:
        for standby in standbys:
            standby.close()
    assert results.count(True) == 1, results
    winner = f"s{results.index(True)}"
    assert each_store.acquire_lease("poller", winner, 150, T0 + 201)
    assert not each_store.acquire_lease("poller", "old", 150, T0 + 201)


def test_the_last_cycle_is_recorded_and_read_back(each_store: Any) -> None:
    assert each_store.last_cycle() is None
    each_store.record_cycle(CycleRecord(T0, {"users": 2, "failed": {"timeout": 1}}))
    each_store.record_cycle(CycleRecord(T0 + 60, {"users": 3, "failed": {}}))
    assert each_store.last_cycle() == CycleRecord(T0 + 60, {"users": 3, "failed": {}})


def test_users_are_plain_values_that_survive_the_round_trip(each_store: Any) -> None:
    bare = User(id="sub-new", email="new@example.com")
    each_store.save_user(bare)
    assert each_store.get_user("sub-new") == bare


def every_field_set() -> User:
    """A user whose every field differs from its default, so a field a store forgets to keep
    shows up here (a field added to User later must be added here too: the check below says so)."""
    user = User(
        id="sub-full", email="full@example.com", name="Ana Full", nightscout_url="https://ana.example.org/",
        nightscout_token="tok-123", nightscout_api_secret="secret-abcdefghij", phone="+14155552671",
        emergency_contact=Contact("+14155552672", "whatsapp", "Bo", mode="text"),
        extra_contacts=(Contact("+14155552673", "sms", "Cy", mode="text"), Contact("+14155552674", "whatsapp")),
        units="mmol/L", low_mgdl=72.0, high_mgdl=250.0, urgent_low_mgdl=50.0, paused_until=T0 + 3600,
        nightscout_notes=True, predict_low_minutes=20, fast_drop=True, fast_drop_rate_mgdl=2.5, fast_drop_minutes=20,
        high_repeat_minutes=45, high_snooze_minutes=90, urgent_high_mgdl=320.0, urgent_high_minutes=0,
        time_zone="Pacific/Auckland", night_thresholds=True, night_start="23:30", night_end="06:15",
        night_low_mgdl=80.0, night_high_mgdl=270.0,
    )
    defaults = User(id="", email="")
    unset = [f.name for f in dataclasses.fields(User) if getattr(user, f.name) == getattr(defaults, f.name)]
    assert not unset, f"give these fields a non-default value in every_field_set: {unset}"
    contact_defaults = Contact("")
    assert user.emergency_contact is not None
    unset = [f.name for f in dataclasses.fields(Contact)
             if getattr(user.emergency_contact, f.name) == getattr(contact_defaults, f.name)]
    assert not unset, f"give the emergency contact a non-default value for: {unset}"
    return user


def test_every_setting_of_a_user_survives_the_round_trip(each_store: Any) -> None:
    user = every_field_set()
    each_store.save_user(user)
    assert each_store.get_user("sub-full") == user
    assert [u for u in each_store.list_users() if u.id == "sub-full"] == [user]


# --- abuse limits and sessions (issue 12) ---------------------------------------------


def test_an_allowance_counts_uses_in_a_window_and_says_how_long_to_wait(each_store: Any) -> None:
    assert each_store.take_allowance("test-call:user:sub-ana", T0, 120, 2) == 0
    assert each_store.take_allowance("test-call:user:sub-ana", T0 + 1, 120, 2) == 0
    assert each_store.take_allowance("test-call:user:sub-ana", T0 + 20, 120, 2) == 100
    assert each_store.take_allowance("test-call:user:sub-bo", T0 + 20, 120, 2) == 0  # each key counts apart
    assert each_store.take_allowance("test-call:user:sub-ana", T0 + 120, 120, 2) == 0  # a new window


def test_allowances_and_session_generations_outlive_the_users_data_and_the_process(each_store: Any) -> None:
    each_store.save_user(make_user())
    assert each_store.take_allowance("test-call:number:+14155552671", T0, 120, 1) == 0
    assert each_store.session_generation("sub-ana") == 0
    assert each_store.end_sessions("sub-ana") == 1
    each_store.delete_user("sub-ana")
    other = second_handle(each_store)  # another instance, or this one restarted
    try:
        assert other.take_allowance("test-call:number:+14155552671", T0 + 1, 120, 1) > 0
        assert other.session_generation("sub-ana") == 1
        assert other.end_sessions("sub-ana") == 2
    finally:
        if other is not each_store:
            other.close()
    assert each_store.session_generation("sub-ana") == 2


def test_a_burst_of_simultaneous_uses_gets_exactly_the_limit(each_store: Any) -> None:
    waits = all_at_once(6, lambda i: each_store.take_allowance("signin:client:203.0.113.9", T0, 60, 2))
    assert sorted(w == 0 for w in waits) == [False] * 4 + [True] * 2


def test_the_poller_reads_the_alert_states_it_asks_for_in_one_call_and_only_those(each_store: Any) -> None:
    versions = {}
    for name, state in (("ana", AlertState(watch=True)), ("ben", AlertState(site="slow")),
                        ("cai", AlertState(failed_polls=3, site="failing"))):
        assert each_store.commit(name, state, 0, [])
        versions[name] = state
    assert each_store.all_states() == versions
    assert each_store.all_states({"ben", "cai", "never-polled"}) == {"ben": versions["ben"], "cai": versions["cai"]}
    assert each_store.all_states(set()) == {}


def test_a_ladder_in_progress_survives_the_round_trip(each_store: Any) -> None:
    """Every field of an episode and of its calls (the user's and the contact's on the
    ladder) differs from its default here, so a field a store forgets shows up."""
    from models import CallRecord

    call = CallRecord(key="sub-ana:low-1:call:2", placed_at=T0 + 120, outcome="unanswered", detail="no-answer",
                      escalated=True, queued=True, to="+14155552671")
    ladder_call = CallRecord(key="sub-ana:low-1:ladder:2:1", placed_at=T0 + 160, outcome="stopped",
                             detail="Ben pressed 1 first", escalated=True, queued=True, to="+14155552672")
    episode = Episode(id="low-1", kind="high", started_at=T0, calls=2, last_call_at=T0 + 120, call=call,
                      acknowledged_at=T0 + 200, contact_rounds=2, last_contacts_at=T0 + 150,
                      alerted=[["+14155552672", "sms"], ["+14155552673", "whatsapp"]], why="falling fast",
                      urgent_high_since=T0, urgent=True, ladder_round=2, ladder_step=1, ladder_active=True,
                      ladder_called=["+14155552672"], ladder_call=ladder_call, acks=1, acknowledged_by="Ben")
    for record, defaults in ((episode, Episode(id="", kind="", started_at=0.0)),
                             (call, CallRecord(key="", placed_at=0.0)), (ladder_call, CallRecord(key="", placed_at=0.0))):
        unset = [f.name for f in dataclasses.fields(record) if getattr(record, f.name) == getattr(defaults, f.name)]
        assert not unset, f"give these fields a non-default value here: {unset}"
    state = AlertState(episode=episode)
    assert each_store.commit("sub-ana", state, 0, [])
    read, _version = each_store.get_state("sub-ana")
    assert read == state


def test_a_contact_stored_before_the_mode_existed_is_called(each_store: Any) -> None:
    """Waking someone is the point: a contact saved without a mode is on the ladder."""
    assert Contact.from_value({"phone": "+14155552672", "channel": "sms"}) == Contact("+14155552672", "sms")
    assert Contact.from_value({"phone": "+14155552672", "mode": "page me"}) == Contact("+14155552672")
    assert Contact("+14155552672").mode == "call" and Contact("+14155552672").is_called
    user = make_user(emergency_contact=Contact("+14155552672", "sms", "Bo", mode="text"))
    each_store.save_user(user)
    read = each_store.get_user(user.id)
    assert read == user and read.ladder == user.extra_contacts


def test_what_the_alert_safety_rules_remember_survives_the_round_trip(each_store: Any) -> None:
    """Freshness by arrival, the per-user call wait, a call still queued and a log
    entry's urgency are state like any other: both stores keep them exactly."""
    from models import CallRecord

    state = AlertState(
        episode=Episode(id="low-1", kind="low", started_at=T0, calls=1, last_call_at=T0,
                        call=CallRecord(key="sub-ana:low-1:call:1", placed_at=T0, queued=True)),
        seen=[["65f0c3a1e4b0a1b2c3d4e5f6", T0 - 1200.0, 39.0, T0, 1], [f"{T0 * 1000:.0f}:9", T0 + 600.0, 9.0, T0, 0]],
        last_arrival_at=T0, watching_since=T0 - 3600, clock_skew_told=True, last_call_at=T0,
    )
    queued = entry("sub-ana:low-1:call:1", kind="call", purpose="alert", urgency=39.0)
    assert each_store.commit("sub-ana", state, 0, [queued])
    read, version = each_store.get_state("sub-ana")
    assert read == state and version == 1
    recorded = each_store.get_log(queued.key)
    assert recorded is not None and recorded.urgency == 39.0
