"""One wording table (the page's known defects, 3): the settings page's recent alerts and the
history name every alert log entry alike; a reply is 'from' its sender, a Nightscout note is
written on the user's Nightscout, to no number."""
from __future__ import annotations

import html
import time

from flask.testing import FlaskClient

from models import LogEntry
from scout.status import PURPOSE_WORDS
from scout.store.sqlite import SqliteStore
from tests.conftest import DevAuth

USER_ID = "dev:ana@example.com"


def test_both_pages_name_every_kind_of_entry_from_the_one_table(client: FlaskClient, auth: DevAuth,
                                                                 store: SqliteStore) -> None:
    auth.login()
    now = time.time()
    entries = [LogEntry(f"{USER_ID}:{purpose}:{i}", USER_ID, "sms", purpose, "+14155552672", "x", now - 60 * i,
                        status="sent") for i, purpose in enumerate(sorted(PURPOSE_WORDS)) if purpose != "note"]
    entries.append(LogEntry(f"{USER_ID}:reply:twilio:SM1", USER_ID, "sms", "reply", "+14155552673", "OK",
                            now - 30, status="received", outcome="acknowledged"))
    entries.append(LogEntry(f"{USER_ID}:note:1", USER_ID, "nightscout", "note", "Nightscout", "Scout called Ana",
                            now - 20, status="sent", provider="nightscout"))
    assert store.commit(USER_ID, None, 0, entries)
    settings = html.unescape(client.get("/").get_data(as_text=True).split('id="recent-alerts"')[1])
    history = html.unescape(client.get("/history").get_data(as_text=True) +
                            client.get("/history?page=2").get_data(as_text=True))
    for words in PURPOSE_WORDS.values():
        assert words in history, words
    for entry in sorted(entries, key=lambda e: -e.created_at)[:20]:  # the settings page lists the newest 20
        assert PURPOSE_WORDS[entry.purpose] in settings, entry.purpose

    assert "Reply received by SMS from +1 •••• 2673" in history
    assert "Reply received</strong>\n            from +1 415-555-2673" in settings
    assert "Note on your Nightscout" in history and "Note on your Nightscout by SMS" not in history
    assert "to Nightscout" not in settings and "•••</" not in history  # a note has no number to mask
