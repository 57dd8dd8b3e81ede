"""Gunicorn settings for Scout. The poller is started here, in the master, once per
deployment: not once per worker."""
import os
import sys

bind = f"0.0.0.0:{os.environ['PORT']}" if os.environ.get("PORT") else "127.0.0.1:8080"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
timeout = 30
graceful_timeout = 20
accesslog = "-"

_supervisor = None


def on_starting(server):  # noqa: ANN001 - gunicorn's hook signature
    """Check the configuration before any worker starts, then start the poller."""
    global _supervisor
    from scout.config import ConfigError, load_config

    try:
        load_config()
    except ConfigError as error:
        print(f"Scout cannot start: {error}", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("SCOUT_POLLER", "embedded") == "embedded":
        from scout.poller import start_supervised_poller

        _supervisor = start_supervised_poller()
        server.log.info("Scout poller supervisor started (pid %s)", _supervisor.pid)


def on_exit(server):  # noqa: ANN001
    if _supervisor is not None and _supervisor.poll() is None:
        _supervisor.terminate()
        try:
            _supervisor.wait(15)
        except Exception:
            _supervisor.kill()
