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
import re
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from models import User
from scout.readings import PollFailure, PollResult, parse_entries

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
    if "\\" in raw or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in raw):
        raise BadNightscoutURL("A Nightscout address has no backslashes or spaces in it; "
                               "enter it as your browser shows it, for example https://yourname.herokuapp.com.")
    parts = urlsplit(raw)
    if "@" in parts.netloc:
        raise BadNightscoutURL("Leave the user name and password out of the Nightscout address.")
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


def embeds_ipv4(ip: ipaddress.IPv6Address) -> bool:
    """An IPv6 address that carries an IPv4 one inside (IPv4-compatible ::a.b.c.d, NAT64
    64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32): depending on the
    network, connecting to it reaches the IPv4 address, which a check of the IPv6 one
    never saw. Scout reads no site by such an address."""
    if ip.teredo is not None or ip.sixtofour is not None:
        return True
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return True
    return int(ip) >> 32 == 0 and int(ip) > 1  # ::a.b.c.d; :: and ::1 are themselves


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_public_address(address: str) -> bool:
    """The default address policy: a global unicast address, not one hidden in an IPv6 form."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    elif isinstance(ip, ipaddress.IPv6Address) and embeds_ipv4(ip):
        return False
    return ip.is_global and not ip.is_multicast


def _not_found(host: str, exc: Exception) -> str:
    return f"The Nightscout host {host!r} could not be found ({exc}). Check the address."


def _refused(address: str, is_public: Callable[[str], bool]) -> bool:
    """Whether Scout refuses to connect to `address` under the policy `is_public`. An IPv4
    address written inside an IPv6 one is refused whatever the policy says of either."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None and embeds_ipv4(ip):
        return True
    return not is_public(address)


def _private(host: str, addresses: Iterable[str],
             is_public: Callable[[str], bool] = is_public_address) -> str | None:
    """Why Scout refuses `host`, if any of its addresses is not public."""
    private = sorted({a for a in addresses if _refused(a, is_public)})
    if not private:
        return None
    return (f"The Nightscout host {host!r} points to a private or internal address ({', '.join(private)}); "
            "Scout only reads public Nightscout sites.")


def check_public_host(host: str, is_public: Callable[[str], bool] = is_public_address) -> None:
    """Refuse a host that is, or resolves to, a private, loopback, link-local or
    metadata address: Scout must not be used to reach inside its own network. This is
    the settings form's early answer; the fetch itself checks the address it connects to."""
    address = literal_address(host)
    if address is not None:
        check_public_literal(host, is_public)
        return
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadNightscoutURL(_not_found(host, exc)) from None
    refusal = _private(host, (str(info[4][0]) for info in infos), is_public)
    if refusal:
        raise BadNightscoutURL(refusal)


def literal_address(host: str) -> str | None:
    """The address a host names without any lookup: an IP literal, or one of the legacy
    numeric IPv4 forms (2130706433, 127.1, 0x7f.1) that the C library also accepts."""
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%")[0]))
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


def _request(user: User, count: int) -> tuple[str, dict[str, str]] | PollFailure:
    """The entries URL and headers for the user's site, or why it is no address to read."""
    try:
        site = parse_site(user.nightscout_url, user.nightscout_token)
    except BadNightscoutURL as exc:
        return PollFailure("refused_url", str(exc))
    headers = {"Accept": "application/json", **api_secret_header(user.nightscout_api_secret)}
    return site.entries_url(count), headers


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


Lookup = Callable[[str, int, int], Awaitable[list[dict[str, Any]]]]
T = TypeVar("T")


class PublicOnlyResolver(aiohttp.ThreadedResolver):
    """aiohttp's own name lookup, refusing a name with any private address among its
    answers. The addresses checked are the ones connected to: one lookup per connection,
    where a check before the request would look the name up twice (and a rebinding name
    answers a public address to the check and an internal one to the connection).
    `lookup` stands in for the system resolver (tests give a name that rebinds)."""

    def __init__(self, is_public: Callable[[str], bool] = is_public_address, lookup: Lookup | None = None) -> None:
        super().__init__()
        self.is_public = is_public
        self.lookup = lookup

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        try:
            answers: list[Any] = (await self.lookup(host, port, family) if self.lookup is not None
                                  else await super().resolve(host, port, family))
        except (socket.gaierror, UnicodeError) as exc:
            raise RefusedHost(_not_found(host, exc)) from None
        refusal = _private(host, (answer["host"] for answer in answers), self.is_public)
        if refusal:
            raise RefusedHost(refusal)
        return answers


