"""The routes only Cloud Tasks calls (SCOUT_DISPATCH=cloudtasks):

- POST /tasks/poll-shard polls one shard of users for the cycle that enqueued it
  (scout.dispatch), risk first, through the poller's own path (scout.poller.Poller.poll_users):
  users at risk first, then sites that answered fast last cycle, slow and failing sites in
  their own lane;
- POST /tasks/send makes one attempt at one recorded call or message handed to a send queue
  (SCOUT_TASKS_CALL_QUEUE, SCOUT_TASKS_MESSAGE_QUEUE), through the engine's send path. It
  answers 200 when the send is settled (sent, refused for good, too old, or sent before) and
  503 when the provider throttled or failed, so that Cloud Tasks retries it at the queue's pace.

Only Cloud Tasks may call /tasks/...: App Engine removes X-AppEngine-* headers from requests
that come from outside, so a request that carries X-AppEngine-QueueName came through a task
queue of this app. Where App Engine's front end does not stand before Scout, that check
means nothing: there, keep /tasks/ unreachable from outside (docs/deploy.md).
"""
from __future__ import annotations

import logging
import threading
import time

from flask import Blueprint, Response, current_app, jsonify, request

from models import StoreUnavailable
from scout.cloudtasks import SendTask, ShardTask
from scout.config import Config
from scout.context import address_policy, get_config, get_engine, get_store
from scout.dispatch import shard_counts
from scout.logs import mask_key
from scout.poller import Poller
from scout.telephony import make_messenger

log = logging.getLogger("scout.tasks")

QUEUE_HEADER = "X-AppEngine-QueueName"
TASK_HEADER = "X-AppEngine-TaskName"
RETRY_HEADER = "X-AppEngine-TaskRetryCount"

bp = Blueprint("tasks", __name__, url_prefix="/tasks")
_first_use = threading.Lock()


def _refusal(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _from_our_queue(*queues: str) -> bool:
    """The request came through one of these queues of this app. App Engine sets the short
    queue name; the Cloud Tasks emulator sets the queue's full path."""
    sent = request.headers.get(QUEUE_HEADER, "")
    names = {name for queue in queues if queue for name in (queue, queue.rsplit("/", 1)[-1])}
    return bool(request.headers.get(TASK_HEADER)) and sent in names


def _not_from(*queues: str) -> tuple[Response, int]:
    log.warning("refused %s from %s: no %s header of queue %s", request.path, request.remote_addr, QUEUE_HEADER,
                " or ".join(queue.rsplit("/", 1)[-1] for queue in queues if queue) or "(none configured)")
    return _refusal(403, "Only Scout's Cloud Tasks queue may call this.")


@bp.post("/poll-shard")
def poll_shard() -> tuple[Response, int]:
    config = get_config()
    if not _from_our_queue(config.tasks_queue):
        return _not_from(config.tasks_queue)
    try:
        task = ShardTask.from_body(request.get_json(force=True, silent=True))
    except ValueError as exc:
        log.error("refused a poll-shard task: %s", exc)
        return _refusal(400, f"Not a poll-shard task: {exc}.")
    age = time.time() - task.started_at
    if age > _cycle_period(config):
        # a retry that outlived its cycle: the next cycle's task polls these users
        log.warning("shard %s of cycle %s skipped: its cycle is over", task.shard, task.cycle, extra={"fields": {
            "event": "shard_skipped", "cycle": task.cycle, "shard": task.shard, "age_s": round(age, 1)}})
        return jsonify({"skipped": "the cycle is over"}), 200
    try:
        results = _shard_poller().poll_users(shard=(task.shard, task.shards))
    except StoreUnavailable as exc:
        log.error("shard %s of cycle %s failed: %s; Cloud Tasks will retry it", task.shard, task.cycle, exc)
        return _refusal(503, f"The store is unavailable: {exc}")
    counts = shard_counts(results)
    log.info("shard %s of cycle %s polled", task.shard, task.cycle, extra={"fields": {
        "event": "shard", "cycle": task.cycle, "shard": task.shard, "shards": task.shards,
        "retry": request.headers.get(RETRY_HEADER, "0"), **counts}})
    return jsonify(counts), 200


@bp.post("/send")
def send() -> tuple[Response, int]:
    config = get_config()
    queues = (config.tasks_call_queue, config.tasks_message_queue)
    if not _from_our_queue(*queues):
        return _not_from(*queues)
    try:
        task = SendTask.from_body(request.get_json(force=True, silent=True))
    except ValueError as exc:
        log.error("refused a send task: %s", exc)
        return _refusal(400, f"Not a send task: {exc}.")
    try:
        done, what = get_engine().send_queued(task.key)
    except StoreUnavailable as exc:
        log.error("send %s failed: %s; Cloud Tasks will retry it", mask_key(task.key), exc)
        return _refusal(503, f"The store is unavailable: {exc}")
    log.info("send task %s: %s", "done" if done else "to retry", what, extra={"fields": {
        "event": "send_task", "key": mask_key(task.key), "done": done, "what": what,
        "queue": request.headers.get(QUEUE_HEADER, ""), "retry": request.headers.get(RETRY_HEADER, "0")}})
    return jsonify({"done": done, "what": what}), 200 if done else 503


def _cycle_period(config: Config) -> float:
    return config.poll_interval or 60.0


def _shard_poller() -> Poller:
    """The poller this process polls its shards with, made on first use in the process that
    serves the request (its store client, messenger and event loops are this process's own:
    gRPC clients do not survive a fork), then kept: its view of the users, its recording and
    sending threads and its pacing last from shard to shard.

    One process: each gunicorn worker of each instance is already one of the processes Cloud
    Tasks spreads the shards over, so this poller starts no worker processes of its own. Two
    shards served at once by one process poll on two threads, each with its own event loop,
    and share the pacing of sends (this process's calls stay within SCOUT_CALLS_PER_SECOND;
    see docs/deploy.md for several instances)."""
    with _first_use:  # two shards served at once by one process make one poller, not two
        poller: Poller | None = current_app.extensions.get("scout_shard_poller")
        if poller is None:
            config = get_config()
            poller = Poller(config, store=get_store(), messenger=make_messenger(config), processes=1)
            poller.engine.is_public = address_policy()
            current_app.extensions["scout_shard_poller"] = poller
        return poller
