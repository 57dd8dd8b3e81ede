"""A local stand-in for Secret Manager's REST API (v1), for the tests: the real
google-cloud-secret-manager client, with its REST transport and `api_endpoint` pointed here,
reads secrets from it as it would from secretmanager.googleapis.com.

It answers `GET /v1/projects/{project}/secrets/{name}/versions/{version}:access` the way the
service does: the payload base64-encoded with its CRC32C as a decimal string, and errors as
`{"error": {"code", "message", "status"}}` (404 NOT_FOUND, 403 PERMISSION_DENIED).
"""
from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import google_crc32c

ACCESS = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/]+)/versions/([^/:]+):access$")


class SecretManagerDouble:
    """Secrets by name in one project; `denied` names answer 403; every request is recorded."""

    def __init__(self, project: str, secrets: dict[str, str], denied: tuple[str, ...] = ()) -> None:
        self.project = project
        self.secrets = dict(secrets)
        self.denied = set(denied)
        self.requests: list[str] = []  # the names asked for, in order
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        match = ACCESS.match(path.split("?", 1)[0])
        if match is None:
            return 404, _error(404, "NOT_FOUND", f"no such method: {path}")
        project, name, version = match.groups()
        with self._lock:
            self.requests.append(name)
        if project != self.project:
            return 403, _error(403, "PERMISSION_DENIED", f"Permission denied on resource project {project}.")
        if name in self.denied:
            return 403, _error(403, "PERMISSION_DENIED", f"Permission 'secretmanager.versions.access' denied for "
                                                         f"resource 'projects/{project}/secrets/{name}/versions/{version}'")
        if name not in self.secrets or version != "latest":
            return 404, _error(404, "NOT_FOUND", f"Secret [projects/{project}/secrets/{name}] not found or has no "
                                                 "versions.")
        data = self.secrets[name].encode("utf-8")
        return 200, {"name": f"projects/{project}/secrets/{name}/versions/1",
                     "payload": {"data": base64.b64encode(data).decode("ascii"),
                                 "dataCrc32c": str(google_crc32c.value(data))}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = double.answer(self.path)
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}
