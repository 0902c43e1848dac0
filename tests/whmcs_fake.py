"""A local WHMCS External API (`includes/api.php`) for the ticket tests: a real HTTP server.

Why a server and not a mocked `urlopen`: what breaks in production is the wire — form encoding,
HTTP status codes, connections that drop, answers that never come — so the tests go through a
real socket on 127.0.0.1 (port 0: the kernel picks a free one).

It speaks the documented request/response format (developers.whmcs.com, API reference):
- POST form fields; `identifier` + `secret` (or, for forwards compatibility, `username` +
  `password`) authenticate every call; a wrong pair answers
  `{"result": "error", "message": "Authentication Failed"}` — with HTTP 403 by default
  (`auth_failure_status`; current WHMCS sends 403 with its error JSON, older releases 200).
- `responsetype=json` gives JSON; without it the answer is the legacy `key=value;...` text.
- `OpenTicket` needs `deptid` (a known department), `subject`, `message`, and `name` + `email`
  when no `clientid` is given; `serviceid`, when `service_ids` is set, must be one of them.
  Success: `{"result": "success", "id": N, "tid": "PUQ-123456", "c": "..."}`.
- `AddTicketReply` needs an existing `ticketid` and a `message`; success `{"result": "success"}`.
- Errors use WHMCS's own messages ("Department ID not found", "Ticket ID not found", ...).

Every request is recorded (`requests`), before any fault is applied, so tests can count the
attempts. Fault knobs act on the next N requests: `fail_next` (an HTTP status such as 503),
`drop_next` (read the request, close the connection without an answer), `hang_next` (no answer
until `release()` or shutdown, for client timeouts), `error_next` (a `result: error` message),
`redirect_next` (a 301 elsewhere, as when the site moved to https).
"""

from __future__ import annotations

import json
import re
import secrets as _secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional

import pytest

from puqdeploy.config import WhmcsConfig

IDENTIFIER = "puq-test-identifier"
SECRET = "s3cr3t-Wh4t-n0b0dy-m4y-s33"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass
class Recorded:
    """One request as the server saw it, and what it answered (status 0: no answer)."""

    method: str
    path: str
    content_type: str
    fields: dict[str, str]
    status: int = 0
    answer: Optional[dict[str, Any]] = None

    @property
    def action(self) -> str:
        return self.fields.get("action", "")


@dataclass
class FakeTicket:
    id: int
    tid: str
    c: str
    deptid: int
    subject: str
    message: str
    priority: str
    serviceid: Optional[str]
    name: str
    email: str
    markdown: bool
    replies: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Fault:
    kind: str          # "status", "drop", "hang", "error", "redirect"
    status: int = 503
    message: str = ""


