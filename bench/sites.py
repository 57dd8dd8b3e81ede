"""Simulated Nightscout sites for the benchmark: one asyncio process serving many ports.

A user's base URL is `http://127.0.0.1:PORT/<behaviour>/<n>`; the behaviour decides the
answer to `/api/v1/entries/sgv.json` (n seeds the user's own delay, so it is the same
every cycle, as a real site's would be):

    fast      in range after 5-50 ms
    low       5-50 ms; phase 1: 86 mg/dL and falling (near the low threshold);
              phase 2 and after: 58 mg/dL, falling fast (out of range: a call)
    slow      in range, 1-8 s before the headers
    hung      reads the request, never answers
    trickle   headers at once, then one byte every 2 s
    huge      a 50 MB body, written as fast as the poller reads it
    reset     headers and half the body, then a TCP reset
    e500, e502, e503   that HTTP status
    html      200 with an HTML page (a parked domain, a login page)

Connection refused needs no server: the benchmark points those users at a port that
nobody listens on (see `refused_port`).

Each answer closes its connection: real users live on different hosts, so the poller
cannot reuse a connection from one user to the next, and neither may this one. A
low-level asyncio Protocol keeps the simulator's own CPU small.

Run as `python -m bench.sites COUNT`: it listens on COUNT ports, prints `PORTS p1 p2 ...`,
then reads commands on stdin (`phase N`) until stdin closes.
"""
from __future__ import annotations

import asyncio
import json
import random
import resource
import socket
import struct
import sys
import time

MAX_REQUEST_BYTES = 16 * 1024
HUGE_BYTES = 50 * 1024 * 1024
HUGE_CHUNK = b"[" + b" " * (256 * 1024 - 1)  # looks like the start of a JSON array, never ends
TRICKLE_EVERY = 2.0
BEHAVIOURS = ("fast", "slow", "low", "hung", "trickle", "huge", "reset", "e500", "e502", "e503", "html")
STATUS_LINES = {"e500": "500 Internal Server Error", "e502": "502 Bad Gateway", "e503": "503 Service Unavailable"}

phase = 1  # changed by the benchmark between cycles ("phase 2" on stdin)


def fast_delay(n: int) -> float:
    return random.Random(n).uniform(0.005, 0.050)


def slow_delay(n: int) -> float:
    return random.Random(n).uniform(1.0, 8.0)


def entries_body(mgdl: int, step: int, direction: str) -> bytes:
    """Three readings five minutes apart, the newest one minute old, changing by
    `step` mg/dL every five minutes."""
    now_ms = int(time.time() * 1000) - 60_000
    return json.dumps([
        {"type": "sgv", "sgv": mgdl - step * i, "date": now_ms - 300_000 * i, "direction": direction}
        for i in range(3)
    ]).encode()


def head(status: str, content_type: str, length: int) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
            "Connection: close\r\n\r\n").encode("ascii")


def json_response(body: bytes) -> bytes:
    return head("200 OK", "application/json", len(body)) + body


def low_body() -> bytes:
    if phase <= 1:
        return entries_body(86, -8, "SingleDown")
    return entries_body(58, -12, "DoubleDown")


