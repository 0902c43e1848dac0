"""A simulated node for tests that drive its commands directly, as a transport would: each
command a subprocess through the node's bin/ wrappers (shared by the simulator and DNS tests)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from puqdeploy.sandbox.node import install_node

PACKAGE = {
    "WEB_TEMPLATE": "default", "BACKEND_TEMPLATE": "PHP-8_3", "PROXY_TEMPLATE": "default",
    "DNS_TEMPLATE": "default", "WEB_DOMAINS": "1", "WEB_ALIASES": "unlimited",
    "DNS_DOMAINS": "1", "DNS_RECORDS": "unlimited", "MAIL_DOMAINS": "1", "MAIL_ACCOUNTS": "2",
    "RATE_LIMIT": "200", "DATABASES": "0", "CRON_JOBS": "0", "DISK_QUOTA": "1024",
    "BANDWIDTH": "unlimited", "NS": "ns1.example.net,ns2.example.net", "SHELL": "nologin",
    "BACKUPS": "1", "BACKUPS_INCREMENTAL": "no",
}


class Node:
    """One simulated node and helpers to run its commands as subprocesses."""

    def __init__(self, path: Path, tmpfiles: list[str]) -> None:
        self.path = path
        self.bin = install_node(path)
        self.tmpfiles = tmpfiles

    def run(self, program: str, *args: str, stdin: str | None = None,
            timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / program), *args], input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def ok(self, program: str, *args: str, **kw) -> str:
        proc = self.run(program, *args, **kw)
        assert proc.returncode == 0, (program, args, proc.stdout, proc.stderr)
        return proc.stdout

    def fails(self, code: int, program: str, *args: str, **kw) -> str:
        """Run, expect exit `code` and a single Hestia-style line on stdout; return it."""
        proc = self.run(program, *args, **kw)
        assert proc.returncode == code, (program, args, proc.returncode, proc.stdout)
        return proc.stdout.strip()

    def json(self, program: str, *args: str) -> dict:
        return json.loads(self.ok(program, *args, "json"))

    def tmpfile(self, content: str) -> str:
        """A file under /tmp/, as puqdeploy passes passwords and package definitions."""
        fd, path = tempfile.mkstemp(prefix="simtest-", dir="/tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        self.tmpfiles.append(path)
        return path

    def package(self, name: str = "biz", **overrides: str) -> None:
        values = dict(PACKAGE, **overrides)
        self.ok("v-add-user-package",
                self.tmpfile("".join(f"{k}='{v}'\n" for k, v in values.items())), name)

    def user(self, user: str = "excom", password: str = "S3cret-pass", package: str = "biz",
             email: str = "owner@example.com") -> None:
        self.ok("v-add-user", user, self.tmpfile(password + "\n"), email, package)


@pytest.fixture(scope="session")
def tmpfiles():
    """Password/package files under /tmp/, removed at the end of the session."""
    created: list[str] = []
    yield created
    for path in created:
        Path(path).unlink(missing_ok=True)
