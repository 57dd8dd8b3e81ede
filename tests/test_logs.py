"""Structured logs (issue 13): gunicorn and Scout write one JSON object per line with
`severity` and `message`, there is no access log, and every Cloud Logging query in
docs/operations.md matches lines Scout really writes."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer

from scout.store.sqlite import SqliteStore
from tests.conftest import make_user
from tests.test_deployment import Gunicorn, gunicorn  # noqa: F401 (gunicorn is a fixture)
from tests.test_nightscout import entries

ROOT = Path(__file__).resolve().parent.parent
SEVERITY_ORDER = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]


def documented_queries() -> list[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    return re.findall(r"gcloud logging read '([^']+)'", text)


def matches(entry: dict[str, Any], query: str) -> bool:
    """Whether one line satisfies a Cloud Logging filter of the simple form the docs use:
    conditions joined by AND, each `severity>=LEVEL`, `jsonPayload.FIELD=VALUE` or
    `resource.type="gae_app"` (every line of the app has it)."""
    for condition in query.split(" AND "):
        condition = condition.strip()
        if condition == 'resource.type="gae_app"':
            continue
        severity = re.fullmatch(r"severity>=([A-Z]+)", condition)
        if severity:
            if SEVERITY_ORDER.index(entry["severity"]) < SEVERITY_ORDER.index(severity.group(1)):
                return False
            continue
        field = re.fullmatch(r"jsonPayload\.([a-z_]+)=(.+)", condition)
        assert field, f"the docs' query uses syntax this test cannot check: {condition!r}"
        wanted = json.loads(field.group(2))  # "text", true, false or a number, as Cloud Logging reads it
        if entry.get(field.group(1)) != wanted:
            return False
    return True


@pytest.fixture
def sites(httpserver: HTTPServer) -> Iterator[HTTPServer]:
    httpserver.expect_request("/api/v1/entries/sgv.json").respond_with_json(entries(54, 62, 70))
    yield httpserver


def lines_written(server: Gunicorn, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    deadline = time.time() + 40
    while True:
        raw = [line for line in server.output().splitlines() if line.strip()]
        parsed = [json.loads(line) for line in raw]  # every line is one JSON object, or this fails
        if until(parsed) or time.time() > deadline:
            return parsed
        time.sleep(0.3)


def test_scout_and_gunicorn_write_json_lines_that_the_documented_queries_find(
    tmp_path: Path, sites: HTTPServer, gunicorn: Callable[..., Gunicorn]  # noqa: F811
) -> None:
    store = SqliteStore(str(tmp_path / "s.sqlite3"))
    store.save_user(make_user(sites.url_for("/")))  # low: a call, then texts
    store.save_user(make_user("http://127.0.0.1:9/", id="down", email="down@example.com"))  # unreachable
    store.close()
    server = gunicorn(WEB_CONCURRENCY="2", SCOUT_POLL_INTERVAL="1")
    requests.get(f"{server.base}/healthz/live", timeout=5)
    requests.get(f"{server.base}/", timeout=5)
    refused = requests.post(f"{server.base}/", data={"phone": "+14155550100"}, timeout=5)  # no CSRF token
    assert refused.status_code == 400
    queries = documented_queries()
    assert len(queries) >= 5

    def every_query_found(lines: list[dict[str, Any]]) -> bool:
        return all(any(matches(line, query) for line in lines) for query in queries)

    lines = lines_written(server, every_query_found)
    server.stop()
    lines = [json.loads(line) for line in server.output().splitlines() if line.strip()]
    for line in lines:
        assert line["severity"] in SEVERITY_ORDER and isinstance(line["message"], str), line
        assert {"time", "logger", "process"} <= line.keys(), line
    missing = [query for query in queries if not any(matches(line, query) for line in lines)]
    assert not missing, f"these documented queries find nothing Scout wrote: {missing}"
    assert any(line["logger"] == "gunicorn.error" and line["message"].startswith("Booting worker") for line in lines)
    assert not [line for line in lines if re.search(r'"(GET|POST) /', line["message"])], "no access log"
    [cycle, *_] = [line for line in lines if line.get("event") == "cycle" and line.get("acted")]
    assert cycle["users"] == 2 and cycle["failed"] == {"unreachable": 1}
    console_calls = [line for line in lines if line["message"].startswith("CALL ")]
    assert console_calls and all(line["severity"] == "INFO" for line in console_calls), "a console call is not a warning"


def test_an_exception_is_one_json_line_with_its_traceback() -> None:
    import logging
    import sys

    from scout.logs import JsonFormatter

    try:
        raise ValueError("broken record")
    except ValueError:
        record = logging.getLogger("scout.test").makeRecord(
            "scout.test", logging.ERROR, __file__, 1, "poll failed user=%s", ("ana",), exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["severity"] == "ERROR" and entry["message"].startswith("poll failed user=ana\nTraceback")
    assert "ValueError: broken record" in entry["message"]
