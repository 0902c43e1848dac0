"""`puqdeploy sandbox DIR`: a trial fleet that runs entirely on this machine.

Four nodes (web1, mail1, ns1, ns2), each a folder with the simulated HestiaCP command set and
its own panel state, reached through the local transport; a config that points at them, with
paths relative to the config file so the folder can be moved. Nothing is installed system-wide.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from pathlib import Path

from puqdeploy.sandbox.node import install_node, set_faults

SANDBOX_NODES = {
    "web1": ("127.0.77.1", ["web"]),
    "mail1": ("127.0.77.2", ["mail"]),
    "ns1": ("127.0.77.3", ["dns"]),
    "ns2": ("127.0.77.4", ["dns"]),
    "host1": ("127.0.77.5", ["web", "mail"]),
}
# The provider's own objects a Vanity product builds on (they exist before any order).
VANITY_PARENT = "vanity.test"
PROVIDER_USER = "provider"

CONFIG_TEMPLATE = """\
# puqdeploy sandbox fleet, written by `puqdeploy sandbox`. Every node is a folder under nodes/
# holding a simulated HestiaCP (same commands, arguments, exit codes and data files as the real
# panel) reached with the local transport. Paths are relative to this file.
database: puqdeploy.db
key_file: secret.key
log_dir: logs
runner: {{budget_seconds: 55, workers: 8, lease_seconds: 60}}
# Short back-off so retries are visible within a minute of trying.
retry: {{max_attempts: 5, base_seconds: 2, factor: 2, max_seconds: 30, jitter: 0.1}}
# Nothing answers DNS on this port: Auto-SSL waits, as it would before the customer's domain
# points at the web node. Point `resolvers` at a real resolver to see certificates issued.
# verify_zones is off: the simulated DNS nodes have no DNS server answering (the test suite
# starts real ones, see tests/dnsfleet.py).
dns: {{resolvers: [127.0.0.1], port: 53535, timeout_seconds: 0.5, verify_zones: false}}
ssl: {{recheck_seconds: 60, give_up_after_hours: 1}}
nodes:
{nodes}
groups:
  sandbox:
    nodes: [web1, mail1, ns1, ns2]
    nameservers: [ns1.sandbox.test, ns2.sandbox.test]
  sandbox-unified:
    nodes: [host1, ns1, ns2]
    nameservers: [ns1.sandbox.test, ns2.sandbox.test]
products:
  sandbox-split:
    mode: split
    group: sandbox
    php: "8.3"
    limits: {{web_disk_quota: 2048, mail_accounts: 10}}
  sandbox-unified:
    mode: unified
    group: sandbox-unified
    php: "8.3"
    limits: {{web_disk_quota: 2048, mail_disk_quota: 1024, mail_accounts: 10}}
  sandbox-vanity:
    mode: vanity
    group: sandbox
    limits: {{web_disk_quota: 512, mail_disk_quota: 256}}
    parent_domains:
      # the provider user owns this mail domain on mail1 and this zone on ns1/ns2
      vanity.test: {{dns: push, mail_user: provider, mail_node: mail1}}
      # DNS for this parent is handled elsewhere (a wildcard): nothing is written
      external.test: {{dns: external}}
"""

NODE_TEMPLATE = """\
  {name}:
    host: {ip}
    ip: {ip}
    transport: local
    hestia_bin: nodes/{name}/bin
    roles: [{roles}]
    capacity: 100
    max_concurrency: 1
    command_timeout_seconds: 60
"""


def write_sandbox(directory: str, delay_seconds: float = 0.0) -> str:
    """Create (or refresh) the sandbox in `directory`; returns the config path."""
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    blocks = []
    for name, (ip, roles) in SANDBOX_NODES.items():
        node_dir = root / "nodes" / name
        install_node(node_dir)
        if delay_seconds:
            set_faults(node_dir, delay_seconds=delay_seconds)
        blocks.append(NODE_TEMPLATE.format(name=name, ip=ip, roles=", ".join(roles)))
    config_path = root / "config.yaml"
    config_path.write_text(CONFIG_TEMPLATE.format(nodes="".join(blocks).rstrip("\n")))
    _provision_vanity_parent(root)
    return str(config_path)


def _panel(root: Path, node: str, *args: str) -> None:
    """Run one simulated HestiaCP command on a sandbox node; E_EXISTS is fine (re-runs)."""
    program = root / "nodes" / node / "bin" / args[0]
    proc = subprocess.run([str(program), *args[1:]], capture_output=True, text=True)
    if proc.returncode not in (0, 4):
        raise RuntimeError(f"{node}: {' '.join(args)} exited {proc.returncode}: {proc.stdout.strip()}")


def _provision_vanity_parent(root: Path) -> None:
    """The provider's user, mail domain (mail1) and zone (ns1, ns2) a Vanity parent needs."""
    with tempfile.NamedTemporaryFile("w", dir="/tmp", prefix="puqdeploy-", delete=False) as handle:
        handle.write(secrets.token_urlsafe(18) + "Aa1\n")
        password_file = handle.name
    try:
        for node in ("mail1", "ns1", "ns2"):
            _panel(root, node, "v-add-user", PROVIDER_USER, password_file,
                   f"hostmaster@{VANITY_PARENT}", "default")
        _panel(root, "mail1", "v-add-mail-domain", PROVIDER_USER, VANITY_PARENT)
        for node in ("ns1", "ns2"):
            _panel(root, node, "v-add-dns-domain", PROVIDER_USER, VANITY_PARENT,
                   SANDBOX_NODES["web1"][0], "ns1.sandbox.test", "ns2.sandbox.test")
    finally:
        os.unlink(password_file)
