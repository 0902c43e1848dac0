"""Every mode over the real sshd fleet with real DNS servers (bind9) on the DNS nodes:
zones verified with dnspython on EACH DNS node, a DNS node down mid-deploy, and Auto-SSL
against a real resolver on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from puqdeploy.dnscheck import query_authoritative
from puqdeploy.sandbox.fleet import write_sandbox
from puqdeploy.sandbox.node import read_panel
from tests.conftest import Sandbox, wait_for

SSH_NODES = ("web1", "mail1", "ns1", "ns2", "host1")
DNS_NODES = {"ns1": "127.0.77.3", "ns2": "127.0.77.4"}


@pytest.fixture
def dns_box(tmp_path: Path, ssh_fleet, dns_node_servers, test_resolver):
    """Factory: a sandbox whose five nodes are reached over SSH, whose DNS nodes are served by
    real named processes, and whose Auto-SSL resolver is the real test resolver."""
    for node in ssh_fleet:
        node.start()
    started = []

    def make(ssl: dict | None = None, retry: dict | None = None) -> tuple[Sandbox, dict]:
        config_path = Path(write_sandbox(str(tmp_path / f"fleet{len(started)}")))
        box = Sandbox(root=config_path.parent, config_path=config_path)
        servers = {name: dns_node_servers.start_for(box.node(name), address)
                   for name, address in DNS_NODES.items()}
        started.extend(servers.values())
        per_node = {name: {"hestia_bin": str(box.node(name) / "bin"), "capacity": 100,
                           "max_concurrency": 1} for name in SSH_NODES}
        for name, server in servers.items():
            per_node[name]["dns_port"] = server.port
        data = yaml.safe_load(config_path.read_text())
        data["nodes"].update(ssh_fleet.config_nodes(per_node))
        data["dns"] = {"resolvers": [test_resolver.address], "port": test_resolver.port,
                       "timeout_seconds": 1, "verify_zones": True}
        data["ssl"] = ssl or {"enabled": False}
        data["retry"] = retry or {"max_attempts": 6, "base_seconds": 1, "factor": 1,
                                  "max_seconds": 1, "jitter": 0}
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        box.cli("init", check=True)
        return box, servers

    yield make
    for server in started:
        server.detach()


def _status(box: Sandbox, sid: str) -> dict:
    return json.loads(box.cli("status", sid, "--json", check=True).stdout)


def _ask(server, zone: str, name: str, rdtype: str):
    answer = query_authoritative(server.address, server.port, zone, name, rdtype, 2.0)
    assert answer.ok, answer.describe()  # authoritative (aa) NOERROR
    return answer.answers


def _dkim(box: Sandbox, node: str, user: str, domain: str) -> str:
    out = subprocess.run([str(box.node(node) / "bin" / "v-list-mail-domain-dkim-dns"), user, domain,
                          "json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["mail._domainkey"]["TXT"].strip("'\"").replace("\\;", ";")


def _txt(answers) -> list[str]:
    """TXT rdata as served (quoted 255-byte strings) joined back into one value."""
    return ["".join(part.strip('"') for part in a.split('" "')).replace("\\;", ";") for a in answers]


def _run_until(box: Sandbox, sid: str, done, rounds: int = 15) -> dict:
    """Run ticks until `done(status)`; between ticks wait for the next due time (from the DB)."""
    for _ in range(rounds):
        box.cli("run", check=True)
        status = _status(box, sid)
        if done(status):
            return status
        with box.db() as conn:
            due = conn.execute("SELECT min(run_after) FROM tasks WHERE state IN ('queued', 'waiting')"
                               ).fetchone()[0]
        if due is not None:
            wait_for(lambda: time.time() >= due + 0.02, timeout=120, what="the next task to be due")
    raise AssertionError(f"{sid} did not reach the expected state: {status}")


def test_every_mode_is_served_by_each_dns_node(dns_box):
    box, servers = dns_box()
    box.cli("create", "--service-id", "S", "--product", "sandbox-split", "--domain", "example.com", check=True)
    box.cli("create", "--service-id", "U", "--product", "sandbox-unified", "--domain", "example.org", check=True)
    box.cli("create", "--service-id", "V", "--product", "sandbox-vanity", "--domain", "shop.vanity.test", check=True)
    box.cli("create", "--service-id", "X", "--product", "sandbox-vanity", "--domain", "blog.external.test", check=True)
    for sid in "SUVX":
        _run_until(box, sid, lambda s: s["state"] == "active")
    split_dkim = _dkim(box, "mail1", "examplecom-mail", "example.com")
    unified_dkim = _dkim(box, "host1", "exampleorg", "example.org")
    for name, server in servers.items():
        assert _ask(server, "example.com", "@", "SOA")
        assert _ask(server, "example.com", "@", "A") == ("127.0.77.1",)
        assert _ask(server, "example.com", "mail", "A") == ("127.0.77.2",)
        assert _ask(server, "example.com", "@", "MX") == ("10 mail.example.com.",)
        assert _txt(_ask(server, "example.com", "mail._domainkey", "TXT")) == [split_dkim], name
        assert _ask(server, "example.org", "@", "SOA")
        assert _ask(server, "example.org", "@", "A") == ("127.0.77.5",)
        assert _ask(server, "example.org", "@", "MX") == ("10 mail.example.org.",)
        assert _txt(_ask(server, "example.org", "mail._domainkey", "TXT")) == [unified_dkim], name
        assert _ask(server, "vanity.test", "shop", "A") == ("127.0.77.1",)
        blog = query_authoritative(server.address, server.port, "external.test", "blog", "A", 2.0)
        assert not blog.ok  # external: nothing written anywhere, nobody is authoritative
    # each zone task verified its node before it counted as done
    for sid in ("S", "U"):
        zones = [t for t in _status(box, sid)["tasks"] if t["action"] == "dns.zone" and t["node"] in servers]
        assert len(zones) == 2 and all(t["state"] == "done" for t in zones)


def test_a_dns_node_down_during_its_zone_task_retries_without_holding_up_the_other(dns_box):
    box, servers = dns_box()
    with servers["ns2"].stopped():
        box.cli("create", "--service-id", "D", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
        box.cli("run", check=True)
        status = _status(box, "D")
        zones = {t["node"]: t for t in status["tasks"] if t["action"] == "dns.zone"}
        assert zones["ns1"]["state"] == "done"
        assert zones["ns2"]["state"] == "queued" and zones["ns2"]["attempts"] == 1
        # the panel's own DNS reload fails (E_RESTART), or the zone is written but not served
        assert ("E_RESTART" in zones["ns2"]["last_error"]
                or "ns2 does not serve example.com" in zones["ns2"]["last_error"])
        assert status["state"] == "deploying"
    status = _run_until(box, "D", lambda s: s["state"] == "active")
    zone = next(t for t in status["tasks"] if t["action"] == "dns.zone" and t["node"] == "ns2")
    assert zone["state"] == "done" and zone["attempts"] >= 2
    assert _ask(servers["ns2"], "example.com", "@", "A") == ("127.0.77.1",)
    records = read_panel(box.node("ns2"))["dns"]["examplecom-dns"]["example.com"]
    keys = [(r["record"], r["type"], r["value"]) for r in records]
    assert len(keys) == len(set(keys)) == 12  # retried, nothing added twice


def test_auto_ssl_waits_for_dns_then_issues_or_gives_up(dns_box, test_resolver):
    box, _ = dns_box(ssl={"enabled": True, "recheck_seconds": 1, "give_up_after_hours": 0.003})
    test_resolver.set_a("example.com", "192.0.2.10")      # points elsewhere
    test_resolver.set_a("www.example.com", "192.0.2.10")
    test_resolver.set_a("mail.example.com", "192.0.2.10")
    box.cli("create", "--service-id", "L", "--product", "sandbox-split", "--domain", "example.com", check=True)
    box.cli("run", check=True)
    status = _status(box, "L")
    assert status["state"] == "active"  # the site is live while its certificate waits
    ssl = {t["action"]: t for t in status["tasks"] if not t["blocking"]}
    assert ssl["ssl.web"]["state"] == "waiting" and ssl["ssl.web"]["attempts"] == 0
    assert "does not point at 127.0.77.1" in ssl["ssl.web"]["last_error"]
    assert "192.0.2.10" in ssl["ssl.web"]["last_error"]
    assert "certificates" not in read_panel(box.node("web1")) or not read_panel(box.node("web1"))["certificates"]

    test_resolver.set_a("example.com", "127.0.77.1")      # corrected
    test_resolver.set_a("www.example.com", "127.0.77.1")
    status = _run_until(box, "L", lambda s: next(t for t in s["tasks"] if t["action"] == "ssl.web")["state"] == "done",
                        rounds=3)
    web_ssl = next(t for t in status["tasks"] if t["action"] == "ssl.web")
    assert web_ssl["attempts"] == 1  # issued on the first recheck after the correction
    certs = read_panel(box.node("web1"))["certificates"]["examplecom-web"]["example.com"]
    assert sorted(certs) == ["example.com", "www.example.com"]

    # mail.example.com never points at mail1: the mail certificate gives up at the deadline
    status = _run_until(box, "L", lambda s: next(t for t in s["tasks"] if t["action"] == "ssl.mail")["state"] == "failed",
                        rounds=30)
    mail_ssl = next(t for t in status["tasks"] if t["action"] == "ssl.mail")
    assert "gave up waiting" in mail_ssl["last_error"] and mail_ssl["attempts"] == 0
    assert status["state"] == "active" and status["error"] is None  # not blocking