class FakeWhmcs:
    """The server and its state; thread-safe (requests are handled on their own threads)."""

    def __init__(self, *, identifier: str = IDENTIFIER, secret: str = SECRET,
                 departments: tuple[int, ...] = (1, 2), service_ids: Optional[set[str]] = None,
                 auth_failure_status: int = 403, string_ids: bool = False) -> None:
        self.identifier = identifier
        self.secret = secret
        self.departments = set(departments)
        self.service_ids = service_ids
        self.auth_failure_status = auth_failure_status
        self.string_ids = string_ids  # the docs' example answers "id": "1"
        self.tickets: dict[int, FakeTicket] = {}
        self._requests: list[Recorded] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._next_id = 1
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeWhmcs":
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-whmcs",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "FakeWhmcs":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/includes/api.php"

    def config(self, **overrides: Any) -> WhmcsConfig:
        """A puqdeploy WhmcsConfig pointing at this server with the right credentials."""
        values: dict[str, Any] = {"url": self.url, "identifier": self.identifier,
                                  "secret": self.secret, "department_id": 1,
                                  "priority": "High", "timeout_seconds": 5.0}
        values.update(overrides)
        return WhmcsConfig(**values)

    # ------------------------------------------------------------------ knobs
    def fail_next(self, n: int = 1, status: int = 503) -> None:
        with self._lock:
            self._faults += [_Fault("status", status=status) for _ in range(n)]

    def drop_next(self, n: int = 1) -> None:
        with self._lock:
            self._faults += [_Fault("drop") for _ in range(n)]

    def hang_next(self, n: int = 1) -> None:
        with self._lock:
            self._faults += [_Fault("hang") for _ in range(n)]

    def error_next(self, message: str, n: int = 1) -> None:
        with self._lock:
            self._faults += [_Fault("error", message=message) for _ in range(n)]

    def redirect_next(self, location: str, n: int = 1, status: int = 301) -> None:
        """Answer like a web server that moved the API (http -> https, another path)."""
        with self._lock:
            self._faults += [_Fault("redirect", status=status, message=location) for _ in range(n)]

    def release(self) -> None:
        """Let hung requests go on (they are then answered normally)."""
        self._release.set()

    def delete_ticket(self, ticket_id: int) -> None:
        with self._lock:
            del self.tickets[ticket_id]

    # ------------------------------------------------------------------ inspection
    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def actions(self) -> list[str]:
        return [r.action for r in self.requests]

    # ------------------------------------------------------------------ the API
    def _record(self, rec: Recorded) -> Optional[_Fault]:
        with self._lock:
            self._requests.append(rec)
            return self._faults.pop(0) if self._faults else None

    def _hang(self) -> None:
        self._release.wait(timeout=60)

    def answer(self, f: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The WHMCS API itself: (HTTP status, response document)."""
        ident = f.get("identifier", f.get("username"))
        secret = f.get("secret", f.get("password"))
        if ident != self.identifier or secret != self.secret:
            return self.auth_failure_status, {"result": "error", "message": "Authentication Failed"}
        action = f.get("action", "").lower()
        with self._lock:
            if action == "openticket":
                return 200, self._open_ticket(f)
            if action == "addticketreply":
                return 200, self._add_reply(f)
        return 200, {"result": "error", "message": "Command Not Found"}

    def _open_ticket(self, f: dict[str, str]) -> dict[str, Any]:
        if not f.get("clientid") and not (f.get("name") and f.get("email")):
            return _error("Name and email address are required if not a client")
        try:
            deptid = int(f.get("deptid", ""))
        except ValueError:
            deptid = 0
        if deptid not in self.departments:
            return _error("Department ID not found")
        if not f.get("subject"):
            return _error("Subject is required")
        if not f.get("message"):
            return _error("Message is required")
        serviceid = f.get("serviceid") or None
        if serviceid is not None and self.service_ids is not None and serviceid not in self.service_ids:
            return _error("Service ID Not Found")
        if f.get("email") and not _EMAIL.fullmatch(f["email"]):
            return _error("Email Address Invalid")
        ticket_id = self._next_id
        self._next_id += 1
        ticket = FakeTicket(
            id=ticket_id, tid=f"PUQ-{100000 + ticket_id}", c=_secrets.token_hex(4), deptid=deptid,
            subject=f["subject"], message=f["message"], priority=f.get("priority") or "Medium",
            serviceid=serviceid, name=f.get("name", ""), email=f.get("email", ""),
            markdown=f.get("markdown", "").lower() in ("1", "true", "on", "yes"))
        self.tickets[ticket_id] = ticket
        return {"result": "success", "id": str(ticket_id) if self.string_ids else ticket_id,
                "tid": ticket.tid, "c": ticket.c}

    def _add_reply(self, f: dict[str, str]) -> dict[str, Any]:
        try:
            ticket = self.tickets[int(f.get("ticketid", ""))]
        except (ValueError, KeyError):
            return _error("Ticket ID not found")
        if not f.get("clientid") and not f.get("adminusername") and not (
                f.get("name") and f.get("email")):
            return _error("Name and email address are required if not a client")
        if not f.get("message"):
            return _error("Message is required")
        ticket.replies.append({"message": f["message"], "name": f.get("name", ""),
                               "email": f.get("email", ""), "markdown": f.get("markdown", "")})
        return {"result": "success"}


def _error(message: str) -> dict[str, Any]:
    return {"result": "error", "message": message}


def _nvp(doc: dict[str, Any]) -> str:
    """The legacy answer format when `responsetype` is not json."""
    return ";".join(f"{k}={v}" for k, v in doc.items())


class _Handler(BaseHTTPRequestHandler):
    owner: FakeWhmcs
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._send(405, "text/plain", b"POST only\n")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", errors="replace")
        ctype = self.headers.get("Content-Type", "")
        parsed = urllib.parse.parse_qs(body, keep_blank_values=True) \
            if ctype.startswith("application/x-www-form-urlencoded") else {}
        fields = {k: v[-1] for k, v in parsed.items()}
        rec = Recorded(method="POST", path=self.path, content_type=ctype, fields=fields)
        fault = self.owner._record(rec)
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            return  # no status line at all: the client sees the connection close
        if fault is not None and fault.kind == "hang":
            self.owner._hang()
            fault = None
        if fault is not None and fault.kind == "status":
            rec.status = fault.status
            self._send(fault.status, "text/html",
                       b"<html><body><h1>Service Unavailable</h1></body></html>\n")
            return
        if fault is not None and fault.kind == "redirect":
            rec.status = fault.status
            self._send(fault.status, "text/html", b"", {"Location": fault.message})
            return
        if self.path.split("?")[0] != "/includes/api.php":
            rec.status = 404
            self._send(404, "text/html", b"<html><body>Not Found</body></html>\n")
            return
        if fault is not None and fault.kind == "error":
            status, doc = 200, _error(fault.message)
        else:
            status, doc = self.owner.answer(fields)
        rec.status, rec.answer = status, doc
        if fields.get("responsetype", "").lower() == "json":
            self._send(status, "application/json", json.dumps(doc).encode())
        else:
            self._send(status, "text/plain", _nvp(doc).encode())

    def _send(self, status: int, ctype: str, payload: bytes,
              headers: Optional[dict[str, str]] = None) -> None:
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test); nothing to answer
        self.close_connection = True


@pytest.fixture
def whmcs_server() -> Iterator[FakeWhmcs]:
    """A running fake WHMCS on 127.0.0.1 (random port), stopped after the test."""
    with FakeWhmcs() as server:
        yield server
