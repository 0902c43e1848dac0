"""What operators and customers see: status on a terminal (through a real pseudo-terminal),
--watch, the JSON payload's documented shape, log --follow on a running attempt, private nodes."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

from puqdeploy.sandbox.node import set_faults
from tests.conftest import ROOT
from tests.conftest import wait_for

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
TASK_STATES = {"pending", "queued", "running", "waiting", "done", "failed", "cancelled"}


def _in_pty(sandbox, *args: str, timeout: float = 120) -> str:
    """Run the CLI on a real pseudo-terminal; returns everything it drew."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "60"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "puqdeploy", "--config", str(sandbox.config_path), *args],
                            stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, env=env)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_status_on_a_terminal_shows_progress_durations_and_activity(sandbox):
    runner, conn = sandbox.deploy_slowly("V1", steps_done=2)
    drawn = _in_pty(sandbox, "status", "V1")
    assert "\x1b[" in drawn  # a terminal gets colour
    text = _plain(drawn)
    assert "━" in text and re.search(r"\d+%\s+\(\d/6 steps\)", text)
    assert "Creating web user" in text and "Deploying DNS zone to ns2" in text
    assert re.search(r"Creating web user\s+│\s+web1\s+│\s+done\s+│\s+1/5\s+│\s+\d\d:\d\d:\d\d\s+│\s+\d+\.\ds", text)
    assert "Recent activity" in text and "Web user examplecom-web created on web1" in text
    runner.communicate(timeout=300)
    piped = sandbox.cli("status", "V1", check=True).stdout
    assert "\x1b" not in piped and "100%" in piped


def test_watch_redraws_until_the_deploy_settles(sandbox):
    runner, conn = sandbox.deploy_slowly("V1", delay=0.2, steps_done=2)
    drawn = _in_pty(sandbox, "status", "V1", "--watch")
    runner.communicate(timeout=300)
    text = _plain(drawn)
    assert "100%" in text and "Your service is ready" in text
    assert text.count("Timeline") >= 2  # redrawn in place, more than once
    assert conn.execute("SELECT state FROM services").fetchone()[0] == "active"


def test_status_json_has_the_documented_shape(sandbox):
    sandbox.cli("create", "--service-id", "J1", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    for stage in ("queued", "after"):
        if stage == "after":
            sandbox.cli("run", check=True)
        doc = json.loads(sandbox.cli("status", "J1", "--json", check=True).stdout)
        assert set(doc) == {"service_id", "product", "mode", "domain", "state", "operation",
                            "progress", "error", "placement", "tasks", "activity"}
        assert doc["state"] in {"queued", "deploying", "active", "error", "suspended", "terminated"}
        assert doc["operation"] in {"deploy", "redeploy", "suspend", "unsuspend", "terminate",
                                    "change-package", "change-password"}
        p = doc["progress"]
        assert set(p) == {"done", "total", "percent"} and 0 <= p["percent"] <= 100
        assert p["percent"] == round(100 * p["done"] / p["total"])
        assert set(doc["placement"]) == {"web", "mail", "dns"} and isinstance(doc["placement"]["dns"], list)
        for task in doc["tasks"]:
            assert set(task) == {"id", "action", "label", "node", "state", "attempts", "max_attempts",
                                 "run_after", "started_at", "finished_at", "duration_s", "result",
                                 "last_error", "blocking"}
            assert task["state"] in TASK_STATES and isinstance(task["blocking"], bool)
            for key in ("run_after", "started_at", "finished_at"):
                assert task[key] is None or ISO.match(task[key]), task[key]
            assert task["duration_s"] is None or isinstance(task["duration_s"], float)
        for item in doc["activity"]:
            assert set(item) == {"at", "message"} and ISO.match(item["at"])
    assert doc["state"] == "active" and p == {"done": 6, "total": 6, "percent": 100}


def test_log_follow_prints_lines_as_they_come_and_exits_when_the_attempt_ends(sandbox):
    sandbox.edit_config(ssl={"enabled": False})
    set_faults(sandbox.node("web1"), stream={"program": "v-add-web-domain", "lines": 6, "interval": 0.5})
    sandbox.cli("create", "--service-id", "F1", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    runner = sandbox.popen("run")
    conn = sandbox.db()
    task_id = wait_for(lambda: (conn.execute(
        "SELECT t.id FROM tasks t JOIN attempts a ON a.task_id = t.id JOIN attempt_logs l "
        "ON l.attempt_id = a.id WHERE t.action = 'web.domain' AND l.line LIKE '$ v-add-web-domain%'"
    ).fetchone() or [None])[0], what="the streaming command to start")
    follower = sandbox.popen("log", str(task_id), "--follow")
    seen_while_running = None
    lines = []
    for line in follower.stdout:
        lines.append(line)
        if "progress 1/6" in line and seen_while_running is None:
            state = conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]
            seen_while_running = state == "running"
    follower.wait(timeout=60)
    runner.communicate(timeout=120)
    assert seen_while_running is True  # the first line arrived while the command still ran
    text = "".join(lines)
    assert all(f"progress {n}/6" in text for n in range(1, 7))
    assert "exit 0" in text and "# ended" in text and "done" in lines[-1]
    assert follower.returncode == 0


def test_private_nodes_are_not_shown_to_customers(sandbox):
    sandbox.edit_node("web1", private=True)
    sandbox.cli("create", "--service-id", "P1", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    sandbox.cli("run", check=True)
    payload = sandbox.cli("status", "P1", "--json", check=True).stdout
    assert "web1" not in payload and "web server" in payload
    assert json.loads(payload)["placement"]["web"] == "web server"
    operator = sandbox.cli("tasks", "P1", "--json", check=True).stdout
    assert "web1" in operator  # the operator's own listings keep the real names
