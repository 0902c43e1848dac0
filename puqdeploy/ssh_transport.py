"""The production transport: HestiaCP commands over one verified SSH connection per node.

This is the only module that imports paramiko (slow to import, never needed on the `create` or
`status` path); `remote.open_transport` loads it lazily. It keeps the contract in `remote.py`.

Choices, and why:

- **paramiko.Transport, not SSHClient.** We open the socket, negotiate, check the host key and
  authenticate ourselves. SSHClient would consult `~/.ssh/known_hosts`, an agent and `~/.ssh/id_*`
  and has auto-add policies; here every input is explicit in the node's config and an unknown or
  changed host key is *always* refused (`PermanentTransportError`, with the fingerprint offered
  and the fix: `puqdeploy nodes trust NODE`). Nothing is ever added to a known_hosts file except
  by `append_known_host`, which only `nodes trust` calls after a human looked at the fingerprint.
- **One connection, one channel per command.** Worker threads share an `SSHTransport`; the first
  `run()` connects under a lock, the others reuse it. A dead connection is replaced at the next
  `run()`; if it turns out dead while a command is being set up (before the exec request is sent)
  we reconnect once within the same `run()`. Once the exec request may have reached the node we
  never re-send it: the outcome is unknown, so `TransportError` is raised and the step (which is
  idempotent: check, then act) decides on the retry.
- **Killable commands.** The remote line is
  `exec /bin/sh -c 'echo puqdeploy-pid $$; exec "$@"' puqdeploy ARGV...` (ARGV shell-quoted once
  by `shlex.join`, prefixed by `sudo -n` when the node says `sudo: true`). sshd starts the login
  shell of a command in a new session (setsid), and both `exec`s keep that pid, so the pid we read
  from the first stdout line is the session and process-group leader of the HestiaCP command and
  everything it starts. On timeout we send `TERM` to that group on a second channel (sudo relays
  TERM to its child, and the SSH user may signal its own sudo), wait up to 2 s for the leader to
  go, then `KILL` the group, close the channel and raise `CommandTimeout`.
- **Temp files over SFTP on the same connection.** Each `TempFile` goes to a fresh
  `/tmp/puqdeploy-<random>`, created exclusively (O_EXCL: no symlink games) *with* mode 0600 in
  the SFTP open request and chmod-ed to 0600 again before any content is written, so no other
  user of a shared-hosting node can open it while it holds a password. Everything is removed
  in a `finally`;
  if the connection died first, the paths are remembered and removed as soon as the next
  connection is up (and logged as a warning until then).
- **Streaming without deadlock.** Each command's channel is polled with `select` and both stdout
  and stderr are drained whenever either has data, so multi-megabyte output on either stream
  keeps flowing through SSH flow control.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import secrets as _random
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import paramiko
from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_file import SFTPFile

from puqdeploy.commands import Command, TempFile, mask
from puqdeploy.remote import (
    CommandResult,
    CommandTimeout,
    LineSink,
    PermanentTransportError,
    TransportError,
)

log = logging.getLogger("puqdeploy.ssh")
# paramiko logs failed negotiations with tracebacks from its own thread; without a handler they
# would reach stderr through logging's last resort and break the CLI's one-line error rule.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

PID_MARKER = b"puqdeploy-pid "
_WRAPPER = 'echo "puqdeploy-pid $$"; exec "$@"'
_KILL_GRACE_STEPS = 20  # x 0.1 s between TERM and KILL
_CONNECTION_ERRORS = (paramiko.SSHException, EOFError, OSError)
_RSA_SIGNATURES = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


# --------------------------------------------------------------------------- helpers (public)


def fingerprint(key: Union[paramiko.PKey, bytes, str]) -> str:
    """OpenSSH's fingerprint of a public key: `SHA256:` + unpadded base64 of the key blob.

    Accepts a paramiko key, the raw key blob, or a known_hosts style `TYPE BASE64` (or bare
    BASE64) string, so the CLI can show the same string `ssh-keygen -lf` prints.
    """
    if isinstance(key, paramiko.PKey):
        blob = key.asbytes()
    elif isinstance(key, bytes):
        blob = key
    else:
        fields = key.split()
        blob = base64.b64decode(fields[1] if len(fields) > 1 else fields[0])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def known_hosts_name(host: str, port: int) -> str:
    """The name OpenSSH files a host under: `host` on port 22, `[host]:port` otherwise."""
    return host if int(port) == 22 else f"[{host}]:{port}"


def remote_command_line(argv: list[str], sudo: bool = False) -> str:
    """The exact line sent to sshd: the pid-reporting wrapper around ARGV, each part quoted once.

    The login shell unquotes it once and `exec`s /bin/sh, which prints its pid (the session
    leader, see the module docstring) and `exec`s the argv untouched via "$@".
    """
    words = ["sudo", "-n", *argv] if sudo else list(argv)
    return shlex.join(["exec", "/bin/sh", "-c", _WRAPPER, "puqdeploy", *words])


def fetch_host_key(node: Any) -> tuple[str, str, str]:
    """The key the node's sshd presents: (key type, base64, SHA256 fingerprint); no login.

    For `puqdeploy nodes trust`: the operator compares the fingerprint with the node's console
    (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) before it is written anywhere.
    """
    transport = _negotiate(node, _open_socket(node), prefer=[])
    try:
        key = transport.get_remote_server_key()
    finally:
        transport.close()
    return key.get_name(), key.get_base64(), fingerprint(key)


def append_known_host(known_hosts_path: str, node: Any, key_type: str, key_base64: str) -> bool:
    """Record a trusted host key for the node; False when exactly that entry is already there.

    The file (and its folder) is created private (0600 / 0700) if missing, and the entry uses
    `[host]:port` for non-standard ports, as OpenSSH itself would write it, so the same file
    works with the `ssh` command.
    """
    if not re.fullmatch(r"[A-Za-z0-9@.-]+", key_type) or not re.fullmatch(r"[A-Za-z0-9+/=]+", key_base64):
        raise ValueError("key type and base64 must be single words (one known_hosts line)")
    try:
        key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_base64))
    except (binascii.Error, ValueError, paramiko.SSHException) as exc:
        raise ValueError(f"not a usable {key_type} public key: {exc}") from exc
    name = known_hosts_name(node.host, _opt(node, "port", 22))
    if any(k.asbytes() == key.asbytes() for k in _known_hosts_keys(known_hosts_path, name, node)):
        return False
    folder = os.path.dirname(os.path.abspath(known_hosts_path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(known_hosts_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        prefix = b"\n" if _lacks_final_newline(known_hosts_path) else b""
        os.write(fd, prefix + f"{name} {key_type} {key_base64}\n".encode())
    finally:
        os.close(fd)
    return True


def known_host_fingerprints(known_hosts_path: Optional[str], node: Any) -> list[str]:
    """SHA256 fingerprints of the keys the file already lists for the node (plain or hashed).

    `nodes trust` uses it to refuse adding a second, different key next to an old one.
    """
    name = known_hosts_name(node.host, _opt(node, "port", 22))
    return [fingerprint(k) for k in _known_hosts_keys(known_hosts_path, name, node)]


def _lacks_final_newline(path: str) -> bool:
    """True when appending a line would glue it onto the file's last line."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def probe(node: Any, timeout: float = 30.0) -> dict:
    """`nodes check`: can we log in and run the panel? {"reachable", "latency_ms", "version", "error"}.

    `reachable` means an authenticated session ran `v-list-sys-info json` (exit code any);
    `latency_ms` is the whole check (connect, host key, auth, command); `version` is HestiaCP's
    `HESTIA` field. Errors are returned, not raised, so one bad node does not hide the others.
    """
    started = time.monotonic()
    transport = SSHTransport(node)
    try:
        result = transport.run(Command("v-list-sys-info", ("json",)), timeout=timeout)
    except (TransportError, PermanentTransportError) as exc:
        return _probe_report(False, started, None, str(exc))
    finally:
        transport.close()
    if result.exit_code != 0:
        first = (result.stdout or result.stderr).strip().splitlines()[:1]
        detail = f": {first[0]}" if first else ""
        return _probe_report(True, started, None, f"v-list-sys-info exited {result.exit_code}{detail}")
    version = _hestia_version(result.stdout)
    error = None if version else "v-list-sys-info json did not report a HESTIA version"
    return _probe_report(True, started, version, error)


