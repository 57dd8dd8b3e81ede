"""Reading a Nightscout site: one bounded HTTP request, readings or a typed failure.

Nightscout's API: GET /api/v1/entries/sgv.json?count=N answers with entries newest
first, each with `sgv` (mg/dL), `date` (ms since the epoch) and `direction`. An
access token goes in `?token=`; an API secret goes in the `api-secret` header as its
SHA-1 hex digest. Without `.json` the API answers with tab-separated text.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import requests

from models import User
from scout.readings import PollFailure, PollResult, Reading, Readings

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
MAX_BODY_BYTES = 512 * 1024
MAX_REDIRECTS = 3
ENTRY_SUFFIXES = ("/api/v1/entries/sgv.json", "/api/v1/entries.json", "/api/v1/entries", "/api/v1")


class BadNightscoutURL(ValueError):
    """A Nightscout address Scout cannot use; the message says why and what to enter."""


@dataclass(frozen=True)
class Site:
    base_url: str  # scheme://host[:port][/prefix], no trailing slash
    token: str = ""

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    def entries_url(self, count: int) -> str:
        query = {"count": str(count)}
        if self.token:
            query["token"] = self.token
        return f"{self.base_url}/api/v1/entries/sgv.json?{urlencode(query)}"


def parse_site(url: str, token: str = "") -> Site:
    """Accept a site's base URL or the tutorial's `.../api/v1/entries.json`."""
    raw = (url or "").strip()
    if not raw:
        raise BadNightscoutURL("Enter your Nightscout address, for example https://yourname.herokuapp.com.")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadNightscoutURL(
            "The Nightscout address must start with https:// (or http://) and name a site, "
            "for example https://yourname.herokuapp.com."
        )
    if parts.username or parts.password:
        raise BadNightscoutURL("Leave the user name and password out of the Nightscout address.")
    path = parts.path.rstrip("/")
    for suffix in ENTRY_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    query_token = parse_qs(parts.query).get("token", [""])[0]
    base = urlunsplit((parts.scheme, parts.netloc, path, "", "")).rstrip("/")
    return Site(base, token.strip() or query_token)


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_public_host(host: str) -> None:
    """Refuse a host that is, or resolves to, a private, loopback, link-local or
    metadata address: Scout must not be used to reach inside its own network."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadNightscoutURL(f"The Nightscout host {host!r} could not be found ({exc}). Check the address.") from None
    addresses = {info[4][0] for info in infos}
    private = sorted(a for a in addresses if not is_public_address(a))
    if private:
        raise BadNightscoutURL(
            f"The Nightscout host {host!r} points to a private or internal address ({', '.join(private)}); "
            "Scout only reads public Nightscout sites."
        )


def api_secret_header(secret: str) -> dict[str, str]:
    if not secret:
        return {}
    return {"api-secret": hashlib.sha1(secret.encode("utf-8")).hexdigest()}


def parse_entries(payload: Any) -> PollResult:
    """Turn a decoded entries list into readings, newest first."""
    if not isinstance(payload, list):
        return PollFailure("not_json", "the answer is not a list of entries")
    if not payload:
        return PollFailure("no_readings", "the entries list is empty")
    readings: list[Reading] = []
    error_codes = 0
    for entry in payload:
        if not isinstance(entry, dict) or entry.get("type", "sgv") != "sgv":
            continue
        sgv, date = entry.get("sgv"), entry.get("date")
        if isinstance(sgv, bool) or isinstance(date, bool):
            continue
        try:
            mgdl, at = int(float(sgv)), float(date) / 1000.0
        except (TypeError, ValueError):
            continue
        if mgdl <= 39:
            error_codes += 1
            continue
        direction = entry.get("direction")
        readings.append(Reading(mgdl, at, direction if isinstance(direction, str) else "NONE"))
    if not readings and not error_codes:
        return PollFailure("bad_data", "no entry has a numeric sgv and date")
    readings.sort(key=lambda r: r.at, reverse=True)
    return Readings(tuple(readings), error_codes)


def fetch_readings(
    user: User,
    *,
    session: requests.Session | None = None,
    allow_private: bool = False,
    count: int = 3,
    timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
) -> PollResult:
    """Fetch the latest `count` entries of the user's Nightscout. Never raises."""
    try:
        site = parse_site(user.nightscout_url, user.nightscout_token)
        if not allow_private:
            check_public_host(site.host)
    except BadNightscoutURL as exc:
        return PollFailure("refused_url", str(exc))
    http = session or requests
    headers = {"Accept": "application/json", **api_secret_header(user.nightscout_api_secret)}
    url = site.entries_url(count)
    try:
        for _redirect in range(MAX_REDIRECTS + 1):
            with http.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    if not allow_private:
                        check_public_host(urlsplit(url).hostname or "")
                    continue
                if response.status_code == 401:
                    return PollFailure("unauthorized", "HTTP 401")
                if response.status_code != 200:
                    return PollFailure("http_status", f"HTTP {response.status_code}")
                body = response.raw.read(MAX_BODY_BYTES + 1, decode_content=True)
                break
        else:
            return PollFailure("http_status", "too many redirects")
    except BadNightscoutURL as exc:
        return PollFailure("refused_url", f"redirected: {exc}")
    except requests.exceptions.ConnectTimeout:
        return PollFailure("timeout", f"no connection within {timeout[0]:g} s")
    except (requests.exceptions.ReadTimeout, TimeoutError, socket.timeout):
        return PollFailure("timeout", f"no answer within {timeout[1]:g} s")
    except requests.exceptions.RequestException as exc:
        return PollFailure("unreachable", type(exc).__name__)
    except Exception as exc:  # urllib3 read errors surface here; one site must never stop a cycle
        if "timed out" in str(exc):
            return PollFailure("timeout", f"no answer within {timeout[1]:g} s")
        return PollFailure("unreachable", type(exc).__name__)
    if len(body) > MAX_BODY_BYTES:
        return PollFailure("not_json", "the answer is far too large for a Nightscout entries list")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        start = body[:40].decode("utf-8", "replace").strip()
        return PollFailure("not_json", f"answer starts with {start!r}")
    return parse_entries(payload)
