"""Real DNS servers (bind9's `named`) for the tests, as a pytest plugin.

Two kinds of server, both `DnsServer`s (address, port, start(), stop(), log, reload()):

- `DnsNodeServer`: serves one simulated HestiaCP node. Its named.conf includes the node's
  ``NODE/bind/zones.conf``, the zone list hestia_sim rewrites after every zone change, and
  while it exists the node's ``NODE/bind/reload.json`` holds the rndc command that reloads
  it, so the sim's v-* commands end with a real reload, like HestiaCP's v-restart-dns.
  Started by the `dns_node_servers` factory: ``dns_node_servers.start_for(node_dir,
  "127.0.77.3")``.
- `ResolverServer`: "the resolver" Auto-SSL consults, authoritative for a few test zones
  (example.com, example.net, example.org) whose A records a test sets with
  ``test_resolver.set_a("shop.example.com", "127.0.77.1")``. Fixture `test_resolver`.

Every server runs ``named -g -c CONF -u root`` in the foreground, with its own directory, an
rndc control channel with its own key, ``recursion no``, on its own loopback address. named
only listens on addresses assigned to an interface, so a missing 127.x address is added to
`lo` (``ip addr add A/32 dev lo``, as root) and removed when the last session using it ends.
The DNS port is 53 ($PUQDEPLOY_TEST_DNS_PORT overrides it); when that port is taken on the
address, a free one is used instead — read `server.port`, never assume 53. Several pytest
sessions may run on one machine at once: starts are serialised per address (`address_lock`)
and a stopped server keeps its ports reserved, so no two servers ever share a port.

Readiness is awaited, not slept for: start() returns once the server answers a query and
serves every zone it was given with the `aa` flag, or fails with named's log (bounded by
READY_SECONDS). Never skipped: if named cannot run, the fixture fails with named's own log,
because a green run that silently left out the DNS tests would be worse than a red one.

A reload (rndc reload, which the sim's commands run) returns once named has read its config
but *before* it has loaded the changed zones — real HestiaCP behaves the same. So after a
v-* command, wait for its effect (`server.wait_synced()`: every zone of the node's panel
served at its dns.conf SERIAL; `server.wait_not_served(zone)` after a removal) before
asserting on answers; puqdeploy's own verification must likewise retry an older serial.

Usage:
    def test_x(dns_node_servers, test_resolver):
        server = dns_node_servers.start_for(node_dir, "127.0.77.3")
        ...run v-add-dns-record through node_dir/bin...
        server.wait_synced()
        dnscheck.verify_zone(server.address, server.port, "example.com", [...], 2.0)
        with server.stopped(): ...                 # down inside the block, back after it
        test_resolver.set_a("example.com", "127.0.77.1")   # returns once it is served
        dnscheck.resolve_a("example.com", [test_resolver.address], test_resolver.port)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import pytest

from tests.processes import die_with_parent

NAMED = "/usr/sbin/named"
RNDC = "/usr/sbin/rndc"
DNS_PORT = int(os.environ.get("PUQDEPLOY_TEST_DNS_PORT", "53"))
RESOLVER_ADDRESS = os.environ.get("PUQDEPLOY_TEST_RESOLVER_ADDRESS", "127.0.77.53")
RESOLVER_ZONES = ("example.com", "example.net", "example.org")
READY_SECONDS = 20.0
STOP_SECONDS = 10.0
KEY_NAME = "puqdeploy-test"

NAMED_CONF = """\
// named for the test DNS server {name!r} (tests/dnsfleet.py); started as
// named -g -c {config} -u root
key "{key_name}" {{ algorithm hmac-sha256; secret "{secret}"; }};
controls {{ inet {address} port {control_port} allow {{ 127.0.0.0/8; }} keys {{ "{key_name}"; }}; }};
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    listen-on port {port} {{ {address}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    allow-transfer {{ none; }};
    notify no;
    dnssec-validation no;
    interface-interval 0;
    automatic-interface-scan no;
}};
include "{zones_conf}";
"""

RNDC_CONF = """\
key "{key_name}" {{ algorithm hmac-sha256; secret "{secret}"; }};
options {{ default-key "{key_name}"; default-server {address}; default-port {control_port}; }};
"""


class DnsFleetError(RuntimeError):
    """A test DNS server could not be brought into the state a test asked for."""


# --------------------------------------------------------------------------- processes



def _port_free(address: str, port: int) -> bool:
    """Can a server bind `port` on `address` for both UDP and TCP (as named will)?"""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as named does
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def _free_port(address: str) -> int:
    """A port that is free for UDP and TCP on `address` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
            port = sock.getsockname()[1]
        if _port_free(address, port):
            return port
    raise DnsFleetError(f"no free port found on {address}")