def _probe_report(reachable: bool, started: float, version: Optional[str], error: Optional[str]) -> dict:
    latency = round((time.monotonic() - started) * 1000.0, 1)
    return {"reachable": reachable, "latency_ms": latency, "version": version, "error": error}


def _hestia_version(text: str) -> Optional[str]:
    """HestiaCP builds this JSON by string concatenation, so read the field, don't trust json."""
    match = re.search(r'"HESTIA"\s*:\s*"([^"]*)"', text)
    return match.group(1) if match and match.group(1) else None


# --------------------------------------------------------------------------- connecting


def _opt(node: Any, name: str, default: Any) -> Any:
    """NodeConfig field with the documented default, so duck-typed test nodes stay small."""
    value = getattr(node, name, default)
    return default if value is None and default is not None else value


def _where(node: Any) -> str:
    return f"{node.host}:{_opt(node, 'port', 22)}"


def _open_socket(node: Any) -> socket.socket:
    """TCP connect; every failure here is transient (the node may be rebooting)."""
    timeout = float(_opt(node, "connect_timeout_seconds", 10))
    try:
        sock = socket.create_connection((node.host, int(_opt(node, "port", 22))), timeout=timeout)
    except socket.timeout as exc:
        raise TransportError(f"node {node.name}: connecting to {_where(node)} timed out after {timeout:g} s") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TransportError(f"node {node.name}: cannot connect to {_where(node)}: {reason}") from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests, no Nagle delay
    return sock


