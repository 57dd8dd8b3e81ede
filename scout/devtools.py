"""Dev-mode conveniences (SCOUT_DEV=1 only): a sign-in form that needs no Google
account, and a simulated Nightscout so a newcomer can try a low without a real site."""
from __future__ import annotations

import math
import time

from flask import Blueprint, abort, flash, jsonify, redirect, request, url_for
from werkzeug.wrappers import Response

from scout.context import get_config
from scout.pages import find_or_create_user, sign_in

bp = Blueprint("devtools", __name__, url_prefix="/dev")

# Each scenario: (newest value, mg/dL change per 5 minutes, direction, minutes since the newest reading)
SCENARIOS: dict[str, tuple[int, int, str, float]] = {
    "steady": (110, 0, "Flat", 1),
    "falling-to-low": (54, -12, "SingleDown", 1),
    "low": (54, -2, "FortyFiveDown", 1),
    "mild-low": (62, -2, "FortyFiveDown", 1),  # below 70, above the urgent low of 55
    "high": (285, 10, "SingleUp", 1),
    "stale": (54, -5, "FortyFiveDown", 40),
    "sensor-error": (39, 0, "NOT COMPUTABLE", 1),
}


@bp.post("/login")
def dev_login() -> Response:
    if not get_config().dev_sign_in:
        abort(404)
    email = (request.form.get("email") or "").strip().lower()
    name = (request.form.get("name") or "").strip()[:80]
    if "@" not in email or len(email) > 200:
        # a flash, not a query parameter: the sign-in page never echoes text from its URL
        flash("Enter an email address to use the dev sign-in.", "error")
        return redirect(url_for("pages.index"))
    sign_in(find_or_create_user(f"dev:{email}", email, name))
    return redirect(url_for("pages.index"))


def simulated_value(newest: int, step: int, i: int) -> int:
    """The i-th newest value: the scenario's trend over the last hour, and before that a gentle
    swing, so a day on the chart looks like a day of a real sensor."""
    if newest <= 39:
        return newest
    if i <= 12:
        return newest - step * i
    return max(40, min(400, round(newest - step * 12 + 35 * math.sin((i - 12) / 9))))


def simulated_entries(scenario: str, count: int, now: float) -> list[dict[str, object]]:
    newest, step, direction, age_minutes = SCENARIOS[scenario]
    entries = []
    for i in range(count):
        at = now - age_minutes * 60 - i * 300
        entries.append({
            "type": "sgv",
            "sgv": simulated_value(newest, step, i),
            "date": int(at * 1000),
            "dateString": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at)),
            "direction": direction,
            "device": "scout-simulator",
        })
    return entries


@bp.get("/nightscout/<scenario>/api/v1/entries.json")
@bp.get("/nightscout/<scenario>/api/v1/entries/sgv.json")
def simulated_nightscout(scenario: str) -> Response | tuple[str, int]:
    if scenario == "down":
        return "Nightscout is down (simulated)", 503
    if scenario == "html":
        return "<!doctype html><title>Not Nightscout</title>", 200
    if scenario not in SCENARIOS:
        abort(404)
    count = min(max(request.args.get("count", 10, type=int), 1), 100)
    return jsonify(simulated_entries(scenario, count, time.time()))


@bp.get("/nightscout/<scenario>/api/v1/status.json")
def simulated_status(scenario: str) -> Response:
    return jsonify({"status": "ok", "name": f"Scout simulator ({scenario})",
                    "settings": {"units": "mg/dl", "thresholds": {"bgLow": 70, "bgHigh": 240}}})
