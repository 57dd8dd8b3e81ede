"""Cloud Tasks (SCOUT_DISPATCH=cloudtasks; see scout.dispatch and docs/deploy.md):

- the shard queue spreads each cycle's shards of users over the App Engine instances;
- the send queues, if configured, carry recorded calls and messages to /tasks/send at the
  provider's rate, which Cloud Tasks then holds across all instances together.

The client speaks gRPC, which does not survive a fork: a queue opens its client on first
use, in the process that enqueues (the poller, a web worker), never at import time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scout.config import Config

log = logging.getLogger("scout.cloudtasks")

POLL_SHARD_PATH = "/tasks/poll-shard"
# Cloud Tasks waits this long for the handler before it counts the attempt as failed and
# retries it. A shard must be done well inside the minute; a longer wait would only let a
# stuck attempt hold its shard into the next cycle.
DISPATCH_DEADLINE_S = 50
ENQUEUE_TIMEOUT_S = 10.0  # one create_task call, so a hung Cloud Tasks cannot hold the cycle


@dataclass(frozen=True)
class ShardTask:
    cycle: str  # the cycle's start, e.g. 20261130T002530 (UTC)
    shard: int
    shards: int
    started_at: float  # when the cycle started, seconds since the epoch

    @property
    def name(self) -> str:
        """Cloud Tasks refuses a second task of the same name (for about an hour after the
        first), which is what makes a shard run once per cycle even if it is enqueued twice."""
        return f"poll-{self.cycle}-shard-{self.shard}-of-{self.shards}"

    def body(self) -> bytes:
        return json.dumps({"cycle": self.cycle, "shard": self.shard, "shards": self.shards,
                           "started_at": self.started_at}).encode()

    @classmethod
    def from_body(cls, data: Any) -> ShardTask:
        """The task a request carries; ValueError when it is not one of Scout's."""
        if not isinstance(data, dict):
            raise ValueError("the body is not a JSON object")
        cycle, shard, shards, started_at = (data.get(k) for k in ("cycle", "shard", "shards", "started_at"))
        if not isinstance(cycle, str) or not cycle.replace("T", "").isdigit():
            raise ValueError("'cycle' must be the cycle's start such as 20261130T002530")
        if not (isinstance(shards, int) and isinstance(shard, int) and 0 <= shard < shards):
            raise ValueError("'shard' and 'shards' must be whole numbers with 0 <= shard < shards")
        if isinstance(started_at, bool) or not isinstance(started_at, (int, float)):
            raise ValueError("'started_at' must be a time in seconds since the epoch")
        return cls(cycle, shard, shards, float(started_at))


class EnqueueError(Exception):
    """A task could not be handed to Cloud Tasks: the shard is polled, or the send made, here."""


class TasksClient:
    """This process's Cloud Tasks client, opened on first use (thread-safe)."""

    def __init__(self, config: Config) -> None:
        self.service = config.tasks_service
        self.emulator_host = config.tasks_emulator_host
        self._client: Any = None
        self._opening = threading.Lock()

    def _open(self) -> Any:
        with self._opening:
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def _new_client(self) -> Any:
        from google.cloud import tasks_v2

        if self.emulator_host:
            import grpc
            from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

            channel = grpc.insecure_channel(self.emulator_host)
            return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        return tasks_v2.CloudTasksClient()  # App Engine's own service account (application default credentials)

    def _request(self, path: str, body: bytes) -> dict[str, Any]:
        request: dict[str, Any] = {"http_method": "POST", "relative_uri": path,
                                   "headers": {"Content-Type": "application/json"}, "body": body}
        if self.service:
            request["app_engine_routing"] = {"service": self.service}
        return request

    def close(self) -> None:
        with self._opening:
            if self._client is not None:
                transport = getattr(self._client, "transport", None)
                if transport is not None:
                    transport.close()
                self._client = None


