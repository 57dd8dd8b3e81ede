"""Gunicorn settings for Scout. The poller is started here, in the master, once per
deployment (per instance): not once per worker. Across instances the store's lease lets
only one poller act, so running two instances is safe (see README, Deploy)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scout/, whatever gunicorn's working folder


def _server_settings():
    """Where to listen and how many workers and threads (scout.config), or Scout's one-line
    refusal. In dev mode, 127.0.0.1 whatever PORT says: dev mode signs people in without a password."""
    from dotenv import load_dotenv

    from scout.config import ConfigError, server_settings

    load_dotenv(override=False)
    try:
        return server_settings(os.environ)
    except ConfigError as error:
        print(f"Scout cannot start: {error}", file=sys.stderr)
        sys.exit(2)


def _gunicorn_logging():
    from scout.logs import gunicorn_logconfig

    return gunicorn_logconfig(_settings.log_level)


_settings = _server_settings()
bind = _settings.bind
workers = _settings.workers
# Threads, so that a slow request does not hold a whole worker: "Check my Nightscout" may
# wait up to 13 s for a hung site, and a telephony webhook texts up to six contacts, each
# send bounded by the provider's timeout. A worker whose main loop stops answering for
# `timeout` seconds is restarted; a long request in one thread does not count against it.
worker_class = "gthread"
threads = _settings.threads
timeout = 30
# App Engine allows 30 s between SIGTERM and SIGKILL: finish requests, then stop the poller.
graceful_timeout = 20
# No access log: App Engine's front end logs every request already (request_log).
accesslog = None
# gunicorn's own lines in the same one-JSON-object-per-line form as Scout's (scout.logs).
logconfig_dict = _gunicorn_logging()
# App Engine's front end terminates TLS and sets X-Forwarded-*; trust it for the scheme.
forwarded_allow_ips = _settings.forwarded_allow_ips

_supervisor = None


def firestore_settings_problem(config):
    """Why the Firestore settings cannot work, or None. Checked here without importing the
    Firestore client: gRPC must not be loaded in the master before it forks the workers."""
    if config.store != "firestore" or config.get("FIRESTORE_EMULATOR_HOST"):
        return None
    key = config.firebase_private_key
    if not key:
        if config.get("GOOGLE_CLOUD_PROJECT"):
            return None  # application default credentials (App Engine's service account)
        return ("SCOUT_STORE=firestore but neither FIREBASE_PRIVATE_KEY nor GOOGLE_CLOUD_PROJECT is set: "
                "set one of them (see README, Deploy).")
    try:
        with open(key, encoding="utf-8") as key_file:
            account = json.load(key_file)
    except (OSError, ValueError) as error:
        return f"FIREBASE_PRIVATE_KEY={key} cannot be read as a service-account JSON file: {error}"
    if not (account.get("project_id") or config.get("GOOGLE_CLOUD_PROJECT")):
        return f"FIREBASE_PRIVATE_KEY={key} names no project_id: set GOOGLE_CLOUD_PROJECT."
    return None


def on_starting(server):
    """Check the configuration before any worker starts, then start the poller."""
    global _supervisor
    from scout.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as error:
        print(f"Scout cannot start: {error}", file=sys.stderr)
        sys.exit(2)
    problem = firestore_settings_problem(config)
    if problem:
        print(f"Scout cannot start: {problem}", file=sys.stderr)
        sys.exit(2)
    if config.poller == "embedded":
        from scout.poller import start_supervised_poller

        _supervisor = start_supervised_poller()
        server.log.info("Scout poller supervisor started (pid %s)", _supervisor.pid)


def on_exit(server):
    """Stop the poller with the server; it releases its lease, so a poller on another
    instance takes over at its next cycle."""
    if _supervisor is not None and _supervisor.poll() is None:
        _supervisor.terminate()
        try:
            _supervisor.wait(15)
        except Exception:
            _supervisor.kill()
