"""SCOUT_TASKS_CALL_QUEUE / SCOUT_TASKS_MESSAGE_QUEUE: recorded calls and messages go through
Cloud Tasks queues whose dispatch rate is the provider's, and any instance sends them at
POST /tasks/send (issue 11, item 4's last bullet).

Everything is real and on 127.0.0.1: gcloud-tasks-emulator with the google-cloud-tasks
client, gunicorn instances behind the stand-in for App Engine's front end, the Twilio SDK
talking to the fake provider, Nightscout sites that count reads, one SQLite store.

The emulator ignores queue rates (it dispatches each queue's tasks one at a time, as fast as
they are answered, and retries at once): these tests show who sends and how often, never the
pace. That the rate holds is Cloud Tasks' own `--max-dispatches-per-second` (docs/deploy.md).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from models import UNSENT_STATUSES, LogEntry, User
from scout.cloudtasks import send_task_id, send_tasks_for
from scout.config import ConfigError, load_config
from scout.engine import QUEUED_CLAIM_HOLD
from scout.poller import Poller
from scout.store.sqlite import SqliteStore
from tests.conftest import make_user
from tests.fake_providers import FakeProviders, _throttled_body
from tests.tasks_fixtures import CALL_QUEUE, MESSAGE_QUEUE, QUEUE, CountingNightscout, Forwarded, wait_for
from tests.telephony_setup import twilio_env, vonage_env
from tests.test_dispatch import Deployment, _closed_port, run_cycle, saved_users  # the fake provider: tests.telephony_setup

SEND_KINDS = ("call", "sms", "whatsapp")
REFUSED_NUMBER = "The 'To' number is not a valid phone number."


class SendDeployment(Deployment):
    """A Deployment whose instances send through the call and message queues, to Twilio's
    fake; each user has a phone number of their own."""

    def __init__(self, tmp_path: Path, fake: FakeProviders, max_retries: int = 10,
                 provider_env: dict[str, str] | None = None) -> None:
        super().__init__(tmp_path, queues=(QUEUE, CALL_QUEUE, MESSAGE_QUEUE), max_retries=max_retries)
        self.fake = fake
        self.env.update(provider_env or twilio_env(tmp_path, fake))
        self.env.update(SCOUT_TASKS_CALL_QUEUE="scout-calls", SCOUT_TASKS_MESSAGE_QUEUE="scout-messages")

    def add_low_and_fine(self, low: int, fine: int) -> tuple[list[User], list[User]]:
        made: list[User] = []
        for n in range(low + fine):
            user_id = uuid.uuid4().hex
            user = make_user(self.nightscout.url(user_id), id=user_id, email=f"{user_id}@example.com",
                             phone=f"+1415555{3000 + n:04d}")
            self.store.save_user(user)
            made.append(user)
        self.nightscout.low.update(u.id for u in made[:low])
        self.users += made
        return made[:low], made[low:]

    def sends(self) -> list[LogEntry]:
        return [e for u in self.users for e in self.store.user_log(u.id) if e.kind in SEND_KINDS]

    def settled(self, count: int) -> bool:
        """`count` sends recorded, and none of them still to send."""
        sends = self.sends()
        return len(sends) == count and all(e.status not in UNSENT_STATUSES for e in sends)

    def send_tasks(self) -> list[Forwarded]:
        return [f for f in self.front.forwarded if f.path == "/tasks/send"]

    def pause(self, queue: str, paused: bool) -> None:
        channel = grpc.insecure_channel(self.emulator.host)
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        try:
            (client.pause_queue if paused else client.resume_queue)(name=queue)
        finally:
            client.transport.close()


@pytest.fixture
def sending(tmp_path: Path, fake: FakeProviders) -> Iterator[SendDeployment]:
    deployment = SendDeployment(tmp_path, fake)
    yield deployment
    deployment.stop()


def provider_ids(fake: FakeProviders, api: str) -> list[str]:
    return [str(r.answer.get("sid") or r.answer.get("uuid") or r.answer.get("message_uuid")) for r in fake.answered(api)]


def test_each_call_and_text_goes_once_through_its_queue_and_both_instances_send(
        sending: SendDeployment, fake: FakeProviders) -> None:
    sending.start_instances(2)
    low, fine = sending.add_low_and_fine(low=7, fine=5)
    refused = low[0]  # Twilio refuses this number for good: its contacts are told the truth
    fake.fail_twilio("twilio.calls", 21211, REFUSED_NUMBER, to=refused.phone)
    poller = sending.lease_holder()
    try:
        run_cycle(sending, poller)
        # a call each; the refused one's contacts texted, and the first of them called (the ladder;
        # nobody answers it here, so the next contact's call waits for its outcome)
        expected = len(low) + len(refused.contacts) + 1
        wait_for(lambda: sending.settled(expected), 90, "every call and text to be settled")
        time.sleep(0.5)  # anything doubled would arrive now
    finally:
        poller.close()
    sends = sending.sends()
    calls = {e.user_id: e for e in sends if e.purpose == "alert"}
    assert set(calls) == {u.id for u in low} and len(calls) == sum(e.purpose == "alert" for e in sends)
    (ladder,) = [e for e in sends if e.purpose == "ladder"]
    assert refused.emergency_contact is not None
    assert (ladder.user_id, ladder.recipient, ladder.status) == (refused.id, refused.emergency_contact.phone, "sent")
    assert calls[refused.id].status == "permanent" and "21211" in calls[refused.id].error
    assert all(calls[u.id].status == "sent" and calls[u.id].attempts == 1 for u in low[1:])
    texts = [e for e in sends if e.kind != "call"]
    assert len(texts) == len(refused.contacts) and {e.user_id for e in texts} == {refused.id}
    assert all(e.status == "sent" and "could not reach" in e.body and "did not answer" not in e.body for e in texts)
    # every send went through its queue, once, and was sent by the task; none by the poller
    served = sending.send_tasks()
    assert Counter(f.task for f in served) == {send_task_id(e.key): 1 for e in sends}
    by_task = {f.task: f for f in served}
    for entry in sends:
        task = by_task[send_task_id(entry.key)]
        assert task.status == 200 and task.queue == (CALL_QUEUE if entry.kind == "call" else MESSAGE_QUEUE)
        assert json.loads(task.answer)["what"] == ("refused" if entry.key == calls[refused.id].key else "sent")
    assert {f.instance for f in served} == {0, 1}
    # the provider placed each call and took each text exactly once
    placed = provider_ids(fake, "twilio.calls")
    assert sorted(placed) == sorted([calls[u.id].provider_id for u in low[1:]] + [ladder.provider_id])
    assert len([r for r in fake.received("twilio.calls") if r.recipient == refused.phone]) == 1  # never retried
    assert sorted(provider_ids(fake, "twilio.messages")) == sorted(e.provider_id for e in texts)
    assert all(not sending.store.user_log(u.id) for u in fine)


@pytest.mark.parametrize("provider", ["twilio", "vonage"])
def test_a_throttled_call_answers_503_is_retried_by_the_queue_and_is_placed_once_never_unanswered(
        tmp_path: Path, fake: FakeProviders, vonage_key_pem: bytes, provider: str) -> None:
    env = twilio_env(tmp_path, fake) if provider == "twilio" else vonage_env(tmp_path, fake, vonage_key_pem)
    sending = SendDeployment(tmp_path, fake, provider_env=env)
    try:
        sending.start_instances(2)
        (user,), _ = sending.add_low_and_fine(low=1, fine=2)
        fake.fail(f"{provider}.calls", 429, _throttled_body(f"{provider}.calls"), times=2)  # as beyond 3 calls/s
        poller = sending.lease_holder()
        try:
            run_cycle(sending, poller)
            wait_for(lambda: sending.settled(1), 60, "the call to be placed")
            time.sleep(0.5)
        finally:
            poller.close()
    finally:
        sending.stop()
    (call,) = [e for e in sending.sends() if e.kind == "call"]
    assert call.status == "sent" and call.attempts == 3 and call.provider_id
    attempts = [f for f in sending.send_tasks() if f.task == send_task_id(call.key)]
    assert [(f.status, f.retry) for f in attempts] == [(503, "0"), (503, "1"), (200, "2")], attempts
    assert all("throttling" in json.loads(f.answer)["what"] for f in attempts[:2])
    assert [r.status for r in fake.received(f"{provider}.calls")] == [429, 429, 201]
    assert provider_ids(fake, f"{provider}.calls") == [call.provider_id]
    state, _ = sending.store.get_state(user.id)
    assert state.episode is not None and state.episode.call is not None
    assert state.episode.call.outcome == "pending" and not state.episode.call.queued  # placed, awaiting the answer
    assert [e for e in sending.sends() if e.kind != "call"] == []  # no contact was told anything


def test_a_send_whose_instance_is_killed_mid_request_is_retried_on_another_and_sent_once(
        tmp_path: Path, fake: FakeProviders) -> None:
    sending = SendDeployment(tmp_path, fake, max_retries=-1)
    try:
        sending.start_instances(2)
        (user,), _ = sending.add_low_and_fine(low=1, fine=3)
        sending.pause(CALL_QUEUE, True)  # the call waits in its queue while the test takes the store
        poller = sending.lease_holder()
        try:
            run_cycle(sending, poller)
        finally:
            poller.close()
        (call,) = [e for e in sending.sends() if e.kind == "call"]
        assert call.status == "queued"
        # The store's write lock is taken, so the send that Cloud Tasks now delivers hangs in
        # the middle of its request; its instance is then killed (SIGKILL, master and workers).
        holder = sqlite3.connect(sending.db, isolation_level=None, timeout=10)
        holder.execute("BEGIN IMMEDIATE")
        try:
            sending.pause(CALL_QUEUE, False)
            wait_for(lambda: any(sending.front.in_flight.values()), 30, "the send to reach an instance")
            dying = next(index for index, count in sending.front.in_flight.items() if count)
            sending.instances[dying].kill()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_for(lambda: sending.settled(1), 60, "the call to be placed after the retry")
        time.sleep(0.5)
    finally:
        sending.stop()
    (call,) = [e for e in sending.sends() if e.kind == "call"]
    assert call.status == "sent" and call.attempts == 1
    attempts = [f for f in sending.send_tasks() if f.task == send_task_id(call.key)]
    assert (502, dying) in [(f.status, f.instance) for f in attempts], attempts
    assert (attempts[-1].status, attempts[-1].instance) == (200, 1 - dying)
    assert [f.status for f in attempts].count(200) == 1
    assert [r.recipient for r in fake.answered("twilio.calls")] == [user.phone]


def test_a_send_killed_after_its_claim_is_held_back_for_the_claim_then_sent_once(
        tmp_path: Path, fake: FakeProviders) -> None:
    """The instance dies while its call request is on the way to the provider, which never
    completes it. The entry stays claimed by the dead attempt for QUEUED_CLAIM_HOLD: Cloud
    Tasks' retries meanwhile answer 503 (an attempt that only seemed lost must not be doubled),
    and the first retry after it places the call."""
    sending = SendDeployment(tmp_path, fake, max_retries=-1)
    try:
        sending.start_instances(2)
        (user,), _ = sending.add_low_and_fine(low=1, fine=1)
        fake.hold_next("twilio.calls")
        poller = sending.lease_holder()
        try:
            run_cycle(sending, poller)
        finally:
            poller.close()
        assert fake.held.wait(60), "the call request never reached the provider"
        killed_at = time.time()
        dying = next(index for index, count in sending.front.in_flight.items() if count)
        sending.instances[dying].kill()
        fake.release.set()
        wait_for(lambda: sending.settled(1), QUEUED_CLAIM_HOLD + 60, "the call to be placed after the claim")
        time.sleep(0.5)
    finally:
        sending.stop()
    (call,) = [e for e in sending.sends() if e.kind == "call"]
    assert call.status == "sent" and call.attempts == 2  # the dead attempt's claim, then the one that sent
    assert call.updated_at - killed_at >= QUEUED_CLAIM_HOLD - 5  # not before the dead attempt's claim ran out
    attempts = [f for f in sending.send_tasks() if f.task == send_task_id(call.key)]
    assert attempts[0].status == 502 and attempts[0].instance == dying
    held_back = [json.loads(f.answer)["what"] for f in attempts[1:-1]]
    assert held_back and set(held_back) == {"another attempt is sending it"}
    assert {f.status for f in attempts[1:-1]} == {503} and attempts[-1].status == 200
    assert [r.status for r in fake.received("twilio.calls")] == [0, 201]  # dropped, then placed once
    assert [r.recipient for r in fake.answered("twilio.calls")] == [user.phone]
    state, _ = sending.store.get_state(user.id)
    assert state.episode is not None and state.episode.call is not None and state.episode.call.outcome == "pending"


def test_outside_requests_to_the_send_route_are_refused(sending: SendDeployment, fake: FakeProviders) -> None:
    sending.start_instances(1)
    sending.add_low_and_fine(low=1, fine=0)
    poller = sending.lease_holder()
    sending.pause(CALL_QUEUE, True)  # the call stays queued: a forged request could send it
    try:
        run_cycle(sending, poller)
    finally:
        poller.close()
    (call,) = sending.sends()
    body = {"key": call.key}
    instance, public = sending.instances[0].base, f"http://127.0.0.1:{sending.front.public_port}"
    forged = {"X-AppEngine-QueueName": "scout-calls", "X-AppEngine-TaskName": "forged"}
    refused = [
        requests.post(f"{instance}/tasks/send", json=body, timeout=10),  # no task headers
        requests.post(f"{instance}/tasks/send", json=body, timeout=10,  # the shard queue's, not a send queue's
                      headers={**forged, "X-AppEngine-QueueName": "scout-poll"}),
        requests.post(f"{public}/tasks/send", json=body, timeout=10, headers=forged),  # stripped by the front
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert all("Only Scout's Cloud Tasks queue" in r.json()["error"] for r in refused)
    assert fake.received() == []
    assert sending.store.get_log(call.key).status == "queued"  # type: ignore[union-attr]
    bad = requests.post(f"{instance}/tasks/send", json={"key": ""}, timeout=10, headers=forged)
    assert bad.status_code == 400 and "'key'" in bad.json()["error"]


def test_with_the_send_queue_down_the_poller_sends_itself_and_says_so(
        tmp_path: Path, fake: FakeProviders, caplog: pytest.LogCaptureFixture) -> None:
    nightscout = CountingNightscout()
    store = SqliteStore(str(tmp_path / "scout.sqlite3"))
    users = saved_users(store, nightscout, 6, first_phone=4000)
    nightscout.low.update(u.id for u in users[:3])
    nowhere = f"127.0.0.1:{_closed_port()}"  # Cloud Tasks is down
    config = load_config(twilio_env(tmp_path, fake, SCOUT_DISPATCH="cloudtasks", SCOUT_SHARDS="2",
                                    SCOUT_TASKS_EMULATOR_HOST=nowhere, SCOUT_TASKS_CALL_QUEUE="scout-calls",
                                    SCOUT_TASKS_MESSAGE_QUEUE="scout-messages"))
    poller = Poller(config, store=store)
    try:
        with caplog.at_level(logging.WARNING, logger="scout.engine"):
            summary = poller.run_cycle()
    finally:
        poller.close()
        nightscout.stop()
    assert not summary.error and summary.enqueued == 0
    assert sorted(r.recipient for r in fake.answered("twilio.calls")) == sorted(u.phone for u in users[:3])
    calls = [e for u in users[:3] for e in store.user_log(u.id)]
    assert [(e.kind, e.status, e.attempts) for e in calls] == [("call", "sent", 1)] * 3
    failed = [r for r in caplog.records if getattr(r, "fields", {}).get("stage") == "queue_failed"]
    assert len(failed) == 3, [r.getMessage() for r in caplog.records]
    assert all(r.fields["then"] == "sending it from this instance, through its own pacer"  # type: ignore[attr-defined]
               and "scout-calls" in r.fields["error"] for r in failed)  # type: ignore[attr-defined]
    store.close()


def test_a_queued_send_the_queue_never_delivers_is_sent_by_the_lease_holder(
        tmp_path: Path, fake: FakeProviders) -> None:
    """A queue that takes tasks but never delivers them (paused, or it gave them up) holds
    no alert for longer than QUEUED_GRACE: the lease holder's next cycle sends it itself."""
    sending = SendDeployment(tmp_path, fake)
    clock = [time.time()]
    try:
        (user,), _ = sending.add_low_and_fine(low=1, fine=1)
        sending.pause(CALL_QUEUE, True)
        config = load_config(sending.env)
        poller = Poller(config, store=sending.store, clock=lambda: clock[0])
        try:
            assert not poller.run_cycle(use_lease=False).error  # polled here; the call handed to its queue
            (call,) = sending.sends()
            assert call.status == "queued" and fake.received() == []
            clock[0] += 60
            poller.run_cycle(use_lease=False)
            assert fake.received() == []  # still the queue's: within the grace
            clock[0] += 70
            poller.run_cycle(use_lease=False)
        finally:
            poller.close()
        (call,) = sending.sends()
        assert call.status == "sent" and [r.recipient for r in fake.answered("twilio.calls")] == [user.phone]
    finally:
        sending.stop()