class ShardQueue(TasksClient):
    """The Cloud Tasks queue aimed at this App Engine service's /tasks/poll-shard."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.queue = config.tasks_queue

    def enqueue(self, task: ShardTask) -> bool:
        """Hand one shard to Cloud Tasks. True if enqueued now, False if a task of that name
        was already there (enqueued before in this cycle: not an error). Raises EnqueueError."""
        from google.api_core import exceptions

        request = self._request(POLL_SHARD_PATH, task.body())
        try:
            self._open().create_task(
                parent=self.queue,
                task={"name": f"{self.queue}/tasks/{task.name}", "app_engine_http_request": request,
                      "dispatch_deadline": {"seconds": DISPATCH_DEADLINE_S}},
                timeout=ENQUEUE_TIMEOUT_S,
            )
        except exceptions.AlreadyExists:
            return False
        except exceptions.GoogleAPICallError as exc:
            raise EnqueueError(f"Cloud Tasks refused {task.name}: {exc}") from exc
        except Exception as exc:  # a transport failure, a timeout: the shard is polled locally
            raise EnqueueError(f"Cloud Tasks could not be reached for {task.name}: {type(exc).__name__}: {exc}") \
                from exc
        return True


# --- the send queues ----------------------------------------------------------------------

SEND_PATH = "/tasks/send"
# One attempt at one send: a provider request (8 s at most), a few store writes and, for a
# call refused at once, the contacts' texts handed on. Under gunicorn's 30 s worker timeout.
SEND_DISPATCH_DEADLINE_S = 30
SEND_ENQUEUE_TIMEOUT_S = 5.0  # an alert waits at most this long for a queue that hangs
# After an enqueue failed, that queue is not asked again for this long: the sends leave from
# this process meanwhile, instead of each waiting for a queue that is down or hanging.
QUEUE_RESTING_S = 30.0


def send_task_id(key: str) -> str:
    """The task id of one log entry's send. Cloud Tasks ids allow letters, digits, hyphens and
    underscores (500 at most); entry keys hold colons and grow with the episode, so the key
    is hashed. Hashed ids also spread evenly, which Cloud Tasks asks for (sequential names,
    such as timestamps, slow its dispatch)."""
    return "send-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


@dataclass(frozen=True)
class SendTask:
    key: str  # the alert log entry to send

    def body(self) -> bytes:
        return json.dumps({"key": self.key}).encode()

    @classmethod
    def from_body(cls, data: Any) -> SendTask:
        """The task a request carries; ValueError when it is not one of Scout's."""
        if not isinstance(data, dict):
            raise ValueError("the body is not a JSON object")
        key = data.get("key")
        if not isinstance(key, str) or not key or len(key) > 1000:
            raise ValueError("'key' must be the alert log entry's key")
        return cls(key)


class SendTasks(TasksClient):
    """The queues that carry recorded sends to /tasks/send: one for calls, one for SMS and
    WhatsApp messages, each dispatched at the provider's rate for them. A kind without a
    queue is sent by the process that recorded it, as without Cloud Tasks."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config)
        self.queues = {"call": config.tasks_call_queue, "message": config.tasks_message_queue}
        self.clock = clock
        self._resting: dict[str, tuple[float, str]] = {}  # queue -> (until, why)

    def queue_for(self, kind: str) -> str:
        """The queue this kind of send goes through; "" when it is sent where it is recorded."""
        return self.queues["call" if kind == "call" else "message"]

    def enqueue(self, key: str, kind: str) -> bool:
        """Hand one recorded send to its queue. True if enqueued now, False if a task of that
        name was already there (handed over before: not an error). Raises EnqueueError."""
        from google.api_core import exceptions

        queue = self.queue_for(kind)
        short = queue.rsplit("/", 1)[-1]
        resting = self._resting.get(queue)
        if resting is not None and self.clock() < resting[0]:
            raise EnqueueError(f"the {short} queue failed {QUEUE_RESTING_S - (resting[0] - self.clock()):.0f} s ago "
                               f"({resting[1]})")
        task = {"name": f"{queue}/tasks/{send_task_id(key)}",
                "app_engine_http_request": self._request(SEND_PATH, SendTask(key).body()),
                "dispatch_deadline": {"seconds": SEND_DISPATCH_DEADLINE_S}}
        try:
            self._open().create_task(parent=queue, task=task, timeout=SEND_ENQUEUE_TIMEOUT_S)
        except exceptions.AlreadyExists:
            return False
        except Exception as exc:  # refused (permission, no such queue), unreachable, timed out
            why = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            self._resting[queue] = (self.clock() + QUEUE_RESTING_S, why)
            raise EnqueueError(f"Cloud Tasks did not take the send for queue {short}: {why}") from exc
        self._resting.pop(queue, None)
        return True


def send_tasks_for(config: Config) -> SendTasks | None:
    """The send queues, if SCOUT_TASKS_CALL_QUEUE or SCOUT_TASKS_MESSAGE_QUEUE names one."""
    if config.dispatch != "cloudtasks" or not (config.tasks_call_queue or config.tasks_message_queue):
        return None
    return SendTasks(config)
