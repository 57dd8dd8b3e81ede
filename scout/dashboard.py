"""The page's live parts: the status panel's JSON, the glucose chart's data, pausing
alerts, the test text to contacts, the history by episode (and its CSV), and the privacy
page. Every view works on the signed-in user only."""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import replace
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from models import LogEntry, User
from scout import status as status_words
from scout.context import get_config, get_store
from scout.glucose import recent_readings, status_of
from scout.logs import mask_text
from scout.pages import show_result, signed_in_user, to_sign_in
from scout.readings import Readings, format_value
from scout.settings_form import normalize_phone

bp = Blueprint("dashboard", __name__)
log = logging.getLogger("scout.dashboard")

CHART_HOURS = (3, 6, 12, 24)
CHART_LOG_ENTRIES = 500  # at most, of the hours shown
PAUSE_HOURS = (1, 2, 4, 8)
HISTORY_PAGE_SIZE = 10
HISTORY_MAX_ENTRIES = 2000  # the most a history page (or the CSV) reads
HISTORY_FIRST_READ = 50  # entries read for a history page at first (see history_page)
TEST_TEXT_INTERVAL = 10 * 60  # seconds between two test texts to one user's contacts


def signed_in() -> User | None:
    return signed_in_user()


def not_signed_in() -> tuple[Response, int]:
    return jsonify({"error": "Your session ended. Reload the page and sign in again."}), 401


# --- status -------------------------------------------------------------------------


@bp.get("/status.json")
def status_json() -> tuple[Response, int] | Response:
    user = signed_in()
    if user is None:
        return not_signed_in()
    response = jsonify(status_of(user, time.time()))
    response.headers["Cache-Control"] = "no-store"
    return response


# --- chart --------------------------------------------------------------------------


