"""SCOUT_DISPATCH=cloudtasks: the lease holder enqueues one Cloud Tasks task per shard of
users, and the app instances poll the shards they are handed (issue 11, item 4).

Everything is real and on 127.0.0.1: gcloud-tasks-emulator with the google-cloud-tasks
client, gunicorn instances behind a stand-in for App Engine's front end, Nightscout sites
that count each user's reads, and one SQLite store shared by every process.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from models import AlertState, User
from scout.config import ConfigError, load_config
from scout.dispatch import shard_of
from scout.poller import Poller
from scout.store.sqlite import SqliteStore
from scout.web import create_app
from tests.conftest import make_user
from tests.fake_providers import FakeProviders
from tests.tasks_fixtures import QUEUE, AppEngineFront, CountingNightscout, Instance, TasksEmulator, wait_for
from tests.telephony_setup import twilio_env

SHARDS = 16


class Deployment:
    """The emulator, the front, the instances and the Nightscout sites of one test."""

    def __init__(self, tmp_path: Path, queues: tuple[str, ...] = (QUEUE,), max_retries: int = 10) -> None:
        self.tmp_path = tmp_path
        self.db = str(tmp_path / "scout.sqlite3")
        self.nightscout = CountingNightscout()
        self.front = AppEngineFront()
        self.emulator = TasksEmulator(tmp_path / "emulator.log", self.front.task_port, max_retries, queues)
        self.instances: list[Instance] = []
        self.env = {"SCOUT_DEV": "1", "SECRET_KEY": "test-secret", "SCOUT_DB": self.db, "SCOUT_POLLER": "off",
                    "SCOUT_DISPATCH": "cloudtasks", "SCOUT_SHARDS": str(SHARDS),
                    "SCOUT_TASKS_EMULATOR_HOST": self.emulator.host, "WEB_CONCURRENCY": "1",
                    "SCOUT_WEB_THREADS": "4", "WAIT_AFTER_CALL": "300"}
        self.store = SqliteStore(self.db)
        self.users: list[User] = []

    def start_instances(self, count: int) -> None:
        for _ in range(count):
            self.instances.append(Instance(self.tmp_path, f"instance-{len(self.instances)}", self.env))
        self.front.instances = [instance.base for instance in self.instances]

    def add_users(self, count: int, low: int, failing: int) -> None:
        """`count` users in random order with random ids: `low` of them out of range, `failing`
        whose site answers 500, and one who has not finished signing up (no phone)."""
        ids = [uuid.uuid4().hex for _ in range(count)]
        random.shuffle(ids)
        self.nightscout.low.update(ids[:low])
        self.nightscout.failing.update(ids[low:low + failing])
        for user_id in ids:
            user = make_user(self.nightscout.url(user_id), id=user_id, email=f"{user_id}@example.com")
            self.store.save_user(user)
            self.users.append(user)
        self.store.save_user(make_user(self.nightscout.url("unfinished"), id="unfinished",
                                       email="unfinished@example.com", phone=""))

    def lease_holder(self) -> Poller:
        return Poller(load_config(self.env), store=self.store)

    def calls(self, user_id: str) -> int:
        """Alert calls to the user (console calls go unanswered, so the ladder calls the contacts too)."""
        return sum(entry.purpose == "alert" for entry in self.store.user_log(user_id))

    def wait_for_cycle(self, cycle_tasks: set[str]) -> None:
        wait_for(lambda: cycle_tasks <= self.front.done_tasks(), 90,
                 f"the {len(cycle_tasks)} shard tasks to be served")

    def stop(self) -> None:
        for instance in self.instances:
            instance.stop()
        self.emulator.stop()
        self.front.stop()
        self.nightscout.stop()
        self.store.close()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    yield deployment
    deployment.stop()


def task_names(cycle_started_at: float) -> set[str]:
    cycle = time.strftime("%Y%m%dT%H%M%S", time.gmtime(cycle_started_at))
    return {f"poll-{cycle}-shard-{shard}-of-{SHARDS}" for shard in range(SHARDS)}


def run_cycle(deployment: Deployment, poller: Poller) -> set[str]:
    summary = poller.run_cycle()
    assert summary.acted and not summary.error, summary.log_line()
    assert summary.enqueued == SHARDS and summary.results == [], summary.log_line()
    names = task_names(summary.started_at)
    deployment.wait_for_cycle(names)
    return names


@pytest.mark.parametrize("instances", [2, 3])
def test_every_user_is_polled_exactly_once_per_cycle_by_instances_sharing_the_shards(
        deployment: Deployment, instances: int) -> None:
    deployment.start_instances(instances)
    deployment.add_users(60, low=6, failing=4)
    poller = deployment.lease_holder()
    try:
        for cycle in (1, 2):
            names = run_cycle(deployment, poller)
            time.sleep(0.5)  # anything late or doubled would arrive now
            reads = deployment.nightscout.reads
            assert {u.id: reads[u.id] for u in deployment.users} == {u.id: cycle for u in deployment.users}
            assert reads["unfinished"] == 0
            served = [f for f in deployment.front.forwarded if f.task in names]
            assert sorted(f.task for f in served) == sorted(names)  # each shard once, none retried
            assert {f.instance for f in served} == set(range(instances))  # every instance took a share
            time.sleep(1.1)  # the next cycle starts in another second, as it would a minute later
    finally:
        poller.close()
    for user in deployment.users:  # one call per low user over both cycles, none for the others
        assert deployment.calls(user.id) == (1 if user.id in deployment.nightscout.low else 0), user.id


def test_two_instances_as_app_yaml_runs_them_share_every_cycle(deployment: Deployment) -> None:
    """Both instances run the embedded poller, as app.yaml starts them: the lease lets one
    enqueue each cycle, and both poll shards."""
    deployment.env.update(SCOUT_POLLER="embedded", SCOUT_POLL_INTERVAL="6")
    deployment.add_users(40, low=3, failing=2)
    deployment.start_instances(2)

    def complete_cycles() -> set[str]:
        done = Counter(name.split("-shard-")[0] for name in deployment.front.done_tasks())
        return {cycle for cycle, shards in done.items() if shards == SHARDS}

    wait_for(lambda: len(complete_cycles()) >= 2, 60, "two complete cycles")
    for _ in range(200):  # a moment between cycles: nothing in flight, the same tasks before and after
        before = (deployment.front.done_tasks(), sum(deployment.front.in_flight.values()))
        reads = {u.id: deployment.nightscout.reads[u.id] for u in deployment.users}
        after = (deployment.front.done_tasks(), sum(deployment.front.in_flight.values()))
        if before == after and before[1] == 0 and len(before[0]) == SHARDS * len(complete_cycles()):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the cycles never paused")
    assert set(reads.values()) == {len(complete_cycles())}, reads  # every user once in every cycle
    assert {f.instance for f in deployment.front.forwarded} == {0, 1}
    dispatch_lines = [i.output().count('"event": "dispatch"') for i in deployment.instances]
    assert sorted(n > 0 for n in dispatch_lines) == [False, True], dispatch_lines  # one lease holder enqueues
    for user in deployment.users:
        assert deployment.calls(user.id) == (1 if user.id in deployment.nightscout.low else 0), user.id


def test_a_shard_whose_instance_dies_mid_poll_is_retried_on_another_and_alerts_once(
        deployment: Deployment) -> None:
    deployment.start_instances(2)
    deployment.add_users(48, low=8, failing=2)
    by_shard: dict[int, list[str]] = {}
    for user in deployment.users:
        by_shard.setdefault(shard_of(user.id, SHARDS), []).append(user.id)
    # the dying shard holds a low user, called before the instance dies, and a user whose
    # read hangs until the instance serving the shard has been killed
    shard, members = next((s, m) for s, m in sorted(by_shard.items())
                          if len(m) >= 2 and any(u in deployment.nightscout.low for u in m))
    low_user = next(u for u in members if u in deployment.nightscout.low)
    deployment.nightscout.hold = next(u for u in members if u != low_user)
    poller = deployment.lease_holder()
    try:
        summary = poller.run_cycle()
        assert summary.enqueued == SHARDS, summary.log_line()
        assert deployment.nightscout.held.wait(60), "the held read never came"
        wait_for(lambda: deployment.calls(low_user) == 1, 30, "the low user's call before the instance dies")
        dying = next(index for index, count in deployment.front.in_flight.items() if count)
        deployment.instances[dying].kill()
        deployment.nightscout.release.set()
        deployment.wait_for_cycle(task_names(summary.started_at))
    finally:
        poller.close()
    name = f"poll-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(summary.started_at))}-shard-{shard}-of-{SHARDS}"
    attempts = [f for f in deployment.front.forwarded if f.task == name]
    assert [(a.status, a.instance) for a in attempts] == [(502, dying), (200, 1 - dying)], attempts
    assert attempts[1].retry == "1"
    reads = deployment.nightscout.reads
    assert all(reads[user.id] >= 1 for user in deployment.users)
    assert all(reads[u] == 1 for s, m in by_shard.items() if s != shard for u in m)
    for user in deployment.users:  # the retried shard decided again, and did not call twice
        assert deployment.calls(user.id) == (1 if user.id in deployment.nightscout.low else 0), user.id


def saved_users(store: SqliteStore, nightscout: CountingNightscout, count: int, first_phone: int = 0) -> list[User]:
    """`count` users user0, user1... each on their own site; with `first_phone`, each with a
    phone number of their own from +1415555<first_phone>."""
    users = [make_user(nightscout.url(f"user{n}"), id=f"user{n}", email=f"user{n}@example.com",
                       **({"phone": f"+1415555{first_phone + n:04d}"} if first_phone else {})) for n in range(count)]
    for user in users:
        store.save_user(user)
    return users


def test_shards_cloud_tasks_cannot_take_are_polled_by_the_lease_holder(tmp_path: Path) -> None:
    nightscout = CountingNightscout()
    db = str(tmp_path / "scout.sqlite3")
    store = SqliteStore(db)
    users = saved_users(store, nightscout, 20)
    nowhere = f"127.0.0.1:{_closed_port()}"  # Cloud Tasks is down
    config = load_config({"SCOUT_DEV": "1", "SECRET_KEY": "x", "SCOUT_DB": db, "SCOUT_DISPATCH": "cloudtasks",
                          "SCOUT_SHARDS": "4", "SCOUT_TASKS_EMULATOR_HOST": nowhere})
    poller = Poller(config, store=store)
    try:
        summary = poller.run_cycle()
    finally:
        poller.close()
        nightscout.stop()
        store.close()
    assert summary.enqueued == 0 and not summary.error
    assert sorted(r.user_id for r in summary.results) == sorted(u.id for u in users)
    assert all(nightscout.reads[u.id] == 1 for u in users)


def test_poll_once_polls_every_user_here_and_enqueues_nothing(deployment: Deployment) -> None:
    deployment.add_users(10, low=1, failing=1)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "GOOGLE_"))}, **deployment.env}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "notifier", "poll", "--once"], env=env,
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    # the low user's call and the ladder's three to their contacts (console calls go unanswered)
    assert "10 user(s): 9 read, 1 failed, 4 call(s)" in done.stdout, done.stdout + done.stderr
    assert all(deployment.nightscout.reads[u.id] == 1 for u in deployment.users)
    channel = grpc.insecure_channel(deployment.emulator.host)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    try:
        assert list(client.list_tasks(parent=QUEUE)) == []
    finally:
        client.transport.close()
    assert deployment.front.forwarded == []


def _closed_port() -> int:
    from tests.test_deployment import free_port

    return free_port()  # bound and released at once: nothing listens there


def test_outside_requests_to_tasks_are_refused(deployment: Deployment) -> None:
    deployment.start_instances(1)
    deployment.add_users(8, low=2, failing=0)
    instance = deployment.instances[0].base
    body: dict[str, Any] = {"cycle": time.strftime("%Y%m%dT%H%M%S", time.gmtime()), "shard": 0, "shards": 1,
            "started_at": time.time()}
    forged = {"X-AppEngine-QueueName": "scout-poll", "X-AppEngine-TaskName": "forged"}
    public = f"http://127.0.0.1:{deployment.front.public_port}"
    refused = [
        requests.post(f"{instance}/tasks/poll-shard", json=body, timeout=10),  # no task headers
        requests.post(f"{instance}/tasks/poll-shard", json=body, timeout=10,
                      headers={**forged, "X-AppEngine-QueueName": "another-queue"}),
        requests.post(f"{public}/tasks/poll-shard", json=body, timeout=10, headers=forged),  # stripped
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert all("Only Scout's Cloud Tasks queue" in r.json()["error"] for r in refused)
    assert requests.get(f"{instance}/tasks/poll-shard", timeout=10, headers=forged).status_code == 405
    assert sum(deployment.nightscout.reads.values()) == 0
    assert all(deployment.calls(u.id) == 0 for u in deployment.users)
    # What the check relies on: only App Engine's front end stands between the internet and
    # Scout, and it removes X-AppEngine-* from outside requests. Reached directly, the same
    # forged headers are taken for a task (docs/deploy.md: never expose instances directly).
    direct = requests.post(f"{instance}/tasks/poll-shard", json=body, timeout=30, headers=forged)
    assert direct.status_code == 200 and direct.json()["users"] == 8


def test_a_task_body_that_is_not_a_shard_is_refused_with_the_reason(deployment: Deployment) -> None:
    deployment.start_instances(1)
    headers = {"X-AppEngine-QueueName": QUEUE, "X-AppEngine-TaskName": "t"}  # as the emulator sends it
    bodies: list[tuple[Any, str]] = [({"cycle": "x", "shard": 0, "shards": 1, "started_at": 1}, "'cycle'"),
                         ({"cycle": "20261130T002530", "shard": 16, "shards": 16, "started_at": 1}, "'shard'"),
                         ([1, 2], "not a JSON object")]
    for body, reason in bodies:
        answer = requests.post(f"{deployment.instances[0].base}/tasks/poll-shard", json=body, headers=headers,
                               timeout=10)
        assert answer.status_code == 400 and reason in answer.json()["error"], answer.text


def test_a_retry_that_outlived_its_cycle_polls_nobody(deployment: Deployment) -> None:
    deployment.start_instances(1)
    deployment.add_users(5, low=1, failing=0)
    headers = {"X-AppEngine-QueueName": QUEUE, "X-AppEngine-TaskName": "late"}
    started = time.time() - 61
    body: dict[str, Any] = {"cycle": time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)), "shard": 0, "shards": 1,
            "started_at": started}
    answer = requests.post(f"{deployment.instances[0].base}/tasks/poll-shard", json=body, headers=headers,
                           timeout=10)
    assert answer.status_code == 200 and answer.json() == {"skipped": "the cycle is over"}
    assert sum(deployment.nightscout.reads.values()) == 0


def test_the_embedded_dispatch_has_no_tasks_route(tmp_path: Path) -> None:
    app = create_app(load_config({"SCOUT_DEV": "1", "SECRET_KEY": "x", "SCOUT_DB": str(tmp_path / "s.db")}))
    headers = {"X-AppEngine-QueueName": "scout-poll", "X-AppEngine-TaskName": "t"}
    assert app.test_client().post("/tasks/poll-shard", json={}, headers=headers).status_code == 404


def test_shards_are_stable_and_spread() -> None:
    ids = [uuid.uuid4().hex for _ in range(16_000)]
    counts = [0] * 16
    for user_id in ids:
        counts[shard_of(user_id, 16)] += 1
    assert min(counts) > 800 and max(counts) < 1200, counts
    # the same in every process (another hash seed, as every Python process has its own)
    script = "import sys; from scout.dispatch import shard_of; print([shard_of(u, 16) for u in sys.argv[1:]])"
    other = subprocess.run([sys.executable, "-c", script, *ids[:200]], env={**os.environ, "PYTHONHASHSEED": "7"},
                           capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    assert other.stdout.strip() == str([shard_of(u, 16) for u in ids[:200]])


@pytest.mark.parametrize("env, message", [
    ({"SCOUT_DISPATCH": "tasks"}, "SCOUT_DISPATCH must be 'embedded' or 'cloudtasks', got 'tasks'."),
    ({"SCOUT_SHARDS": "0"}, "SCOUT_SHARDS must be at least 1, got 0."),
    ({"SCOUT_SHARDS": "sixteen"}, "SCOUT_SHARDS must be a whole number, got 'sixteen'."),
    ({"SCOUT_SHARDS": "5000"}, "SCOUT_SHARDS must be at most 1000, got 5000."),
    ({"SCOUT_DISPATCH": "cloudtasks"}, "SCOUT_DISPATCH=cloudtasks but GOOGLE_CLOUD_PROJECT is not set"),
    ({"SCOUT_DISPATCH": "cloudtasks", "GOOGLE_CLOUD_PROJECT": "p"},
     "SCOUT_DISPATCH=cloudtasks but SCOUT_TASKS_LOCATION is not set"),
    ({"SCOUT_DISPATCH": "cloudtasks", "GOOGLE_CLOUD_PROJECT": "p", "SCOUT_TASKS_LOCATION": "US Central"},
     "SCOUT_TASKS_LOCATION must be a name such as 'us-central1'"),
    ({"SCOUT_DISPATCH": "cloudtasks", "SCOUT_TASKS_EMULATOR_HOST": "localhost", },
     "SCOUT_TASKS_EMULATOR_HOST must be host:port such as 127.0.0.1:8123, got 'localhost'."),
    ({"SCOUT_DISPATCH": "cloudtasks", "SCOUT_TASKS_EMULATOR_HOST": "127.0.0.1:1", "SCOUT_TASKS_QUEUE": "scout/poll"},
     "SCOUT_TASKS_QUEUE must be a name such as 'scout-poll'"),
])
def test_bad_dispatch_settings_stop_the_start_with_the_reason(tmp_path: Path, env: dict[str, str],
                                                              message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({"SCOUT_DEV": "1", "SECRET_KEY": "x", "SCOUT_DB": str(tmp_path / "s.db"), **env})
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_the_queue_path_is_built_from_the_project_location_and_queue(tmp_path: Path) -> None:
    base = {"SCOUT_DEV": "1", "SECRET_KEY": "x", "SCOUT_DB": str(tmp_path / "s.db"), "SCOUT_DISPATCH": "cloudtasks"}
    config = load_config({**base, "GOOGLE_CLOUD_PROJECT": "scout-prod", "SCOUT_TASKS_LOCATION": "europe-west1",
                          "SCOUT_TASKS_SERVICE": "default"})
    assert config.tasks_queue == "projects/scout-prod/locations/europe-west1/queues/scout-poll"
    assert config.tasks_service == "default" and config.shards == 16
    assert load_config({**base, "SCOUT_TASKS_EMULATOR_HOST": "127.0.0.1:8123"}).tasks_queue == QUEUE
    assert load_config({k: v for k, v in base.items() if k != "SCOUT_DISPATCH"}).dispatch == "embedded"


def test_a_shard_polls_its_user_at_risk_before_its_slow_lane_users(deployment: Deployment) -> None:
    """The shard handler polls risk first, as the poller does (issue 11, items 2 and 4): the
    user whose last value was near a threshold is read, decided and called before any user
    whose site was slow last cycle is even read. In store order (ids sorted), with as many
    slow users as the old handler had threads, the user at risk came last."""
    deployment.env["SCOUT_SHARDS"] = "1"  # one shard: every user in the one request
    deployment.start_instances(1)
    nightscout = deployment.nightscout
    slow = [f"a-slow-{n:02d}" for n in range(40)]
    fast = [f"m-fast-{n:02d}" for n in range(10)]
    at_risk = "z-at-risk"
    order = slow + fast + [at_risk]
    random.shuffle(order)  # saved in any order; the store lists them by id
    for user_id in order:
        deployment.store.save_user(make_user(nightscout.url(user_id), id=user_id, email=f"{user_id}@example.com"))
    for user_id in slow:  # last cycle these sites were slow; this cycle they take 3 s again
        nightscout.delay[user_id] = 3.0
        assert deployment.store.commit(user_id, AlertState(site="slow"), 0, [])
    nightscout.low.add(at_risk)
    assert deployment.store.commit(at_risk, AlertState(watch=True), 0, [])  # last value near the low line
    poller = deployment.lease_holder()
    try:
        summary = poller.run_cycle()
        assert summary.enqueued == 1 and not summary.error, summary.log_line()
        cycle = time.strftime("%Y%m%dT%H%M%S", time.gmtime(summary.started_at))
        deployment.wait_for_cycle({f"poll-{cycle}-shard-0-of-1"})
    finally:
        poller.close()
    assert {user_id: nightscout.reads[user_id] for user_id in order} == {user_id: 1 for user_id in order}
    arrivals = [user_id for user_id, _ in nightscout.arrivals]
    assert arrivals[0] == at_risk, arrivals[:5]
    calls = [entry for entry in deployment.store.user_log(at_risk) if entry.purpose == "alert"]
    assert len(calls) == 1 and calls[0].status == "sent", calls
    first_slow_read = min(at for user_id, at in nightscout.arrivals if user_id in slow)
    # no slow user can be decided before their site answers, 3 s after their read began
    assert calls[0].created_at < first_slow_read + 3.0, (calls[0].created_at, first_slow_read)
    assert all(deployment.calls(user_id) == 0 for user_id in slow + fast)


def test_the_shard_handler_reads_nightscout_under_the_apps_address_policy(tmp_path: Path,
                                                                         fake: FakeProviders) -> None:
    """Outside dev mode, the shard poller's Nightscout session takes the app's address policy
    (here: 127.0.0.1 stands for a public site). Before, the session used the default policy,
    which refuses loopback: every user of every shard failed with a refused address."""
    nightscout = CountingNightscout()
    db = str(tmp_path / "scout.sqlite3")
    store = SqliteStore(db)
    users = saved_users(store, nightscout, 4)
    env = twilio_env(tmp_path, fake, SECRET_KEY="k" * 32, GOOGLE_CLIENT_ID="scout.apps.googleusercontent.com",
                     SCOUT_DISPATCH="cloudtasks", SCOUT_TASKS_EMULATOR_HOST=f"127.0.0.1:{_closed_port()}",
                     SCOUT_POLLER="off")
    del env["SCOUT_DEV"]
    config = load_config(env)
    assert not config.dev
    app = create_app(config)
    app.extensions["scout_is_public"] = lambda address: address == "127.0.0.1"
    started = time.time()
    body = {"cycle": time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)), "shard": 0, "shards": 1,
            "started_at": started}
    try:
        answer = app.test_client().post("/tasks/poll-shard", json=body,
                                        headers={"X-AppEngine-QueueName": "scout-poll", "X-AppEngine-TaskName": "t"})
    finally:
        nightscout.stop()
        store.close()
    assert answer.status_code == 200, answer.text
    assert answer.json == {"users": 4, "ok": 4, "failed": {}, "calls": 0, "messages": 0, "queued": 0}
    assert all(nightscout.reads[u.id] == 1 for u in users)
