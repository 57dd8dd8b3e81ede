"""A person's glucose as the page shows it: their recent readings, read through Scout's
Nightscout client and cached for a minute, and the status panel built from them and the
store."""
from __future__ import annotations

import threading
from typing import Any

from models import LogEntry, User
from scout import status as status_words
from scout.context import address_policy, get_config, get_store
from scout.readings import PollResult

READINGS_CACHE_SECONDS = 60.0  # one read of a person's Nightscout a minute, whoever polls the page
PAGE_NIGHTSCOUT_TIMEOUT = (3.0, 5.0)
ENTRIES_READ = 24 * 12 + 12  # a day of 5-minute readings and some: one read serves the status and every chart range

_cache: dict[tuple[str, ...], tuple[float, PollResult]] = {}
_cache_lock = threading.Lock()
# One read at a time per user and site: a request that misses the cache while another is
# reading the same site waits for that read and takes its answer, instead of a second one.
_reading: dict[tuple[str, ...], threading.Lock] = {}


def _cached(key: tuple[str, ...], now: float) -> PollResult | None:
    with _cache_lock:
        cached = _cache.get(key)
    # a read finished by another request a moment "after" this one's `now` counts as fresh
    if cached is not None and -READINGS_CACHE_SECONDS < now - cached[0] < READINGS_CACHE_SECONDS:
        return cached[1]
    return None


def recent_readings(user: User, now: float, count: int = ENTRIES_READ, cached_only: bool = False) -> PollResult | None:
    """The user's last `count` entries, read at most once a minute per user and count (a
    failure is cached too, so a hung site holds a request once a minute, not on every poll
    of the page), and never twice at once. With `cached_only`, None unless they were read
    in the last minute."""
    from scout.nightscout import fetch_readings

    if not user.nightscout_url:
        return None
    key = (user.id, user.nightscout_url, user.nightscout_token, user.nightscout_api_secret, str(count))
    cached = _cached(key, now)
    if cached is not None or cached_only:
        return cached
    with _cache_lock:
        reading = _reading.setdefault(key, threading.Lock())
    with reading:
        cached = _cached(key, now)  # read by the request this one waited for
        if cached is not None:
            return cached
        poll = fetch_readings(user, allow_private=get_config().dev, count=count, timeout=PAGE_NIGHTSCOUT_TIMEOUT,
                              is_public=address_policy())
        with _cache_lock:
            for stale in [k for k, (at, _) in _cache.items() if abs(now - at) >= READINGS_CACHE_SECONDS]:
                del _cache[stale]
                idle = _reading.get(stale)
                if idle is not None and not idle.locked():
                    del _reading[stale]
            _cache[key] = (now, poll)
    return poll


def status_of(user: User, now: float, read_nightscout: bool = True, log: list[LogEntry] | None = None
              ) -> dict[str, Any]:
    """The status panel. The page itself is drawn with `read_nightscout=False`, so a slow or
    hung Nightscout never holds up the page: its script then asks /status.json at once.
    `log`: the user's recent alert log, when the caller has read it already."""
    store = get_store()
    state, _version = store.get_state(user.id)
    cycle = store.last_cycle()
    if log is None:
        log = store.user_log(user.id, status_words.STATUS_LOG_ENTRIES, since=now - status_words.ALL_CLEAR_SHOWN_FOR)
    return status_words.status(user, state, log[:status_words.STATUS_LOG_ENTRIES],
                               recent_readings(user, now, cached_only=not read_nightscout),
                               cycle.finished_at if cycle else None, now)
