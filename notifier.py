"""Scout's entry point: `gunicorn notifier:app`, `flask --app notifier ...`."""
from __future__ import annotations

import sys

from scout.config import ConfigError
from scout.web import create_app

try:
    app = create_app()
except ConfigError as error:
    print(f"Scout cannot start: {error}", file=sys.stderr)
    raise SystemExit(2) from None
