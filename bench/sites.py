"""Simulated Nightscout sites for the benchmark, all served by one asyncio process.

Every user gets a base URL `http://127.0.0.1:PORT/<behaviour>/<n>`; the behaviour
decides the answer to `/api/v1/entries/sgv.json`:

    fast     in range after 20 ms          slow     in range after 2 s
    low      out of range after 20 ms      hung     accepts, reads, never answers
    e500     HTTP 500                      html     200 with an HTML page
    garbage  200 with broken JSON

Each answer closes its connection: real users live on different hosts, so a real
poller cannot reuse a connection from one user to the next, and neither may this one.
A low-level asyncio Protocol keeps the simulator's own CPU use small, so that what
is measured is the poller.

Run as `python -m bench.sites`: it prints `PORT <n>` and serves until stdin closes.
"""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

FAST_DELAY = 0.020
SLOW_DELAY = 2.0
MAX_REQUEST_BYTES = 16 * 1024
BEHAVIOURS = ("fast", "slow", "low", "hung", "e500", "html", "garbage")


def entries_body(mgdl: int, step: int, direction: str) -> bytes:
    """Three readings five minutes apart, the newest one minute old, changing by
    `step` mg/dL every five minutes."""
    now_ms = int(time.time() * 1000) - 60_000
    return json.dumps([
        {"type": "sgv", "sgv": mgdl - step * i, "date": now_ms - 300_000 * i, "direction": direction}
        for i in range(3)
    ]).encode()


def http_response(status: str, content_type: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


def answer_for(behaviour: str) -> tuple[float, bytes] | None:
    """(delay, response bytes) for one request, or None to never answer."""
    if behaviour == "hung":
        return None
    if behaviour == "fast":
        return FAST_DELAY, http_response("200 OK", "application/json", entries_body(118, 0, "Flat"))
    if behaviour == "slow":
        return SLOW_DELAY, http_response("200 OK", "application/json", entries_body(131, 4, "FortyFiveUp"))
    if behaviour == "low":
        return FAST_DELAY, http_response("200 OK", "application/json", entries_body(54, -9, "SingleDown"))
    if behaviour == "e500":
        return FAST_DELAY, http_response("500 Internal Server Error", "text/plain", b"Application error")
    if behaviour == "html":
        return FAST_DELAY, http_response("200 OK", "text/html", b"<!doctype html><title>Heroku | No such app</title>")
    return FAST_DELAY, http_response("200 OK", "application/json", b'[{"sgv": 120, "date": ')


class SiteProtocol(asyncio.Protocol):
    """One connection: read the request head, answer as the path's behaviour says."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.timer is not None or self.transport is None:
            return
        self.received += data
        if b"\r\n\r\n" not in self.received:
            if len(self.received) > MAX_REQUEST_BYTES:
                self.transport.close()
            return
        path = self.received.split(b" ", 2)[1].decode("latin-1")
        behaviour = path.split("/")[1] if path.count("/") > 1 else ""
        planned = answer_for(behaviour if behaviour in BEHAVIOURS else "e500")
        if planned is None:
            # hold the connection open until the client gives up; the never-firing
            # sentinel timer marks the request as read
            self.timer = asyncio.get_running_loop().call_later(86_400, lambda: None)
            return
        delay, response = planned
        self.timer = asyncio.get_running_loop().call_later(delay, self.respond, response)

    def respond(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


def raise_open_files_limit() -> None:
    """Thousands of concurrent connections need thousands of file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve_until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SiteProtocol, "127.0.0.1", 0, backlog=4096, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    stdin_closed = loop.create_future()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stdin_closed.set_result, None)

    loop.run_in_executor(None, watch_stdin)
    async with server:
        await stdin_closed


def main() -> None:
    raise_open_files_limit()
    asyncio.run(serve_until_stdin_closes())


if __name__ == "__main__":
    main()