class PublicOnlyConnector(aiohttp.TCPConnector):
    """A connector that looks names up with PublicOnlyResolver, and says which addresses
    count as public for the hosts given as addresses (see _check_host)."""

    def __init__(self, is_public: Callable[[str], bool] = is_public_address, lookup: Lookup | None = None,
                 **options: Any) -> None:
        super().__init__(resolver=PublicOnlyResolver(is_public, lookup), **options)
        self.is_public = is_public


def open_async_session(connections: int, allow_private: bool = False,
                       is_public: Callable[[str], bool] = is_public_address,
                       lookup: Lookup | None = None) -> aiohttp.ClientSession:
    """A session for one poll cycle; call it inside the running event loop. Unless
    `allow_private` (dev mode), every address connected to must pass `is_public`: a name's
    as it is looked up, an address's before the request."""
    options: dict[str, Any] = dict(limit=connections, limit_per_host=0, ttl_dns_cache=60)
    connector = (aiohttp.TCPConnector(**options) if allow_private
                 else PublicOnlyConnector(is_public, lookup, **options))
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


def _target(url: str | URL) -> URL:
    """`url` as aiohttp will connect to it (yarl's reading, not urlsplit's), once it is
    an http(s) address with a host and no user name or password in it."""
    try:
        target = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError):
        raise BadNightscoutURL("that is not an address Scout can read") from None
    if target.scheme not in ("http", "https") or not target.raw_host:
        raise BadNightscoutURL("that is not an http(s) address with a host")
    if target.user is not None or target.password is not None or "@" in (target.raw_authority or ""):
        raise BadNightscoutURL("the address carries a user name or password, which Scout never sends on")
    return target


def _next_hop(current: URL, location: str) -> URL:
    """Where a redirect points, read strictly: a Location with a backslash or a space is
    read differently by different URL parsers (one checks a host, another connects to a
    second one), so Scout refuses it rather than guess."""
    if "\\" in location or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in location):
        raise BadNightscoutURL("the site redirected to an address with a backslash or a space in it; "
                               "Scout does not follow such redirects")
    try:
        joined = current.join(URL(location))
    except (ValueError, TypeError):
        raise BadNightscoutURL("the site redirected to an address Scout cannot read") from None
    return _target(joined)


_MEDIA_TYPE = re.compile(r"[a-z0-9.+-]{1,40}/[a-z0-9.+-]{1,80}")


def _content_type(response: aiohttp.ClientResponse) -> str:
    """The answer's media type, if it looks like one: never free text from the site."""
    value = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not value:
        return "no content type"
    return value if _MEDIA_TYPE.fullmatch(value) else "an unusual content type"


def _status_failure(response: aiohttp.ClientResponse) -> PollFailure | None:
    """A failed answer described by its status and content type, never by its body: the
    body of an answer from the wrong server is exactly what must not reach the page."""
    if response.status == 401:
        return PollFailure("unauthorized", "HTTP 401")
    if response.status != 200:
        return PollFailure("http_status", f"HTTP {response.status}, {_content_type(response)}")
    return None


def _decode(body: bytes, content_type: str) -> PollResult:
    if len(body) > MAX_BODY_BYTES:
        return PollFailure("not_json", f"the answer is over {MAX_BODY_BYTES // 1024} kB, far too large "
                                       "for a Nightscout entries list")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return PollFailure("not_json", f"the answer is {content_type}, {len(body)} bytes, not JSON")
    return parse_entries(payload)


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    """At most MAX_BODY_BYTES + 1 bytes of the body: enough to tell it is too large."""
    if (response.content_length or 0) > MAX_BODY_BYTES:
        return b"\0" * (MAX_BODY_BYTES + 1)  # announced too large: not worth reading
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
    """Fetch the latest `count` entries of the user's Nightscout: readings, or a typed
    failure that describes the answer without repeating it. Never raises (except when
    cancelled).

    The whole fetch, redirects included, ends within connect + read time: a site that
    trickles a byte every few seconds cannot hold a page, a webhook or a poll longer."""
    connect_s, read_s = timeout
    total = connect_s + read_s
    try:
        async with asyncio.timeout(total):
            return await _fetch(user, session, allow_private, count, connect_s, read_s)
    except TimeoutError:
        return PollFailure("timeout", f"no complete answer within {total:g} s")


