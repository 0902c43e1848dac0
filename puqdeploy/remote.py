"""Transports: how a Command reaches a node. One interface, two implementations.

`LocalTransport` runs commands on this machine with subprocess (the sandbox, and nodes marked
`transport: local`). The SSH transport lives in `ssh_transport.py` (the only module that imports
paramiko) and is loaded lazily, so nothing on the create/status path pays for it.

Contract every transport keeps (tests/test_transport_contract.py runs against each):
- `run()` returns a CommandResult with the exit code, stdout and stderr, or raises
  TransportError (transient: connection refused, reset, timeout) / PermanentTransportError
  (host key mismatch, authentication refused) when the command could not run to an exit code.
- Each TempFile argument is written to a fresh 0600 file under /tmp/ on the node and removed
  afterwards, even when the command fails or times out.
- Output is handed to `on_line(stream, line)` line by line as it arrives, secrets masked.
- A command running longer than `timeout` seconds is killed and CommandTimeout is raised.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from puqdeploy.commands import Command, TempFile, mask

LineSink = Callable[[str, str], None]


class TransportError(Exception):
    """The command could not be run this time; retrying later may succeed."""


class CommandTimeout(TransportError):
    """The command ran past its timeout and was killed."""


class PermanentTransportError(Exception):
    """Retrying cannot help (host key mismatch, authentication refused): operator must act."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished command returned; stdout/stderr are already masked."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float


class Transport(Protocol):
    """What steps use to reach a node."""

    def run(self, command: Command, *, timeout: float, on_line: Optional[LineSink] = None) -> CommandResult:
        """Run one command to completion (see the module contract)."""

    def close(self) -> None:
        """Release the connection; safe to call twice."""


def _noop_sink(stream: str, line: str) -> None:
    return None


class LocalTransport:
    """Runs commands with subprocess on this machine: no shell, argv as a list."""

    def __init__(self, bin_dir: str, tmp_dir: str = "/tmp") -> None:
        self.bin_dir = bin_dir
        self.tmp_dir = tmp_dir

    def _write_temp_files(self, command: Command) -> dict[int, str]:
        paths: dict[int, str] = {}
        for index, arg in enumerate(command.args):
            if isinstance(arg, TempFile):
                fd, path = tempfile.mkstemp(prefix="puqdeploy-", dir=self.tmp_dir)  # 0600
                paths[index] = path
                try:
                    os.fchmod(fd, 0o600)
                    os.write(fd, arg.content.encode())
                finally:
                    os.close(fd)
        return paths

    @staticmethod
    def _remove_temp_files(paths: dict[int, str]) -> None:
        for path in paths.values():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def run(self, command: Command, *, timeout: float, on_line: Optional[LineSink] = None) -> CommandResult:
        sink = on_line or _noop_sink
        secrets = command.secrets()
        paths = self._write_temp_files(command)
        started = time.monotonic()
        try:
            argv = command.argv(self.bin_dir, paths)
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as exc:
                raise TransportError(f"cannot start {command.program}: {exc.strerror}") from exc
            stdout, stderr = _stream(proc, started + timeout, sink, secrets)
            if stdout is None:
                _kill(proc)
                raise CommandTimeout(f"{command.program} timed out after {timeout:g} s and was killed")
            return CommandResult(proc.returncode, stdout, stderr, time.monotonic() - started)
        finally:
            self._remove_temp_files(paths)

    def close(self) -> None:
        return None


def _kill(proc: subprocess.Popen) -> None:
    """Kill the command and everything it started (it runs in its own session)."""
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


def _stream(proc: subprocess.Popen, deadline: float, sink: LineSink, secrets: list[str]):
    """Read both pipes line by line until EOF; (None, None) when the deadline passes first."""
    collected = {"stdout": [], "stderr": []}
    partial = {"stdout": b"", "stderr": b""}
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
    open_streams = 2
    while open_streams:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            selector.close()
            return None, None
        for key, _ in selector.select(timeout=min(remaining, 1.0)):
            name = key.data
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                open_streams -= 1
                if partial[name]:
                    line = mask(partial[name].decode(errors="replace"), secrets)
                    collected[name].append(line)
                    sink(name, line)
                    partial[name] = b""
                continue
            data = partial[name] + chunk
            *lines, partial[name] = data.split(b"\n")
            for raw in lines:
                line = mask(raw.decode(errors="replace"), secrets)
                collected[name].append(line)
                sink(name, line)
    selector.close()
    remaining = max(0.0, deadline - time.monotonic())
    try:
        proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        return None, None
    return "\n".join(collected["stdout"]), "\n".join(collected["stderr"])


def open_transport(node) -> Transport:
    """The transport a node's config asks for; SSH is imported only when a node needs it."""
    if node.transport == "local":
        return LocalTransport(node.hestia_bin)
    from puqdeploy.ssh_transport import SSHTransport  # lazy: paramiko is slow to import

    return SSHTransport(node)
