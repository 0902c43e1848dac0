"""Ticket delivery against a real local WHMCS API server and a real hook program.

What must hold in production: one ticket per operation (later failures reply), every fact an
operator needs in the ticket, the queue told correctly whether a retry can help, and the API
secret never shown anywhere.
"""

from __future__ import annotations

import json
import shlex
import socket
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from puqdeploy.config import TicketsConfig, WhmcsConfig
from puqdeploy.tickets import (
    FailureFacts,
    TicketError,
    deliver,
    message,
    reply_message,
    subject,
)
from tests.whmcs_fake import SECRET, FakeWhmcs

LOG_TAIL = [f"[17:19:{i:02d}] v-add-web-domain examplecom-web example.com: line {i}"
            for i in range(18)] + ["Error: web domain example.com exists", "exit 4"]

FACTS = FailureFacts(
    service_id="1234",
    domain="example.com",
    product="business-split",
    mode="split",
    operation="deploy",
    operation_id=42,
    step="Adding website example.com",
    action="web.domain",
    node="web1",
    attempts=8,
    max_attempts=8,
    last_error="v-add-web-domain exited 20: Error: restart failed (nginx)",
    log_tail=LOG_TAIL,
    failed_at="2026-12-03T17:20:00Z",
)

SUBJECT = '[puqdeploy] Deploy of example.com (service 1234) failed at "Adding website example.com"'


def whmcs_only(server: FakeWhmcs, **overrides) -> TicketsConfig:
    return TicketsConfig(enabled=True, whmcs=server.config(**overrides))


def assert_all_facts(text: str, facts: FailureFacts) -> None:
    for value in (facts.service_id, facts.domain, facts.product, facts.mode, facts.operation,
                  f"#{facts.operation_id}", facts.step, facts.action, facts.node,
                  f"{facts.attempts} of {facts.max_attempts}", facts.last_error, facts.failed_at):
        assert value in text, f"{value!r} missing from the ticket:\n{text}"
    for line in facts.log_tail:
        assert line in text
    assert "```" in text  # error and log lines sit in code blocks, never rendered as markdown


# --------------------------------------------------------------------------- WHMCS: happy paths
def test_first_failure_opens_a_ticket_with_every_fact(whmcs_server: FakeWhmcs) -> None:
    ref = deliver(whmcs_only(whmcs_server), FACTS, None)

    assert ref == "1"
    [req] = whmcs_server.requests
    f = req.fields
    assert req.content_type.startswith("application/x-www-form-urlencoded")
    assert req.path == "/includes/api.php"
    assert f["action"] == "OpenTicket"
    assert f["identifier"] == whmcs_server.identifier and f["secret"] == SECRET
    assert f["responsetype"] == "json"
    assert f["deptid"] == "1" and f["priority"] == "High" and f["markdown"] == "true"
    assert f["serviceid"] == "1234"
    assert f["subject"] == SUBJECT
    assert f["name"] == "puqdeploy" and "@" in f["email"]
    assert_all_facts(f["message"], FACTS)

    ticket = whmcs_server.tickets[1]
    assert ticket.subject == SUBJECT and ticket.deptid == 1 and ticket.markdown


def test_a_later_failure_replies_to_the_same_ticket(whmcs_server: FakeWhmcs) -> None:
    config = whmcs_only(whmcs_server)
    first = deliver(config, FACTS, None)
    later = replace(FACTS, step="Creating mail domain example.com", action="mail.domain",
                    node="mail1", attempts=3, last_error="Error: exim restart failed")

    again = deliver(config, later, first)

    assert again == first
    assert whmcs_server.actions() == ["OpenTicket", "AddTicketReply"]
    assert len(whmcs_server.tickets) == 1
    reply_req = whmcs_server.requests[1].fields
    assert reply_req["ticketid"] == first and reply_req["markdown"] == "true"
    [reply] = whmcs_server.tickets[1].replies
    assert reply["message"].startswith("**Another step of the same operation failed:**")
    assert_all_facts(reply["message"], later)


def test_a_reply_to_a_ticket_whmcs_no_longer_has_opens_a_new_one(whmcs_server: FakeWhmcs) -> None:
    config = whmcs_only(whmcs_server)
    first = deliver(config, FACTS, None)
    whmcs_server.delete_ticket(int(first))

    ref = deliver(config, FACTS, first)

    assert ref == "2"
    assert whmcs_server.actions() == ["OpenTicket", "AddTicketReply", "OpenTicket"]
    assert f"ticket {first}" in whmcs_server.tickets[2].message


def test_ticket_ids_answered_as_strings_are_accepted() -> None:
    with FakeWhmcs(string_ids=True) as server:  # the docs' example: "id": "1"
        assert deliver(whmcs_only(server), FACTS, None) == "1"


