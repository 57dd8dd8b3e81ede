"""The pages a person sees: sign-in, settings, the checks they can run, sign-out and
deleting their data.

Every view works on the signed-in user only: the user id comes from the signed session,
never from the form, so nobody can read or change another person's record.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from typing import Any

from flask import Blueprint, flash, make_response, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.wrappers import Response

from models import DEFAULT_URGENT_HIGH_MGDL, DEFAULT_URGENT_LOW_MGDL, MAX_EXTRA_CONTACTS, AlertState, LogEntry, User
from scout import status as status_words
from scout.config import Config
from scout.context import address_policy, client_address, current_user_id, end_session, get_config, get_store, start_session
from scout.logs import mask_text
from scout.readings import MMOL_PER_MGDL, PollFailure, Readings
from scout.settings_form import (
    UNITS,
    credential_hint,
    default_thresholds,
    from_mgdl,
    normalize_phone,
    read_settings,
    time_zones,
)

bp = Blueprint("pages", __name__)
log = logging.getLogger("scout.pages")

RECENT_LOG_ENTRIES = 20
TEST_CALL_INTERVAL = 120  # seconds between two test calls of one user, or to one number
TEST_CALLS_PER_NUMBER_PER_DAY = 10  # however many accounts list the number
CHECKS_PER_WINDOW = (10, 600)  # "Check my Nightscout": 10 per user per 10 minutes
SIGN_INS_PER_WINDOW = (30, 600)  # sign-in attempts per client address per 10 minutes
TEST_CALL_TEXT = (
    "This is a test call from Scout. Your glucose alerts will reach you on this phone. "
    "Nothing is wrong; no action is needed."
)

Page = str | tuple[str, int]


# --- session ----------------------------------------------------------------------------


def signed_in_user() -> User | None:
    user_id = current_user_id()
    return get_store().get_user(user_id) if user_id else None


def sign_in(user: User) -> None:
    """Start a fresh session for `user`, keyed only by their verified id (a new session
    also means a new CSRF token, so a token seen before sign-in is useless after)."""
    start_session(user.id)


def to_sign_in() -> Response:
    flash("Your session ended. Please sign in again.", "info")
    return redirect(url_for("pages.index"))


# --- what the settings page shows -------------------------------------------------------


def readable_phone(number: str) -> str:
    """A saved E.164 number as people write it: +14155552671 -> +1 415-555-2671."""
    import phonenumbers

    try:
        return phonenumbers.format_number(phonenumbers.parse(number, None), phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    except phonenumbers.NumberParseException:
        return number


bp.add_app_template_filter(readable_phone, "phone")


def form_values(user: User) -> dict[str, Any]:
    """The settings as the form shows them; credentials are never shown back in full."""
    contact = user.emergency_contact
    return {
        "nightscout_url": user.nightscout_url,
        "token_hint": credential_hint(user.nightscout_token),
        "api_secret_hint": credential_hint(user.nightscout_api_secret),
        "phone": readable_phone(user.phone) if user.phone else "",
        "emergency_contact": readable_phone(contact.phone) if contact else "",
        "emergency_channel": contact.channel if contact else "sms",
        "emergency_name": contact.name if contact else "",
        "emergency_mode": contact.mode if contact else "call",
        "extra_contacts": [{"phone": readable_phone(c.phone), "channel": c.channel, "name": c.name, "mode": c.mode}
                           for c in user.extra_contacts],
        "units": user.units,
        "low": f"{from_mgdl(user.low_mgdl, user.units):g}",
        "high": f"{from_mgdl(user.high_mgdl, user.units):g}",
        "urgent_low": f"{from_mgdl(user.urgent_low_mgdl, user.units):g}",
        "nightscout_notes": user.nightscout_notes,
        "predict_low": bool(user.predict_low_minutes),
        "predict_low_minutes": str(user.predict_low_minutes or 20),
        "fast_drop": user.fast_drop,
        "fast_drop_rate": f"{user.fast_drop_rate_mgdl * MMOL_PER_MGDL:.2f}".rstrip("0").rstrip(".")
        if user.units == "mmol/L" else f"{user.fast_drop_rate_mgdl:g}",
        "fast_drop_minutes": str(user.fast_drop_minutes),
        "high_repeat_minutes": str(user.high_repeat_minutes),
        "high_snooze_minutes": str(user.high_snooze_minutes),
        "urgent_high": f"{from_mgdl(user.urgent_high_mgdl, user.units):g}",
        "urgent_high_minutes": str(user.urgent_high_minutes),
        "time_zone": user.time_zone,
        "night_thresholds": user.night_thresholds,
        "night_start": user.night_start,
        "night_end": user.night_end,
        "night_low": f"{from_mgdl(user.night_low_mgdl, user.units):g}",
        "night_high": f"{from_mgdl(user.night_high_mgdl, user.units):g}",
    }


def notes_status(user: User, log: list[LogEntry]) -> str:
    """Whether Scout can write the user's notes, from the last note it tried to write (in
    `log`, the recent entries the page has read)."""
    notes = [e for e in log if e.purpose == "note"]
    if not notes:
        return "No note written yet: Scout writes one with the next alert." if user.nightscout_notes else ""
    last = notes[0]
    if last.status == "sent":
        return "Your token can write: the last note reached your Nightscout."
    if last.status == "permanent":
        return f"Your token cannot write notes. {last.error}."
    return f"The last note could not be written ({last.error or last.status}); alerts are not affected."


def submitted_values(user: User) -> dict[str, Any]:
    """The user's own input, kept when the form is shown again with errors. Typed
    credentials are not echoed back into the page; the saved ones' hints stay."""
    form = request.form
    phones, channels, names = form.getlist("extra_contacts"), form.getlist("extra_channels"), form.getlist("extra_names")
    modes = form.getlist("extra_modes")
    return {
        **form_values(user),
        **{k: form.get(k, "") for k in ("nightscout_url", "phone", "emergency_contact", "emergency_name", "low", "high",
                                         "urgent_low")},
        "units": form.get("units", "") if form.get("units") in UNITS else user.units,
        "nightscout_notes": form.get("nightscout_notes") == "1",
        "predict_low": form.get("predict_low") == "1",
        "fast_drop": form.get("fast_drop") == "1",
        **{k: form.get(k, "") for k in ("predict_low_minutes", "fast_drop_rate", "fast_drop_minutes",
                                         "high_repeat_minutes", "high_snooze_minutes", "urgent_high",
                                         "urgent_high_minutes", "night_start", "night_end", "night_low",
                                         "night_high", "time_zone") if k in form},
        "night_thresholds": form.get("night_thresholds") == "1",
        "emergency_channel": form.get("emergency_channel", "sms"),
        "emergency_mode": form.get("emergency_mode", "call"),
        "extra_contacts": [
            {"phone": p, "channel": channels[i] if i < len(channels) else "sms", "name": names[i] if i < len(names) else "",
             "mode": modes[i] if i < len(modes) else "call"}
            for i, p in enumerate(phones)
        ],
    }


