"""What a request needs from the app: the configuration, this process's store and
engine, and who is signed in. The blueprints import these; `scout.web` builds the app."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import current_app, g, request, session

from models import Store
from scout.config import Config
from scout.store import open_store

if TYPE_CHECKING:
    from scout.engine import Engine


def get_config() -> Config:
    config: Config = current_app.config["SCOUT"]
    return config


def get_store() -> Store:
    """The store for this process, opened on first use (never before a fork)."""
    store = current_app.extensions.get("scout_store")
    if store is None:
        store = open_store(get_config())
        current_app.extensions["scout_store"] = store
    return store


# A webhook reads the user's Nightscout before texting the contacts. Twilio waits 15 s for
# an answer and gunicorn stops a worker after 30 s, so the read is bounded tighter than the
# poller's; if it fails, the contacts are still texted, saying the site cannot be read.
WEBHOOK_NIGHTSCOUT_TIMEOUT = (3.0, 5.0)


def address_policy() -> Callable[[str], bool]:
    """Which addresses count as public for this app's Nightscout reads: the real rule,
    unless the app was given another (tests name the loopback servers that stand for
    public sites in `app.extensions["scout_is_public"]`)."""
    from scout.nightscout import is_public_address

    policy: Callable[[str], bool] = current_app.extensions.get("scout_is_public") or is_public_address
    return policy


def get_engine() -> Engine:
    """The engine the telephony webhooks act through: this process's store and the
    configured messenger, created on first use (never before a fork)."""
    engine = current_app.extensions.get("scout_engine")
    if engine is None:
        from scout.cloudtasks import send_tasks_for
        from scout.engine import Engine
        from scout.poller import rules_from
        from scout.telephony import make_messenger

        config = get_config()
        engine = Engine(store=get_store(), messenger=make_messenger(config), rules=rules_from(config),
                        allow_private=config.dev, nightscout_timeout=WEBHOOK_NIGHTSCOUT_TIMEOUT,
                        is_public=address_policy(), send_tasks=send_tasks_for(config))
        current_app.extensions["scout_engine"] = engine
    return engine


def current_user_id() -> str | None:
    """The signed-in user's id, while their session holds: signed with our key (Flask
    checks that), younger than SCOUT_SESSION_MAX_AGE, and of the user's current session
    generation in the store. Signing out and deleting one's data move the generation on,
    so a copy of the cookie taken before is worth nothing after. A session that fails
    is cleared. Checked once per request."""
    if "scout_user_id" in g:
        cached: str | None = g.scout_user_id
        return cached
    user_id = _valid_session_user()
    if user_id is None and session.get("user_id") is not None:
        session.clear()
    g.scout_user_id = user_id
    return user_id


def _valid_session_user() -> str | None:
    user_id, started, generation = session.get("user_id"), session.get("started_at"), session.get("generation")
    if not isinstance(user_id, str) or not isinstance(started, (int, float)) or isinstance(started, bool):
        return None
    if not isinstance(generation, int) or isinstance(generation, bool):
        return None
    if not 0 <= time.time() - started <= get_config().session_max_age:
        return None
    if generation != get_store().session_generation(user_id):
        return None
    return user_id


def start_session(user_id: str) -> None:
    """A fresh session for `user_id` (a new session also means a new CSRF token, so a
    token seen before sign-in is useless after), of the user's current generation."""
    session.clear()
    session["user_id"] = user_id
    session["started_at"] = time.time()
    session["generation"] = get_store().session_generation(user_id)
    session.permanent = True
    g.scout_user_id = user_id


def end_session() -> None:
    """Sign out here and everywhere: every session of the user, on any device, ends."""
    user_id = current_user_id()
    if user_id is not None:
        get_store().end_sessions(user_id)
    session.clear()
    g.scout_user_id = None


def client_address() -> str:
    """The client's address, for the sign-in limit: from the header a trusted front end
    sets (SCOUT_CLIENT_IP_HEADER, e.g. X-Appengine-User-Ip), or the connection's."""
    header = get_config().client_ip_header
    value = request.headers.get(header, "") if header else ""
    return value.split(",")[0].strip()[:64] or request.remote_addr or "unknown"