class SiteProtocol(asyncio.Protocol):
    """One connection: read the request head, answer as the path's behaviour says."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = b""
        self.timer: asyncio.TimerHandle | None = None
        self.answered = False
        self.paused = False
        self.left = 0  # bytes of a huge body still to write
        self.trickle = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.answered or self.transport is None:
            return
        self.received += data
        if b"\r\n\r\n" not in self.received:
            if len(self.received) > MAX_REQUEST_BYTES:
                self.transport.close()
            return
        self.answered = True
        path = self.received.split(b" ", 2)[1].decode("latin-1")
        parts = path.split("/")
        behaviour = parts[1] if len(parts) > 2 and parts[1] in BEHAVIOURS else "e500"
        try:
            n = int(parts[2])
        except (IndexError, ValueError):
            n = 0
        self.start(behaviour, n)

    def start(self, behaviour: str, n: int) -> None:
        loop = asyncio.get_running_loop()
        if behaviour == "hung":
            return  # hold the connection until the poller gives up
        if behaviour == "fast":
            self.timer = loop.call_later(fast_delay(n), self.respond, json_response(entries_body(118, 0, "Flat")))
        elif behaviour == "low":
            self.timer = loop.call_later(fast_delay(n), self.respond_low)
        elif behaviour == "slow":
            self.timer = loop.call_later(slow_delay(n), self.respond,
                                         json_response(entries_body(131, 4, "FortyFiveUp")))
        elif behaviour == "trickle":
            body = entries_body(120, 0, "Flat")
            self.write(head("200 OK", "application/json", len(body)))
            self.trickle = body
            self.timer = loop.call_later(TRICKLE_EVERY, self.trickle_one)
        elif behaviour == "huge":
            self.write(head("200 OK", "application/json", HUGE_BYTES))
            self.left = HUGE_BYTES
            self.timer = loop.call_later(fast_delay(n), self.write_huge)
        elif behaviour == "reset":
            body = entries_body(120, 0, "Flat")
            self.timer = loop.call_later(fast_delay(n), self.reset_after,
                                         head("200 OK", "application/json", len(body)) + body[: len(body) // 2])
        elif behaviour in STATUS_LINES:
            self.timer = loop.call_later(fast_delay(n), self.respond,
                                         head(STATUS_LINES[behaviour], "text/plain", 17) + b"Application error")
        else:  # html
            page = b"<!doctype html><title>Heroku | No such app</title><p>There is nothing here, yet."
            self.timer = loop.call_later(fast_delay(n), self.respond, head("200 OK", "text/html", len(page)) + page)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def respond(self, response: bytes) -> None:
        self.write(response)
        if self.transport is not None:
            self.transport.close()

    def respond_low(self) -> None:
        self.respond(json_response(low_body()))

    def trickle_one(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.write(self.trickle[:1])
        self.trickle = self.trickle[1:]
        if self.trickle:
            self.timer = asyncio.get_running_loop().call_later(TRICKLE_EVERY, self.trickle_one)
        else:
            self.transport.close()

    def write_huge(self) -> None:
        # flow control: write while the transport's buffer has room, then wait for resume_writing
        while self.left > 0 and not self.paused and self.transport is not None and not self.transport.is_closing():
            chunk = HUGE_CHUNK[: min(len(HUGE_CHUNK), self.left)]
            self.transport.write(chunk)
            self.left -= len(chunk)
        if self.left <= 0 and self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.left > 0:
            self.write_huge()

    def reset_after(self, partial: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(partial)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # linger 0: closing sends a reset, not a clean end
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None
        self.left = 0


def raise_open_files_limit() -> None:
    """Thousands of concurrent connections need thousands of file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def refused_port() -> int:
    """A loopback port that refuses connections: bound, never listening, kept bound by this
    process so no one else takes it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    refused_port.sockets.append(sock)  # type: ignore[attr-defined]
    return int(sock.getsockname()[1])


refused_port.sockets = []  # type: ignore[attr-defined]


async def serve_until_stdin_closes(count: int) -> None:
    global phase
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(SiteProtocol, "127.0.0.1", 0, backlog=4096, reuse_address=True)
               for _ in range(count)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print("PORTS " + " ".join(str(p) for p in ports) + f" REFUSED {refused_port()}", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        words = line.decode().split()
        if words[:1] == ["phase"]:
            phase = int(words[1])
            print(f"PHASE {phase}", flush=True)
    for server in servers:
        server.close()


def main() -> None:
    raise_open_files_limit()
    asyncio.run(serve_until_stdin_closes(int(sys.argv[1]) if len(sys.argv) > 1 else 1))


if __name__ == "__main__":
    main()
