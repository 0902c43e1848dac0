"""Failure paths through the real CLI on the sandbox: transient retries, terminal failure,
`retry`, and the operator's listings."""

from __future__ import annotations

import json
import time

from puqdeploy.sandbox.node import clear_faults, read_panel, set_faults


def _status(sandbox, sid: str) -> dict:
    return json.loads(sandbox.cli("status", sid, "--json", check=True).stdout)


def _task(status: dict, action: str) -> dict:
    return next(t for t in status["tasks"] if t["action"] == action)


def _run_until_settled(sandbox, sid: str, limit: int = 20) -> dict:
    """Run ticks until the service settles; between ticks wait exactly until the next task is due."""
    for _ in range(limit):
        sandbox.cli("run", check=True)
        status = _status(sandbox, sid)
        if status["state"] in ("active", "error"):
            return status
        with sandbox.db() as conn:
            due = conn.execute("SELECT min(run_after) FROM tasks WHERE state = 'queued'").fetchone()[0]
        if due is not None:
            time.sleep(max(0.0, due - time.time()) + 0.01)  # waiting for a known due time
    raise AssertionError(f"service {sid} did not settle: {status}")


def test_transient_failure_is_retried_with_backoff_and_completes(sandbox):
    sandbox.edit_config(retry={"base_seconds": 0.5, "factor": 2, "max_seconds": 5, "jitter": 0.1},
                        ssl={"enabled": False})
    # E_RESTART after the change was made, twice: the retry must find it "already present"
    set_faults(sandbox.node("mail1"), rules=[{"program": "v-add-mail-domain", "exit": 20,
                                              "message": "Error: restart of exim4 failed",
                                              "times": 2, "after": True}])
    sandbox.cli("create", "--service-id", "t1", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    first = sandbox.cli("run", check=True)
    assert "retried 1" in first.stderr, first.stderr
    status = _status(sandbox, "t1")
    task = _task(status, "mail.domain")
    assert task["state"] == "queued" and task["attempts"] == 1
    assert "E_RESTART" in task["last_error"]
    with sandbox.db() as conn:
        row = conn.execute("SELECT run_after, finished_at FROM tasks WHERE action = 'mail.domain'").fetchone()
        started = conn.execute("SELECT max(ended_at) FROM attempts a JOIN tasks t ON t.id = a.task_id "
                               "WHERE t.action = 'mail.domain'").fetchone()[0]
    assert 0.45 <= row[0] - started <= 0.55  # base 0.5 s within 10 % jitter
    status = _run_until_settled(sandbox, "t1")
    assert status["state"] == "active"
    task = _task(status, "mail.domain")
    # the second attempt checks first, finds the domain the failed attempt made, and is done
    assert task["attempts"] == 2 and task["result"] == "already present"
    mail = read_panel(sandbox.node("mail1"))["mail"]
    assert list(mail["examplecom-mail"]) == ["example.com"]


def test_permanent_failure_goes_terminal_then_retry_recovers(sandbox):
    sandbox.edit_config(ssl={"enabled": False})
    set_faults(sandbox.node("web1"), rules=[{"program": "v-add-web-domain", "exit": 8,
                                             "message": "Error: WEB_DOMAINS limit is reached"}])
    sandbox.cli("create", "--service-id", "t2", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    sandbox.cli("run", check=True)
    status = _status(sandbox, "t2")
    assert status["state"] == "error"
    assert "Adding website example.com failed" in status["error"] and "E_LIMIT" in status["error"]
    web = _task(status, "web.domain")
    assert web["state"] == "failed" and web["attempts"] == 1  # permanent: no retry storm
    # the other branches were not held up
    assert all(_task(status, a)["state"] == "done" for a in ("mail.user", "mail.domain", "dns.zone"))

    failed = json.loads(sandbox.cli("tasks", "--state", "failed", "--json", check=True).stdout)
    assert [(t["service_id"], t["action"]) for t in failed] == [("t2", "web.domain")]
    listing = json.loads(sandbox.cli("services", "--json", check=True).stdout)
    assert listing["counts"] == {"error": 1}
    assert sandbox.cli("services", "--state", "error", check=True).stdout.count("t2") == 1

    clear_faults(sandbox.node("web1"))
    retried = sandbox.cli("retry", "t2", check=True)
    assert "1 task(s) queued again" in retried.stdout
    assert _status(sandbox, "t2")["state"] == "queued"  # until a runner leases a step again
    sandbox.cli("run", check=True)
    status = _status(sandbox, "t2")
    assert status["state"] == "active" and status["error"] is None
    assert _task(status, "web.domain")["attempts"] == 1  # fresh attempts after retry
    assert sandbox.cli("retry", "t2").returncode == 2  # nothing left to retry


def test_unknown_ids_exit_4(sandbox):
    for args in (("status", "nope"), ("tasks", "nope"), ("log", "999"), ("retry", "nope"),
                 ("redeploy", "nope", "--yes"), ("retry", "--task", "999")):
        proc = sandbox.cli(*args)
        assert proc.returncode == 4, (args, proc.stderr)
        assert proc.stderr.startswith("Error: ")


def test_status_text_when_piped_has_no_escape_codes(sandbox):
    sandbox.cli("create", "--service-id", "t3", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    sandbox.cli("run", check=True)
    text = sandbox.cli("status", "t3", check=True).stdout
    assert "\x1b" not in text
    for needle in ("t3", "example.com", "active", "100%", "Creating web user", "Deploying DNS zone to ns2",
                   "Recent activity", "Your service is ready"):
        assert needle in text, needle