async def _fetch(user: User, session: aiohttp.ClientSession, allow_private: bool, count: int,
                 connect_s: float, read_s: float) -> PollResult:
    prepared = _request(user, count)  # the host is checked below, or as it is looked up
    if isinstance(prepared, PollFailure):
        return prepared
    limits = _client_timeout(connect_s, read_s)
    redirected = ""
    try:
        url = _target(prepared[0])
        headers = prepared[1]
        first_host = url.host
        if not allow_private:
            await _check_host(session, url.raw_host or "")
        for _redirect in range(MAX_REDIRECTS + 1):
            if url.host != first_host:  # the API secret is for the user's own site only
                headers = {k: v for k, v in headers.items() if k != "api-secret"}
            async with session.get(url, headers=headers, timeout=limits, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308) and "location" in response.headers:
                    redirected = "redirected: "
                    url = _next_hop(url, response.headers["location"])
                    if not allow_private:
                        await _check_host(session, url.raw_host or "")
                    continue
                failure = _status_failure(response)
                if failure is not None:
                    return failure
                content_type = _content_type(response)
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
    except aiohttp.ClientConnectorDNSError as exc:
        if isinstance(exc.os_error, RefusedHost):
            return PollFailure("refused_url", f"{redirected}{exc.os_error}")
        return PollFailure("unreachable", type(exc).__name__)
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return PollFailure("unreachable", type(exc).__name__)
    return _decode(body, content_type)


# --- the same client, for callers without an event loop ----------------------------


def fetch_readings(
    user: User,
    *,
    allow_private: bool = False,
    count: int = 3,
    timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    is_public: Callable[[str], bool] = is_public_address,
    lookup: Lookup | None = None,
) -> PollResult:
    """`fetch_readings_async` for the page ("Check my Nightscout") and the webhooks: the
    poller's client, with its address checks, deadline and body cap, on a loop of its
    own. `is_public` is the address policy (tests name the loopback servers that stand
    for public sites). Never raises."""

    async def once() -> PollResult:
        async with open_async_session(2, allow_private, is_public, lookup) as session:
            return await fetch_readings_async(user, session, allow_private=allow_private, count=count,
                                              timeout=timeout)

    return run_blocking(once)


def run_blocking(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine `make()` to its end for a caller without an event loop. Called
    from a coroutine, where a loop cannot be nested, it gets a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightscout") as pool:
        return pool.submit(asyncio.run, make()).result()


# --- notes on the user's own Nightscout (treatments) -------------------------------------


@dataclass(frozen=True)
class NoteResult:
    """How a treatment POST went: `ok`, or `error` saying why."""

    ok: bool
    error: str = ""
    refused: bool = False  # the site refused the credential: the token's role cannot write treatments


async def _post(user: User, treatment: dict[str, Any], session: aiohttp.ClientSession, allow_private: bool,
                connect_s: float, read_s: float) -> NoteResult:
    try:
        site = parse_site(user.nightscout_url, user.nightscout_token)
        url = _target(f"{site.base_url}/api/v1/treatments")
        if site.token:
            url = url.with_query(token=site.token)
        if not allow_private:
            await _check_host(session, url.raw_host or "")
        headers = {"Accept": "application/json", **api_secret_header(user.nightscout_api_secret)}
        # never redirected: a POST with the user's credential goes to their own site or nowhere
        async with session.post(url, json=treatment, headers=headers, timeout=_client_timeout(connect_s, read_s),
                                allow_redirects=False) as response:
            status = response.status
    except BadNightscoutURL as exc:
        return NoteResult(False, str(exc))
    except (aiohttp.ConnectionTimeoutError, aiohttp.SocketTimeoutError, TimeoutError):
        return NoteResult(False, f"Nightscout did not answer within {connect_s + read_s:g} s")
    except aiohttp.ClientConnectorDNSError as exc:
        if isinstance(exc.os_error, RefusedHost):
            return NoteResult(False, str(exc.os_error))
        return NoteResult(False, f"could not reach Nightscout ({type(exc).__name__})")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return NoteResult(False, f"could not reach Nightscout ({type(exc).__name__})")
    if status in (401, 403):
        return NoteResult(False, f"Nightscout refused the note (HTTP {status}): the access token's role does not allow "
                                 "treatments; give it the careportal role in Nightscout's Admin tools", refused=True)
    if not 200 <= status < 300:
        return NoteResult(False, f"Nightscout answered HTTP {status}")
    return NoteResult(True)


def post_treatment(
    user: User,
    treatment: dict[str, Any],
    *,
    allow_private: bool = False,
    timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    is_public: Callable[[str], bool] = is_public_address,
    lookup: Lookup | None = None,
) -> NoteResult:
    """POST one treatment to the user's Nightscout (`/api/v1/treatments`) through the same
    guarded client as reading: the address policy, and a deadline of connect + read time.
    Never raises."""
    connect_s, read_s = timeout

    async def once() -> NoteResult:
        async with open_async_session(2, allow_private, is_public, lookup) as session:
            try:
                async with asyncio.timeout(connect_s + read_s):
                    return await _post(user, treatment, session, allow_private, connect_s, read_s)
            except TimeoutError:
                return NoteResult(False, f"Nightscout did not answer within {connect_s + read_s:g} s")

    return run_blocking(once)
