"""Support tickets for terminal failures: WHMCS `OpenTicket` / `AddTicketReply`, or a command.

When a blocking task fails for good, the service sits in `error` until a human acts, so the
operator's helpdesk must hear about it. Delivery runs inside a queued task (the queue retries it
with back-off), which is why everything here ends in exactly one of two ways: a ticket reference,
or a `TicketError` whose `transient` flag tells the queue whether retrying can help (network
trouble, HTTP 5xx, a busy WHMCS) or not (bad credentials, an unknown department, a missing hook
program), in which case the message says which config key to fix.

One ticket per operation: the first failure opens it, later failures of the same operation add a
reply to it (`existing_ticket`), like PUQ's own module. The ticket reference returned is what the
caller stores and passes back next time.

Channels (`tickets:` in the config):
- `whmcs`: the External API (POST form fields to `includes/api.php`, `responsetype=json`,
  authentication by `identifier` + `secret`). The ticket is opened as a guest ticket from
  "puqdeploy" (WHMCS needs `name` and `email` when no `clientid` is given): staff see it, the
  customer does not, because the body carries node names and command output. A numeric service id
  is sent as `serviceid` so the ticket links to the service; if WHMCS does not know that service,
  the ticket is opened without the link rather than not at all. A reply to a ticket WHMCS no longer
  has (deleted or merged) opens a new ticket instead.
- `command`: an operator's program (chat, e-mail, another helpdesk), split with `shlex` and run
  without a shell. It reads one JSON document on stdin (the facts, plus `ticket`: the reference of
  the earlier ticket or null, and the rendered `subject` and `message`); the first line of its
  stdout is the reference (empty: the earlier reference, else "command"). Exit 0 is success.
- Both: WHMCS first, then the command, which also gets `whmcs_ticket`; the WHMCS reference is the
  one returned. A command failure after WHMCS succeeded raises with `TicketError.ticket` set to the
  WHMCS reference, so the caller can keep it and the retry replies instead of opening a second
  ticket. (`deliver_whmcs` / `deliver_command` let a caller queue the channels separately.)

`deliver` does not look at `tickets.enabled`; whoever queues the delivery does.

The WHMCS secret never appears in an exception, a log line or a repr. Standard library only: this
module is imported by the runner, which must stay light.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

from puqdeploy import __version__
from puqdeploy.config import TicketsConfig, WhmcsConfig

__all__ = [
    "COMMAND_TIMEOUT_SECONDS",
    "FailureFacts",
    "OPENER_NAME",
    "TicketError",
    "deliver",
    "deliver_command",
    "deliver_whmcs",
    "message",
    "reply_message",
    "subject",
]

#: A hook that hangs must not hold a runner slot forever; the queue retries it later.
COMMAND_TIMEOUT_SECONDS = 60.0
#: Who the ticket is "from" in WHMCS (a guest ticket, not the customer's).
OPENER_NAME = "puqdeploy"
_MAX_RESPONSE_BYTES = 1 << 20
_MAX_SUBJECT = 250
_MAX_ERROR_CHARS = 4000
_MAX_LOG_LINE_CHARS = 500
_MAX_REFERENCE_CHARS = 255
_STDERR_TAIL_LINES = 10
_STDERR_TAIL_CHARS = 2000


# --------------------------------------------------------------------------- facts and errors
@dataclass(frozen=True)
class FailureFacts:
    """Everything a ticket says about one terminal failure; plain data so it can be queued as
    JSON (`to_json` / `from_json`) and delivered later by another process."""

    service_id: str
    domain: str
    product: str
    mode: str
    operation: str          # deploy, redeploy, suspend, ...
    operation_id: int
    step: str               # the task label: "Adding website example.com"
    action: str             # the task action: "web.domain"
    node: Optional[str]
    attempts: int
    max_attempts: int
    last_error: str
    log_tail: list[str]     # last ~20 log lines of the failed attempt, already secret-masked
    failed_at: str          # ISO 8601 UTC, 2026-12-03T17:20:00Z

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what the command hook reads, what a queued task stores)."""
        data = asdict(self)
        data["log_tail"] = list(self.log_tail)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FailureFacts":
        """The inverse of `to_json`; unknown keys are ignored so old payloads keep loading."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["log_tail"] = [str(line) for line in values.get("log_tail") or []]
        return cls(**values)


class TicketError(Exception):
    """Delivery failed. `transient`: a retry may succeed (network, timeout, HTTP 5xx, WHMCS busy);
    otherwise the message names what to fix. `ticket`: a reference already delivered before the
    failure (WHMCS succeeded, the command then failed) that the caller should keep."""

    def __init__(self, message: str, *, transient: bool, ticket: Optional[str] = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.ticket = ticket


class _WhmcsRejected(TicketError):
    """WHMCS answered `result: error`; `api_message` is its message, for the callers that react
    to a particular one (ticket or service not found)."""

    def __init__(self, message: str, *, transient: bool, api_message: str) -> None:
        super().__init__(message, transient=transient)
        self.api_message = api_message


# --------------------------------------------------------------------------- rendering
def _operation_title(operation: str) -> str:
    return operation.replace("-", " ").replace("_", " ").strip().capitalize() or "Operation"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def subject(facts: FailureFacts) -> str:
    """`[puqdeploy] Deploy of example.com (service 1234) failed at "Adding website example.com"`."""
    text = (f"[puqdeploy] {_operation_title(facts.operation)} of {_one_line(facts.domain)} "
            f"(service {_one_line(facts.service_id)}) failed at \"{_one_line(facts.step)}\"")
    if len(text) > _MAX_SUBJECT:
        text = text[: _MAX_SUBJECT - 1] + "…"
    return text


def _fence(text: str) -> str:
    """A fenced code block that the content cannot close early (longer fence than any run of
    backticks inside), so command output never turns into markdown."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _details(facts: FailureFacts) -> str:
    node = facts.node if facts.node else "none (not bound to a node)"
    lines = [
        f"- **Service:** {facts.service_id}",
        f"- **Domain:** {facts.domain}",
        f"- **Product:** {facts.product} ({facts.mode})",
        f"- **Operation:** {facts.operation} #{facts.operation_id}",
        f"- **Step:** {_one_line(facts.step)} (`{facts.action}`)",
        f"- **Node:** {node}",
        f"- **Attempts:** {facts.attempts} of {facts.max_attempts}",
        f"- **Failed at:** {facts.failed_at}",
        "",
        "**Last error**",
        "",
        _fence(_clip(facts.last_error.rstrip("\n") or "(no error text)", _MAX_ERROR_CHARS)),
    ]
    if facts.log_tail:
        tail = "\n".join(_clip(line.rstrip("\n"), _MAX_LOG_LINE_CHARS) for line in facts.log_tail)
        lines += ["", f"**Last {len(facts.log_tail)} log lines of the failed attempt**", "",
                  _fence(tail)]
    else:
        lines += ["", "_The failed attempt logged no output._"]
    lines += [
        "",
        f"Details: `puqdeploy status {facts.service_id}`, "
        f"`puqdeploy tasks {facts.service_id} --state failed`, then `puqdeploy log TASK`. "
        f"Once the cause is fixed: `puqdeploy retry {facts.service_id}`.",
    ]
    return "\n".join(lines)


