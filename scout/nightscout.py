"""Reading a Nightscout site: one bounded HTTP request, readings or a typed failure.

Nightscout's API: GET /api/v1/entries/sgv.json?count=N answers with entries newest
first, each with `sgv` (mg/dL), `date` (ms since the epoch) and `direction`. An
access token goes in `?token=`; an API secret goes in the `api-secret` header as its
SHA-1 hex digest. Without `.json` the API answers with tab-separated text.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import aiohttp
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


def _not_found(host: str, exc: Exception) -> str:
    return f"The Nightscout host {host!r} could not be found ({exc}). Check the address."


def _private(host: str, addresses: Iterable[str],
             is_public: Callable[[str], bool] = is_public_address) -> str | None:
    """Why Scout refuses `host`, if any of its addresses is not public."""
    private = sorted({a for a in addresses if not is_public(a)})
    if not private:
        return None
    return (f"The Nightscout host {host!r} points to a private or internal address ({', '.join(private)}); "
            "Scout only reads public Nightscout sites.")


def check_public_host(host: str) -> None:
    """Refuse a host that is, or resolves to, a private, loopback, link-local or
    metadata address: Scout must not be used to reach inside its own network."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadNightscoutURL(_not_found(host, exc)) from None
    refusal = _private(host, (str(info[4][0]) for info in infos))
    if refusal:
        raise BadNightscoutURL(refusal)


def literal_address(host: str) -> str | None:
    """The address a host names without any lookup: an IP literal, or one of the legacy
    numeric IPv4 forms (2130706433, 127.1, 0x7f.1) that the C library also accepts."""
    try:
        return str(ipaddress.ip_address(host.split("%")[0]))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


def check_public_literal(host: str, is_public: Callable[[str], bool] = is_public_address) -> None:
    """`check_public_host` for a host given as an address; a name passes (its addresses
    are checked when it is looked up, see PublicOnlyResolver)."""
    address = literal_address(host)
    refusal = _private(host, [address], is_public) if address is not None else None
    if refusal:
        raise BadNightscoutURL(refusal)


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
        if sgv is None or date is None:
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


def _request(user: User, count: int) -> tuple[str, dict[str, str]] | PollFailure:
    """The entries URL and headers for the user's site, or why it is no address to read."""
    try:
        site = parse_site(user.nightscout_url, user.nightscout_token)
    except BadNightscoutURL as exc:
        return PollFailure("refused_url", str(exc))
    headers = {"Accept": "application/json", **api_secret_header(user.nightscout_api_secret)}
    return site.entries_url(count), headers


def _prepare(user: User, allow_private: bool, count: int) -> tuple[str, dict[str, str]] | PollFailure:
    """`_request`, once the site's host is checked (unless `allow_private`)."""
    prepared = _request(user, count)
    if isinstance(prepared, PollFailure) or allow_private:
        return prepared
    try:
        check_public_host(urlsplit(prepared[0]).hostname or "")
    except BadNightscoutURL as exc:
        return PollFailure("refused_url", str(exc))
    return prepared


def _status_failure(status: int) -> PollFailure | None:
    if status == 401:
        return PollFailure("unauthorized", "HTTP 401")
    if status != 200:
        return PollFailure("http_status", f"HTTP {status}")
    return None


def _decode(body: bytes) -> PollResult:
    if len(body) > MAX_BODY_BYTES:
        return PollFailure("not_json", "the answer is far too large for a Nightscout entries list")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        start = body[:40].decode("utf-8", "replace").strip()
        return PollFailure("not_json", f"answer starts with {start!r}")
    return parse_entries(payload)


def fetch_readings(
    user: User,
    *,
    session: requests.Session | None = None,
    allow_private: bool = False,
    count: int = 3,
    timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
) -> PollResult:
    """Fetch the latest `count` entries of the user's Nightscout. Never raises."""
    prepared = _prepare(user, allow_private, count)
    if isinstance(prepared, PollFailure):
        return prepared
    url, headers = prepared
    http = session or requests
    try:
        for _redirect in range(MAX_REDIRECTS + 1):
            with http.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    if not allow_private:
                        check_public_host(urlsplit(url).hostname or "")
                    continue
                failure = _status_failure(response.status_code)
                if failure is not None:
                    return failure
                body = response.raw.read(MAX_BODY_BYTES + 1, decode_content=True)
                break
        else:
            return PollFailure("http_status", "too many redirects")
    except BadNightscoutURL as exc:
        return PollFailure("refused_url", f"redirected: {exc}")
    except requests.exceptions.ConnectTimeout:
        return PollFailure("timeout", f"no connection within {timeout[0]:g} s")
    except (requests.exceptions.ReadTimeout, TimeoutError):
        return PollFailure("timeout", f"no answer within {timeout[1]:g} s")
    except requests.exceptions.RequestException as exc:
        return PollFailure("unreachable", type(exc).__name__)
    except Exception as exc:  # urllib3 read errors surface here; one site must never stop a cycle
        if "timed out" in str(exc):
            return PollFailure("timeout", f"no answer within {timeout[1]:g} s")
        return PollFailure("unreachable", type(exc).__name__)
    return _decode(body)


