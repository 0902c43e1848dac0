"""A fleet of real OpenSSH servers on loopback, one per node, as a pytest plugin.

`ssh_fleet` (session scope) starts `/usr/sbin/sshd -D -e -f CONF -E LOG` for web1, mail1, ns1
and ns2 on 127.0.77.1-4, port 2222 (override with $PUQDEPLOY_TEST_SSH_PORT). Each node has its
own ed25519 host key; one client key is authorized for root; a known_hosts file lists all four.
Nodes can be stopped and started again mid-test with the same host key, and their connections
dropped while sshd keeps listening, so tests can exercise every failure a real fleet shows.

Never skipped: if sshd cannot start, the fixture fails with sshd's own log, because a green run
that silently left out the SSH tests would be worse than a red one.

Usage:
    def test_x(ssh_fleet):
        node = ssh_fleet["web1"]
        cfg = ssh_fleet.node_config("web1", hestia_bin=bin_dir)   # a puqdeploy NodeConfig
        before = node.accepted_connections()
        with node.stopped(): ...                                  # back up afterwards
        ssh_fleet.config_nodes()      # {"web1": {...}, ...} for a puqdeploy config's `nodes:`
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests.processes import die_with_parent
from tests.sshkeys import generate_key, read_banner

SSHD = "/usr/sbin/sshd"
PORT = int(os.environ.get("PUQDEPLOY_TEST_SSH_PORT", "2222"))
FLEET_NODES = {
    "web1": ("127.0.77.1", ["web"]),
    "mail1": ("127.0.77.2", ["mail"]),
    "ns1": ("127.0.77.3", ["dns"]),
    "ns2": ("127.0.77.4", ["dns"]),
    "host1": ("127.0.77.5", ["web", "mail"]),  # the sandbox's Unified node
}
READY_SECONDS = 15.0
STOP_SECONDS = 10.0

SSHD_CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {host_key_file}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
LogLevel VERBOSE
UseDNS no
PrintMotd no
PrintLastLog no
# several worker threads share one connection, one channel (session) each
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
"""


class FleetError(RuntimeError):
    """The fleet could not be brought into the state a test asked for."""