def message(facts: FailureFacts) -> str:
    """The markdown body of a new ticket: every fact, the last error and the last log lines."""
    head = (f"**{_operation_title(facts.operation)} of {facts.domain} (service {facts.service_id}) "
            f"failed** at step \"{_one_line(facts.step)}\" after {facts.attempts} of "
            f"{facts.max_attempts} attempts. The service is in `error` until an operator acts.")
    return head + "\n\n" + _details(facts)


def reply_message(facts: FailureFacts) -> str:
    """The markdown body of a reply: a later failure of the same operation."""
    head = (f"**Another step of the same operation failed:** \"{_one_line(facts.step)}\" "
            f"after {facts.attempts} of {facts.max_attempts} attempts.")
    return head + "\n\n" + _details(facts)


# --------------------------------------------------------------------------- WHMCS
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect of our POST as a GET without the form (so without the
    credentials); WHMCS would then answer something misleading. Surface it instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


def _where(url: str) -> str:
    """The endpoint as shown in errors: no user-info, no query string (either may hold secrets)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _opener_email(whmcs: WhmcsConfig) -> str:
    """The guest ticket's e-mail: `tickets.whmcs.email` when the config has one, else
    puqdeploy@<this host's FQDN> (a syntactically valid address WHMCS accepts)."""
    configured = getattr(whmcs, "email", None)
    if configured:
        return str(configured)
    fqdn = socket.getfqdn().strip(".").lower()
    if "." not in fqdn or not re.fullmatch(r"[a-z0-9.-]+", fqdn):
        fqdn = "localhost.localdomain"
    return f"{OPENER_NAME}@{fqdn}"