# --- the poller's concurrent client ----------------------------------------------
#
# The poller reads thousands of sites each minute. A thread per request with
# `requests` costs over a millisecond of CPU per poll, most of it in requests'
# own machinery, and a thread held for the whole 10 s of every hung site. One
# asyncio loop with aiohttp keeps thousands of requests in flight at a fraction
# of that CPU, so a hung site costs a socket, not a thread.


class RefusedHost(OSError):
    """A name Scout will not connect to: it has a private address, or none. An OSError,
    so that aiohttp reports it as a failed lookup (ClientConnectorDNSError)."""


class PublicOnlyResolver(aiohttp.ThreadedResolver):
    """aiohttp's own name lookup, refusing a name with any private address among its
    answers. The addresses checked are the ones connected to: one lookup per site, where
    a check before the request would look the name up twice (and could be answered
    differently the second time)."""

    def __init__(self, is_public: Callable[[str], bool] = is_public_address) -> None:
        super().__init__()
        self.is_public = is_public

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        try:
            answers = await super().resolve(host, port, family)
        except (socket.gaierror, UnicodeError) as exc:
            raise RefusedHost(_not_found(host, exc)) from None
        refusal = _private(host, (answer["host"] for answer in answers), self.is_public)
        if refusal:
            raise RefusedHost(refusal)
        return answers


class PublicOnlyConnector(aiohttp.TCPConnector):
    """A connector that looks names up with PublicOnlyResolver, and says which addresses
    count as public for the hosts given as addresses (see _check_host)."""

    def __init__(self, is_public: Callable[[str], bool] = is_public_address, **options: Any) -> None:
        super().__init__(resolver=PublicOnlyResolver(is_public), **options)
        self.is_public = is_public


def open_async_session(connections: int, allow_private: bool = False,
                       is_public: Callable[[str], bool] = is_public_address) -> aiohttp.ClientSession:
    """A session for one poll cycle; call it inside the running event loop. Unless
    `allow_private` (dev mode), every address connected to must pass `is_public`: a name's
    as it is looked up, an address's before the request."""
    options: dict[str, Any] = dict(limit=connections, limit_per_host=0, ttl_dns_cache=60)
    connector = aiohttp.TCPConnector(**options) if allow_private else PublicOnlyConnector(is_public, **options)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),  # one user's cookies never reach another's site
        headers={"User-Agent": "Scout (Nightscout notifier)"},
        # no proxy or .netrc look-up per request: with trust_env aiohttp re-reads both for
        # every request, a fifth of the poller's CPU; Nightscout sites are reached directly
        trust_env=False,
    )


@lru_cache(maxsize=16)
def _client_timeout(connect_s: float, read_s: float) -> aiohttp.ClientTimeout:
    # an overall deadline as well: a site that trickles a byte every few seconds
    # must not hold its user's poll past connect + read time
    return aiohttp.ClientTimeout(total=connect_s + read_s, sock_connect=connect_s, sock_read=read_s)


async def _check_host(session: aiohttp.ClientSession, host: str) -> None:
    """Raise BadNightscoutURL for a host Scout must not fetch, outside dev mode."""
    if isinstance(session.connector, PublicOnlyConnector):
        check_public_literal(host, session.connector.is_public)  # an address is not looked up: checked here; a name, at its lookup
    else:
        # the private-address check resolves the host: a blocking call, kept off the loop
        await asyncio.get_running_loop().run_in_executor(None, check_public_host, host)


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    """At most MAX_BODY_BYTES + 1 bytes of the body: enough to tell it is too large."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BODY_BYTES:
        chunk = await response.content.read(MAX_BODY_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def fetch_readings_async(
    user: User,
    session: aiohttp.ClientSession,
    *,
    allow_private: bool = False,
    count: int = 3,
    timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
) -> PollResult:
    """`fetch_readings` on an asyncio loop: the same answers, the same typed failures.
    Never raises (except when cancelled)."""
    prepared = _request(user, count)  # the host is checked below, or as it is looked up
    if isinstance(prepared, PollFailure):
        return prepared
    url, headers = prepared
    connect_s, read_s = timeout
    limits = _client_timeout(connect_s, read_s)
    redirected = ""
    try:
        if not allow_private:
            await _check_host(session, urlsplit(url).hostname or "")
        for _redirect in range(MAX_REDIRECTS + 1):
            async with session.get(url, headers=headers, timeout=limits, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308) and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    redirected = "redirected: "
                    if not allow_private:
                        await _check_host(session, urlsplit(url).hostname or "")
                    continue
                failure = _status_failure(response.status)
                if failure is not None:
                    return failure
                body = await _read_limited(response)
                break
        else:
            return PollFailure("http_status", "too many redirects")
    except BadNightscoutURL as exc:
        return PollFailure("refused_url", f"{redirected}{exc}")
    except aiohttp.ConnectionTimeoutError:
        return PollFailure("timeout", f"no connection within {connect_s:g} s")
    except aiohttp.SocketTimeoutError:
        return PollFailure("timeout", f"no answer within {read_s:g} s")
    except TimeoutError:
        return PollFailure("timeout", f"no complete answer within {connect_s + read_s:g} s")
    except aiohttp.ClientConnectorDNSError as exc:
        if isinstance(exc.os_error, RefusedHost):
            return PollFailure("refused_url", f"{redirected}{exc.os_error}")
        return PollFailure("unreachable", type(exc).__name__)
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return PollFailure("unreachable", type(exc).__name__)
    return _decode(body)