def test_poll_once_says_how_many_sends_it_handed_to_the_queues(sending: SendDeployment) -> None:
    (user,), _ = sending.add_low_and_fine(low=1, fine=2)
    sending.pause(CALL_QUEUE, True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "GOOGLE_"))}, **sending.env}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "notifier", "poll", "--once"], env=env,
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    assert "3 user(s): 3 read, 0 failed, 0 call(s), 0 message(s)" in done.stdout, done.stdout + done.stderr
    assert "; 1 handed to the send queues" in done.stdout and "[calls 0, messages 0, queued 1]" in done.stdout
    (call,) = sending.sends()
    assert call.user_id == user.id and call.status == "queued"


def test_send_task_ids_are_valid_cloud_tasks_ids_one_per_entry_key() -> None:
    keys = [f"{uuid.uuid4().hex}:ep{n}:contacts:{n}:+1415555{n:04d}" for n in range(500)]
    keys += ["a", "x" * 900, "user:épisode:call:1"]
    ids = [send_task_id(key) for key in keys]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,500}", task_id) for task_id in ids)
    assert len(set(ids)) == len(keys)  # one task per entry
    assert ids == [send_task_id(key) for key in keys]  # the same in every process, every time


BASE = {"SCOUT_DEV": "1", "SECRET_KEY": "x"}
EMULATED = {**BASE, "SCOUT_DISPATCH": "cloudtasks", "SCOUT_TASKS_EMULATOR_HOST": "127.0.0.1:8123"}