def page_data(user: User, now: float, log: list[LogEntry]) -> dict[str, Any]:
    """What the page's own scripts need, handed over as JSON (rendered with `tojson`)."""
    from scout.glucose import status_of

    return {
        "maxContacts": MAX_EXTRA_CONTACTS,
        "defaults": {units: dict(zip(("low", "high", "urgent_low", "night_low", "night_high", "urgent_high"),
                                     (*default_thresholds(units), from_mgdl(DEFAULT_URGENT_LOW_MGDL, units),
                                      *default_thresholds(units), from_mgdl(DEFAULT_URGENT_HIGH_MGDL, units)),
                                     strict=True))
                     for units in UNITS},
        "mgdlPerMmol": 18.0,
        "status": status_of(user, now, read_nightscout=False, log=log),
        "statusUrl": url_for("dashboard.status_json"),
        "chartUrl": url_for("dashboard.chart_json"),
        "statusEverySeconds": STATUS_EVERY_SECONDS,
    }


STATUS_EVERY_SECONDS = 30  # how often the page asks for the status


def render_settings(user: User, values: dict[str, Any], errors: dict[str, str], status: int = 200) -> Page:
    now = time.time()
    log = get_store().user_log(user.id, RECENT_LOG_ENTRIES)  # read once: the list, the notes and the status
    page = render_template(
        "settings.html", user=user, values=values, errors=errors, page_data=page_data(user, now, log), now=now,
        log=log, max_contacts=MAX_EXTRA_CONTACTS, notes_status=notes_status(user, log), time_zones=time_zones(),
        words=status_words,
    )
    return (page, status) if status != 200 else page


# --- views ------------------------------------------------------------------------------


@bp.get("/")
def index() -> Response | Page:
    user = signed_in_user()
    if user is None:
        return render_signin()
    return render_settings(user, form_values(user), {})


def render_signin(error: str = "", status: int = 200) -> Response:
    config = get_config()
    page = render_template("signin.html", config=config, error=error, login_uri=google_login_uri(config))
    response = make_response(page, status)
    # Google's button checks our origin (the authorized JavaScript origin) from the Referer
    # of its iframe: the app-wide "same-origin" would send none. This sends the origin only.
    response.headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
    return response