def test_unknown_whmcs_service_still_gets_a_ticket_without_the_link() -> None:
    with FakeWhmcs(service_ids={"999"}) as server:
        ref = deliver(whmcs_only(server), FACTS, None)

        assert ref == "1"
        first, second = server.requests
        assert first.fields["serviceid"] == "1234" and first.answer == {
            "result": "error", "message": "Service ID Not Found"}
        assert "serviceid" not in second.fields
        assert server.tickets[1].serviceid is None


def test_a_non_numeric_service_id_is_not_sent_as_serviceid(whmcs_server: FakeWhmcs) -> None:
    deliver(whmcs_only(whmcs_server), replace(FACTS, service_id="acme-7"), None)
    assert "serviceid" not in whmcs_server.requests[0].fields


# --------------------------------------------------------------------------- WHMCS: permanent errors
@pytest.mark.parametrize("status", [403, 200], ids=["http403", "http200"])
def test_bad_credentials_are_permanent_and_never_show_the_secret(status: int) -> None:
    wrong = "wrong-secret-9f8e7d6c"
    with FakeWhmcs(auth_failure_status=status) as server:
        with pytest.raises(TicketError) as caught:
            deliver(whmcs_only(server, secret=wrong), FACTS, None)

        err = caught.value
        assert err.transient is False
        text = str(err)
        assert "Authentication Failed" in text
        assert "tickets.whmcs.identifier" in text and "tickets.whmcs.secret" in text
        for shown in (text, repr(err), repr(err.args)):
            assert wrong not in shown and SECRET not in shown
        assert server.requests[0].fields["secret"] == wrong  # it was sent, just never shown
        assert server.tickets == {}


def test_unknown_department_is_permanent_and_names_the_key(whmcs_server: FakeWhmcs) -> None:
    with pytest.raises(TicketError) as caught:
        deliver(whmcs_only(whmcs_server, department_id=9), FACTS, None)

    assert caught.value.transient is False
    assert "Department ID not found" in str(caught.value)
    assert "tickets.whmcs.department_id (9)" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_url_that_is_not_the_api_endpoint_is_permanent(whmcs_server: FakeWhmcs) -> None:
    url = whmcs_server.url.replace("/includes/api.php", "/index.php")
    with pytest.raises(TicketError) as caught:
        deliver(whmcs_only(whmcs_server, url=url), FACTS, None)

    assert caught.value.transient is False
    assert "includes/api.php" in str(caught.value)


def test_a_redirect_is_permanent_not_followed(whmcs_server: FakeWhmcs) -> None:
    # Following it would re-send the POST as a GET without the form: WHMCS would never see the
    # ticket, so the operator must fix the URL instead.
    whmcs_server.redirect_next("https://billing.example.net/includes/api.php")
    with pytest.raises(TicketError) as caught:
        deliver(whmcs_only(whmcs_server), FACTS, None)

    assert caught.value.transient is False
    assert "redirects (HTTP 301) to https://billing.example.net/includes/api.php" in str(caught.value)
    assert len(whmcs_server.requests) == 1


# --------------------------------------------------------------------------- WHMCS: transient errors
def test_http_503_is_transient_and_the_retry_opens_one_ticket(whmcs_server: FakeWhmcs) -> None:
    config = whmcs_only(whmcs_server)
    whmcs_server.fail_next(1, status=503)

    with pytest.raises(TicketError) as caught:
        deliver(config, FACTS, None)
    assert caught.value.transient is True
    assert "HTTP 503" in str(caught.value)
    assert whmcs_server.tickets == {}

    assert deliver(config, FACTS, None) == "1"
    assert len(whmcs_server.tickets) == 1


def test_a_dropped_connection_is_transient(whmcs_server: FakeWhmcs) -> None:
    whmcs_server.drop_next(1)
    with pytest.raises(TicketError) as caught:
        deliver(whmcs_only(whmcs_server), FACTS, None)
    assert caught.value.transient is True
    assert SECRET not in str(caught.value)


def test_connection_refused_is_transient() -> None:
    # A bound socket that never listens: connections to it are refused, and no other process
    # can take the port while the test runs.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = TicketsConfig(enabled=True, whmcs=WhmcsConfig(
            url=f"http://127.0.0.1:{port}/includes/api.php", identifier="id", secret=SECRET,
            timeout_seconds=5))
        with pytest.raises(TicketError) as caught:
            deliver(config, FACTS, None)

    assert caught.value.transient is True
    assert "cannot reach" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_no_answer_within_the_timeout_is_transient(whmcs_server: FakeWhmcs) -> None:
    whmcs_server.hang_next(1)
    try:
        with pytest.raises(TicketError) as caught:
            deliver(whmcs_only(whmcs_server, timeout_seconds=0.3), FACTS, None)
    finally:
        whmcs_server.release()
    assert caught.value.transient is True
    assert "within 0.3 s" in str(caught.value)


def test_a_rate_limit_answer_is_transient(whmcs_server: FakeWhmcs) -> None:
    whmcs_server.error_next("Too many requests. Please try again later.")
    with pytest.raises(TicketError) as caught:
        deliver(whmcs_only(whmcs_server), FACTS, None)
    assert caught.value.transient is True


