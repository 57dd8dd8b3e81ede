"""Alerts noted on the user's own Nightscout as treatments, against a Nightscout double
that enforces the access token's role, through the real poller and the provider doubles."""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from models import LogEntry
from scout.config import Config
from scout.store.sqlite import SqliteStore
from tests.conftest import DevAuth, csrf_token, make_user
from tests.fake_providers import FakeProviders
from tests.telephony_setup import Scout

CAREPORTAL_TOKEN = "scout-4f1c2a9e7b6d5c3a"
READABLE_TOKEN = "follower-8e7d6c5b4a392817"
API_SECRET = "a-long-api-secret-of-the-site"


class RoleNightscout:
    """A Nightscout with Nightscout's roles: `readable` may read entries; only `careportal`
    (or the API secret, which is admin) may create treatments. Anything else gets 401."""

    ROLES = {CAREPORTAL_TOKEN: {"readable", "careportal"}, READABLE_TOKEN: {"readable"}}

    def __init__(self, server: HTTPServer, clock: Any) -> None:
        self.server, self.clock = server, clock
        self.values: tuple[int, ...] = (54, 62)
        self.treatments: list[dict[str, Any]] = []
        self.refused_posts = 0
        self.post_delay = 0.0
        server.expect_request("/api/v1/entries/sgv.json").respond_with_handler(self._entries)
        server.expect_request("/api/v1/treatments", method="POST").respond_with_handler(self._treatment)

    @property
    def url(self) -> str:
        return self.server.url_for("/")

    def show(self, *values: int, direction: str = "Flat") -> None:
        self.values = values

    def _roles(self, request: Request) -> set[str]:
        if request.headers.get("api-secret") == hashlib.sha1(API_SECRET.encode()).hexdigest():
            return {"admin"}
        return self.ROLES.get(request.args.get("token", ""), set())

    def _entries(self, request: Request) -> Response:
        if not self._roles(request) & {"readable", "admin"}:
            return Response('{"status":401,"message":"Unauthorized"}', 401, content_type="application/json")
        now_ms = int(self.clock() * 1000)
        entries = [{"_id": f"e{i}", "type": "sgv", "sgv": v, "date": now_ms - 60_000 - 300_000 * i,
                    "direction": "SingleDown", "device": "xDrip"} for i, v in enumerate(self.values)]
        return Response(json.dumps(entries), content_type="application/json")

    def _treatment(self, request: Request) -> Response:
        time.sleep(self.post_delay)
        if not self._roles(request) & {"careportal", "admin"}:
            self.refused_posts += 1
            return Response('{"status":401,"message":"Unauthorized"}', 401, content_type="application/json")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not {"eventType", "enteredBy", "created_at"} <= body.keys():
            return Response('{"status":400}', 400, content_type="application/json")
        self.treatments.append(body)
        return Response(json.dumps([{**body, "_id": f"t{len(self.treatments)}"}]), content_type="application/json")


@pytest.fixture
def notes_scout(telephony_config: Config, fake: FakeProviders, httpserver: HTTPServer) -> Iterator[Scout]:
    holder: dict[str, Scout] = {}
    site = RoleNightscout(httpserver, clock=lambda: holder["scout"].now)
    scout = holder["scout"] = Scout(telephony_config, fake, site)  # type: ignore[arg-type]
    yield scout
    scout.close()


def watch(scout: Scout, **settings: Any) -> RoleNightscout:
    site: RoleNightscout = scout.nightscout  # type: ignore[assignment]
    scout.store.save_user(make_user(site.url, nightscout_notes=True, **settings))
    return site


def notes(scout: Scout) -> list[LogEntry]:
    return [e for e in scout.log() if e.purpose == "note"]


def test_calls_escalations_acknowledgements_and_the_all_clear_are_noted_once(notes_scout: Scout) -> None:
    scout = notes_scout
    site = watch(scout, nightscout_token=CAREPORTAL_TOKEN)
    unanswered = {"twilio": ("no-answer",), "vonage": ("unanswered",)}[scout.provider]
    scout.poll()  # call 1
    scout.finish_call(*unanswered)  # the contacts are texted
    scout.poll(after=150)  # still low: call 2
    scout.finish_call("completed", "1")  # pressed 1
    scout.finish_call("completed", "1")  # the provider delivers the key press again
    site.show(110, 90)
    scout.poll(after=150)  # back in range: all clear

    kinds = [(t["eventType"], t["notes"].split(":")[0]) for t in site.treatments]
    assert kinds == [("Announcement", "Scout called"),
                     ("Announcement", "Scout called the contact at +14155552672"),  # the ladder's first call
                     ("Announcement", "Scout texted 3 contact(s)"),
                     ("Announcement", "Scout called"), ("Note", "Scout"), ("Note", "Scout")]
    assert all(t["enteredBy"] == "Scout" and t["created_at"].endswith("Z") for t in site.treatments)
    assert site.treatments[0]["notes"].startswith("Scout called: Ana, your blood glucose is 54 milligrams per deciliter")
    assert site.treatments[1]["notes"] == "Scout called the contact at +14155552672: Ana did not acknowledge the alert."
    assert site.treatments[4]["notes"] == "Scout: Ana pressed 1: alert acknowledged."
    assert site.treatments[5]["notes"] == "Scout: back in range; all clear sent to 4."
    assert [e.status for e in notes(scout)] == ["sent"] * 6
    # the alerts themselves all went out: Ana's two calls, the emergency contact's, and one
    # "Ana pressed 1 and is on it" to each contact
    assert len([e for e in scout.log() if e.kind == "call" and e.status == "sent"]) == 3
    assert len([e for e in scout.log() if e.purpose == "on_it" and e.status == "sent"]) == 3
    assert len([e for e in scout.log() if e.purpose == "all_clear" and e.status == "sent"]) == 4