def _parse_json(raw: bytes) -> Optional[dict[str, Any]]:
    """The JSON object WHMCS answered, tolerating PHP notices printed before it."""
    text = raw.decode("utf-8", errors="replace").strip()
    for candidate in (text, text[text.find("{"):] if "{" in text else ""):
        if not candidate:
            continue
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return None


_TRANSIENT_HINTS = ("rate limit", "too many", "try again", "temporar", "maintenance", "busy",
                    "unavailable", "timeout", "timed out", "deadlock", "lock wait",
                    "unable to generate ticket number")


def _rejection(whmcs: WhmcsConfig, action: str, api_message: str, status: int) -> _WhmcsRejected:
    """Turn WHMCS's `result: error` message into an error that says what to fix."""
    shown = _one_line(api_message)[:300] or "(no message)"
    low = shown.lower()
    base = f"WHMCS {action} failed at {_where(whmcs.url)}: {shown}"
    if "authentication failed" in low:
        text = (f"{base}. Check tickets.whmcs.identifier and tickets.whmcs.secret (WHMCS: System "
                f"Settings > API Credentials).")
        transient = False
    elif low.startswith("invalid ip") or "forbidden ip" in low:
        text = (f"{base}. Allow this host's IP in WHMCS (General Settings > Security > API IP "
                f"Access Restriction).")
        transient = False
    elif "permission" in low or "not allowed" in low:
        text = (f"{base}. Give the API role of tickets.whmcs.identifier the OpenTicket and "
                f"AddTicketReply actions.")
        transient = False
    elif "department" in low:
        text = f"{base}. Check tickets.whmcs.department_id ({whmcs.department_id})."
        transient = False
    elif any(hint in low for hint in _TRANSIENT_HINTS) or status >= 500:
        text, transient = f"{base} (will retry)", True
    elif low in {"subject is required", "message is required", "email address invalid",
                 "name and email address are required if not a client", "command not found"}:
        text, transient = f"{base}. This is a puqdeploy bug or an incompatible WHMCS version.", False
    else:
        # Unknown messages are retried: the queue bounds the attempts, and losing a ticket to a
        # one-off WHMCS hiccup is worse than a few extra calls.
        text, transient = f"{base} (will retry)", True
    return _WhmcsRejected(_mask(text, whmcs), transient=transient, api_message=api_message)


def _mask(text: str, whmcs: WhmcsConfig) -> str:
    return text.replace(whmcs.secret, "***") if whmcs.secret else text