# --------------------------------------------------------------------------- command hook
HOOK = textwrap.dedent("""\
    import json, sys
    payload = json.load(sys.stdin)
    with open(sys.argv[1], "a", encoding="utf-8") as out:
        out.write(json.dumps(payload) + "\\n")
    mode = sys.argv[2]
    if mode == "fail":
        print("slack: 500 Internal Server Error", file=sys.stderr)
        sys.exit(3)
    if mode == "ref":
        print("CHAT-42")
        print("ignored second line")
""")


@pytest.fixture
def hook(tmp_path: Path):
    """A hook program recording each payload it reads; `hook(mode)` gives its command line."""
    script = tmp_path / "notify.py"
    script.write_text(HOOK)
    seen = tmp_path / "payloads.jsonl"

    def command(mode: str, *extra: str) -> str:
        return shlex.join([sys.executable, str(script), str(seen), mode, *extra])

    command.payloads = lambda: [json.loads(line) for line in seen.read_text().splitlines()] \
        if seen.exists() else []
    return command


def test_the_hook_reads_the_facts_and_its_stdout_is_the_reference(hook) -> None:
    config = TicketsConfig(enabled=True, command=hook("ref"))

    assert deliver(config, FACTS, None) == "CHAT-42"
    assert deliver(config, FACTS, "CHAT-42") == "CHAT-42"

    first, second = hook.payloads()
    for key, value in FACTS.to_json().items():
        assert first[key] == value
    assert first["ticket"] is None and second["ticket"] == "CHAT-42"
    assert first["subject"] == SUBJECT
    assert_all_facts(first["message"], FACTS)
    assert second["message"].startswith("**Another step of the same operation failed:**")


def test_a_silent_hook_gives_the_reference_command(hook) -> None:
    config = TicketsConfig(enabled=True, command=hook("quiet"))
    assert deliver(config, FACTS, None) == "command"
    assert deliver(config, FACTS, "command") == "command"


def test_a_failing_hook_is_transient_with_its_stderr(hook) -> None:
    config = TicketsConfig(enabled=True, command=hook("fail", "--token=hook-token-123"))
    with pytest.raises(TicketError) as caught:
        deliver(config, FACTS, None)

    assert caught.value.transient is True
    assert "exited 3" in str(caught.value)
    assert "slack: 500 Internal Server Error" in str(caught.value)
    assert "hook-token-123" not in str(caught.value)  # the command line is never echoed


def test_a_missing_hook_program_is_permanent(tmp_path: Path) -> None:
    config = TicketsConfig(enabled=True, command=f"{tmp_path}/no-such-notifier --flag")
    with pytest.raises(TicketError) as caught:
        deliver(config, FACTS, None)
    assert caught.value.transient is False
    assert "not found" in str(caught.value)


# --------------------------------------------------------------------------- both channels
def test_with_both_whmcs_goes_first_and_its_id_is_the_reference(whmcs_server, hook) -> None:
    config = TicketsConfig(enabled=True, whmcs=whmcs_server.config(), command=hook("ref"))

    assert deliver(config, FACTS, None) == "1"
    [payload] = hook.payloads()
    assert payload["whmcs_ticket"] == "1" and payload["ticket"] is None


def test_a_hook_failure_after_whmcs_reports_the_opened_ticket(whmcs_server, hook) -> None:
    config = TicketsConfig(enabled=True, whmcs=whmcs_server.config(), command=hook("fail"))
    with pytest.raises(TicketError) as caught:
        deliver(config, FACTS, None)

    assert caught.value.transient is True
    assert caught.value.ticket == "1"  # keep it: the retry then replies instead of re-opening
    assert len(whmcs_server.tickets) == 1


def test_no_channel_configured_is_permanent() -> None:
    with pytest.raises(TicketError) as caught:
        deliver(TicketsConfig(enabled=True), FACTS, None)
    assert caught.value.transient is False


# --------------------------------------------------------------------------- rendering
def test_subject_and_bodies() -> None:
    assert subject(FACTS) == SUBJECT
    assert subject(replace(FACTS, operation="change-package")).startswith(
        "[puqdeploy] Change package of example.com")
    assert_all_facts(message(FACTS), FACTS)
    assert reply_message(FACTS).startswith("**Another step of the same operation failed:**")
    no_node = message(replace(FACTS, node=None, log_tail=[]))
    assert "not bound to a node" in no_node and "logged no output" in no_node


def test_backticks_in_output_cannot_break_out_of_the_code_block() -> None:
    body = message(replace(FACTS, log_tail=["```", "**not bold**", "````x"]))
    assert "`````text\n```\n**not bold**\n````x\n`````" in body


def test_facts_round_trip_through_json() -> None:
    data = json.loads(json.dumps(FACTS.to_json()))
    assert FailureFacts.from_json({**data, "future_key": 1}) == FACTS
