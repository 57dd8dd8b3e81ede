"""This instance's poller notes each cycle it ran (acted or stood by) in a small file beside
the SQLite path, on the instance's own disk; /healthz/poller reads it (scout.health), so a
dead poller on the standby instance is noticed too."""
from __future__ import annotations

import json
import os
from typing import Any

from scout.config import Config

HEARTBEAT_FILE = "poller-heartbeat.json"


def heartbeat_path(config: Config) -> str:
    """Where this instance's poller notes each cycle it ran (acted or stood by): beside the
    SQLite file, on the instance's own disk."""
    return os.path.join(os.path.dirname(os.path.abspath(config.db_path)), HEARTBEAT_FILE)


def write_heartbeat(config: Config, now: float, acted: bool, error: str) -> None:
    path = heartbeat_path(config)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    draft = f"{path}.{os.getpid()}"
    with open(draft, "w", encoding="utf-8") as out:
        json.dump({"at": now, "pid": os.getpid(), "acted": acted, "error": error}, out)
    os.replace(draft, path)  # readers never see half a file


def read_heartbeat(config: Config) -> dict[str, Any] | None:
    try:
        with open(heartbeat_path(config), encoding="utf-8") as source:
            beat = json.load(source)
        return beat if isinstance(beat, dict) and isinstance(beat.get("at"), (int, float)) else None
    except (OSError, ValueError):
        return None
