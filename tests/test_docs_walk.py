"""The Deploy docs walked end to end (issue 13): every `sh` block of docs/deploy.md's App Engine
steps and of docs/operations.md's alerting and logs sections, run in order by bash with the
checked-in fake gcloud (tests/fake_gcloud) first on the PATH. A command the fake does not know,
a flag it does not take, a secret scripts/deploy.sh finds missing or an alert policy that names
no existing uptime check fails the walk."""
from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FAKE_GCLOUD = ROOT / "tests" / "fake_gcloud"


def sh_blocks(path: Path, start: str, end: str | None) -> list[str]:
    text = path.read_text()
    section = text[text.index(start):text.index(end) if end else len(text)]
    blocks = re.findall(r"^( *)```sh\n(.*?)^\1```$", section, re.M | re.S)
    return [textwrap.dedent(body) for _indent, body in blocks]


def walk() -> str:
    blocks = [
        *sh_blocks(ROOT / "docs" / "deploy.md", "## App Engine and Firestore", "### 6. Bringing over"),
        *sh_blocks(ROOT / "docs" / "deploy.md", "## Cloud Tasks", None),
        *sh_blocks(ROOT / "docs" / "operations.md", "## Alerting when the poller stalls", "## What it costs"),
    ]
    return "set -euo pipefail\n" + "\n".join(blocks)


def calls(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


def untracked() -> set[str]:
    listed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    return set(listed.splitlines())


def test_the_deploy_docs_walked_end_to_end_with_a_fake_gcloud(tmp_path: Path) -> None:
    script = walk()
    assert script.count("gcloud") > 15, script
    before = untracked()
    env = {**os.environ, "PATH": f"{FAKE_GCLOUD}:{os.environ['PATH']}", "FAKE_GCLOUD_STATE": str(tmp_path)}
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stderr}\n--- the walk ---\n{script}"

    made = calls(tmp_path)
    commands = [c["command"] for c in made]
    for expected in ("services enable", "app create", "firestore databases create", "secrets create",
                     "projects add-iam-policy-binding", "secrets versions describe", "app deploy",
                     "monitoring uptime create", "beta monitoring channels create", "alpha monitoring policies create",
                     "logging read", "tasks queues create"):
        assert expected in commands, f"the docs never run gcloud {expected}"
    assert commands.index("secrets create") < commands.index("app deploy"), "secrets exist before the deploy"
    grants = {c["flags"]["--role"][0]: c["flags"]["--member"] for c in made
              if c["command"] == "projects add-iam-policy-binding"}
    assert grants["roles/secretmanager.secretAccessor"] == ["serviceAccount:PROJECT_ID@appspot.gserviceaccount.com"]
    [uptime] = [c for c in made if c["command"] == "monitoring uptime create"]
    assert uptime["flags"]["--path"] == ["/healthz/poller"]
    assert (tmp_path / "deployed.yaml").read_text() == (ROOT / "app.yaml").read_text(), "app.yaml deployed as it is"
    stored = {p.name for p in (tmp_path / "secrets").iterdir()}
    assert {"SECRET_KEY", "SITE_URL", "GOOGLE_CLIENT_ID", "SCOUT_TELEPHONY", "TWILIO_AUTH_TOKEN"} <= stored
    assert len((tmp_path / "secrets" / "SECRET_KEY").read_text()) == 64
    assert untracked() == before, "the walk leaves no file behind in the checkout"


def test_the_fake_gcloud_refuses_what_gcloud_would(tmp_path: Path) -> None:
    """The walk proves something only if the fake fails on mistakes."""
    env = {**os.environ, "PATH": f"{FAKE_GCLOUD}:{os.environ['PATH']}", "FAKE_GCLOUD_STATE": str(tmp_path)}

    def gcloud(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["gcloud", *args], env=env, capture_output=True, text=True, timeout=30)

    assert gcloud("secret", "create", "X", "--data-file=-").returncode == 2
    assert gcloud("app", "deploy", "app.yaml", "--promote-everything").returncode == 2
    assert gcloud("monitoring", "uptime", "create", "x", "--resource-type=uptime-url",
                  "--resource-labels=host=h").returncode == 1
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"conditions": [{"conditionThreshold": {
        "filter": 'metric.type="monitoring.googleapis.com/uptime_check/check_passed" AND metric.label.check_id=""'}}]}))
    refused = gcloud("alpha", "monitoring", "policies", "create", f"--policy-from-file={policy}")
    assert refused.returncode == 1 and "no uptime check" in refused.stderr
