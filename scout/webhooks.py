"""The telephony webhooks: what became of an alert call.

Every request is verified before anything is read from it: Twilio's
X-Twilio-Signature against the public URL built from SITE_URL, Vonage's signed JWT
(HS256, NEXMO_SIGNATURE_SECRET) and its payload hash against the body. A request
that fails gets 403 and changes nothing.

The call is found by the provider's call id stored when it was placed, never by a
phone number; the user's call and a contact's call on the ladder alike. A call is
acknowledged only by a 1 on the keypad (from a contact, it acknowledges for everyone);
every other final status (no answer, busy, voicemail, completed without a key...) is
unanswered, and the engine texts the contacts or calls the next one. The engine records an outcome once, so an event
delivered twice acts once, and an unknown call id changes nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

import jwt
from flask import Blueprint, Response, abort, jsonify, request
from twilio.request_validator import RequestValidator

from models import LogEntry, StoreUnavailable, User
from scout.alerts import ACKNOWLEDGED, UNANSWERED
from scout.context import get_config, get_engine, get_store
from scout.replies import digits_of, sender_role
from scout.telephony.twilio import acknowledged_twiml, ask_again_twiml, no_key_twiml
from scout.telephony.vonage import acknowledged_ncco, ask_again_ncco, inbound_ncco, no_key_ncco

log = logging.getLogger("scout.webhooks")

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

TWILIO_FINAL = {"completed", "busy", "failed", "no-answer", "canceled"}
VONAGE_FINAL = {"completed", "busy", "cancelled", "failed", "rejected", "timeout", "unanswered", "machine"}
JWT_LEEWAY = 60  # seconds of clock difference tolerated on the token's iat
# A Vonage webhook token signed longer ago than this (plus the leeway) is refused: Vonage
# signs each callback as it sends it, so an old token is a replay. A refused event that
# was genuine is backed up by the poller's lost-callback rule (5 minutes).
VONAGE_TOKEN_MAX_AGE = 5 * 60


# --- verification -------------------------------------------------------------


def public_url() -> str:
    """The URL as the provider requested it. Behind App Engine's proxy Flask sees an
    internal http address, so the public one is rebuilt from SITE_URL and the raw
    path and query."""
    query = request.query_string.decode("latin-1")
    return get_config().site_url + request.path + (f"?{query}" if query else "")


def verify_twilio() -> None:
    token = get_config().get("TWILIO_AUTH_TOKEN")
    signature = request.headers.get("X-Twilio-Signature", "")
    if not token or not signature or not RequestValidator(token).validate(public_url(), request.form, signature):
        log.warning("twilio webhook refused: bad or missing signature path=%s", request.path)
        abort(403)


def verify_vonage() -> dict[str, Any]:
    """Check the signed JWT and that the body is the one it was signed for; return the body."""
    secret = get_config().get("NEXMO_SIGNATURE_SECRET")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not secret or scheme.lower() != "bearer" or not token:
        log.warning("vonage webhook refused: no signed token path=%s", request.path)
        abort(403)
    try:
        claims = jwt.decode(token.strip(), secret, algorithms=["HS256"], leeway=JWT_LEEWAY,
                            options={"require": ["iat"]})
    except jwt.InvalidTokenError as exc:
        log.warning("vonage webhook refused: %s path=%s", exc, request.path)
        abort(403)
    age = time.time() - float(claims["iat"])
    if age > VONAGE_TOKEN_MAX_AGE + JWT_LEEWAY:
        log.warning("vonage webhook refused: the token was signed %.0f s ago (at most %d s accepted) path=%s",
                    age, VONAGE_TOKEN_MAX_AGE, request.path)
        abort(403)
    body_hash = hashlib.sha256(request.get_data()).hexdigest()
    if not hmac.compare_digest(str(claims.get("payload_hash", "")), body_hash):
        log.warning("vonage webhook refused: the body does not match its payload_hash path=%s", request.path)
        abort(403)
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


# --- acting on an outcome -------------------------------------------------------


def find_call(provider: str, call_id: str, call_key: str) -> LogEntry | None:
    """The alert call a webhook is about, by the provider's call id.

    The one exception: a callback can arrive in the instant between the provider
    accepting the call and Scout storing its id. Then the call key in the (signed)
    callback URL names a call that is still being placed and has no id yet."""
    if not call_id:
        return None
    store = get_store()
    entry = store.find_log_by_provider_id(call_id)
    if entry is None and call_key:
        candidate = store.get_log(call_key)
        if candidate is not None and candidate.status == "sending" and not candidate.provider_id:
            entry = candidate
    if entry is None or entry.kind != "call" or entry.provider not in ("", provider):
        return None
    if call_key and entry.key != call_key:
        return None  # the id belongs to another alert than the URL names
    return entry


def settle(provider: str, call_id: str, outcome: str, detail: str) -> bool:
    """Record the final outcome of a call and act on it. Returns True if it acted."""
    call_key = request.args.get("call", "")
    entry = find_call(provider, call_id, call_key)
    if entry is None:
        log.info("%s webhook for an unknown call id=%s; ignored", provider, call_id)
        return False
    store = get_store()
    user = store.get_user(entry.user_id)
    if user is None:
        return False
    # The log entry is settled first: it now says the call was placed (with the provider's
    # id), so no later cycle places it again, even if the process that placed it crashed
    # before it could record the id.
    settled: dict[str, Any] = {"provider": provider, "provider_id": entry.provider_id or call_id}
    if entry.status in ("pending", "sending", "failed"):
        settled.update(status="sent", claimed_until=0.0)
    store.update_log(entry.key, **settled)
    acted = get_engine().apply_call_outcome(user, entry.key, outcome, detail)
    if acted or not entry.outcome:
        store.update_log(entry.key, outcome=outcome if outcome == ACKNOWLEDGED else f"{outcome}: {detail}")
    log.info("%s call outcome id=%s outcome=%s detail=%s acted=%s", provider, call_id, outcome, detail, acted)
    return acted


@bp.errorhandler(StoreUnavailable)
def store_unavailable(exc: StoreUnavailable) -> tuple[str, int]:
    # the provider may deliver the event again; the poller's lost-callback rule backs it up
    log.error("webhook could not be recorded: %s", exc)
    return "store unavailable", 503


# --- Twilio -----------------------------------------------------------------------


def twiml(body: str) -> Response:
    return Response(body, mimetype="text/xml")


def twilio_detail(status: str, answered_by: str) -> str:
    if answered_by.startswith("machine") or answered_by == "fax":
        return f"voicemail ({answered_by}), call {status}"
    if status == "completed":
        return "completed without a key press"
    return status


@bp.post("/twilio/gather")
def twilio_gather() -> Response:
    """Twilio posts the key pressed during the alert's Gather."""
    verify_twilio()
    digits = request.form.get("Digits", "").strip()
    call_sid = request.form.get("CallSid", "")
    if digits == "1":
        settle("twilio", call_sid, ACKNOWLEDGED, "pressed 1")
        return twiml(acknowledged_twiml())
    if digits:
        return twiml(ask_again_twiml(digits, public_url()))
    return twiml(no_key_twiml())