@contextlib.contextmanager
def address_lock(address: str) -> Iterator[None]:
    """Machine-wide lock of one loopback address, held from "is the port free?" until named
    listens (and while an address is removed). Two pytest sessions on one machine would
    otherwise both find port 53 free and both start named there: named binds with
    SO_REUSEPORT, so both would succeed and the kernel would share the queries between two
    servers holding different zones."""
    path = Path(tempfile.gettempdir()) / f"puqdeploy-dnsfleet-{address}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class LoopbackAddresses:
    """Adds 127.x.y.z addresses to `lo` when missing (named only listens on addresses an
    interface has) and removes them again when the last test session using them ends.

    "Last" across processes: two pytest sessions on one machine may use the same address,
    and named drops its listener the moment its address leaves the interface, so a session
    must not remove an address another one still serves on. Each session holds a shared
    flock on the address's users file while it uses it; the address is removed only by a
    session that can then take that lock exclusively, and only if this fleet added it (a
    marker file says so: an address that was there before is never removed)."""

    def __init__(self) -> None:
        self.held: dict[str, object] = {}

    @staticmethod
    def present(address: str) -> bool:
        proc = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"],
                              capture_output=True, text=True, check=False)
        return re.search(rf"\binet {re.escape(address)}/", proc.stdout) is not None

    @staticmethod
    def _file(address: str, kind: str) -> Path:
        return Path(tempfile.gettempdir()) / f"puqdeploy-dnsfleet-{address}.{kind}"

    def ensure(self, address: str) -> None:
        """Make sure `address` is on lo for as long as this session runs (call it holding
        `address_lock(address)`, as DnsServer.start does)."""
        if not address.startswith("127."):
            raise DnsFleetError(f"test DNS servers listen on loopback only, not {address}")
        if address not in self.held:
            users = open(self._file(address, "users"), "a")
            fcntl.flock(users, fcntl.LOCK_SH)
            self.held[address] = users
        if self.present(address):
            return
        proc = subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 and not self.present(address):
            raise DnsFleetError(f"cannot add {address} to lo (needs root): "
                                f"{proc.stderr.strip() or proc.stdout.strip()}")
        self._file(address, "added").touch()

    def release_all(self) -> None:
        """Let go of every address; remove those this fleet added that nobody else uses."""
        for address, users in self.held.items():
            with address_lock(address):
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    pass  # another session still serves there: it removes it when done
                else:
                    marker = self._file(address, "added")
                    if marker.exists():
                        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"],
                                       capture_output=True, check=False)
                        marker.unlink()
                finally:
                    users.close()
        self.held.clear()


# --------------------------------------------------------------------------- servers