@pytest.mark.parametrize("env, message", [
    ({**BASE, "SCOUT_TASKS_CALL_QUEUE": "scout-calls"},
     "SCOUT_TASKS_CALL_QUEUE is set but SCOUT_DISPATCH is not cloudtasks"),
    ({**EMULATED, "SCOUT_TASKS_MESSAGE_QUEUE": "scout messages"},
     "SCOUT_TASKS_MESSAGE_QUEUE must be a name such as 'scout-messages'"),
    ({**EMULATED, "SCOUT_TASKS_CALL_QUEUE": "scout-poll"}, "SCOUT_TASKS_QUEUE, SCOUT_TASKS_CALL_QUEUE and"),
    ({**EMULATED, "SCOUT_TASKS_CALL_QUEUE": "sends", "SCOUT_TASKS_MESSAGE_QUEUE": "sends"},
     "SCOUT_TASKS_QUEUE, SCOUT_TASKS_CALL_QUEUE and"),
])
def test_bad_send_queue_settings_stop_the_start_with_the_reason(tmp_path: Path, env: dict[str, str],
                                                                message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({"SCOUT_DB": str(tmp_path / "s.db"), **env})
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_the_send_queues_are_paths_beside_the_shard_queue_and_optional(tmp_path: Path) -> None:
    db = {"SCOUT_DB": str(tmp_path / "s.db")}
    config = load_config({**EMULATED, **db, "SCOUT_TASKS_CALL_QUEUE": "scout-calls"})
    assert config.tasks_call_queue == CALL_QUEUE and config.tasks_message_queue == ""
    assert send_tasks_for(config) is not None and send_tasks_for(config).queue_for("sms") == ""  # type: ignore[union-attr]
    assert send_tasks_for(load_config({**EMULATED, **db})) is None
