"""The stores behind `models.Store`: SQLite (the embedded default) and Firestore, and
`open_store`, which picks the one the configuration selects."""
from __future__ import annotations

from typing import Any

from models import Store


def open_store(config: Any) -> Store:
    """The store the configuration selects. Clients are created here, in the calling process."""
    if config.store == "firestore":
        from scout.store.firestore import FirestoreStore

        return FirestoreStore.from_config(config)
    from scout.store.sqlite import SqliteStore

    return SqliteStore(config.db_path)