def google_login_uri(config: Config) -> str:
    """Where Google's button posts the credential: the public SITE_URL outside dev mode
    (behind a proxy the request's own host may not be the public one)."""
    if config.dev:
        return url_for("pages.login", _external=True)
    return f"{config.site_url}{url_for('pages.login')}"


@bp.post("/")
def save_settings() -> Response | Page:
    user = signed_in_user()
    if user is None:
        return to_sign_in()
    config = get_config()
    result = read_settings(request.form, user, config.default_region, allow_private=config.dev,
                           allowed_countries=config.allowed_countries)
    if result.user is None:
        return render_settings(user, submitted_values(user), result.errors, status=400)
    get_store().save_user(result.user)
    log.info("settings saved user=%s contacts=%d", user.id, len(result.user.contacts))
    flash("Saved. Scout uses these settings from the next check, within a minute.", "ok")
    return redirect(url_for("pages.index"))


def show_result(text: str, outcome: str) -> None:
    """A check's result, shown in the "Test your set-up" card where its button is."""
    flash(text, f"check-{outcome}")


@bp.post("/check-nightscout")
def check_nightscout() -> Response:
    """Read the saved Nightscout site now and say what Scout sees, or exactly why not."""
    from scout.nightscout import fetch_readings

    user = signed_in_user()
    if user is None:
        return to_sign_in()
    if not user.nightscout_url:
        show_result("Save your Nightscout address first, then check it.", "error")
        return redirect(url_for("pages.index", _anchor="check"))
    limit, window = CHECKS_PER_WINDOW
    wait = get_store().take_allowance(f"check:user:{user.id}", time.time(), window, limit)
    if wait > 0:
        show_result(f"You checked {limit} times in the last {window // 60} minutes. "
                    f"Try again in {math.ceil(wait)} seconds.", "error")
        return redirect(url_for("pages.index", _anchor="check"))
    poll = fetch_readings(user, allow_private=get_config().dev, timeout=(5.0, 8.0), is_public=address_policy())
    state, _version = get_store().get_state(user.id)
    show_result(*describe_poll(poll, user, time.time(), state))
    return redirect(url_for("pages.index", _anchor="check"))


def describe_poll(poll: PollFailure | Readings, user: User, now: float, state: AlertState | None = None
                  ) -> tuple[str, str]:
    """What a check of the user's Nightscout found, in one sentence: the status panel's
    reading (scout.status.reading_status, timed and judged as the poller would) in words.
    Returns (sentence, "ok" | "warn" | "error")."""
    from scout.alerts import STALE_AFTER
    from scout.status import reading_status

    shown = reading_status(user, poll, now, state)
    if "value" not in shown:
        return shown.get("problem", ""), "error"
    minutes = shown["ageMinutes"]
    age = "less than a minute ago" if minutes == 0 else f"{minutes} minute{'s' if minutes != 1 else ''} ago"
    value = shown["value"] if shown["limit"] else f"{shown['value']} {user.units}"  # LOW and HIGH carry theirs
    trend = f"{shown['arrow']} {shown['trend']}".strip()
    seen = f"{value} {trend}".rstrip() + f", {age}"
    clock = f" {shown['clock']}" if "clock" in shown else ""
    if not shown["fresh"]:
        return (f"Scout reached your Nightscout, but its newest reading is old: {seen}. Scout never calls for a "
                f"reading older than {STALE_AFTER // 60} minutes: check that your uploader is sending readings."
                f"{clock}"), "error"
    if shown["range"] == "in-range":
        return f"Nightscout works: {seen}, {shown['judgement']}.{clock}", "ok"
    return f"Nightscout works: {seen}. That is {shown['judgement']}: Scout would call you for it.{clock}", "warn"


@bp.post("/test-alert")
def test_alert() -> Response:
    """Place one test call to the user's phone through the configured telephony, at
    most one per TEST_CALL_INTERVAL per user and per number (and a few a day per
    number), counted in the store: the limits hold across workers, restarts and the
    deletion of the user's data, so nobody can ring a number over and over."""
    user = signed_in_user()
    if user is None:
        return to_sign_in()
    if not user.phone:
        show_result("Save your phone number first, then send a test call.", "error")
        return redirect(url_for("pages.index", _anchor="test"))
    config = get_config()
    try:  # a number saved before today's rules (or imported) is checked again before it is dialled
        normalize_phone(user.phone, config.default_region, config.allowed_countries)
    except ValueError as exc:
        show_result(f"Scout will not call your saved number: {exc}", "error")
        return redirect(url_for("pages.index", _anchor="test"))
    now = time.time()
    wait = seconds_until_next_test(user, now)
    if wait > 0:
        show_result(f"A test call was placed to this account or this number less than "
                    f"{TEST_CALL_INTERVAL // 60} minutes ago. Try again in {wait} seconds.", "error")
        return redirect(url_for("pages.index", _anchor="test"))
    show_result(*place_test_call(user, now))
    return redirect(url_for("pages.index", _anchor="test"))


