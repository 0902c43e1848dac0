"""A runner killed with SIGKILL in the middle of a step, then rescued by a later tick."""

from __future__ import annotations

import json
import os
import signal
import time

from puqdeploy.sandbox.node import clear_faults, read_panel, set_faults
from tests.conftest import wait_for


def _kill_hung_commands(node_dir) -> None:
    """The hung simulated command runs in its own session; end it like a node reboot would."""
    running = node_dir / "running"
    for marker in running.iterdir() if running.exists() else []:
        try:
            os.kill(int(marker.name), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def test_killed_runner_is_rescued_and_service_still_ends_active(sandbox):
    sandbox.edit_config(runner={"lease_seconds": 3, "heartbeat_seconds": 1}, ssl={"enabled": False})
    sandbox.cli("create", "--service-id", "k1", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    set_faults(sandbox.node("web1"), hang={"program": "v-add-web-domain", "seconds": 120})
    runner = sandbox.popen("run")
    conn = sandbox.db()

    def hung_attempt():
        return conn.execute(
            "SELECT t.id, t.lease_expires FROM tasks t JOIN attempts a ON a.task_id = t.id "
            "JOIN attempt_logs l ON l.attempt_id = a.id WHERE t.action = 'web.domain' "
            "AND t.state = 'running' AND l.line LIKE '$ v-add-web-domain%'").fetchone()

    task_id, _ = wait_for(hung_attempt, what="the web.domain step to start its command")
    os.kill(runner.pid, signal.SIGKILL)
    runner.communicate()
    _kill_hung_commands(sandbox.node("web1"))
    clear_faults(sandbox.node("web1"))

    expires = conn.execute("SELECT lease_expires FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]
    assert conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()[0] == "running"
    # a tick before expiry must leave the lease alone
    early = sandbox.cli("run", "--once", check=True)
    if time.time() < expires:
        assert conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()[0] == "running"
        assert "rescued 0" in early.stderr or "nothing due" in early.stderr
    wait_for(lambda: time.time() > expires + 0.05, timeout=30, what="the lease to expire")

    proc = sandbox.cli("run", check=True)
    rescued = int(proc.stderr.split("rescued ")[1].split()[0])
    assert rescued >= 1, proc.stderr  # web.domain, and whatever else the dead runner held
    status = json.loads(sandbox.cli("status", "k1", "--json", check=True).stdout)
    assert status["state"] == "active", status
    attempts = conn.execute("SELECT outcome, error FROM attempts WHERE task_id = ? ORDER BY number",
                            (task_id,)).fetchall()
    assert [a[0] for a in attempts] == ["lost", "done"]
    assert "runner lost" in attempts[0][1]
    web = read_panel(sandbox.node("web1"))["web"]
    assert list(web) == ["examplecom-web"] and list(web["examplecom-web"]) == ["example.com"]