def _whmcs_call(whmcs: WhmcsConfig, action: str, params: Mapping[str, str]) -> dict[str, Any]:
    """POST one API action; the decoded `result: success` answer, or a classified TicketError."""
    form = {
        "action": action,
        "identifier": whmcs.identifier,
        "secret": whmcs.secret,
        "responsetype": "json",
        **params,
    }
    request = urllib.request.Request(
        whmcs.url,
        data=urllib.parse.urlencode(form).encode("utf-8"),
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": f"puqdeploy/{__version__}",
        },
    )
    where = _where(whmcs.url)
    opener = urllib.request.build_opener(_NoRedirect)
    status: int
    raw: bytes
    location: Optional[str] = None
    try:
        try:
            with opener.open(request, timeout=whmcs.timeout_seconds) as response:
                status = response.status
                raw = response.read(_MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            status = exc.code
            location = exc.headers.get("Location") if exc.headers else None
            try:
                raw = exc.read(_MAX_RESPONSE_BYTES)
            except (OSError, http.client.HTTPException):
                raw = b""
            finally:
                exc.close()
    except (socket.timeout, TimeoutError):
        raise TicketError(f"WHMCS {action}: no answer from {where} within "
                          f"{whmcs.timeout_seconds:g} s (will retry)", transient=True) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):  # the connect itself timed out
            raise TicketError(f"WHMCS {action}: no answer from {where} within "
                              f"{whmcs.timeout_seconds:g} s (will retry)", transient=True) from None
        reason = exc.reason if isinstance(exc.reason, str) else _one_line(str(exc.reason))
        raise TicketError(_mask(f"WHMCS {action}: cannot reach {where}: {reason} (will retry)",
                                whmcs), transient=True) from None
    except (OSError, http.client.HTTPException) as exc:
        detail = _one_line(str(exc)) or type(exc).__name__
        raise TicketError(_mask(f"WHMCS {action}: connection to {where} failed: {detail} "
                                f"(will retry)", whmcs), transient=True) from None

    data = _parse_json(raw)
    if 300 <= status < 400:
        target = _where(location) if location else "another URL"
        raise TicketError(f"WHMCS {action}: {where} redirects (HTTP {status}) to {target}; set "
                          f"tickets.whmcs.url to the final address of includes/api.php",
                          transient=False)
    if status >= 500 or status in (408, 425, 429):
        api = f": {_one_line(str(data.get('message', '')))[:300]}" if data else ""
        raise TicketError(_mask(f"WHMCS {action}: {where} answered HTTP {status}{api} "
                                f"(will retry)", whmcs), transient=True)
    if data is not None and data.get("result") == "success" and 200 <= status < 300:
        return data
    if data is not None and data.get("result") == "error":
        raise _rejection(whmcs, action, str(data.get("message", "")), status)
    if status == 404:
        raise TicketError(f"WHMCS {action}: {where} not found (HTTP 404); tickets.whmcs.url must "
                          f"be the API endpoint, https://.../includes/api.php", transient=False)
    if status in (401, 403):
        raise TicketError(f"WHMCS {action}: {where} refused the request (HTTP {status}); check "
                          f"tickets.whmcs.identifier/secret and the API IP access restriction",
                          transient=False)
    if status >= 400:
        raise TicketError(f"WHMCS {action}: {where} answered HTTP {status}", transient=False)
    raise TicketError(f"WHMCS {action}: {where} did not answer with a WHMCS JSON result (HTTP "
                      f"{status}); is tickets.whmcs.url the API endpoint .../includes/api.php?",
                      transient=False)


def _opener_fields(whmcs: WhmcsConfig) -> dict[str, str]:
    return {"name": str(getattr(whmcs, "name", None) or OPENER_NAME),
            "email": _opener_email(whmcs)}


def _open_ticket(whmcs: WhmcsConfig, facts: FailureFacts, body: str) -> str:
    params = {
        "deptid": str(whmcs.department_id),
        "subject": subject(facts),
        "message": body,
        "priority": whmcs.priority,
        "markdown": "true",
        **_opener_fields(whmcs),
    }
    sid = facts.service_id
    if sid.isascii() and sid.isdigit() and int(sid) > 0:
        params["serviceid"] = str(int(sid))
    try:
        answer = _whmcs_call(whmcs, "OpenTicket", params)
    except _WhmcsRejected as exc:
        if "serviceid" not in params or "service id not found" not in exc.api_message.lower():
            raise
        # The billing id is not a WHMCS service (another billing system, or deleted): a ticket
        # without the link beats no ticket.
        del params["serviceid"]
        answer = _whmcs_call(whmcs, "OpenTicket", params)
    ticket_id = answer.get("id")
    if ticket_id is None or str(ticket_id).strip() == "":
        raise TicketError(f"WHMCS OpenTicket at {_where(whmcs.url)} answered success without a "
                          f"ticket id", transient=False)
    return str(ticket_id).strip()