def _negotiate(node: Any, sock: socket.socket, prefer: list[str]) -> paramiko.Transport:
    """SSH banner and key exchange, preferring host key types we already know for this node.

    Preferring the known types matters: sshd has several host keys, and if we let it present
    ECDSA while we pinned Ed25519 we would cry "changed key" for a perfectly good node.
    """
    timeout = float(_opt(node, "connect_timeout_seconds", 10))
    transport = paramiko.Transport(sock)
    transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
    _prefer_key_types(transport, prefer)
    try:
        transport.start_client(timeout=timeout)
    except paramiko.IncompatiblePeer as exc:
        transport.close()
        raise PermanentTransportError(f"node {node.name}: no common SSH algorithms with {_where(node)}: {exc}") from exc
    except _CONNECTION_ERRORS as exc:
        transport.close()
        raise TransportError(f"node {node.name}: SSH handshake with {_where(node)} failed: {_reason(exc)}") from exc
    return transport


def _prefer_key_types(transport: paramiko.Transport, known: list[str]) -> None:
    wanted: list[str] = []
    for name in known:
        wanted.extend(_RSA_SIGNATURES if name == "ssh-rsa" else [name])
    options = transport.get_security_options()
    available = list(options.key_types)
    first = [name for name in dict.fromkeys(wanted) if name in available]
    options.key_types = first + [name for name in available if name not in first]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, EOFError) or not text:
        return "the server closed the connection"
    return text


def _known_hosts_keys(path: Optional[str], name: str, node: Any) -> list[paramiko.PKey]:
    """Keys filed for `name` in an OpenSSH known_hosts file (plain or hashed entries)."""
    if not path or not os.path.exists(path):
        return []
    try:
        entries = paramiko.HostKeys(path).lookup(name)
    except (OSError, paramiko.SSHException, binascii.Error, ValueError) as exc:
        raise PermanentTransportError(f"node {node.name}: cannot read known_hosts {path}: {exc}") from exc
    return list(entries.values()) if entries else []


def _pinned_key(node: Any) -> Optional[paramiko.PKey]:
    line = _opt(node, "host_key", None)
    if not line:
        return None
    fields = line.split()
    try:
        return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))
    except (IndexError, ValueError, binascii.Error, paramiko.SSHException) as exc:
        raise PermanentTransportError(
            f"node {node.name}: host_key is not a 'TYPE BASE64' public key line: {exc}") from exc


@dataclass(frozen=True)
class _HostKeyPolicy:
    """The keys a node may present and where they were configured (for the error message)."""

    keys: list
    pinned: bool
    known_hosts: Optional[str]

    def source(self) -> str:
        return "the pinned host_key in the config" if self.pinned else f"known_hosts {self.known_hosts or '(none configured)'}"


