"""The pages a person sees: sign-in, settings, sign-out."""
from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from models import User
from scout.settings_form import from_mgdl, read_settings
from scout.web import current_user_id, get_config, get_store

bp = Blueprint("pages", __name__)


def signed_in_user() -> User | None:
    user_id = current_user_id()
    return get_store().get_user(user_id) if user_id else None


def sign_in(user: User) -> None:
    """Start a fresh session for `user`, keyed only by their verified id."""
    session.clear()
    session["user_id"] = user.id
    session.permanent = True


def form_values(user: User) -> dict[str, object]:
    """The settings as the form shows them; credentials are never shown back."""
    contact = user.emergency_contact
    return {
        "nightscout_url": user.nightscout_url,
        "has_token": bool(user.nightscout_token),
        "has_api_secret": bool(user.nightscout_api_secret),
        "phone": user.phone,
        "emergency_contact": contact.phone if contact else "",
        "emergency_channel": contact.channel if contact else "sms",
        "extra_contacts": [c.as_dict() for c in user.extra_contacts],
        "units": user.units,
        "low": from_mgdl(user.low_mgdl, user.units),
        "high": from_mgdl(user.high_mgdl, user.units),
    }


def submitted_values(user: User) -> dict[str, object]:
    """The user's own input, kept when the form is shown again with errors."""
    form = request.form
    phones, channels = form.getlist("extra_contacts"), form.getlist("extra_channels")
    return {
        **form_values(user),
        **{k: form.get(k, "") for k in ("nightscout_url", "phone", "emergency_contact", "units", "low", "high")},
        "emergency_channel": form.get("emergency_channel", "sms"),
        "extra_contacts": [
            {"phone": p, "channel": channels[i] if i < len(channels) else "sms"} for i, p in enumerate(phones)
        ],
    }


@bp.get("/")
def index() -> str:
    user = signed_in_user()
    config = get_config()
    if user is None:
        return render_template("signin.html", config=config)
    return render_template(
        "settings.html", user=user, values=form_values(user), errors={}, log=get_store().user_log(user.id, 20)
    )


@bp.post("/")
def save_settings() -> Response | tuple[str, int]:
    user = signed_in_user()
    if user is None:
        return redirect(url_for("pages.index"))
    config = get_config()
    result = read_settings(request.form, user, config.default_region, allow_private=config.dev)
    if result.user is None:
        page = render_template(
            "settings.html", user=user, values=submitted_values(user), errors=result.errors,
            log=get_store().user_log(user.id, 20),
        )
        return page, 400
    get_store().save_user(result.user)
    return redirect(url_for("pages.index", saved=1))


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    session.clear()
    return redirect(url_for("pages.index"))


def find_or_create_user(subject: str, email: str, name: str) -> User:
    """The stored user for a verified identity; a tutorial-era record with the same
    email and no subject id is adopted."""
    store = get_store()
    user = store.get_user(subject)
    if user is None:
        legacy = store.find_user_by_email(email)
        user = replace(legacy, id=subject) if legacy and legacy.id == email else User(subject, email, name)
    user = replace(user, email=email, name=name or user.name)
    store.save_user(user)
    return user


GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")


@bp.post("/login")
def login() -> Response | tuple[str, int]:
    """Google Identity Services posts the ID token here as `credential`. Identity is
    taken only from the verified token; any other posted field is ignored."""
    config = get_config()
    if not config.google_client_id:
        return "Google sign-in is not configured on this Scout (GOOGLE_CLIENT_ID is unset).", 400
    cookie_token = request.cookies.get("g_csrf_token", "")
    if not cookie_token or cookie_token != request.form.get("g_csrf_token", ""):
        return "Sign-in refused: the g_csrf_token cookie and form field do not match. Please try again.", 400
    claims = verify_google_token(request.form.get("credential", ""), config)
    if claims is None:
        return "Sign-in refused: Google's sign-in token could not be verified. Please try again.", 400
    user = find_or_create_user(str(claims["sub"]), str(claims.get("email", "")), str(claims.get("name", "")))
    sign_in(user)
    return redirect(url_for("pages.index"))


def verify_google_token(credential: str, config: object) -> dict[str, object] | None:
    import logging

    import google.auth.exceptions
    import google.auth.transport.requests
    import requests
    from google.oauth2 import id_token

    certs_url = getattr(config, "get")("SCOUT_GOOGLE_CERTS_URL") or id_token._GOOGLE_OAUTH2_CERTS_URL
    http = requests.Session()
    http.request = _with_timeout(http.request)  # type: ignore[method-assign]
    try:
        claims = id_token.verify_token(
            credential, google.auth.transport.requests.Request(session=http),
            audience=getattr(config, "google_client_id"), certs_url=certs_url, clock_skew_in_seconds=10,
        )
    except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
        logging.getLogger("scout.signin").warning("Google ID token refused: %s", exc)
        return None
    if claims.get("iss") not in GOOGLE_ISSUERS or not claims.get("sub"):
        logging.getLogger("scout.signin").warning("Google ID token refused: issuer %r", claims.get("iss"))
        return None
    return dict(claims)


def _with_timeout(request_method):  # type: ignore[no-untyped-def]
    def bounded(method, url, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("timeout", 10)
        return request_method(method, url, **kwargs)

    return bounded