@dataclass
class DnsServer:
    """One named process: its own directory, config, rndc key and control channel.

    `port` 0 means "DNS_PORT if free on the address, else any free port" (decided at the
    first start and kept afterwards, so a restarted server is where it was)."""

    name: str
    address: str
    directory: Path
    addresses: LoopbackAddresses
    port: int = 0
    control_port: int = 0
    _secret: str = field(default="", repr=False)
    _process: Optional[subprocess.Popen] = field(default=None, repr=False)
    _reserved: list = field(default_factory=list, repr=False)

    # -- paths and state
    @property
    def config_path(self) -> Path:
        return self.directory / "named.conf"

    @property
    def rndc_conf_path(self) -> Path:
        return self.directory / "rndc.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "named.log"

    @property
    def zones_conf(self) -> Path:
        """The zone list named.conf includes (overridden by the node servers)."""
        return self.directory / "zones.conf"

    @property
    def log(self) -> str:
        """Everything named logged so far (all its starts), for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def reload_argv(self) -> list[str]:
        """The command that makes this server reload its config and zones (rndc reload).

        `-c` with our own rndc.conf rather than `-k KEYFILE`: rndc ignores -k whenever a
        system rndc.conf exists, and then talks to the wrong key."""
        return [RNDC, "-c", str(self.rndc_conf_path), "-s", self.address,
                "-p", str(self.control_port), "reload"]

    def zone_names(self) -> list[str]:
        """The zones named should serve once started: those of the included zone list."""
        try:
            text = self.zones_conf.read_text()
        except FileNotFoundError:
            return []
        return re.findall(r'^\s*zone\s+"([^"]+)"', text, flags=re.M)

    # -- life cycle
    def prepare(self) -> None:
        """Directory, key, ports and config; the ports are chosen once, at the first start."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.addresses.ensure(self.address)
        if not self._secret:
            self._secret = base64.b64encode(os.urandom(32)).decode()
        if not self.port:
            self.port = DNS_PORT if _port_free(self.address, DNS_PORT) else _free_port(self.address)
        if not self.control_port:
            self.control_port = _free_port(self.address)
        if not self.zones_conf.exists():
            self.zones_conf.write_text("")
        values = dict(name=self.name, config=self.config_path, key_name=KEY_NAME,
                      secret=self._secret, address=self.address, port=self.port,
                      control_port=self.control_port, directory=self.directory,
                      zones_conf=self.zones_conf)
        self.config_path.write_text(NAMED_CONF.format(**values))
        self.rndc_conf_path.write_text(RNDC_CONF.format(**values))
        self.rndc_conf_path.chmod(0o600)

    def start(self) -> None:
        """Start named; return once it answers and serves its zones, or fail with its log."""
        if self.running:
            return
        with address_lock(self.address):
            self._release_ports()
            self.prepare()
            for port in (self.port, self.control_port):
                if not _port_free(self.address, port):
                    raise DnsFleetError(f"{self.address}:{port} is taken (a stale named from "
                                        f"an earlier run?); DNS server {self.name} cannot start")
            with open(self.log_path, "ab") as log:
                log.write(f"---- starting named for {self.name} on {self.address}:{self.port}"
                          "\n".encode())
                log.flush()
                self._process = subprocess.Popen(
                    [NAMED, "-g", "-4", "-n", "1", "-c", str(self.config_path), "-u", "root"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    preexec_fn=die_with_parent)
            self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll (bounded) until a query is answered and every zone is served with `aa`."""
        from puqdeploy.dnscheck import query_authoritative

        deadline = time.monotonic() + READY_SECONDS
        pending = ["."] + self.zone_names()
        last = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise DnsFleetError(f"named for {self.name} exited with "
                                    f"{self._process.returncode}:\n{self.log}")
            zone = pending[0]
            if zone == "." and not self._accepts_tcp():
                time.sleep(0.02)  # polling the listener, bounded by the deadline
                continue
            last = query_authoritative(self.address, self.port, zone, "@", "SOA", 0.5)
            # "." only proves the listener: any answer will do (REFUSED, as recursion is off).
            if last.answered and (zone == "." or last.ok):
                pending.pop(0)
                if not pending:
                    return
                continue
            time.sleep(0.02)  # polling the readiness condition, bounded by the deadline
        self._terminate()  # not stop(): the caller holds the address lock
        raise DnsFleetError(f"named for {self.name} did not serve {pending[0]!r} on "
                            f"{self.address}:{self.port} within {READY_SECONDS:g} s "
                            f"(last answer: {last.describe() if last else 'none'}):\n{self.log}")

    def _accepts_tcp(self) -> bool:
        """Is named listening yet? A refused TCP connect says "no" at once, where a UDP query
        to a closed port would only time out (dnspython's UDP sockets see no ICMP errors)."""
        try:
            with socket.create_connection((self.address, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop named (SIGTERM: it closes its sockets and exits), as if the machine went
        away: queries time out. Its ports stay reserved (bound, never answered) so that
        start() brings it back on the same ports even if another server starts meanwhile."""
        if self._process is None:
            return
        with address_lock(self.address):  # no other server may slip in between
            self._terminate()
            self._reserve_ports()

    def _terminate(self) -> bool:
        """End the named process, if any; True when there was one."""
        process, self._process = self._process, None
        if process is None:
            return False
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)
        return True

    def close(self) -> None:
        """Stop for good: the ports are released too."""
        self.stop()
        self._release_ports()

    def _reserve_ports(self) -> None:
        for port in (self.port, self.control_port):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                sock = socket.socket(socket.AF_INET, kind)
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.address, port))
                except OSError:  # taken already: start() will say so
                    sock.close()
                    continue
                self._reserved.append(sock)

    def _release_ports(self) -> None:
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()

    @contextlib.contextmanager
    def stopped(self) -> Iterator["DnsServer"]:
        """`with server.stopped():` the server is down inside the block and back up after."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def reload(self) -> None:
        """rndc reload; raises with rndc's output and named's log when it fails.

        Like HestiaCP's own reload, this returns once named has read its config, *before*
        the changed zones are loaded (named logs "reloading zones succeeded", then "loaded
        serial N" a few to tens of milliseconds later): wait with `wait_for_serial`."""
        proc = subprocess.run(self.reload_argv, capture_output=True, text=True, timeout=30,
                              check=False)
        if proc.returncode != 0:
            raise DnsFleetError(f"rndc reload of {self.name} failed ({proc.returncode}): "
                                f"{proc.stderr.strip() or proc.stdout.strip()}\n{self.log}")

    def wait_for_serial(self, zone: str, serial: int) -> None:
        """Poll (bounded) until `zone` is served authoritatively at `serial` or later."""
        from puqdeploy.dnscheck import query_authoritative

        deadline = time.monotonic() + READY_SECONDS
        while True:
            answer = query_authoritative(self.address, self.port, zone, "@", "SOA", 0.5)
            if answer.ok and (answer.serial or 0) >= serial:
                return
            if time.monotonic() > deadline:
                raise DnsFleetError(f"{self.name} did not serve {zone} at serial {serial} "
                                    f"within {READY_SECONDS:g} s (last answer: "
                                    f"{answer.describe()}, serial {answer.serial}):\n{self.log}")
            time.sleep(0.01)  # polling the reload's effect, bounded by the deadline

    def wait_not_served(self, zone: str) -> None:
        """Poll (bounded) until the server no longer answers for `zone` with authority."""
        from puqdeploy.dnscheck import query_authoritative

        deadline = time.monotonic() + READY_SECONDS
        while True:
            answer = query_authoritative(self.address, self.port, zone, "@", "SOA", 0.5)
            if answer.answered and not answer.authoritative:
                return
            if time.monotonic() > deadline:
                raise DnsFleetError(f"{self.name} still serves {zone} after {READY_SECONDS:g} "
                                    f"s ({answer.describe()}):\n{self.log}")
            time.sleep(0.01)  # polling the reload's effect, bounded by the deadline


@dataclass
class DnsNodeServer(DnsServer):
    """named for one simulated HestiaCP node: serves NODE/bind/zones.conf, and tells the
    node's v-* commands how to reload it (NODE/bind/reload.json) for as long as it exists.

    While the server is stopped reload.json stays, so a zone change on the node fails its
    reload and exits E_RESTART (20) — what HestiaCP does when bind9 is down."""

    node_dir: Path = Path()

    @property
    def zones_conf(self) -> Path:
        return self.node_dir / "bind" / "zones.conf"

    @property
    def reload_json(self) -> Path:
        return self.node_dir / "bind" / "reload.json"

    def prepare(self) -> None:
        # Files for every zone the panel has (it may predate them, or be a copy), so named
        # starts with the node's current zones; then the reload hook for the sim.
        from puqdeploy.sandbox import hestia_sim

        hestia_sim.rebuild_bind_files(str(self.node_dir))
        super().prepare()

    def start(self) -> None:
        super().start()
        tmp = self.reload_json.with_name(f".reload.json.{os.getpid()}")
        tmp.write_text(json.dumps(self.reload_argv) + "\n")
        os.replace(tmp, self.reload_json)

    def wait_synced(self) -> None:
        """Wait until every zone of the node's panel that is not suspended is served at the
        SERIAL its dns.conf holds: the state after a v-* command's reload has taken effect."""
        from puqdeploy.sandbox import hestia_sim

        panel = hestia_sim.Panel(str(self.node_dir), {})
        for user in panel.all_users():
            for zone in panel.objects(user, "dns"):
                if zone.get("SUSPENDED") != "yes":
                    self.wait_for_serial(hestia_sim.ascii_name(zone["DOMAIN"]),
                                         int(zone.get("SERIAL") or 0))

    def detach(self) -> None:
        """Stop and take the reload hook away: the node is a plain sandbox node again."""
        self.close()
        self.reload_json.unlink(missing_ok=True)


@dataclass
class ResolverServer(DnsServer):
    """The resolver Auto-SSL asks: authoritative for a few test zones whose A records tests
    change with `set_a`. (An authoritative server, not a recursive one: a test only needs
    "what does the world see for this name", and nothing outside loopback is reachable.)"""

    zones: tuple[str, ...] = RESOLVER_ZONES
    _records: dict[str, dict[str, list[str]]] = field(default_factory=dict, repr=False)
    _serial: int = 1

    def prepare(self) -> None:
        self._write_zones()
        super().prepare()

    def set_a(self, name: str, address: Union[str, Sequence[str], None]) -> None:
        """Make `name` (in one of `zones`) resolve to `address` — one address, several, or
        none (None or [] removes its A records); returns once the server serves the change."""
        fqdn = name.rstrip(".").lower()
        zone = self._zone_of(fqdn)
        addresses = [address] if isinstance(address, str) else list(address or ())
        for item in addresses:
            socket.inet_aton(item)  # a typo here should fail the test that made it
        names = self._records.setdefault(zone, {})
        if addresses:
            names[fqdn] = addresses
        else:
            names.pop(fqdn, None)
        self._publish()

    def addresses_of(self, name: str) -> list[str]:
        """The A records `set_a` gave `name` (what the server serves for it)."""
        fqdn = name.rstrip(".").lower()
        return list(self._records.get(self._zone_of(fqdn), {}).get(fqdn, []))

    def reset(self) -> None:
        """No A records anywhere (each test starts from this)."""
        if any(self._records.values()):
            self._records.clear()
            self._publish()

    def _zone_of(self, fqdn: str) -> str:
        for zone in sorted(self.zones, key=len, reverse=True):
            if fqdn == zone or fqdn.endswith("." + zone):
                return zone
        raise ValueError(f"{fqdn} is in none of the resolver's zones {', '.join(self.zones)}")

    def _write_zones(self) -> None:
        zone_dir = self.directory / "zones"
        zone_dir.mkdir(parents=True, exist_ok=True)
        stanzas = []
        for zone in self.zones:
            lines = [f"$ORIGIN {zone}.", "$TTL 60",
                     f"@ IN SOA ns.{zone}. hostmaster.{zone}. ({self._serial} 3600 600 86400 60)",
                     f"@ IN NS ns.{zone}.", f"ns IN A {self.address}"]
            for fqdn, addresses in sorted(self._records.get(zone, {}).items()):
                lines.extend(f"{fqdn}. IN A {item}" for item in addresses)
            path = zone_dir / f"{zone}.db"
            tmp = path.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, path)
            stanzas.append(f'zone "{zone}" {{ type master; file "{path}"; }};\n')
        self.zones_conf.write_text("".join(stanzas))

    def _publish(self) -> None:
        """New serial, new files, reload, then wait until the new serial is served."""
        self._serial += 1
        self._write_zones()
        if not self.running:
            return  # served from the files at the next start
        self.reload()
        for zone in self.zones:
            self.wait_for_serial(zone, self._serial)


class DnsNodeServers:
    """The `dns_node_servers` fixture: starts named for simulated nodes, stops them all at
    the end of the session."""

    def __init__(self, root: Path, addresses: LoopbackAddresses) -> None:
        self.root = root
        self.addresses = addresses
        self.servers: list[DnsNodeServer] = []

    def start_for(self, node_dir: Union[str, Path], address: str, *,
                  port: int = 0) -> DnsNodeServer:
        """A running named serving the simulated node in `node_dir` on `address` (port: see
        DnsServer; 0 = 53 when free). The same node and address again returns the same
        server, started again if it was stopped; another address gets another server."""
        node = Path(node_dir).resolve()
        if not (node / "data").is_dir():
            raise DnsFleetError(f"{node} is not a simulated node (no data/): install_node first")
        for server in self.servers:
            if server.node_dir == node and server.address == address:
                server.start()
                return server
        for server in self.servers:
            if server.node_dir == node and server.running:
                server.detach()  # one reload hook per node: the newest server owns it
        name = f"{node.name}-{len(self.servers) + 1}"
        server = DnsNodeServer(name=name, address=address, directory=self.root / name,
                               addresses=self.addresses, port=port, node_dir=node)
        self.servers.append(server)
        try:
            server.start()
        except DnsFleetError as exc:
            server.reload_json.unlink(missing_ok=True)
            pytest.fail(f"named for node {node} could not start: {exc}", pytrace=False)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.detach()


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def dns_loopback() -> Iterator[LoopbackAddresses]:
    """The loopback addresses the DNS servers added; removed after every server stopped."""
    addresses = LoopbackAddresses()
    try:
        yield addresses
    finally:
        addresses.release_all()


@pytest.fixture(scope="session")
def dns_node_servers(tmp_path_factory: pytest.TempPathFactory,
                     dns_loopback: LoopbackAddresses) -> Iterator[DnsNodeServers]:
    """Factory: ``start_for(node_dir, address, port=0) -> DnsNodeServer``; every server it
    started is stopped (and its node's reload.json removed) at the end of the session."""
    factory = DnsNodeServers(tmp_path_factory.mktemp("dnsnodes"), dns_loopback)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def dns_resolver_server(tmp_path_factory: pytest.TempPathFactory,
                        dns_loopback: LoopbackAddresses) -> Iterator[ResolverServer]:
    """The one resolver of the session (prefer `test_resolver`, which also resets it)."""
    server = ResolverServer(name="resolver", address=RESOLVER_ADDRESS,
                            directory=tmp_path_factory.mktemp("resolver"),
                            addresses=dns_loopback)
    try:
        try:
            server.start()
        except DnsFleetError as exc:
            pytest.fail(f"the test resolver could not start: {exc}", pytrace=False)
        yield server
    finally:
        server.close()


@pytest.fixture
def test_resolver(dns_resolver_server: ResolverServer) -> ResolverServer:
    """The session's resolver, running and with no A records set (earlier tests' are gone)."""
    if not dns_resolver_server.running:
        dns_resolver_server.start()
    dns_resolver_server.reset()
    return dns_resolver_server