def _host_key_policy(node: Any) -> _HostKeyPolicy:
    """A pinned `host_key` wins over known_hosts: it is the more explicit statement."""
    pinned = _pinned_key(node)
    if pinned is not None:
        return _HostKeyPolicy([pinned], True, None)
    path = _opt(node, "known_hosts", None)
    name = known_hosts_name(node.host, _opt(node, "port", 22))
    return _HostKeyPolicy(_known_hosts_keys(path, name, node), False, path)


def _verify_host_key(node: Any, offered: paramiko.PKey, policy: _HostKeyPolicy) -> None:
    """Refuse anything but a key we were told about; never learn keys on the fly."""
    if any(k.asbytes() == offered.asbytes() for k in policy.keys):
        return
    shown = f"{offered.get_name()} {fingerprint(offered)}"
    trust = f"run `puqdeploy nodes trust {node.name}`"
    if not policy.keys:
        raise PermanentTransportError(
            f"node {node.name}: unknown host key for {_where(node)}: {shown} is not in {policy.source()}; "
            f"check the fingerprint on the node's console, then {trust}")
    if policy.pinned:
        fix = f"if the node was reinstalled, update host_key of node {node.name} in the config"
    else:
        fix = f"if the node was reinstalled, remove its old entry from {policy.known_hosts} and {trust}"
    expected = ", ".join(fingerprint(k) for k in policy.keys)
    raise PermanentTransportError(
        f"node {node.name}: host key for {_where(node)} CHANGED: offered {shown}, expected {expected} "
        f"({policy.source()}); possible man-in-the-middle; {fix}")


