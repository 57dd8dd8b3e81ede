"""Cloud Tasks, the queue that spreads each cycle's shards of users over the App Engine
instances (SCOUT_DISPATCH=cloudtasks; see scout.dispatch and docs/deploy.md).

The client speaks gRPC, which does not survive a fork: a `ShardQueue` opens its client on
first use, in the process that enqueues (the poller), never at import time.
"""
from __future__ import annotations

import json
import logging
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
    """A shard could not be handed to Cloud Tasks; the poller polls it itself."""


class ShardQueue:
    """The Cloud Tasks queue aimed at this App Engine service's /tasks/poll-shard."""

    def __init__(self, config: Config) -> None:
        self.queue = config.tasks_queue
        self.service = config.tasks_service
        self.emulator_host = config.tasks_emulator_host
        self._client: Any = None

    def _open(self) -> Any:
        if self._client is None:
            from google.cloud import tasks_v2

            if self.emulator_host:
                import grpc
                from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

                channel = grpc.insecure_channel(self.emulator_host)
                self._client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
            else:  # App Engine's own service account (application default credentials)
                self._client = tasks_v2.CloudTasksClient()
        return self._client

    def enqueue(self, task: ShardTask) -> bool:
        """Hand one shard to Cloud Tasks. True if enqueued now, False if a task of that name
        was already there (enqueued before in this cycle: not an error). Raises EnqueueError."""
        from google.api_core import exceptions

        request: dict[str, Any] = {
            "http_method": "POST",
            "relative_uri": POLL_SHARD_PATH,
            "headers": {"Content-Type": "application/json"},
            "body": task.body(),
        }
        if self.service:
            request["app_engine_routing"] = {"service": self.service}
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

    def close(self) -> None:
        if self._client is not None:
            transport = getattr(self._client, "transport", None)
            if transport is not None:
                transport.close()
            self._client = None
