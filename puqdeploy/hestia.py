"""HestiaCP commands as data, what their exit codes mean, and their JSON output.

Every command the project runs on a panel is built here, so argument order (which must match
HestiaCP's real signatures, see reference/hestia-cli.md) is written down once. `Panel` runs them
through a transport with the check-then-act discipline:

- `check()` runs a `v-list-* ... json`; exit 3 (E_NOTEXIST) means absent and returns None;
- `act()` runs a `v-add-*`; exit 4 (E_EXISTS) after a check counts as "already present"
  (another run got there first);
- any other non-zero exit raises HestiaError, whose `transient` flag tells the queue whether
  backing off can help (E_RESTART, E_CONNECT, load average, a dpkg lock) or not (E_LIMIT, ...).
"""

from __future__ import annotations

import json
import re
import time
from typing import Callable, Optional

from puqdeploy.commands import Arg, Command, TempFile, secret_file
from puqdeploy.remote import CommandResult, Transport

E_ARGS, E_INVALID, E_NOTEXIST, E_EXISTS, E_SUSPENDED, E_UNSUSPENDED = 1, 2, 3, 4, 5, 6
E_INUSE, E_LIMIT, E_PASSWORD = 7, 8, 9
E_LA, E_CONNECT, E_RESTART = 14, 15, 20

EXIT_NAMES = {
    1: "E_ARGS", 2: "E_INVALID", 3: "E_NOTEXIST", 4: "E_EXISTS", 5: "E_SUSPENDED",
    6: "E_UNSUSPENDED", 7: "E_INUSE", 8: "E_LIMIT", 9: "E_PASSWORD", 10: "E_FORBIDEN",
    11: "E_DISABLED", 12: "E_PARSING", 13: "E_DISK", 14: "E_LA", 15: "E_CONNECT", 16: "E_FTP",
    17: "E_DB", 18: "E_RRD", 19: "E_UPDATE", 20: "E_RESTART",
}
# Codes where trying again later can succeed without anyone changing anything.
TRANSIENT_CODES = frozenset({13, 14, 15, 17, 18, 19, 20})
TRANSIENT_MESSAGES = ("could not get lock", "dpkg was interrupted", "resource temporarily unavailable",
                      "is already running")

LogFn = Callable[[str, str], None]


class HestiaError(Exception):
    """A panel command exited non-zero in a way the step did not expect."""

    def __init__(self, command: Command, code: int, output: str) -> None:
        self.command = command
        self.code = code
        self.output = output.strip()
        message = _error_line(self.output) or f"exit {code}"
        name = EXIT_NAMES.get(code, "")
        super().__init__(f"{command.program} exited {code}{' ' + name if name else ''}: {message}")

    @property
    def transient(self) -> bool:
        lowered = self.output.lower()
        return self.code in TRANSIENT_CODES or any(m in lowered for m in TRANSIENT_MESSAGES)


