"""`make bench`: 500 users low at once, against a provider that takes 3 calls per second.

One real poll cycle (the poller, SQLite, the Vonage SDK) against local Nightscout sites
that all show a low, and the local Vonage double limited to 3 call creations per second
(429 beyond, as Vonage does). Prints: how many users were called, and how many more than
once; how far the order of the calls strays from the order of urgency (the lowest value
first); when the first and the last call were accepted; how many requests were throttled;
and how many contacts were texted (none may be: no call went unanswered).

Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from models import Contact, User
from scout.config import load_config
from scout.poller import Poller
from scout.store.sqlite import SqliteStore
from tests.fake_providers import FakeProviders

USERS = 500
CALLS_PER_SECOND = 3
TARGET_LAST_CALL_S = 170.0


class SitesServer(ThreadingHTTPServer):
    request_queue_size = 1024  # the 500 polls arrive at once
    daemon_threads = True


class Sites:
    """Every user's Nightscout on one local server: /<user>/api/v1/entries/sgv.json."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        sites = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                user = self.path.split("/")[1]
                date = int((time.time() - 60) * 1000)
                body = json.dumps([{"_id": f"{user}-1", "type": "sgv", "sgv": sites.values[user], "date": date,
                                    "direction": "SingleDown", "device": "dexcom"}]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = SitesServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, user: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{user}/"


def inversions(order: list[float]) -> int:
    """Pairs called in the wrong order (a less urgent one before a more urgent one)."""
    return sum(1 for i, a in enumerate(order) for b in order[i + 1:] if b < a)


def run(folder: Path) -> dict[str, Any]:
    rng = random.Random(10)
    values = {f"u{i:03d}": float(rng.choice([39, *range(40, 70)])) for i in range(USERS)}
    sites = Sites(values)
    fake = FakeProviders().start()
    fake.limit_rate("vonage.calls", CALLS_PER_SECOND)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "private.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    config = load_config({
        "SCOUT_DEV": "1", "SECRET_KEY": secrets.token_hex(16), "SCOUT_DB": str(folder / "scout.sqlite3"),
        "SITE_URL": "https://scout.example.org", "SCOUT_TELEPHONY": "vonage", "NEXMO_API_KEY": "abc123",
        "NEXMO_API_SECRET": secrets.token_hex(8), "NEXMO_APPLICATION_ID": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        "NEXMO_PRIVATE_KEY": str(folder / "private.key"), "NEXMO_NUMBER": "14155550100",
        "NEXMO_SIGNATURE_SECRET": secrets.token_hex(32), "SCOUT_VONAGE_BASE_URL": fake.url,
    })
    store = SqliteStore(config.db_path)
    phones = {}
    for i, user_id in enumerate(values):
        phones[f"1415{i:07d}"] = user_id
        store.save_user(User(id=user_id, email=f"{user_id}@example.com", name=user_id,
                             nightscout_url=sites.url(user_id), phone=f"+1415{i:07d}",
                             emergency_contact=Contact("+14155550199")))
    poller = Poller(config, store=store)
    started = time.monotonic()
    summary = poller.run_cycle(use_lease=False)
    accepted = fake.answered("vonage.calls")
    called = Counter(phones[r.recipient] for r in accepted)
    order = [values[phones[r.recipient]] for r in accepted]
    contacts = [r for r in fake.received("vonage.messages")]
    poller.close()
    store.close()
    fake.stop()
    sites.server.shutdown()
    return {
        "users": USERS,
        "polls_failed": summary.counts["failed"],
        "called": len(called),
        "called_more_than_once": sum(1 for n in called.values() if n > 1),
        "not_called": USERS - len(called),
        "first_call_s": round(accepted[0].at - started, 2) if accepted else None,
        "last_call_s": round(accepted[-1].at - started, 2) if accepted else None,
        "cycle_s": round(summary.duration, 2),
        "throttled_429": len(fake.throttled("vonage.calls")),
        "order_inversions": inversions(order),
        "order_pairs": len(order) * (len(order) - 1) // 2,
        "first_10_values": order[:10],
        "last_10_values": order[-10:],
        "contacts_texted": len(contacts),
        "failed_sends": summary.counts["failed_sends"],
    }


def main() -> None:
    print(f"paced lows: {USERS} users low at once, provider limited to {CALLS_PER_SECOND} calls/s "
          f"(load before: {os.getloadavg()[0]:.2f})", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        result = run(Path(folder))
    load = os.getloadavg()
    for name, value in result.items():
        print(f"  {name:24} {value}")
    verdict = ("met" if result["called"] == USERS and not result["called_more_than_once"]
               and not result["contacts_texted"] and (result["last_call_s"] or 1e9) <= TARGET_LAST_CALL_S * 1.05
               else "NOT met")
    print(f"  target: every user called once, the last within about {TARGET_LAST_CALL_S:g} s, "
          f"no contact texted: {verdict}")
    print(f"  load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)


if __name__ == "__main__":
    main()