def seconds_until_next_test(user: User, now: float) -> int:
    """0, with the test call counted against every limit; or the seconds to wait."""
    store = get_store()
    for key, window, limit in ((f"test-call:user:{user.id}", TEST_CALL_INTERVAL, 1),
                               (f"test-call:number:{user.phone}", TEST_CALL_INTERVAL, 1),
                               (f"test-call:number-day:{user.phone}", 86400, TEST_CALLS_PER_NUMBER_PER_DAY)):
        wait = store.take_allowance(key, now, window, limit)
        if wait > 0:
            return math.ceil(wait)
    return 0


def place_test_call(user: User, now: float) -> tuple[str, str]:
    """Record the test call in the alert log, then send it the way the engine sends
    alerts. The key holds the 2-minute window, so two requests racing past the log
    check still record (and send) one call."""
    from scout.engine import Engine
    from scout.telephony import make_messenger

    store = get_store()
    key = f"test:{user.id}:{int(now // TEST_CALL_INTERVAL)}"
    entry = LogEntry(key=key, user_id=user.id, kind="call", purpose="test", recipient=user.phone,
                     body=TEST_CALL_TEXT, created_at=now)
    store.commit(user.id, None, 0, [entry])
    try:
        Engine(store=store, messenger=make_messenger(get_config())).send(entry)
    except Exception as exc:  # a misconfigured provider must show on the page, not as a 500
        log.error("test call failed user=%s: %s", user.id, mask_text(f"{type(exc).__name__}: {exc}"))
        store.update_log(key, status="permanent", error=f"{type(exc).__name__}: {exc}", claimed_until=0.0)
    sent = store.get_log(key)
    if sent is None or sent.status not in ("sent",):
        reason = sent.error if sent and sent.error else "it was not sent"
        return f"The test call to {readable_phone(user.phone)} failed: {reason}. Check the number, or ask the operator.", "error"
    return f"Test call placed to {readable_phone(user.phone)}. It says: \u201c{TEST_CALL_TEXT}\u201d", "ok"


@bp.get("/delete-account")
def confirm_delete() -> Response | str:
    user = signed_in_user()
    if user is None:
        return to_sign_in()
    return render_template("delete.html", user=user)


@bp.post("/delete-account")
def delete_account() -> Response:
    """Remove the user, their alert state and their alert log, then end the session."""
    user = signed_in_user()
    if user is None:
        return to_sign_in()
    get_store().delete_user(user.id)
    log.info("user deleted their data user=%s", user.id)
    end_session()  # every copy of the session ends with the data
    flash("Your settings, alert state and alert log were deleted. Scout no longer watches your Nightscout.", "ok")
    return redirect(url_for("pages.index"))


@bp.post("/logout")
def logout() -> Response:
    """Sign out: a POST with the CSRF token (another site cannot sign anyone out), and
    every copy of the session ends, not only this browser's cookie."""
    end_session()
    return redirect(url_for("pages.index"))


@bp.get("/logout")
def logout_page() -> Response:
    """An old link or bookmark: signing out takes the button, which carries the CSRF token."""
    if current_user_id() is not None:
        flash("To sign out, use the Sign out button at the top of the page.", "info")
    return redirect(url_for("pages.index"))


@bp.app_errorhandler(CSRFError)
def csrf_refused(error: CSRFError) -> tuple[str, int]:
    """A form without a valid CSRF token changes nothing; say what to do instead of a bare 400."""
    log.warning("CSRF refused path=%s reason=%s", request.path, error.description)
    return render_template("refused.html", reason=error.description), 400


# --- Google sign-in -----------------------------------------------------------------------


def find_or_create_user(subject: str, email: str, name: str, email_verified: bool = True) -> User:
    """The stored user for a verified identity. A tutorial-era record (its id is the
    email, it has no subject id) with the same, Google-verified email is adopted: its
    settings move to the subject id and the old record is removed, so nobody is watched
    twice."""
    store = get_store()
    user = store.get_user(subject)
    legacy = None
    if user is None:
        found = store.find_user_by_email(email) if email and email_verified else None
        legacy = found if found is not None and found.id == email else None
        user = replace(legacy, id=subject) if legacy else User(subject, email, name)
    user = replace(user, email=email, name=name or user.name)
    store.save_user(user)
    if legacy is not None:
        store.delete_user(legacy.id)  # only after the adopted copy is saved
        log.info("adopted a tutorial-era record as user=%s", subject)
    return user


GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
MAX_CREDENTIAL_LENGTH = 8192  # a Google ID token is about 1 kB


@bp.post("/login")
def login() -> Response:
    """Google Identity Services posts the ID token here as `credential`, with the
    `g_csrf_token` double-submit value in a cookie and a field. Identity is taken only
    from the verified token; any other posted field (an `email`, say) is ignored."""
    config = get_config()
    if not config.google_client_id:
        return render_signin("Google sign-in is not configured on this Scout (GOOGLE_CLIENT_ID is unset).", 400)
    cookie_token = request.cookies.get("g_csrf_token", "")
    limit, window = SIGN_INS_PER_WINDOW
    if get_store().take_allowance(f"signin:client:{client_address()}", time.time(), window, limit) > 0:
        log.warning("Google sign-in refused: too many attempts from one client address")
        return render_signin("Too many sign-in attempts from your network. Please wait a few minutes and "
                             "try again.", 429)
    if not cookie_token or cookie_token != request.form.get("g_csrf_token", ""):
        log.warning("Google sign-in refused: g_csrf_token cookie and field missing or different")
        return render_signin("Sign-in refused: the request did not come from Google's sign-in button. "
                             "Please use the button again.", 400)
    credential = request.form.get("credential", "")
    claims = verify_google_token(credential, config) if 0 < len(credential) <= MAX_CREDENTIAL_LENGTH else None
    if claims is None:
        return render_signin("Sign-in refused: Google's sign-in token could not be verified. Please try again.", 400)
    user = find_or_create_user(str(claims["sub"]), str(claims.get("email", "")), str(claims.get("name", "")),
                               email_verified=claims.get("email_verified") is True)
    sign_in(user)
    return redirect(url_for("pages.index"))


def verify_google_token(credential: str, config: Config) -> dict[str, Any] | None:
    """The claims of a Google ID token whose signature (Google's published keys), audience
    (our GOOGLE_CLIENT_ID), issuer and expiry all check out; None otherwise.
    SCOUT_GOOGLE_CERTS_URL points at other keys, for tests only."""
    import google.auth.exceptions
    import requests
    from google.auth import jwt
    from google.oauth2 import id_token

    certs_url = config.get("SCOUT_GOOGLE_CERTS_URL") or id_token._GOOGLE_OAUTH2_CERTS_URL
    try:
        certs = google_certs(certs_url, time.time())
        claims = jwt.decode(credential, certs=certs, audience=config.google_client_id, clock_skew_in_seconds=10)
    except (ValueError, google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
        log.warning("Google ID token refused: %s", exc)
        return None
    if claims.get("iss") not in GOOGLE_ISSUERS or not claims.get("sub"):
        log.warning("Google ID token refused: issuer %r, subject %r", claims.get("iss"), claims.get("sub"))
        return None
    return dict(claims)


# Google's public keys, kept as long as their Cache-Control allows (hours): a sign-in,
# good or bad, does not fetch them again. Keys are public and the same for every user,
# so this cache in memory is no state of Scout's to lose.
_certs: dict[str, tuple[float, dict[str, str]]] = {}
_certs_lock = threading.Lock()
CERTS_FETCH_TIMEOUT = 10.0


def google_certs(url: str, now: float) -> dict[str, str]:
    with _certs_lock:
        cached = _certs.get(url)
        if cached is not None and cached[0] > now:
            return cached[1]
        import requests

        response = requests.get(url, timeout=CERTS_FETCH_TIMEOUT)
        if response.status_code != 200:
            raise ValueError(f"Google's keys could not be fetched: HTTP {response.status_code}")
        certs = response.json()
        if not isinstance(certs, dict):
            raise ValueError("Google's keys are not a JSON object")
        _certs[url] = (now + cache_max_age(response.headers.get("Cache-Control", "")), certs)
        return certs


def cache_max_age(cache_control: str) -> float:
    """Seconds an answer may be kept by its Cache-Control (0 for no-store, no-cache or none)."""
    directives = [part.strip().lower() for part in cache_control.split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for directive in directives:
        name, _, value = directive.partition("=")
        if name.strip() == "max-age" and value.strip().isdigit():
            return float(min(int(value.strip()), 7 * 24 * 3600))
    return 0.0