def _error_line(output: str) -> str:
    """HestiaCP prints `Error: ...` on stdout; prefer that line, else the last line."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return line[len("Error:"):].strip()
    return lines[-1].strip() if lines else ""


def parse_json(text: str) -> dict:
    """Parse HestiaCP's hand-concatenated JSON.

    HestiaCP builds JSON by string concatenation and escapes only `"`, so a value holding a
    backslash (its own DKIM record is stored as `v=DKIM1\\; k=rsa\\; ...`) makes the document
    invalid. On such an error, backslashes that do not start a valid escape are doubled and the
    parse is tried once more.
    """
    text = text.strip()
    if not text:
        return {}
    try:
        return json.loads(text, strict=False)
    except ValueError:
        return json.loads(_INVALID_ESCAPE.sub(r"\\\\", text), strict=False)


_INVALID_ESCAPE = re.compile(r'\\(?!["\\/bfnrtu])')


def _both(result: CommandResult) -> str:
    """stdout, then stderr if any: what an error message may quote."""
    return result.stdout + ("\n" + result.stderr if result.stderr else "")


def package_file(values: dict[str, str]) -> TempFile:
    """A package definition in the KEY='value' format v-add-user-package reads from a file."""
    body = "".join(f"{key}='{value}'\n" for key, value in values.items())
    return TempFile(content=body, secret=False, label="package")


class Panel:
    """Runs HestiaCP commands on one node through a transport, logging each one."""

    def __init__(self, transport: Transport, timeout: float, log: LogFn) -> None:
        self.transport = transport
        self.timeout = timeout
        self.log = log

    def run(self, program: str, *args: Arg) -> tuple[int, str]:
        """Run a command; returns (exit code, stdout + stderr). Output lines go to the attempt
        log."""
        result = self._run(program, args)
        return result.exit_code, _both(result)

    def _run(self, program: str, args: tuple) -> CommandResult:
        command = Command(program, tuple(args))
        self.log("cmd", "$ " + command.display())
        started = time.monotonic()
        result = self.transport.run(command, timeout=self.timeout, on_line=self.log)
        self.log("exit", f"exit {result.exit_code} ({time.monotonic() - started:.2f} s)")
        return result

    def check(self, program: str, *args: Arg) -> Optional[dict]:
        """A `v-list-*` query: the parsed JSON, or None when the object does not exist.

        Only stdout is JSON: a node's shell may write to stderr around any command (a login
        script's warnings; root's pyenv setup on the test machine does under load)."""
        result = self._run(program, (*args, "json"))
        if result.exit_code == E_NOTEXIST:
            return None
        if result.exit_code != 0:
            raise HestiaError(Command(program, tuple(args)), result.exit_code, _both(result))
        try:
            return parse_json(result.stdout)
        except ValueError as exc:
            raise HestiaError(Command(program, tuple(args)), 12, f"Error: unparsable JSON: {exc}")

    def act(self, program: str, *args: Arg, ok_codes: tuple[int, ...] = ()) -> str:
        """A change: "created" on 0, "already present" on E_EXISTS; raises otherwise."""
        code, out = self.run(program, *args)
        if code == 0:
            return "created"
        if code == E_EXISTS:
            return "already present"
        if code in ok_codes:
            return "unchanged"
        raise HestiaError(Command(program, tuple(args)), code, out)

    # -- the commands the steps use, in HestiaCP's real argument order ------------------------

    def list_user(self, user: str) -> Optional[dict]:
        data = self.check("v-list-user", user)
        return None if data is None else next(iter(data.values()), {})

    def list_package(self, package: str) -> Optional[dict]:
        data = self.check("v-list-user-package", package)
        return None if data is None else next(iter(data.values()), {})

    def add_package(self, package: str, values: dict[str, str], rewrite: bool) -> str:
        """Create (rewrite=False) or rewrite an existing package; HestiaCP refuses REWRITE=yes
        for a package that does not exist yet, and E_EXISTS without it."""
        args: tuple[Arg, ...] = (package_file(values), package) + (("yes",) if rewrite else ())
        return self.act("v-add-user-package", *args)

    def add_user(self, user: str, password: str, email: str, package: str) -> str:
        return self.act("v-add-user", user, secret_file(password), email, package)

    def list_users(self) -> dict:
        return self.check("v-list-users") or {}

    def suspend_user(self, user: str) -> str:
        return self.act("v-suspend-user", user)

    def unsuspend_user(self, user: str) -> str:
        return self.act("v-unsuspend-user", user)

    def delete_user(self, user: str) -> str:
        return self.act("v-delete-user", user)

    def delete_package(self, package: str) -> str:
        return self.act("v-delete-user-package", package)

    def change_user_package(self, user: str, package: str) -> str:
        return self.act("v-change-user-package", user, package)

    def change_user_password(self, user: str, password: str) -> str:
        return self.act("v-change-user-password", user, secret_file(password))

    def list_web_domain(self, user: str, domain: str) -> Optional[dict]:
        data = self.check("v-list-web-domain", user, domain)
        return None if data is None else next(iter(data.values()), {})

    def add_web_domain(self, user: str, domain: str) -> str:
        return self.act("v-add-web-domain", user, domain)

    def change_backend(self, user: str, domain: str, template: str) -> str:
        return self.act("v-change-web-domain-backend-tpl", user, domain, template)

    def list_mail_domain(self, user: str, domain: str) -> Optional[dict]:
        data = self.check("v-list-mail-domain", user, domain)
        return None if data is None else next(iter(data.values()), {})

    def add_mail_domain(self, user: str, domain: str) -> str:
        # ANTISPAM ANTIVIRUS DKIM
        return self.act("v-add-mail-domain", user, domain, "yes", "yes", "yes")

    def dkim_record(self, user: str, domain: str) -> Optional[str]:
        data = self.check("v-list-mail-domain-dkim-dns", user, domain)
        if not data:
            return None
        entry = data.get("mail._domainkey") or next(iter(data.values()), {})
        value = str(entry.get("TXT", "")).strip().strip("'\"").replace("\\;", ";")
        # without a key HestiaCP answers 0 with a placeholder, not E_NOTEXIST
        if not value or "NOT-ACTIVATED" in value.upper() or "p=" not in value:
            return None
        return value

    def add_dkim(self, user: str, domain: str) -> str:
        return self.act("v-add-mail-domain-dkim", user, domain)

    def list_mail_account(self, user: str, domain: str, account: str) -> Optional[dict]:
        data = self.check("v-list-mail-account", user, domain, account)
        return None if data is None else next(iter(data.values()), {})

    def add_mail_account(self, user: str, domain: str, account: str, password: str,
                         quota: str) -> str:
        return self.act("v-add-mail-account", user, domain, account, secret_file(password), quota)

    def suspend_mail_account(self, user: str, domain: str, account: str) -> str:
        return self.act("v-suspend-mail-account", user, domain, account)

    def unsuspend_mail_account(self, user: str, domain: str, account: str) -> str:
        return self.act("v-unsuspend-mail-account", user, domain, account)

    def delete_mail_account(self, user: str, domain: str, account: str) -> str:
        return self.act("v-delete-mail-account", user, domain, account)

    def change_mail_quota(self, user: str, domain: str, account: str, quota: str) -> str:
        return self.act("v-change-mail-account-quota", user, domain, account, quota)

    def change_mail_password(self, user: str, domain: str, account: str, password: str) -> str:
        return self.act("v-change-mail-account-password", user, domain, account,
                        secret_file(password))

    def delete_dns_record(self, user: str, domain: str, record_id: str) -> str:
        return self.act("v-delete-dns-record", user, domain, record_id)

    def list_dns_domain(self, user: str, domain: str) -> Optional[dict]:
        data = self.check("v-list-dns-domain", user, domain)
        return None if data is None else next(iter(data.values()), {})

    def add_dns_domain(self, user: str, domain: str, ip: str, nameservers: list[str]) -> str:
        return self.act("v-add-dns-domain", user, domain, ip, *nameservers[:8])

    def list_dns_records(self, user: str, domain: str) -> list[dict]:
        data = self.check("v-list-dns-records", user, domain)
        return list((data or {}).values())

    def add_dns_record(self, user: str, domain: str, record: str, rtype: str, value: str,
                       priority: str = "") -> str:
        args: list[Arg] = [user, domain, record, rtype, value]
        if priority:
            args.append(priority)
        return self.act("v-add-dns-record", *args)

    def add_letsencrypt(self, user: str, domain: str, aliases: list[str], mail: bool) -> str:
        return self.act("v-add-letsencrypt-domain", user, domain, ",".join(aliases),
                        "yes" if mail else "")
