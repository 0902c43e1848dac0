"""The logic behind `puqdeploy nodes`, `nodes check` and `nodes trust` (no click, no rich).

- `listing` reads the config and the `node_load` counters: what an operator needs to see
  where new services will go (roles, load against capacity, the active flag).
- `check` connects to each node and runs `v-list-sys-info json`, all nodes at once (threads), so
  one dead node costs its connect timeout once instead of delaying every node after it. Errors
  are reported per node, never raised: one bad node must not hide the state of the others.
- `fetch_host_key` / `trust` back `nodes trust`: the host key the node presents is shown with
  its SHA256 fingerprint, and only after a human confirmed it is it appended to the node's
  known_hosts. A node whose known_hosts already holds a *different* key for it is refused:
  that is exactly what a man-in-the-middle looks like, and appending would make both keys
  valid. The operator removes the old entry first (after a reinstall), then trusts again.

paramiko is imported only through `ssh_transport`, and only when an SSH node is touched, so a
config of local nodes never loads it.
"""

from __future__ import annotations

import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from puqdeploy.errors import NotFoundError, OperationalError, UsageError

ROLE_ORDER = ("web", "mail", "dns")
CHECK_TIMEOUT = 30.0


def _roles(node: Any) -> list[str]:
    return [r for r in ROLE_ORDER if r in node.roles] + sorted(set(node.roles) - set(ROLE_ORDER))


def get_node(config: Any, name: str) -> Any:
    """The node called `name`, or NotFoundError (exit 4) naming the known ones."""
    node = config.nodes.get(name)
    if node is None:
        known = ", ".join(config.nodes) or "none"
        raise NotFoundError(f"node {name} not found (known: {known})")
    return node


# --------------------------------------------------------------------------- listing


def listing(config: Any, conn: Optional[sqlite3.Connection]) -> list[dict]:
    """Every configured node in config order, with `used` from the node_load counters."""
    from puqdeploy.orders import node_load

    load = node_load(conn) if conn is not None else {}
    return [{
        "name": name, "host": node.host, "port": node.port, "transport": node.transport,
        "roles": _roles(node), "capacity": node.capacity, "used": int(load.get(name, 0)),
        "active": bool(node.active), "max_concurrency": node.max_concurrency,
    } for name, node in config.nodes.items()]


def listing_lines(rows: list[dict]) -> list[str]:
    """The listing as plain aligned columns (no colour: safe in a pipe or a cron mail)."""
    header = ["NODE", "HOST", "PORT", "TRANSPORT", "ROLES", "USED/CAP", "ACTIVE", "CONCURRENCY"]
    table = [header] + [[
        row["name"], row["host"], str(row["port"]) if row["transport"] == "ssh" else "-",
        row["transport"], ",".join(row["roles"]), f"{row['used']}/{row['capacity']}",
        "yes" if row["active"] else "no", str(row["max_concurrency"]),
    ] for row in rows]
    return _columns(table)


def _columns(table: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in table]


# --------------------------------------------------------------------------- check


def _version(text: str) -> Optional[str]:
    """HestiaCP concatenates this JSON by hand, so read the field rather than trusting json."""
    match = re.search(r'"HESTIA"\s*:\s*"([^"]*)"', text)
    return match.group(1) if match and match.group(1) else None


def _probe_local(node: Any, timeout: float) -> dict:
    """`ssh_transport.probe` for a local node: the same command, report and semantics."""
    from puqdeploy.commands import Command
    from puqdeploy.remote import LocalTransport, PermanentTransportError, TransportError

    started = time.monotonic()

    def report(reachable: bool, version: Optional[str], error: Optional[str]) -> dict:
        latency = round((time.monotonic() - started) * 1000.0, 1)
        return {"reachable": reachable, "latency_ms": latency, "version": version, "error": error}

    transport = LocalTransport(node.hestia_bin)
    try:
        result = transport.run(Command("v-list-sys-info", ("json",)), timeout=timeout)
    except (TransportError, PermanentTransportError) as exc:
        return report(False, None, str(exc))
    finally:
        transport.close()
    if result.exit_code != 0:
        first = (result.stdout or result.stderr).strip().splitlines()[:1]
        detail = f": {first[0]}" if first else ""
        return report(True, None, f"v-list-sys-info exited {result.exit_code}{detail}")
    version = _version(result.stdout)
    return report(True, version, None if version else
                  "v-list-sys-info json did not report a HESTIA version")