def _live_children() -> dict[int, list[int]]:
    """ppid -> pids of every process that is not a zombie (zombies hold no sockets)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state not in ("Z", "X"):
            children.setdefault(int(ppid), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (sshd's per-connection processes, shells, commands)."""
    children, found, todo = _live_children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class SSHNode:
    """One sshd: a node of the test fleet, with the knobs tests need to break it."""

    name: str
    address: str
    port: int
    roles: list[str]
    directory: Path
    authorized_keys: Path
    host_key: str = ""  # public line "ssh-ed25519 AAAA..."
    bin_dir: Optional[str] = None  # the simulated panel, once install_panel() ran
    _process: Optional[subprocess.Popen] = field(default=None, repr=False)

    @property
    def host_key_file(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def config_path(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.port} {self.host_key}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def prepare(self) -> None:
        """Host key (generated once: start() after stop() presents the same key) and config."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.host_key_file.exists():
            self.host_key = generate_key(self.host_key_file, f"root@{self.name}")
        self.config_path.write_text(SSHD_CONFIG.format(
            port=self.port, address=self.address, host_key_file=self.host_key_file,
            pid_file=self.directory / "sshd.pid", authorized_keys=self.authorized_keys))

    def start(self) -> None:
        """Start sshd and return once it answers with an SSH banner; fail loudly otherwise."""
        if self.running:
            return
        if read_banner(self.address, self.port) is not None:
            raise FleetError(f"{self.address}:{self.port} is already taken by another server "
                             f"(a stale sshd from an earlier run?); {self.name} cannot start")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=die_with_parent)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise FleetError(f"sshd for {self.name} exited with {self._process.returncode}:\n{self.log()}")
            banner = read_banner(self.address, self.port, timeout=0.5)
            if banner and banner.startswith(b"SSH-"):
                return
            time.sleep(0.02)  # polling the readiness condition, bounded by the deadline
        self.stop()
        raise FleetError(f"sshd for {self.name} did not answer on {self.address}:{self.port} "
                         f"within {READY_SECONDS:g} s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the listener and every connection it serves, as if the machine went away."""
        process, self._process = self._process, None
        if process is None:
            return
        victims = descendants(process.pid)
        if process.poll() is None:
            process.terminate()
        self._kill(victims, spare_group=os.getpgid(0))
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)

    def drop_connections(self) -> int:
        """Kill the processes behind every open connection; sshd keeps listening. How many."""
        if not self.running:
            raise FleetError(f"{self.name} is not running")
        total = 0
        for _ in range(10):  # a connection being accepted right now may fork once more
            victims = descendants(self._process.pid)
            if not victims:
                return total
            total += self._kill(victims, spare_group=os.getpgid(self._process.pid))
        raise FleetError(f"{self.name}: connections keep reappearing")

    @staticmethod
    def _kill(pids: list[int], spare_group: int) -> int:
        """SIGKILL each pid and its process group: a child forked while we look (a command's
        `sleep &`) is orphaned to init, out of the tree, but still in its session's group."""
        groups = set()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        killed = 0
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for group in groups - {spare_group, os.getpgid(0)}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        return killed

    @contextlib.contextmanager
    def stopped(self) -> Iterator["SSHNode"]:
        """`with node.stopped():` the node is down inside the block and back up after it."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"

    def accepted_connections(self) -> int:
        """Logins sshd accepted so far ("Accepted publickey" lines in its VERBOSE log)."""
        return sum("Accepted publickey" in line for line in self.log().splitlines())

    def install_panel(self) -> str:
        """Install the simulated HestiaCP (puqdeploy.sandbox.node) for this node; its bin dir."""
        if self.bin_dir is None:
            from puqdeploy.sandbox.node import install_node  # written alongside; import when used

            self.bin_dir = str(install_node(str(self.directory / "panel")))
        return self.bin_dir


@dataclass
class SSHFleet:
    """Four sshd nodes sharing one client key and one known_hosts file."""

    root: Path
    port: int = PORT
    nodes: dict[str, SSHNode] = field(default_factory=dict)

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def __getitem__(self, name: str) -> SSHNode:
        return self.nodes[name]

    def __iter__(self) -> Iterator[SSHNode]:
        return iter(self.nodes.values())

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        public = generate_key(self.client_key, "puqdeploy-tests")
        self.authorized_keys.write_text(public + "\n")
        for name, (address, roles) in FLEET_NODES.items():
            node = SSHNode(name, address, self.port, roles, self.root / name, self.authorized_keys)
            node.prepare()
            self.nodes[name] = node
        self.known_hosts.write_text("".join(node.known_hosts_line + "\n" for node in self))
        for node in self:
            node.start()

    def stop(self) -> None:
        for node in self:
            node.stop()

    def new_client_key(self, name: str, kind: str = "ed25519", authorize: bool = False) -> Path:
        """A fresh client key; nobody trusts it unless `authorize` adds it to authorized_keys."""
        path = self.root / name
        public = generate_key(path, name, kind)
        if authorize:
            with open(self.authorized_keys, "a") as handle:
                handle.write(public + "\n")
        return path

    def node_config(self, node_name: str, /, **overrides: Any) -> Any:
        """A puqdeploy NodeConfig reaching `node_name` over SSH with the fleet's key and known_hosts.

        Any field can be overridden (`hestia_bin=`, `known_hosts=`, even `name=` or `host=`).
        """
        node = self[node_name]
        fields = dict(name=node_name, host=node.address, ip=node.address, port=node.port, user="root",
                      key_file=str(self.client_key), known_hosts=str(self.known_hosts),
                      transport="ssh", hestia_bin=node.bin_dir or "/usr/local/hestia/bin",
                      roles=frozenset(node.roles), connect_timeout_seconds=5.0,
                      command_timeout_seconds=60.0, keepalive_seconds=15.0)
        fields.update(overrides)
        try:
            from puqdeploy.config import NodeConfig
        except ImportError:  # config.py is optional for the transport tests
            return _PlainNode(**{k: v for k, v in fields.items() if k in _PlainNode.__dataclass_fields__})
        return NodeConfig(**fields)

    def config_nodes(self, per_node: Optional[dict[str, dict]] = None, **overrides: Any) -> dict[str, dict]:
        """The `nodes:` block of a puqdeploy config (plain dicts, ready for yaml.safe_dump)."""
        block: dict[str, dict] = {}
        for node in self:
            entry = {"host": node.address, "ip": node.address, "port": node.port, "user": "root",
                     "key_file": str(self.client_key), "known_hosts": str(self.known_hosts),
                     "transport": "ssh", "hestia_bin": node.bin_dir or "/usr/local/hestia/bin",
                     "roles": list(node.roles), "connect_timeout_seconds": 5,
                     "command_timeout_seconds": 60}
            entry.update(overrides)
            entry.update((per_node or {}).get(node.name, {}))
            block[node.name] = entry
        return block


@dataclass(frozen=True)
class _PlainNode:
    """Stand-in with NodeConfig's transport fields, used only if puqdeploy.config is missing."""

    name: str
    host: str
    ip: str = ""
    port: int = 22
    user: str = "root"
    key_file: Optional[str] = None
    password: Optional[str] = None
    known_hosts: Optional[str] = None
    host_key: Optional[str] = None
    sudo: bool = False
    transport: str = "ssh"
    hestia_bin: str = "/usr/local/hestia/bin"
    connect_timeout_seconds: float = 10.0
    command_timeout_seconds: float = 600.0
    keepalive_seconds: float = 15.0


@pytest.fixture(scope="session")
def ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHFleet]:
    """The running fleet for the whole session; torn down (every sshd stopped) at the end."""
    fleet = SSHFleet(tmp_path_factory.mktemp("sshfleet"))
    try:
        try:
            fleet.start()
        except FleetError as exc:
            pytest.fail(f"the sshd test fleet could not start: {exc}", pytrace=False)
        yield fleet
    finally:
        fleet.stop()
