"""The Flask app: sign-in, the settings page, the health check, and (in dev mode)
the dev sign-in and a simulated Nightscout."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, jsonify
from flask_wtf.csrf import CSRFProtect

from models import Store, open_store
from scout.config import Config, load_config
from scout.logs import configure_logging

if TYPE_CHECKING:
    from scout.engine import Engine

HEALTHY_WITHIN = 180.0  # /healthz fails when no poll cycle finished in the last 3 minutes

csrf = CSRFProtect()


def create_app(config: Config | None = None, store: Store | None = None) -> Flask:
    """The application factory. Nothing here talks to the network; the store is opened
    lazily, in the process that serves requests."""
    config = config or load_config()
    configure_logging()
    app = Flask(__name__.split(".")[0], root_path=_project_root(), template_folder="templates",
                static_folder="static")
    app.config.update(
        SECRET_KEY=config.secret_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not config.dev,
        WTF_CSRF_TIME_LIMIT=None,
        MAX_CONTENT_LENGTH=64 * 1024,
        SCOUT=config,
    )
    app.extensions["scout_store"] = store
    app.jinja_env.filters["utc"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))
    csrf.init_app(app)

    from scout import devtools, pages

    app.register_blueprint(pages.bp)
    csrf.exempt("scout.pages.login")  # Google sign-in carries its own double-submit token
    if config.dev:
        app.register_blueprint(devtools.bp)
    _register_webhooks(app)
    app.add_url_rule("/healthz", "healthz", healthz)
    app.after_request(_security_headers)

    from scout.cli import register_commands

    register_commands(app)
    return app


def _register_webhooks(app: Flask) -> None:
    try:
        from scout import webhooks
    except ImportError:  # the telephony webhooks module is optional in a bare checkout
        return
    app.register_blueprint(webhooks.bp)
    csrf.exempt(webhooks.bp)


def _project_root() -> str:
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def get_engine() -> "Engine":
    """The engine the telephony webhooks act through: this process's store and the
    configured messenger, created on first use (never before a fork)."""
    engine = current_app.extensions.get("scout_engine")
    if engine is None:
        from scout.engine import Engine
        from scout.messenger import make_messenger
        from scout.poller import rules_from

        config = get_config()
        engine = Engine(store=get_store(), messenger=make_messenger(config), rules=rules_from(config),
                        allow_private=config.dev, nightscout_timeout=WEBHOOK_NIGHTSCOUT_TIMEOUT)
        current_app.extensions["scout_engine"] = engine
    return engine


def healthz() -> tuple[Response, int]:
    record = get_store().last_cycle()
    now = time.time()
    body: dict[str, Any] = {"last_cycle": None, "healthy": False}
    if record is not None:
        body.update(
            last_cycle=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.finished_at)),
            seconds_ago=round(now - record.finished_at, 1),
            summary=record.summary,
            healthy=now - record.finished_at <= HEALTHY_WITHIN,
        )
    return jsonify(body), 200 if body["healthy"] else 503


def _security_headers(response: Response) -> Response:
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self' https://accounts.google.com/gsi/client; "
        "frame-src https://accounts.google.com/gsi/; connect-src 'self' https://accounts.google.com/gsi/; "
        "style-src 'self' https://accounts.google.com/gsi/style; img-src 'self' data:; "
        "object-src 'none'; base-uri 'self'; form-action 'self'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def current_user_id() -> str | None:
    from flask import session

    value = session.get("user_id")
    return value if isinstance(value, str) else None