def chart_markers(user: User, entries: list[LogEntry], since: float) -> list[dict[str, Any]]:
    """A marker for every call, acknowledgement, text round and all-clear since `since`."""
    markers: list[dict[str, Any]] = []
    texts: dict[tuple[str, int], list[LogEntry]] = {}
    for entry in sorted(entries, key=lambda e: e.created_at):
        if entry.created_at < since:
            continue
        if entry.purpose in ("alert", "test"):
            what = "Test call" if entry.purpose == "test" else "Alert call"
            markers.append({"at": entry.created_at, "kind": "call",
                            "text": f"{what} to you: {status_words.call_outcome(entry)}"})
            if entry.outcome == "acknowledged":
                markers.append({"at": max(entry.updated_at, entry.created_at), "kind": "ack", "text": "You pressed 1"})
        elif entry.purpose in ("contacts", "all_clear", "test_text"):
            texts.setdefault((entry.purpose, int(entry.created_at // 60)), []).append(entry)
        else:
            markers.append({"at": entry.created_at, "kind": "notice",
                            "text": status_words.PURPOSE_WORDS.get(entry.purpose, entry.purpose)})
    for (purpose, _minute), group in texts.items():
        names = contact_names(user)
        to = ", ".join(f"{names[e.recipient]} {status_words.mask_phone(e.recipient)}" if e.recipient in names
                       else status_words.mask_phone(e.recipient) for e in group)
        words = {"contacts": "Texted your contacts", "all_clear": "All clear sent", "test_text": "Test text"}[purpose]
        markers.append({"at": group[0].created_at, "kind": "all-clear" if purpose == "all_clear" else "text",
                        "text": f"{words} ({to})"})
    return sorted(markers, key=lambda m: m["at"])


@bp.get("/chart.json")
def chart_json() -> tuple[Response, int] | Response:
    user = signed_in()
    if user is None:
        return not_signed_in()
    hours = request.args.get("hours", 6, type=int)
    if hours not in CHART_HOURS:
        return jsonify({"error": f"Choose one of {', '.join(map(str, CHART_HOURS))} hours."}), 400
    now = time.time()
    since = now - hours * 3600
    poll = recent_readings(user, now)
    body: dict[str, Any] = {
        "hours": hours, "units": user.units, "since": since, "now": now,
        "low": float(format_value(user.in_force(now).low_mgdl, user.units)),
        "high": float(format_value(user.in_force(now).high_mgdl, user.units)),
        "urgentLow": float(format_value(user.in_force(now).urgent_low, user.units)),
        "points": [], "problem": "",
        # only the entries of the hours shown (Firestore bills each document read)
        "markers": chart_markers(user, get_store().user_log(user.id, CHART_LOG_ENTRIES, since=since), since),
    }
    if isinstance(poll, Readings):
        body["points"] = [[r.at, float(format_value(r.mgdl, user.units))]
                          for r in reversed(poll.readings) if since <= r.at <= now + 300]
        if not body["points"]:
            body["problem"] = f"No readings in the last {hours} hours."
    else:
        body["problem"] = status_words.reading_status(user, poll, now)["problem"]
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


# --- pause --------------------------------------------------------------------------


@bp.post("/pause")
def pause() -> Response:
    """Pause alerts for 1, 2, 4 or 8 hours, or end the pause now ("hours" = 0)."""
    user = signed_in()
    if user is None:
        return to_sign_in()
    hours = request.form.get("hours", type=int)
    if hours not in PAUSE_HOURS + (0,):
        flash("Choose a pause of 1, 2, 4 or 8 hours.", "error")
        return redirect(url_for("pages.index", _anchor="pause"))
    now = time.time()
    until = now + hours * 3600 if hours else 0.0
    get_store().save_user(replace(user, paused_until=until))
    log.info("alerts paused user=%s hours=%s", user.id, hours)
    urgent = f"{format_value(user.urgent_low, user.units)} {user.units}"
    if hours:
        flash(f"Alerts paused for {hours} hour{'s' if hours > 1 else ''}. An urgent low (below {urgent}) "
              "still calls you. Scout texts you when the pause ends.", "ok")
    else:
        flash("Pause ended: Scout is watching again from the next check.", "ok")
    return redirect(url_for("pages.index", _anchor="pause"))


# --- test text to the contacts ----------------------------------------------------------


def test_text(user: User, name: str = "") -> str:
    operator = get_config().operator_name
    run_by = f", run by {operator}" if operator else ""
    greeting = f"Hi {name}, this" if name else "This"
    return (f"{greeting} is a test from Scout{run_by}, the glucose alert service {user.display_name} uses. "
            f"If {user.display_name} does not answer an alert call about a low or high blood glucose, "
            "Scout texts you at this number. Nothing is wrong now; no reply is needed.")


@bp.post("/test-contacts")
def test_contacts() -> Response:
    """Text every contact once, at most once per TEST_TEXT_INTERVAL (counted from the alert
    log, so it holds across workers and restarts)."""
    from scout.engine import Engine
    from scout.pages import to_sign_in
    from scout.telephony import make_messenger

    user = signed_in()
    if user is None:
        return to_sign_in()
    back = redirect(url_for("pages.index", _anchor="contacts-test"))
    if not user.contacts:
        show_result("Save at least one contact first, then send a test text.", "error")
        return back
    store, now, config = get_store(), time.time(), get_config()
    wait = store.take_allowance(f"test-text:user:{user.id}", now, TEST_TEXT_INTERVAL, 1)
    if wait > 0:
        minutes = math.ceil(wait / 60)
        show_result(f"A test text went to your contacts less than {TEST_TEXT_INTERVAL // 60} minutes ago. "
                    f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.", "error")
        return back
    window = int(now // TEST_TEXT_INTERVAL)
    entries, skipped = [], []
    for c in user.contacts:
        try:  # a number saved before today's rules (or imported) is checked again before it is texted
            normalize_phone(c.phone, config.default_region, config.allowed_countries)
        except ValueError as exc:
            skipped.append(f"{status_words.mask_phone(c.phone)} ({exc})")
            continue
        # per number as well: two accounts listing one number do not double its test texts
        if store.take_allowance(f"test-text:number:{c.phone}", now, TEST_TEXT_INTERVAL, 1) > 0:
            skipped.append(f"{status_words.mask_phone(c.phone)} (it had a test text minutes ago)")
            continue
        entries.append(LogEntry(key=f"test_text:{user.id}:{window}:{c.phone}", user_id=user.id, kind=c.channel,
                                purpose="test_text", recipient=c.phone, body=test_text(user, c.name), created_at=now))
    store.commit(user.id, None, 0, entries)
    engine = Engine(store=store, messenger=make_messenger(get_config()))
    for entry in entries:
        try:
            engine.send(entry)
        except Exception as exc:  # one bad provider answer must show on the page, not as a 500
            log.error("test text failed user=%s: %s", user.id, mask_text(f"{type(exc).__name__}: {exc}"))
            store.update_log(entry.key, status="permanent", error=f"{type(exc).__name__}: {exc}", claimed_until=0.0)
    results = [store.get_log(e.key) for e in entries]
    failed = [e for e in results if e is None or e.status != "sent"]
    sent = [e for e in results if e is not None and e.status == "sent"]
    skipped += [f"{status_words.mask_phone(e.recipient)} ({e.error or e.status})" for e in failed if e]
    if skipped:
        show_result(f"Test text sent to {len(sent)} of {len(user.contacts)} contacts; not to "
                    + ", ".join(skipped) + ".", "error")
    else:
        show_result(f"Test text sent to {len(sent)} contact{'s' if len(sent) != 1 else ''}. "
                    f"It says: \u201c{test_text(user)}\u201d", "ok")
    return back


# --- history ----------------------------------------------------------------------------


@bp.get("/history")
def history() -> Response | str:
    user = signed_in()
    if user is None:
        return to_sign_in()
    page = min(max(request.args.get("page", 1, type=int), 1), HISTORY_MAX_ENTRIES // HISTORY_PAGE_SIZE)
    shown, older = history_page(user.id, page)
    return render_template("history.html", user=user, episodes=shown, page=page, older=older,
                           names=contact_names(user), retention_days=retention_days(), words=status_words)


def history_page(user_id: str, page: int) -> tuple[list[status_words.EpisodeHistory], bool]:
    """The episodes of one history page, newest first, and whether there are older ones.
    The log is read from its newest entry back only as far as those episodes need: first
    HISTORY_FIRST_READ entries a page, four times as many while that holds too few whole
    episodes, up to HISTORY_MAX_ENTRIES (Firestore bills every document read)."""
    store = get_store()
    wanted = page * HISTORY_PAGE_SIZE + 1  # one more than the page shows: is there an older page?
    limit = min(HISTORY_FIRST_READ * page, HISTORY_MAX_ENTRIES)
    while True:
        log = store.user_log(user_id, limit)
        everything = len(log) < limit
        groups = status_words.whole_episodes(log, everything)
        if everything or len(groups) >= wanted or limit >= HISTORY_MAX_ENTRIES:
            break
        limit = min(limit * 4, HISTORY_MAX_ENTRIES)
    return groups[(page - 1) * HISTORY_PAGE_SIZE: page * HISTORY_PAGE_SIZE], len(groups) >= wanted


@bp.get("/history.csv")
def history_csv() -> Response:
    user = signed_in()
    if user is None:
        return to_sign_in()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["episode", "time_utc", "what", "kind", "to", "status", "outcome", "message"])
    for group in status_words.episodes(get_store().user_log(user.id, HISTORY_MAX_ENTRIES)):
        for e in group.entries:
            writer.writerow([group.id if group.kind != "other" else "", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.created_at)),
                             status_words.PURPOSE_WORDS.get(e.purpose, e.purpose), e.kind, e.recipient, e.status,
                             status_words.call_outcome(e) if e.kind == "call" else "", csv_safe(e.body)])
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = "attachment; filename=scout-history.csv"
    response.headers["Cache-Control"] = "no-store"
    return response


def contact_names(user: User) -> dict[str, str]:
    return {c.phone: c.name for c in user.contacts if c.name}


def csv_safe(text: str) -> str:
    """A spreadsheet runs a cell that starts with = + - @ as a formula, and skips a leading tab
    or carriage return to find one; such cells get a quote mark."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def retention_days() -> int:
    return get_config().history_days


# --- privacy ------------------------------------------------------------------------


@bp.get("/privacy")
def privacy() -> str:
    return render_template("privacy.html", user=signed_in(), retention_days=retention_days())
