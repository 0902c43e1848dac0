"""Terminal failures open WHMCS tickets through the queue (a local HTTP server speaking the
WHMCS API on loopback), one per service and operation; delivery problems are retried."""

from __future__ import annotations

import json
import time

from puqdeploy.sandbox.node import set_faults


def _enable_tickets(sandbox, server) -> None:
    sandbox.edit_config(tickets={"enabled": True, "whmcs": {
        "url": server.url, "identifier": server.identifier, "secret": server.secret,
        "department_id": 2, "priority": "High", "timeout_seconds": 5}},
        ssl={"enabled": False}, retry={"max_attempts": 2, "base_seconds": 0.2, "factor": 1,
                                       "max_seconds": 0.2, "jitter": 0})


def _drain(sandbox, rounds: int = 10) -> None:
    """Run ticks until nothing is queued (waiting exactly for the next due time in between)."""
    for _ in range(rounds):
        sandbox.cli("run", check=True)
        with sandbox.db() as conn:
            due = conn.execute("SELECT min(run_after) FROM tasks WHERE state = 'queued'").fetchone()[0]
        if due is None:
            return
        time.sleep(max(0.0, due - time.time()) + 0.01)
    raise AssertionError("queue did not drain")


def test_exhausted_step_opens_one_ticket_with_the_facts(sandbox, whmcs_server):
    _enable_tickets(sandbox, whmcs_server)
    set_faults(sandbox.node("web1"), rules=[{"program": "v-add-web-domain", "exit": 20,
                                             "message": "Error: restart of nginx failed"}])
    sandbox.cli("create", "--service-id", "77", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    _drain(sandbox)
    assert whmcs_server.actions() == ["OpenTicket"]
    ticket = next(iter(whmcs_server.tickets.values()))
    assert ticket.deptid == 2 and ticket.priority == "High" and ticket.serviceid == "77"
    assert "example.com" in ticket.subject and "Adding website example.com" in ticket.subject
    for fact in ("77", "example.com", "sandbox-split", "web1", "2/2", "E_RESTART",
                 "restart of nginx failed", "$ v-add-web-domain"):
        assert fact in ticket.message, fact
    status = json.loads(sandbox.cli("status", "77", "--json", check=True).stdout)
    assert status["state"] == "error" and "restart of nginx failed" in status["error"]
    ticket_task = next(t for t in status["tasks"] if t["action"] == "ticket.open")
    assert ticket_task["state"] == "done" and str(ticket.id) in ticket_task["result"]
    assert whmcs_server.secret not in sandbox.cli("log", str(ticket_task["id"])).stdout


def test_second_failure_of_the_same_operation_replies(sandbox, whmcs_server):
    _enable_tickets(sandbox, whmcs_server)
    for node in ("web1", "mail1"):
        set_faults(sandbox.node(node), rules=[{"program": "v-add-user", "exit": 8,
                                               "message": "Error: user limit reached"}])
    sandbox.cli("create", "--service-id", "78", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    _drain(sandbox)
    assert whmcs_server.actions() == ["OpenTicket", "AddTicketReply"]
    (ticket,) = whmcs_server.tickets.values()
    assert len(ticket.replies) == 1 and "Another step of the same operation failed" in ticket.replies[0]["message"]


def test_unreachable_ticket_endpoint_is_retried_and_the_failure_stays_recorded(sandbox, whmcs_server):
    _enable_tickets(sandbox, whmcs_server)
    sandbox.edit_config(retry={"max_attempts": 3})
    set_faults(sandbox.node("mail1"), rules=[{"program": "v-add-mail-domain", "exit": 8,
                                              "message": "Error: mail domain limit reached"}])
    whmcs_server.fail_next(1, status=503)
    sandbox.cli("create", "--service-id", "79", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    sandbox.cli("run", check=True)
    status = json.loads(sandbox.cli("status", "79", "--json", check=True).stdout)
    assert status["state"] == "error" and "mail domain limit reached" in status["error"]
    ticket_task = next(t for t in status["tasks"] if t["action"] == "ticket.open")
    assert ticket_task["state"] == "queued" and ticket_task["attempts"] == 1
    assert "503" in ticket_task["last_error"]
    assert whmcs_server.tickets == {}
    _drain(sandbox)
    assert whmcs_server.actions() == ["OpenTicket", "OpenTicket"]
    assert len(whmcs_server.tickets) == 1
    status = json.loads(sandbox.cli("status", "79", "--json", check=True).stdout)
    assert status["state"] == "error"  # the failure itself is still what the service shows