def _load_private_key(node: Any) -> paramiko.PKey:
    path = node.key_file
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException as exc:
        raise PermanentTransportError(f"node {node.name}: key_file {path} is encrypted; use a key without passphrase") from exc
    except OSError as exc:
        raise PermanentTransportError(f"node {node.name}: cannot read key_file {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError, paramiko.SSHException) as exc:
        raise PermanentTransportError(f"node {node.name}: key_file {path} is not a supported private key: {exc}") from exc


def _authenticate(node: Any, transport: paramiko.Transport) -> None:
    """Key first, then the configured password; never an agent or ~/.ssh keys."""
    user = _opt(node, "user", "root")
    key_file, password = _opt(node, "key_file", None), _opt(node, "password", None)
    if not key_file and not password:
        raise PermanentTransportError(f"node {node.name}: neither key_file nor password is configured")
    attempts = []
    if key_file:
        attempts.append((f"key {key_file}", lambda: transport.auth_publickey(user, _load_private_key(node))))
    if password:
        attempts.append(("password", lambda: transport.auth_password(user, password, fallback=False)))
    refusals: list[str] = []
    for label, attempt in attempts:
        try:
            attempt()
        except paramiko.AuthenticationException as exc:
            refusals.append(f"{label}: {exc}")
            continue
        except _CONNECTION_ERRORS as exc:
            raise TransportError(f"node {node.name}: connection to {_where(node)} lost during login: {_reason(exc)}") from exc
        if transport.is_authenticated():
            return
        refusals.append(f"{label}: accepted, but the server wants a further authentication step")
    raise PermanentTransportError(
        f"node {node.name}: authentication as {user}@{_where(node)} refused ({'; '.join(refusals)}); "
        f"check that the key is authorized for {user} on the node")


def _connect(node: Any) -> paramiko.Transport:
    """A verified, authenticated connection with keepalive, or a Transport/Permanent error."""
    policy = _host_key_policy(node)
    transport = _negotiate(node, _open_socket(node), prefer=[k.get_name() for k in policy.keys])
    try:
        _verify_host_key(node, transport.get_remote_server_key(), policy)
        _authenticate(node, transport)
    except BaseException:
        transport.close()
        raise
    transport.set_keepalive(int(_opt(node, "keepalive_seconds", 15)))
    return transport


# --------------------------------------------------------------------------- one command


class _Lines:
    """Splits both streams into lines as chunks arrive; masks, collects and forwards them.

    The first stdout line carrying PID_MARKER is the wrapper's pid report: it is taken out of the
    output. Partial lines are kept as a list of pieces so a huge line costs O(n), not O(n^2).
    """

    def __init__(self, sink: LineSink, secrets: list[str]) -> None:
        self.sink = sink
        self.secrets = secrets
        self.pid: Optional[int] = None
        self._want_pid = True
        self._pieces: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.collected: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def feed(self, stream: str, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self._pieces[stream].append(chunk)
            return
        head, _, tail = chunk.rpartition(b"\n")
        data = b"".join(self._pieces[stream]) + head
        self._pieces[stream] = [tail] if tail else []
        for raw in data.split(b"\n"):
            self._line(stream, raw)

    def finish(self) -> None:
        for stream, pieces in self._pieces.items():
            if pieces:
                self._line(stream, b"".join(pieces))
                pieces.clear()

    def text(self, stream: str) -> str:
        return "\n".join(self.collected[stream])

    def _line(self, stream: str, raw: bytes) -> None:
        if self._want_pid and stream == "stdout" and raw.startswith(PID_MARKER):
            self._want_pid = False
            digits = raw[len(PID_MARKER):].strip()
            self.pid = int(digits) if digits.isdigit() else None
            return
        line = mask(raw.decode(errors="replace"), self.secrets)
        self.collected[stream].append(line)
        self.sink(stream, line)


@dataclass
class _Running:
    """What one run() holds on the node: the connection, its SFTP session, files and channel."""

    transport: paramiko.Transport
    sftp: Optional[paramiko.SFTPClient] = None
    paths: dict[int, str] = field(default_factory=dict)  # argument index -> what the argv gets
    created: list[tuple[str, str]] = field(default_factory=list)  # ("file" | "dir", path), in order
    channel: Optional[paramiko.Channel] = None


def _noop_sink(stream: str, line: str) -> None:
    return None


def _create_private_file(sftp: paramiko.SFTPClient, path: str) -> SFTPFile:
    """Open `path` exclusively with mode 0600 in the create request itself.

    paramiko's public `open()` sends no permissions, so the file would exist as 0644 (umask)
    for a moment, long enough for a local user watching /tmp with inotify to keep a read handle.
    This is `SFTPClient.open()` plus the permissions attribute.
    """
    attrs = SFTPAttributes()
    attrs.st_mode = 0o600
    kind, msg = sftp._request(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, attrs)
    if kind != CMD_HANDLE:
        raise paramiko.SSHException(f"SFTP open of {path} returned no handle")
    return SFTPFile(sftp, msg.get_binary(), "wb")


def _write_private(sftp: paramiko.SFTPClient, path: str, content: str) -> None:
    with _create_private_file(sftp, path) as handle:
        handle.chmod(0o600)  # whatever the server did with the open attributes: 0600 before content
        handle.write(content.encode())


def _write_temp_file(sftp: paramiko.SFTPClient, temp: TempFile, created: list[tuple[str, str]]) -> str:
    """Write one TempFile; record what was created (for removal) and return the argv value."""
    path = f"/tmp/puqdeploy-{_random.token_hex(12)}"
    created.append(("file", path))  # before writing: a half-written file is removed too
    _write_private(sftp, path, temp.content)
    return path


def _kill_line(pid: int) -> str:
    """TERM the process group (sudo relays TERM), wait up to 2 s for the leader, then KILL."""
    return (f"kill -TERM -{pid} {pid} 2>/dev/null; n=0; "
            f"while kill -0 {pid} 2>/dev/null && [ $n -lt {_KILL_GRACE_STEPS} ]; do sleep 0.1; n=$((n+1)); done; "
            f"kill -KILL -{pid} {pid} 2>/dev/null; exit 0")


# --------------------------------------------------------------------------- the transport


class SSHTransport:
    """Runs Commands on one node over one shared, lazily opened SSH connection (thread-safe)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._transport: Optional[paramiko.Transport] = None
        self._attempts = 0
        self._last_error: Optional[BaseException] = None
        self._orphans_lock = threading.Lock()
        self._orphans: list[tuple[str, str]] = []

    # ----- public interface

    def run(self, command: Command, *, timeout: float, on_line: Optional[LineSink] = None) -> CommandResult:
        """Run one command to an exit code (see remote.py's contract and this module's notes)."""
        sink = on_line or _noop_sink
        started = time.monotonic()
        running = self._start(command)
        lines = _Lines(sink, command.secrets())
        try:
            exit_code = self._collect(running, command, lines, started + timeout, timeout)
        except (TransportError, CommandTimeout):
            raise
        except BaseException:  # on_line raised, or Ctrl-C: nobody will read it, so stop it
            self._abandon(running, lines.pid)
            raise
        finally:
            self._release(running)
        return CommandResult(exit_code, lines.text("stdout"), lines.text("stderr"), time.monotonic() - started)

    def close(self) -> None:
        """Close the connection; safe to call twice. A later run() would reconnect."""
        with self._lock:
            transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def __enter__(self) -> "SSHTransport":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def orphaned_temp_files(self) -> list[str]:
        """Temp paths a dead connection kept us from removing; removed at the next connection."""
        with self._orphans_lock:
            return [path for _, path in self._orphans]

    # ----- connection

    def _connection(self) -> paramiko.Transport:
        """The live connection, opened under the lock by whichever thread needs it first.

        Threads that queued on the lock behind a connect attempt that failed get that failure
        instead of each waiting out their own connect timeout against a dead node.
        """
        seen = self._attempts
        with self._lock:
            current = self._transport
            if current is not None and current.is_active():
                return current
            if current is not None:
                current.close()
                self._transport = None
            if self._attempts != seen and self._last_error is not None:
                raise type(self._last_error)(str(self._last_error))
            self._attempts += 1
            try:
                current = _connect(self.node)
            except (TransportError, PermanentTransportError) as exc:
                self._last_error = exc
                raise
            self._last_error = None
            self._transport = current
        self._remove_orphans(current)
        return current

    def _discard(self, transport: paramiko.Transport) -> None:
        with self._lock:
            if self._transport is transport:
                self._transport = None
        transport.close()

    # ----- one command

    def _start(self, command: Command) -> _Running:
        """Temp files written and the command started; reconnect once if the link was stale.

        Only failures before the exec request is sent are retried here: up to that point the
        command certainly has not run on the node.
        """
        for attempt in (1, 2):
            running = _Running(self._connection())
            try:
                self._write_temp_files(running, command)
                running.channel = running.transport.open_session(timeout=float(_opt(self.node, "connect_timeout_seconds", 10)))
            except _CONNECTION_ERRORS as exc:
                self._release(running)
                if running.transport.is_active():  # e.g. sshd's MaxSessions: the link is fine
                    raise TransportError(f"node {self.node.name}: cannot start {command.program}: {_reason(exc)}") from exc
                self._discard(running.transport)
                if attempt == 2:
                    raise TransportError(f"node {self.node.name}: connection to {_where(self.node)} lost before "
                                         f"{command.program} could start: {_reason(exc)}") from exc
                continue
            except BaseException:
                self._release(running)
                raise
            self._exec(running, command)
            return running
        raise AssertionError("unreachable")

    def _write_temp_files(self, running: _Running, command: Command) -> None:
        for index, arg in enumerate(command.args):
            if not isinstance(arg, TempFile):
                continue
            if running.sftp is None:
                running.sftp = self._open_sftp(running.transport)
            running.paths[index] = _write_temp_file(running.sftp, arg, running.created)

    def _open_sftp(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        """An SFTP session on the shared connection; a live node refusing SFTP is a config error."""
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
        except paramiko.ChannelException:
            raise  # no free channel (MaxSessions): transient
        except paramiko.SSHException as exc:
            if not transport.is_active():
                raise
            raise PermanentTransportError(f"node {self.node.name}: SFTP is not available on {_where(self.node)} "
                                          f"({_reason(exc)}); enable the sftp Subsystem in sshd_config") from exc
        if sftp is None:
            raise paramiko.SSHException("the server refused the sftp subsystem")
        return sftp

    def _exec(self, running: _Running, command: Command) -> None:
        argv = command.argv(_opt(self.node, "hestia_bin", "/usr/local/hestia/bin"), running.paths)
        line = remote_command_line(argv, sudo=bool(_opt(self.node, "sudo", False)))
        try:
            running.channel.exec_command(line)
        except _CONNECTION_ERRORS as exc:
            self._release(running)
            raise TransportError(f"node {self.node.name}: {command.program} may not have started "
                                 f"(exec request failed: {_reason(exc)})") from exc

    def _collect(self, running: _Running, command: Command, lines: _Lines, deadline: float, timeout: float) -> int:
        """Stream output until EOF, then the exit status; kill and raise at the deadline."""
        channel = running.channel
        while True:
            finished = channel.eof_received or channel.closed
            while channel.recv_stderr_ready():
                lines.feed("stderr", channel.recv_stderr(65536))
            while channel.recv_ready():
                lines.feed("stdout", channel.recv(65536))
            if finished:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timed_out(running, command, lines.pid, timeout)
            select.select([channel], [], [], min(remaining, 1.0))
        lines.finish()
        remaining = deadline - time.monotonic()
        if not channel.status_event.wait(max(remaining, 0.0)):
            self._timed_out(running, command, lines.pid, timeout)
        if channel.exit_status < 0:
            raise self._no_exit_status(running, command)
        return channel.exit_status

    def _no_exit_status(self, running: _Running, command: Command) -> TransportError:
        if not running.transport.is_active():
            return TransportError(f"node {self.node.name}: connection to {_where(self.node)} lost while "
                                  f"{command.program} was running; its outcome is unknown")
        return TransportError(f"node {self.node.name}: {command.program} ended without an exit status "
                              f"(killed by a signal?)")

    def _timed_out(self, running: _Running, command: Command, pid: Optional[int], timeout: float) -> None:
        """Kill the remote process group, then raise CommandTimeout (always raises)."""
        problem = self._kill_remote(running.transport, pid)
        running.channel.close()
        if problem:
            raise CommandTimeout(f"{command.program} timed out after {timeout:g} s; killing it failed: {problem}")
        raise CommandTimeout(f"{command.program} timed out after {timeout:g} s and was killed")

    def _abandon(self, running: _Running, pid: Optional[int]) -> None:
        """Kill a command whose caller gave up on it, if it may still be running."""
        if running.channel is not None and not running.channel.exit_status_ready() and running.transport.is_active():
            problem = self._kill_remote(running.transport, pid)
            if problem:
                log.warning("node %s: abandoned command may still run: %s", self.node.name, problem)

    def _kill_remote(self, transport: paramiko.Transport, pid: Optional[int]) -> Optional[str]:
        """Run the kill line on a second channel; a description of what went wrong, or None."""
        if pid is None:
            return "its pid was never reported (closed the channel instead)"
        try:
            channel = transport.open_session(timeout=float(_opt(self.node, "connect_timeout_seconds", 10)))
            try:
                channel.exec_command(_kill_line(pid))
                if not channel.status_event.wait(10.0):
                    return f"kill of remote pid {pid} did not finish"
            finally:
                channel.close()
        except _CONNECTION_ERRORS as exc:
            return f"could not reach the node to kill pid {pid}: {_reason(exc)}"
        return None

    # ----- cleanup

    def _release(self, running: _Running) -> None:
        """Close the channel and remove the temp files: on the same SFTP session if alive."""
        if running.channel is not None:
            running.channel.close()
        leftovers = self._remove(running.sftp, running.created) if running.created else []
        if running.sftp is not None:
            running.sftp.close()
        running.created = []
        if leftovers:
            log.warning("node %s: could not remove temp files %s (connection lost); will retry on reconnect",
                        self.node.name, ", ".join(path for _, path in leftovers))
            with self._orphans_lock:
                self._orphans.extend(leftovers)

    @staticmethod
    def _remove(sftp: Optional[paramiko.SFTPClient], created: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Remove files, then their folders (reverse creation order); return what is left.

        Anything already gone counts as removed, so a retried cleanup is harmless.
        """
        left: list[tuple[str, str]] = []
        for kind, path in reversed(created):
            try:
                if sftp is None:
                    raise paramiko.SSHException("no SFTP session")
                (sftp.rmdir if kind == "dir" else sftp.remove)(path)
            except FileNotFoundError:
                pass
            except _CONNECTION_ERRORS:
                left.append((kind, path))
        left.reverse()
        return left

    def _remove_orphans(self, transport: paramiko.Transport) -> None:
        with self._orphans_lock:
            pending, self._orphans = self._orphans, []
        if not pending:
            return
        try:
            sftp = self._open_sftp(transport)
        except (TransportError, PermanentTransportError, *_CONNECTION_ERRORS):
            sftp = None
        try:
            left = self._remove(sftp, pending)
        finally:
            if sftp is not None:
                sftp.close()
        with self._orphans_lock:
            self._orphans.extend(left)
        if len(left) < len(pending):
            log.info("node %s: removed %d temp file(s) left by a lost connection", self.node.name, len(pending) - len(left))
