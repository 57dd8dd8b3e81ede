"""Logging set-up shared by the web app, the poller and the command line."""
from __future__ import annotations

import logging
import os


def configure_logging() -> None:
    level = os.environ.get("SCOUT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
