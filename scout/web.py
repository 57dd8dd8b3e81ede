"""The Flask app: sign-in, the settings page, the health check, and (in dev mode)
the dev sign-in and a simulated Nightscout."""
from __future__ import annotations

import time

from flask import Flask, Response
from flask_wtf.csrf import CSRFProtect

from models import Store
from scout import dashboard, devtools, health, pages, tasks, webhooks
from scout.cli import register_commands
from scout.config import Config, load_config
from scout.context import get_config
from scout.logs import configure_logging

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
        PERMANENT_SESSION_LIFETIME=config.session_max_age,  # the cookie's life; the store ends it sooner
        MAX_CONTENT_LENGTH=64 * 1024,
        SCOUT=config,
    )
    app.extensions["scout_store"] = store
    app.jinja_env.filters["utc"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))
    csrf.init_app(app)

    app.register_blueprint(pages.bp)
    app.register_blueprint(dashboard.bp)
    app.context_processor(lambda: {"scout_config": config})
    csrf.exempt("scout.pages.login")  # Google sign-in carries its own double-submit token
    if config.dev:
        app.register_blueprint(devtools.bp)
    app.register_blueprint(webhooks.bp)
    csrf.exempt(webhooks.bp)  # provider callbacks are verified by their signatures instead
    if config.dispatch == "cloudtasks":  # otherwise /tasks/... does not exist
        app.register_blueprint(tasks.bp)
        csrf.exempt(tasks.bp)  # only Cloud Tasks may call it (scout.tasks checks its headers)
    health.init_app(app)
    app.after_request(_security_headers)

    register_commands(app)
    return app


def _project_root() -> str:
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    if get_config().site_url.startswith("https://"):
        # browsers then refuse plain http for this site for a year: no downgrade to steal the cookie
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response
