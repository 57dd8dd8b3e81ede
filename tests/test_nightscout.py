"""The Nightscout client against a real local HTTP server."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import aiohttp
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from models import User
from scout.nightscout import (
    BadNightscoutURL,
    PublicOnlyResolver,
    RefusedHost,
    check_public_host,
    fetch_readings,
    fetch_readings_async,
    open_async_session,
    parse_site,
)
from scout.readings import PollFailure, PollResult, Readings
from tests.conftest import make_user

NOW_MS = int(time.time() * 1000)


def entries(*values: int, direction: str = "Flat") -> list[dict[str, object]]:
    return [
        {"_id": f"id{i}", "type": "sgv", "sgv": v, "date": NOW_MS - 300_000 * i, "direction": direction,
         "dateString": "2026-11-28T03:00:00.000Z", "device": "xDrip"}
        for i, v in enumerate(values)
    ]


@pytest.mark.parametrize(
    "typed, base",
    [
        ("https://ana.herokuapp.com", "https://ana.herokuapp.com"),
        ("https://ana.herokuapp.com/", "https://ana.herokuapp.com"),
        ("https://ana.herokuapp.com/api/v1/entries.json", "https://ana.herokuapp.com"),
        ("https://ana.example.org/ns/api/v1/entries/sgv.json?count=5", "https://ana.example.org/ns"),
        ("  http://ana.example.org:1337/api/v1/  ", "http://ana.example.org:1337"),
    ],
)
def test_it_accepts_a_base_url_or_the_tutorial_entries_url(typed: str, base: str) -> None:
    assert parse_site(typed).base_url == base
    assert parse_site(typed).entries_url(3) == f"{base}/api/v1/entries/sgv.json?count=3"


def test_a_token_in_the_pasted_url_is_kept() -> None:
    site = parse_site("https://ana.example.org/api/v1/entries.json?token=scout-abc123")
    assert site.entries_url(3).endswith("sgv.json?count=3&token=scout-abc123")


@pytest.mark.parametrize("typed", ["", "ana.herokuapp.com", "ftp://ana.example.org", "https://user:pw@ana.example.org",
                                   "javascript:alert(1)"])
def test_it_refuses_what_is_not_an_http_address(typed: str) -> None:
    with pytest.raises(BadNightscoutURL):
        parse_site(typed)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "192.168.1.10", "localhost",
                                  "metadata.google.internal.invalid"])
def test_private_and_unresolvable_hosts_are_refused(host: str) -> None:
    with pytest.raises(BadNightscoutURL):
        check_public_host(host)


def test_it_reads_entries_newest_first_with_direction(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json", query_string="count=3").respond_with_json(
        list(reversed(entries(54, 62, 70, direction="SingleDown")))
    )
    result = fetch_readings(make_user(httpserver.url_for("/api/v1/entries.json")), allow_private=True)
    assert isinstance(result, Readings)
    assert [r.mgdl for r in result.readings] == [54, 62, 70]
    assert result.latest is not None and result.latest.direction == "SingleDown"
    assert abs(result.latest.at - NOW_MS / 1000) < 0.01
    assert result.delta == -8


def test_it_sends_the_token_and_the_hashed_api_secret(httpserver: HTTPServer) -> None:
    secret = "my-nightscout-secret"

    def handler(request: Request) -> Response:
        ok = (request.args.get("token") == "tok-1"
              and request.headers.get("api-secret") == hashlib.sha1(secret.encode()).hexdigest())
        return Response(json.dumps(entries(120)), status=200 if ok else 401, content_type="application/json")

    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_handler(handler)
    user = make_user(httpserver.url_for("/"), nightscout_token="tok-1", nightscout_api_secret=secret)
    assert isinstance(fetch_readings(user, allow_private=True), Readings)
    wrong = make_user(httpserver.url_for("/"), nightscout_token="nope")
    assert fetch_readings(wrong, allow_private=True) == PollFailure("unauthorized", "HTTP 401")


def test_cgm_error_codes_are_not_readings_but_dexcom_low_is(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(
        [{**entry, "device": "dexcom"} for entry in entries(39, 9, 110)])
    result = fetch_readings(make_user(httpserver.url_for("/")), allow_private=True)
    assert isinstance(result, Readings)
    assert [(r.mgdl, r.limit) for r in result.readings] == [(39, "below"), (110, "")]
    assert result.error_codes == 1 and result.errors[0].name.startswith("hourglass")


@pytest.mark.parametrize(
    "body, status, content_type, reason",
    [
        ("<!doctype html><html>Application error</html>", 200, "text/html", "not_json"),
        ("{\"sgv\": ", 200, "application/json", "not_json"),
        ("[]", 200, "application/json", "no_readings"),
        ("[{\"sgv\": \"high\"}, {\"date\": 5}]", 200, "application/json", "bad_data"),
        ("{\"status\": 500}", 200, "application/json", "not_json"),
        ("oops", 500, "text/plain", "http_status"),
        ("", 401, "text/plain", "unauthorized"),
    ],
)
def test_bad_answers_are_typed_failures(httpserver: HTTPServer, body: str, status: int, content_type: str,
                                        reason: str) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_data(body, status, content_type=content_type)
    result = fetch_readings(make_user(httpserver.url_for("/")), allow_private=True)
    assert isinstance(result, PollFailure) and result.reason == reason


def test_a_site_that_hangs_times_out(httpserver: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(1.5)
        return Response("[]", content_type="application/json")

    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_handler(slow)
    started = time.monotonic()
    result = fetch_readings(make_user(httpserver.url_for("/")), allow_private=True, timeout=(1.0, 0.5))
    assert result == PollFailure("timeout", "no answer within 0.5 s")
    assert time.monotonic() - started < 1.4


def test_a_closed_port_is_unreachable() -> None:
    result = fetch_readings(make_user("http://127.0.0.1:9/"), allow_private=True)
    assert isinstance(result, PollFailure) and result.reason == "unreachable"


def test_outside_dev_mode_a_loopback_site_is_refused_at_fetch_time(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(110))
    result = fetch_readings(make_user(httpserver.url_for("/")), allow_private=False)
    assert isinstance(result, PollFailure) and result.reason == "refused_url"
    assert httpserver.log == []


def test_redirects_are_followed(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_data(
        "", 301, headers={"Location": httpserver.url_for("/moved/api/v1/entries/sgv.json?count=3")})
    httpserver.expect_request("/moved/api/v1/entries/sgv.json").respond_with_json(entries(101))
    result = fetch_readings(make_user(httpserver.url_for("/")), allow_private=True)
    assert isinstance(result, Readings) and result.latest is not None and result.latest.mgdl == 101


# --- the poller's concurrent client ----------------------------------------------


def fetch_async(user: User, allow_private: bool, session_opener: Any = None, **options: Any) -> PollResult:
    async def run() -> PollResult:
        opener = session_opener or (lambda: open_async_session(10, allow_private=allow_private))
        async with opener() as session:
            return await fetch_readings_async(user, session, allow_private=allow_private, **options)
    return asyncio.run(run())


def test_the_poller_reads_the_same_entries(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json", query_string="count=3").respond_with_json(
        entries(54, 62, 70, direction="SingleDown"))
    result = fetch_async(make_user(httpserver.url_for("/")), allow_private=True)
    assert isinstance(result, Readings) and [r.mgdl for r in result.readings] == [54, 62, 70]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "2130706433", "localhost", "[::1]"])
def test_outside_dev_mode_the_poller_refuses_a_private_site_before_any_request(httpserver: HTTPServer,
                                                                               host: str) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(110))
    result = fetch_async(make_user(f"http://{host}:{httpserver.port}/"), allow_private=False)
    assert isinstance(result, PollFailure) and result.reason == "refused_url", result
    assert "private or internal address" in result.detail and not result.detail.startswith("redirected")
    assert httpserver.log == []


def test_outside_dev_mode_the_poller_refuses_an_unknown_host() -> None:
    result = fetch_async(make_user("http://nightscout.invalid/"), allow_private=False)
    assert isinstance(result, PollFailure) and result.reason == "refused_url" and "could not be found" in result.detail


def test_the_poller_checks_the_addresses_it_connects_to_as_it_looks_a_name_up() -> None:
    async def resolve(host: str) -> Any:
        return await PublicOnlyResolver().resolve(host, 80)

    with pytest.raises(RefusedHost, match="private or internal address"):
        asyncio.run(resolve("localhost"))


def test_outside_dev_mode_a_session_of_its_own_is_checked_too(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(110))
    result = fetch_async(make_user(httpserver.url_for("/").replace("127.0.0.1", "localhost")), allow_private=False,
                         session_opener=lambda: aiohttp.ClientSession())
    assert isinstance(result, PollFailure) and result.reason == "refused_url"
    assert httpserver.log == []


def only_127_0_0_1_is_public() -> aiohttp.ClientSession:
    """The poller's session, for which this test's site stands for a public one."""
    return open_async_session(10, is_public=lambda address: address == "127.0.0.1")


def test_outside_dev_mode_the_poller_refuses_a_redirect_into_a_private_network(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_data(
        "", 302, headers={"Location": f"http://127.0.0.2:{httpserver.port}/inside"})
    result = fetch_async(make_user(httpserver.url_for("/")), allow_private=False,
                         session_opener=only_127_0_0_1_is_public)
    assert isinstance(result, PollFailure) and result.reason == "refused_url"
    assert result.detail.startswith("redirected: ") and "127.0.0.2" in result.detail
    assert [request.path for request, _response in httpserver.log] == ["/api/v1/entries/sgv.json"]


def test_outside_dev_mode_a_name_with_public_addresses_is_read(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(101))
    result = fetch_async(make_user(f"http://localhost:{httpserver.port}/"), allow_private=False,
                         session_opener=only_127_0_0_1_is_public)
    assert isinstance(result, Readings) and result.latest is not None and result.latest.mgdl == 101