def test_a_token_without_the_careportal_role_is_refused_and_the_alerts_still_go_out(notes_scout: Scout) -> None:
    scout = notes_scout
    site = watch(scout, nightscout_token=READABLE_TOKEN)
    unanswered = {"twilio": ("no-answer",), "vonage": ("unanswered",)}[scout.provider]
    scout.poll()
    scout.finish_call(*unanswered)
    # the call, the ladder's call to the emergency contact, the texts: tried once each
    assert site.treatments == [] and site.refused_posts == 3
    assert [(e.kind, e.status) for e in scout.log() if e.purpose in ("alert", "contacts")].count(("call", "sent")) == 1
    assert len([e for e in scout.log() if e.purpose == "contacts" and e.status == "sent"]) == 3
    refused = notes(scout)
    assert [e.status for e in refused] == ["permanent"] * 3
    assert "HTTP 401" in refused[0].error and "careportal" in refused[0].error
    scout.poll(after=150)  # the next call: a new note is tried, the old ones are not retried
    assert site.refused_posts == 4


def test_the_api_secret_can_write_notes(notes_scout: Scout) -> None:
    site = watch(notes_scout, nightscout_api_secret=API_SECRET)
    notes_scout.poll()
    assert [t["eventType"] for t in site.treatments] == ["Announcement"]


def test_a_nightscout_that_hangs_on_the_note_does_not_hold_back_the_alerts(notes_scout: Scout) -> None:
    scout = notes_scout
    site = watch(scout, nightscout_token=CAREPORTAL_TOKEN)
    site.post_delay = 6.5  # past the note's 5 s read limit
    started = time.monotonic()
    scout.poll()
    assert time.monotonic() - started < 30
    call = next(e for e in scout.log() if e.kind == "call")
    assert call.status == "sent"
    (note,) = notes(scout)
    assert note.status == "expired" and "did not answer" in note.error


def test_no_note_is_written_unless_the_user_asked(notes_scout: Scout) -> None:
    site: RoleNightscout = notes_scout.nightscout  # type: ignore[assignment]
    notes_scout.store.save_user(make_user(site.url, nightscout_token=CAREPORTAL_TOKEN))
    notes_scout.poll()
    assert site.treatments == [] and site.refused_posts == 0 and notes(notes_scout) == []
    assert len([e for e in notes_scout.log() if e.kind == "call"]) == 1


# --- the settings page -------------------------------------------------------------------

SETTINGS = {
    "nightscout_url": "http://127.0.0.1:8080/", "phone": "+1 415 555 2671", "emergency_contact": "(415) 555-2672",
    "emergency_channel": "sms", "units": "mg/dL", "low": "70", "high": "240",
}


def test_notes_need_a_token_or_secret_and_the_error_sits_by_the_option(
    client: FlaskClient, auth: DevAuth, store: SqliteStore
) -> None:
    auth.login()
    response = client.post("/", data={**SETTINGS, "nightscout_notes": "1", "csrf_token": csrf_token(client)})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'id="nightscout_notes-error"' in page and "careportal" in page
    assert 'aria-invalid="true"' in page.split('id="nightscout_notes"')[1].split(">")[0]
    user = store.get_user("dev:ana@example.com")
    assert user is not None and not user.nightscout_notes
    response = client.post("/", data={**SETTINGS, "nightscout_notes": "1", "nightscout_token": CAREPORTAL_TOKEN,
                                      "csrf_token": csrf_token(client)})
    assert response.status_code == 302
    user = store.get_user("dev:ana@example.com")
    assert user is not None and user.nightscout_notes
    assert "No note written yet" in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("status, error, shown", [
    ("sent", "", "Your token can write"),
    ("permanent", "Nightscout refused the note (HTTP 401): the access token's role does not allow treatments",
     "Your token cannot write notes. Nightscout refused the note (HTTP 401)"),
])
def test_the_page_says_whether_the_token_can_write(
    client: FlaskClient, auth: DevAuth, store: SqliteStore, status: str, error: str, shown: str
) -> None:
    auth.login()
    client.post("/", data={**SETTINGS, "nightscout_notes": "1", "nightscout_token": CAREPORTAL_TOKEN,
                           "csrf_token": csrf_token(client)})
    note = LogEntry(key="dev:ana@example.com:low-1:call:1:note", user_id="dev:ana@example.com", kind="nightscout",
                    purpose="note", recipient="Nightscout", body="Scout called: ...", created_at=time.time(),
                    status=status, error=error)
    assert store.commit("dev:ana@example.com", None, 0, [note])
    page = client.get("/").get_data(as_text=True)
    assert shown in page
