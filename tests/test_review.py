"""Defects found in the review of the alert-safety work, each replayed through the real
poller, store, provider doubles and a local Nightscout, with the clock the test moves."""
from __future__ import annotations

import json
import random
from typing import Any

from werkzeug import Request, Response

from tests.test_traces import MINUTE, START, Site, Trace, trace

__all__ = ["trace"]  # fixtures imported for the tests below


# --- the clock-skew notice near the tolerance ----------------------------------------------


def test_a_clock_just_under_five_minutes_behind_is_told_once_not_every_time_it_wobbles(trace: Trace) -> None:
    """An uploader 4 min 42 s behind: each reading reaches Scout 0 to 40 s after it is
    uploaded (the minute poll), so its lag straddles the 5-minute tolerance. Before the
    fix the user was texted 'your uploader's clock is about 5 minutes behind' again each
    time one reading happened to arrive under 5 minutes: six identical texts in 4 hours."""
    site = trace.add_user()
    trace.poll()
    wobble = [0, 20, 40, 40, 0, 20, 0, 40, 20, 20, 40, 0]
    for reading in range(36):  # one every 5 minutes for 3 hours
        # seen by the next poll: 4 min 42 s to 5 min 22 s after its date
        site.upload(110, trace.now + 5 * MINUTE - 282 - wobble[reading % len(wobble)])
        trace.poll(after=5 * MINUTE)
    notices = trace.texts("clock")
    assert len(notices) == 1, notices
    assert "minutes behind" in notices[0]


def test_a_clock_set_right_and_then_wrong_again_is_told_again(trace: Trace) -> None:
    """The other side of the rule: a clock put right, then off again, is a new skew."""
    site = trace.add_user()
    trace.poll()
    for behind in [20 * MINUTE] * 4 + [10.0] * 4 + [20 * MINUTE] * 4:
        site.upload(110, trace.now + 5 * MINUTE - behind)
        trace.poll(after=5 * MINUTE)
    assert len(trace.texts("clock")) == 2


# --- a site that ignores `count` ---------------------------------------------------------------


class EndlessSite(Site):
    """A Nightscout (or something posing as one) that answers every entry it has, whatever
    `count` asks for: 12,000 of them, compact, just under Scout's 512 kB body cap."""

    def answer(self, request: Request) -> Response:
        return Response(json.dumps(self.entries, separators=(",", ":")), content_type="application/json")


def test_a_site_answering_twelve_thousand_entries_keeps_a_small_state_and_others_are_called(trace: Trace) -> None:
    """Before the fix Scout remembered every entry of the answer in the user's alert state
    (870 kB of JSON, close to Firestore's 1 MiB document limit) and compared each with each
    (about 15 s of CPU on the poller's event loop, twice per poll, holding up every other
    user's poll in that process)."""
    ana = trace.add_user("ana")
    ana.upload(50, START - MINUTE)  # a real low, in another user's site
    trace.add_user("bo")
    trace.sites["bo"] = flood = EndlessSite()
    entries: list[dict[str, Any]] = [{"sgv": 100 + i % 7, "date": int((START - 60 * i) * 1000)} for i in range(12_000)]
    flood.entries = entries
    summary = trace.poll()
    assert summary.counts["calls"] == 1  # ana's low is called
    state = trace.state("bo")
    assert len(state.seen) <= 60
    assert len(json.dumps(state.as_dict())) < 20_000
    # the next poll, with the newest entry moved on, stays as small
    flood.entries = [{"sgv": 101, "date": int((START + 5 * MINUTE) * 1000)}] + entries
    trace.poll(after=5 * MINUTE)
    assert len(trace.state("bo").seen) <= 60
    assert trace.state("bo").seen[-1][0] == f"{(START + 5 * MINUTE) * 1000:.0f}:101"  # the new one was seen


# --- Scout's own clock stepping back ------------------------------------------------------------


def test_a_low_that_arrives_after_scouts_clock_stepped_back_is_called(trace: Trace) -> None:
    """The server's clock steps back 20 minutes (a VM restored from a snapshot, a bad NTP step).
    Before the fix the readings Scout had seen kept their arrival times 'in the future',
    so they outranked every new reading until the clock caught up: a real low arriving in
    those 20 minutes was ignored ('120 mg/dL: in range') and never called."""
    site = trace.add_user()
    for minutes_ago in (15, 10, 5, 0):
        site.upload(120, trace.now - minutes_ago * MINUTE)
    trace.poll()
    site.upload(118, trace.now + 5 * MINUTE)
    trace.poll(after=5 * MINUTE)
    assert trace.fake.answered("twilio.calls") + trace.fake.answered("vonage.calls") == []
    trace.now -= 20 * MINUTE  # Scout's clock steps back 20 minutes; the uploader's stays right
    site.upload(52, trace.now + 20 * MINUTE + MINUTE)  # (so to Scout it looks 20 minutes ahead)
    summary = trace.poll(after=MINUTE)
    assert summary.counts["calls"] == 1
    assert "your blood glucose is 52 milligrams per deciliter" in trace.calls()[0]


# --- two uploaders, one time slot, values either side of a threshold --------


class ShufflingSite(Site):
    """Entries with the same date come back in any order, as a database sorting on
    `date` alone may give them (here a seeded shuffle, the same on every run)."""

    def __init__(self) -> None:
        super().__init__()
        self.shuffle = random.Random(1)

    def answer(self, request: Request) -> Response:
        shown = sorted(self.entries, key=lambda e: (e["date"], self.shuffle.random()), reverse=True)
        return Response(json.dumps(shown[: int(request.args.get("count", "10"))]), content_type="application/json")


def test_two_uploaders_of_one_slot_either_side_of_the_low_threshold_do_not_flap(trace: Trace) -> None:
    """Two uploaders store each reading of one sensor at the same date with values a few
    mg/dL apart (68 and 75 around a low threshold of 70). Before the fix Scout believed
    whichever the site listed first, so with ties answered in any order it called, sent
    an all-clear, and called again every few minutes: 13 all-clears in an hour here.
    Now the more alarming value of the slot is believed: one low episode, no all-clear."""
    trace.add_user()
    trace.sites["ana"] = site = ShufflingSite()
    trace.poll()
    for minute in range(60):
        if minute % 5 == 0:
            site.upload(68, trace.now + MINUTE - 30, device="xDrip-DexcomG6")
            site.upload(75, trace.now + MINUTE - 30, device="share2")
        trace.poll(after=MINUTE)
    assert trace.texts("all_clear") == []
    assert "68 milligrams per deciliter" in trace.calls()[0]
    episodes = {e.key.split(":")[1] for e in trace.log() if e.kind == "call"}
    assert len(episodes) == 1, episodes  # one low, called (and repeated) as one episode
