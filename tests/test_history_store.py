"""The page's state in both stores (issue 14): a pause and the urgent-low line are kept with
the user, the resume notice with the alert state, and the history's retention deletes only
what is older than the cutoff. Every test runs on SQLite and on Firestore (the emulator)."""
from __future__ import annotations

import random
from typing import Any

from models import AlertState
from tests.conftest import make_user
from tests.test_store_contract import T0, entry


def test_a_pause_and_the_urgent_low_read_back_from_the_store(each_store: Any) -> None:
    user = make_user(paused_until=T0 + 7200, urgent_low_mgdl=50.0)
    each_store.save_user(user)
    assert each_store.get_user(user.id) == user
    assert each_store.list_users() == [user]


def test_the_resume_notice_is_kept_in_the_alert_state(each_store: Any) -> None:
    assert each_store.commit("sub-ana", AlertState(pause_resumed_for=T0 + 7200), 0, [])
    state, _version = each_store.get_state("sub-ana")
    assert state.pause_resumed_for == T0 + 7200


def test_retention_deletes_only_entries_older_than_the_cutoff_for_every_user(each_store: Any) -> None:
    rng = random.Random(14)
    days = [rng.uniform(0, 200) for _ in range(40)]
    entries = [entry(f"k{i}", user_id=f"user-{i % 3}", created_at=T0 - d * 86400) for i, d in enumerate(days)]
    random.Random(7).shuffle(entries)
    for e in entries:
        assert each_store.commit(e.user_id, None, 0, [e])
    old = sum(1 for d in days if d > 90)
    assert each_store.delete_log_before(T0 - 90 * 86400) == old
    kept = [e for u in range(3) for e in each_store.user_log(f"user-{u}", 100)]
    assert sorted(e.key for e in kept) == sorted(e.key for e in entries if e.created_at >= T0 - 90 * 86400)
    assert 0 < old < len(days)
    assert len(kept) == len(days) - old
    assert each_store.delete_log_before(T0 - 90 * 86400) == 0  # nothing left to delete


def test_contact_names_read_back_from_the_store(each_store: Any) -> None:
    from models import Contact

    user = make_user(emergency_contact=Contact("+14155552672", "whatsapp", "Bo Ng"),
                     extra_contacts=(Contact("+14155552673", "sms", "Sam"), Contact("+14155552674", "sms")))
    each_store.save_user(user)
    assert each_store.get_user(user.id) == user
