"""A store that counts what the app asks of it, for the tests that measure reads (Firestore
bills every document read, and one read for a query that finds nothing). Every call is
made by the real store it wraps; nothing is changed or answered here."""
from __future__ import annotations

from collections import Counter
from typing import Any

READS = {"get_user", "find_user_by_email", "find_users_by_phone", "list_users", "get_state", "all_states",
         "user_log", "get_log", "find_log_by_provider_id", "unsent_log", "last_cycle", "session_generation"}


def documents_in(answer: Any) -> int:
    if isinstance(answer, (list, dict)):
        return max(1, len(answer))
    return 1


class CountingStore:
    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()
        self.documents: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if not callable(attribute) or name not in READS:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            answer = attribute(*args, **kwargs)
            self.calls[name] += 1
            self.documents[name] += documents_in(answer)
            return answer

        return counted

    @property
    def read(self) -> int:
        """Documents read since the last reset."""
        return sum(self.documents.values())

    def reset(self) -> None:
        self.calls.clear()
        self.documents.clear()