def deliver_whmcs(whmcs: WhmcsConfig, facts: FailureFacts,
                  existing_ticket: Optional[str] = None) -> str:
    """Open a WHMCS ticket (no `existing_ticket`) or reply to it; returns the ticket id.

    A reply to a ticket WHMCS does not have (deleted, merged, or a reference that came from the
    command hook) opens a new ticket whose body says so, and returns the new id."""
    note = ""
    if existing_ticket is not None:
        ref = existing_ticket.strip()
        if ref.isascii() and ref.isdigit():
            try:
                _whmcs_call(whmcs, "AddTicketReply", {
                    "ticketid": ref,
                    "message": reply_message(facts),
                    "markdown": "true",
                    **_opener_fields(whmcs),
                })
                return existing_ticket
            except _WhmcsRejected as exc:
                if "ticket id not found" not in exc.api_message.lower():
                    raise
        note = (f"_An earlier failure of this operation was reported as ticket {ref}, which "
                f"WHMCS does not have (any more); this ticket replaces it._\n\n")
    return _open_ticket(whmcs, facts, note + message(facts))


# --------------------------------------------------------------------------- command hook
def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    tail = "\n".join(lines[-_STDERR_TAIL_LINES:])
    return tail[-_STDERR_TAIL_CHARS:]


def deliver_command(command: str, facts: FailureFacts, existing_ticket: Optional[str] = None,
                    *, whmcs_ticket: Optional[str] = None,
                    timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
    """Run the operator's hook with the facts as JSON on stdin; its first stdout line is the
    reference. Only the program name appears in errors: the command line may carry a token."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise TicketError(f"tickets.command cannot be split into arguments: {exc}",
                          transient=False) from None
    if not argv:
        raise TicketError("tickets.command is empty", transient=False)
    program = argv[0]
    payload = facts.to_json()
    payload["ticket"] = existing_ticket
    if whmcs_ticket is not None:
        payload["whmcs_ticket"] = whmcs_ticket
    payload["subject"] = subject(facts)
    payload["message"] = message(facts) if existing_ticket is None else reply_message(facts)
    try:
        proc = subprocess.run(argv, input=json.dumps(payload, ensure_ascii=False) + "\n",
                              capture_output=True, text=True, encoding="utf-8",
                              errors="replace", timeout=timeout, check=False)
    except FileNotFoundError:
        raise TicketError(f"tickets.command: program {program!r} not found", transient=False) from None
    except PermissionError:
        raise TicketError(f"tickets.command: program {program!r} is not executable",
                          transient=False) from None
    except subprocess.TimeoutExpired:
        raise TicketError(f"tickets.command: {program} did not finish within {timeout:g} s "
                          f"(will retry)", transient=True) from None
    except OSError as exc:
        raise TicketError(f"tickets.command: cannot run {program}: {exc.strerror or exc} "
                          f"(will retry)", transient=True) from None
    if proc.returncode != 0:
        how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exited {proc.returncode}")
        tail = _tail(proc.stderr or "")
        raise TicketError(f"tickets.command: {program} {how} (will retry)"
                          + (f": {tail}" if tail else ""), transient=True)
    first = (proc.stdout or "").splitlines()[0].strip() if (proc.stdout or "").strip() else ""
    if first:
        return first[:_MAX_REFERENCE_CHARS]
    return existing_ticket if existing_ticket else "command"


# --------------------------------------------------------------------------- entry point
def deliver(tickets_config: TicketsConfig, facts: FailureFacts,
            existing_ticket: Optional[str] = None) -> str:
    """Open a ticket for `facts` (or reply to `existing_ticket`) on every configured channel.

    Returns the reference to store: the WHMCS ticket id when WHMCS is configured, else the
    command's. Raises TicketError (see `transient`, and `ticket` for a partial delivery)."""
    whmcs, command = tickets_config.whmcs, tickets_config.command
    if whmcs is None and command is None:
        raise TicketError("no ticket channel configured: set tickets.whmcs or tickets.command",
                          transient=False)
    reference: Optional[str] = None
    if whmcs is not None:
        reference = deliver_whmcs(whmcs, facts, existing_ticket)
    if command is not None:
        try:
            hook_reference = deliver_command(command, facts, existing_ticket,
                                             whmcs_ticket=reference)
        except TicketError as exc:
            exc.ticket = reference
            raise
        if reference is None:
            reference = hook_reference
    assert reference is not None
    return reference