@bp.post("/twilio/status")
@bp.post("/twilio-on-completed", endpoint="twilio_on_completed")
def twilio_status() -> Response:
    """Twilio posts the call's final CallStatus (and AnsweredBy) here."""
    verify_twilio()
    status = request.form.get("CallStatus", "")
    if status in TWILIO_FINAL:
        detail = twilio_detail(status, request.form.get("AnsweredBy", ""))
        settle("twilio", request.form.get("CallSid", ""), UNANSWERED, detail)
    return twiml("<Response/>")


# --- Vonage -----------------------------------------------------------------------


def vonage_detail(status: str) -> str:
    if status == "machine":
        return "voicemail (machine)"
    if status == "completed":
        return "completed without a key press"
    return status


def vonage_input(body: dict[str, Any]) -> Response:
    dtmf = body.get("dtmf")
    if not isinstance(dtmf, dict):
        dtmf = {}
    digits = str(dtmf.get("digits") or "").strip()
    if digits == "1":
        settle("vonage", str(body.get("uuid", "")), ACKNOWLEDGED, "pressed 1")
        return jsonify(acknowledged_ncco())
    if digits:
        return jsonify(ask_again_ncco(digits, public_url()))
    return jsonify(no_key_ncco())


@bp.post("/vonage/input")
def vonage_input_webhook() -> Response:
    """Vonage posts the digit collected by the alert's input action; we answer with an NCCO."""
    return vonage_input(verify_vonage())


@bp.post("/vonage/events")
@bp.post("/events", endpoint="vonage_events_alias")
def vonage_events() -> Response | tuple[str, int]:
    """Vonage posts call progress here; the final statuses settle the call."""
    body = verify_vonage()
    if "dtmf" in body:  # the tutorial's single event URL also receives input results
        return vonage_input(body)
    status = str(body.get("status", ""))
    if status in VONAGE_FINAL:
        settle("vonage", str(body.get("uuid", "")), UNANSWERED, vonage_detail(status))
    return "", 204


@bp.route("/vonage/answer", methods=["GET", "POST"])
def vonage_answer() -> Response:
    """The Vonage application's answer URL, used only when someone calls Scout's number:
    alert calls carry their own NCCO. Nothing is read or changed, so nothing to verify."""
    return jsonify(inbound_ncco())


# --- replies by text ------------------------------------------------------------------


def users_with_number(sender: str) -> list[User]:
    """Everyone whose own phone or contacts include `sender`, looked up by number (the store
    keeps an index of numbers: a text never reads every user)."""
    return [user for user in get_store().find_users_by_phone(sender) if sender_role(user, sender)]


def take_reply(provider: str, message_id: str, sender: str, channel: str, text: str) -> None:
    """Act on one verified inbound message. A message id seen before is a replay: 403."""
    if not message_id or not digits_of(sender):
        log.info("%s inbound message without an id or sender; ignored", provider)
        return
    users = users_with_number(sender)
    if not users:
        log.info("%s inbound message from an unknown number; ignored", provider)
        return
    engine = get_engine()
    for user in users:
        decided = engine.record_reply(user, sender, channel, text, f"{user.id}:reply:{provider}:{message_id}")
        if decided is None:
            log.warning("%s inbound message %s delivered again or replayed; refused", provider, message_id)
            abort(403)
        log.info("%s reply from user=%s: %s", provider, user.id, decided.outcome)


@bp.post("/twilio/messages")
def twilio_messages() -> Response:
    """Twilio's incoming-message webhook (SMS and WhatsApp) for TWILIO_NUMBER and
    TWILIO_WHATSAPP_NUMBER. Answers go out through the API, recorded first; the TwiML is empty."""
    verify_twilio()
    sender = request.form.get("From", "")
    channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
    take_reply("twilio", request.form.get("MessageSid", ""), sender, channel, request.form.get("Body", ""))
    return twiml("<Response/>")


@bp.post("/vonage/inbound")
def vonage_inbound() -> tuple[str, int]:
    """The Vonage application's Messages inbound URL (SMS and WhatsApp, Messages API v1)."""
    body = verify_vonage()
    channel = "whatsapp" if body.get("channel") == "whatsapp" else "sms"
    text = body.get("text")
    take_reply("vonage", str(body.get("message_uuid") or ""), str(body.get("from") or ""), channel,
               text if isinstance(text, str) else "")
    return "", 204
