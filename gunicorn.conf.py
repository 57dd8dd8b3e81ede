"""Gunicorn settings for Scout. The poller is started here, in the master, once per
deployment (per instance): not once per worker. Across instances the store's lease lets
only one poller act, so running two instances is safe (see docs/deploy.md)."""
import json
import os
import sys


def _count(name, default):
    """A positive whole number from the environment, or Scout's one-line refusal."""
    raw = os.environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < 1:
        print(f"Scout cannot start: {name} must be a whole number of at least 1, got {raw!r}.", file=sys.stderr)
        sys.exit(2)
    return int(raw)


bind = f"0.0.0.0:{os.environ['PORT']}" if os.environ.get("PORT") else "127.0.0.1:8080"
workers = _count("WEB_CONCURRENCY", 2)
# Threads, so that a slow request does not hold a whole worker: "Check my Nightscout" may
# wait up to 13 s for a hung site, and a telephony webhook texts up to six contacts, each
# send bounded by the provider's timeout. A worker whose main loop stops answering for
# `timeout` seconds is restarted; a long request in one thread does not count against it.
worker_class = "gthread"
threads = _count("SCOUT_WEB_THREADS", 8)
timeout = 30
# App Engine allows 30 s between SIGTERM and SIGKILL: finish requests, then stop the poller.
graceful_timeout = 20
accesslog = "-"
# App Engine's front end terminates TLS and sets X-Forwarded-*; trust it for the scheme.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "*")

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
                "set one of them (see docs/deploy.md).")
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
    if os.environ.get("SCOUT_POLLER", "embedded") == "embedded":
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
