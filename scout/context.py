"""What a request needs from the app: the configuration, this process's store and
engine, and who is signed in. The blueprints import these; `scout.web` builds the app."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app, session

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


def get_engine() -> Engine:
    """The engine the telephony webhooks act through: this process's store and the
    configured messenger, created on first use (never before a fork)."""
    engine = current_app.extensions.get("scout_engine")
    if engine is None:
        from scout.engine import Engine
        from scout.poller import rules_from
        from scout.telephony import make_messenger

        config = get_config()
        engine = Engine(store=get_store(), messenger=make_messenger(config), rules=rules_from(config),
                        allow_private=config.dev, nightscout_timeout=WEBHOOK_NIGHTSCOUT_TIMEOUT)
        current_app.extensions["scout_engine"] = engine
    return engine


def current_user_id() -> str | None:
    value = session.get("user_id")
    return value if isinstance(value, str) else None

