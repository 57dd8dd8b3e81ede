"""Start gcloud-tasks-emulator for Scout's tests, listening on 127.0.0.1 only.

Run with the emulator's own venv: python serve.py API_PORT TARGET_PORT QUEUE_PATHS MAX_RETRIES
(QUEUE_PATHS: one or more full queue paths, separated by commas; MAX_RETRIES -1: no limit)

The emulator's own `start` command listens on every interface ([::]); the tests only ever
use loopback, so the gRPC port is bound to 127.0.0.1 here. Everything else is the
emulator as shipped: it posts each task to 127.0.0.1:TARGET_PORT, one at a time per queue,
and puts a task whose request failed (an error status, a dropped connection) at the back
of its queue to be tried again, up to MAX_RETRIES times.
"""
import logging
import sys

import grpc
from gcloud_tasks_emulator import server

api_port, target_port, queues, max_retries = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4])
make_grpc_server = grpc.server


def loopback_grpc_server(*args, **kwargs):
    grpc_server = make_grpc_server(*args, **kwargs)
    add_port = grpc_server.add_insecure_port
    grpc_server.add_insecure_port = lambda address: add_port(address.replace("[::]", "127.0.0.1"))
    return grpc_server


server.grpc.server = loopback_grpc_server
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
print("emulator starting", flush=True)
server.create_server("127.0.0.1", int(api_port), "127.0.0.1", target_port, queues, max_retries).run()