def check_one(node: Any, timeout: float = CHECK_TIMEOUT) -> dict:
    """{"name", "host", "port", "transport", "reachable", "latency_ms", "version", "error", "ok"}."""
    try:
        if node.transport == "local":
            result = _probe_local(node, timeout)
        else:
            from puqdeploy.ssh_transport import probe

            result = probe(node, timeout=timeout)
    except Exception as exc:  # never let one node's surprise hide the others' results
        result = {"reachable": False, "latency_ms": None, "version": None,
                  "error": f"internal error: {type(exc).__name__}: {exc}"}
    row = {"name": node.name, "host": node.host, "port": node.port, "transport": node.transport}
    row.update(result)
    row["ok"] = bool(row["reachable"]) and row["error"] is None
    return row


def check(config: Any, names: Optional[Iterable[str]] = None,
          timeout: float = CHECK_TIMEOUT) -> list[dict]:
    """Check the named nodes (default: all), concurrently; results in config order."""
    selected = [get_node(config, n) for n in names] if names else list(config.nodes.values())
    if not selected:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(selected)),
                            thread_name_prefix="check") as pool:
        return list(pool.map(lambda node: check_one(node, timeout), selected))


def check_lines(rows: list[dict]) -> list[str]:
    table = [["NODE", "HOST", "REACHABLE", "LATENCY", "HESTIA", "ERROR"]]
    for row in rows:
        where = row["host"] if row["transport"] == "local" else f"{row['host']}:{row['port']}"
        latency = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.0f} ms"
        table.append([row["name"], where, "yes" if row["reachable"] else "no", latency,
                      row["version"] or "-", row["error"] or ""])
    return _columns(table)


# --------------------------------------------------------------------------- trust


@dataclass(frozen=True)
class HostKey:
    """The key a node presented, as `nodes trust` shows it."""

    key_type: str
    base64: str
    fingerprint: str


def trust_target(config: Any, name: str) -> Any:
    """The node `nodes trust NAME` may write a known_hosts entry for, or a clear error."""
    node = get_node(config, name)
    if node.transport == "local":
        raise UsageError(f"node {name} uses the local transport: there is no host key to trust")
    if node.host_key:
        raise UsageError(f"node {name} has a pinned host_key in the config; known_hosts is not "
                         "used for it: change host_key there instead")
    if not node.known_hosts:
        raise UsageError(f"node {name} has no known_hosts file configured")
    return node


def fetch_host_key(node: Any) -> HostKey:
    """Ask the node's sshd for its host key (no login); unreachable -> OperationalError."""
    from puqdeploy.remote import PermanentTransportError, TransportError
    from puqdeploy import ssh_transport

    try:
        key_type, key_base64, fingerprint = ssh_transport.fetch_host_key(node)
    except (TransportError, PermanentTransportError) as exc:
        raise OperationalError(f"cannot fetch the host key of node {node.name}: {exc}") from None
    return HostKey(key_type, key_base64, fingerprint)


def conflicting_keys(node: Any, key: HostKey) -> list[str]:
    """Fingerprints of OTHER keys the node's known_hosts already lists for it."""
    from puqdeploy import ssh_transport
    from puqdeploy.remote import PermanentTransportError

    try:
        filed = ssh_transport.known_host_fingerprints(node.known_hosts, node)
    except PermanentTransportError as exc:  # unreadable or corrupt known_hosts
        raise OperationalError(str(exc)) from None
    return [fp for fp in filed if fp != key.fingerprint]


def refuse_if_conflicting(node: Any, key: HostKey) -> None:
    """UsageError (exit 2) when known_hosts holds a different key for the node (module notes)."""
    from puqdeploy import ssh_transport

    others = conflicting_keys(node, key)
    if others:
        raise UsageError(
            f"{node.known_hosts} already holds a different host key for node {node.name} "
            f"({', '.join(others)}); if the node was reinstalled, remove that entry first "
            f"(ssh-keygen -R '{ssh_transport.known_hosts_name(node.host, node.port)}' "
            f"-f {node.known_hosts}), then trust again")


def trust(node: Any, key: HostKey) -> bool:
    """Append the key to the node's known_hosts; False when it was there already."""
    from puqdeploy import ssh_transport

    refuse_if_conflicting(node, key)
    try:
        return ssh_transport.append_known_host(node.known_hosts, node, key.key_type, key.base64)
    except ValueError as exc:
        raise OperationalError(f"node {node.name}: {exc}") from None
