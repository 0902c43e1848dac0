"""Simulated DNS nodes served by a real DNS server (bind9's named), checked with dnspython.

The sim's commands run as subprocesses through the node's bin/ wrappers; after each zone
change the sim rewrites the node's BIND files and reloads named (tests/dnsfleet.py), and
`puqdeploy.dnscheck` asks named directly — so these tests cover the zone-file writer, the
reload hook, and the verification module against the real thing, with no mocks.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from puqdeploy import dnscheck
from puqdeploy.sandbox import hestia_sim
from puqdeploy.sandbox.node import read_command_log
from tests.simnode import Node


NODE_ADDRESS = "127.0.77.131"  # not a sandbox/ssh-fleet node address: no clash with them
WEB_IP = "127.0.77.1"
TIMEOUT = 2.0
class SimNode(Node):
    """A simulated DNS node: the shared test node plus its zone's serial, records and files."""

    def user(self, user: str = "excom", **kw) -> None:
        self.package(DNS_DOMAINS="5")  # room for the extra zones some tests add
        super().user(user, **kw)

    def serial(self, domain: str = "example.com", user: str = "excom") -> int:
        return int(self.json("v-list-dns-domain", user, domain)[domain]["SERIAL"])

    def records(self, domain: str = "example.com", user: str = "excom") -> dict:
        return self.json("v-list-dns-records", user, domain)

    @property
    def zone_file(self) -> Path:
        return self.path / "bind" / "zones" / "example.com.db"

    @property
    def zones_conf(self) -> Path:
        return self.path / "bind" / "zones.conf"


def expected_from_panel(records: dict) -> list[tuple[str, str, str]]:
    """What the panel says the zone holds, as verify_zone's (name, type, value) triples."""
    expected = []
    for rec in records.values():
        value = rec["VALUE"]
        if rec["TYPE"] in ("MX", "SRV"):
            value = f"{rec['PRIORITY']} {value}"
        expected.append((rec["RECORD"], rec["TYPE"], value))
    return expected


@pytest.fixture
def node(tmp_path, tmpfiles) -> SimNode:
    """A simulated node with package biz and user excom, no DNS server."""
    sim = SimNode(tmp_path / "ns1", tmpfiles)
    sim.user()
    return sim


@pytest.fixture
def served(node, dns_node_servers):
    """The node and the named serving it (on NODE_ADDRESS; stopped after the test)."""
    server = dns_node_servers.start_for(node.path, NODE_ADDRESS)
    yield node, server
    server.detach()


def ask(server, name: str, rdtype: str, zone: str = "example.com") -> dnscheck.AuthAnswer:
    return dnscheck.query_authoritative(server.address, server.port, zone, name, rdtype, TIMEOUT)


# --------------------------------------------------------------------------- served zones

@pytest.mark.dns
def test_zone_is_served_authoritatively_with_soa_a_mx_and_long_dkim(served):
    node, server = served
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    node.ok("v-add-mail-domain", "excom", "example.com")  # publishes DKIM into the zone
    server.wait_synced()

    soa = ask(server, "@", "SOA")
    assert soa.ok and soa.authoritative and soa.rcode == "NOERROR"
    assert soa.serial == node.serial()
    assert str(soa.serial).startswith(time.strftime("%Y%m%d"))  # YYYYMMDDnn
    assert soa.answers[0].split()[:2] == ["ns1.example.net.", "root.example.com."]
    assert ask(server, "@", "A").answers == (WEB_IP,)
    assert ask(server, "@", "MX").answers == ("0 mail.example.com.",)
    assert ask(server, "www", "CNAME").answers == ("example.com.",)

    key = node.json("v-list-mail-domain-dkim-dns", "excom", "example.com")[
        "mail._domainkey"]["TXT"].split("p=", 1)[1].rstrip("'")
    dkim = ask(server, "mail._domainkey", "TXT")
    assert dkim.ok and len(dkim.answers) == 1
    import dns.rdata  # the served strings themselves: split, each within the 255-byte limit

    strings = dns.rdata.from_text("IN", "TXT", dkim.answers[0]).strings
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert b"".join(strings) == f"v=DKIM1; k=rsa; p={key}".encode()

    expected = expected_from_panel(node.records())
    assert len(expected) == 16
    assert dnscheck.verify_zone(server.address, server.port, "example.com", expected,
                                TIMEOUT, min_serial=node.serial()) == []


@pytest.mark.dns
def test_added_record_bumps_the_serial_and_is_served_after_the_reload(served):
    node, server = served
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    server.wait_synced()
    before = ask(server, "@", "SOA").serial
    assert ask(server, "shop", "A").rcode == "NXDOMAIN"

    node.ok("v-add-dns-record", "excom", "example.com", "shop", "A", "127.0.77.9")
    server.wait_synced()
    assert ask(server, "@", "SOA").serial == before + 1 == node.serial()
    shop = ask(server, "shop", "A")
    assert shop.ok and shop.answers == ("127.0.77.9",) and shop.ttl == 14400
    assert dnscheck.verify_zone(server.address, server.port, "example.com",
                                [("shop", "A", "127.0.77.9")], TIMEOUT) == []

    shop_id = next(i for i, r in node.records().items() if r["RECORD"] == "shop")
    node.ok("v-delete-dns-record", "excom", "example.com", shop_id)
    server.wait_synced()
    assert ask(server, "@", "SOA").serial == before + 2
    gone = ask(server, "shop", "A")
    assert gone.rcode == "NXDOMAIN" and gone.authoritative
    problems = dnscheck.verify_zone(server.address, server.port, "example.com",
                                    [("shop", "A", "127.0.77.9")], TIMEOUT)
    assert problems == ["shop.example.com. A: not served authoritatively "
                        "(NXDOMAIN, authoritative)"]


@pytest.mark.dns
def test_wrong_value_or_old_serial_is_a_problem_that_shows_what_is_served(served):
    node, server = served
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    server.wait_synced()
    problems = dnscheck.verify_zone(
        server.address, server.port, "example.com",
        [("@", "A", "127.0.77.200"), ("@", "MX", "mail.example.com"),
         ("_imaps._tcp", "SRV", "0 993 mail.example.com"), ("www", "CNAME", "EXAMPLE.COM")],
        TIMEOUT)
    assert problems == [f"example.com. A: expected '127.0.77.200', served: {WEB_IP}"]
    serial = node.serial()
    assert dnscheck.verify_zone(server.address, server.port, "example.com", [], TIMEOUT,
                                min_serial=serial + 1) == [
        f"example.com: {server.address}:{server.port} serves serial {serial}, older than "
        f"{serial + 1} (reload not done yet?)"]


@pytest.mark.dns
def test_record_ttl_and_txt_quoting_reach_the_server(served):
    node, server = served
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    long_text = "x" * 300 + " and " + "y" * 300
    node.ok("v-add-dns-record", "excom", "example.com", "single", "TXT", "it's")
    node.ok("v-add-dns-record", "excom", "example.com", "_verify", "TXT", "token one; two")
    node.ok("v-add-dns-record", "excom", "example.com", "long", "TXT", long_text)
    node.ok("v-add-dns-record", "excom", "example.com", "@", "CAA", '0 issue "letsencrypt.org"')
    node.ok("v-add-dns-record", "excom", "example.com", "short", "A", "127.0.77.7", "", "", "",
            "60")
    server.wait_synced()
    assert ask(server, "single", "TXT").answers == ('"it\'s"',)
    assert ask(server, "_verify", "TXT").answers == ('"token one; two"',)
    assert ask(server, "@", "CAA").answers == ('0 issue "letsencrypt.org"',)
    assert ask(server, "short", "A").ttl == 60
    served_long = ask(server, "long", "TXT")
    import dns.rdata

    strings = dns.rdata.from_text("IN", "TXT", served_long.answers[0]).strings
    assert [len(s) for s in strings] == [255, 255, 95]
    assert b"".join(strings) == long_text.encode()
    assert dnscheck.verify_zone(server.address, server.port, "example.com",
                                expected_from_panel(node.records()) +
                                [("long", "TXT", long_text)], TIMEOUT) == []


@pytest.mark.dns
def test_deleted_zone_is_refused_not_authoritative(served):
    node, server = served
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    server.wait_synced()
    assert ask(server, "@", "SOA").ok
    node.ok("v-delete-dns-domain", "excom", "example.com")
    server.wait_not_served("example.com")
    soa = ask(server, "@", "SOA")
    assert soa.answered and soa.rcode == "REFUSED" and not soa.authoritative
    assert not node.zone_file.exists() and '"example.com"' not in node.zones_conf.read_text()
    assert dnscheck.verify_zone(server.address, server.port, "example.com",
                                [("@", "A", WEB_IP)], TIMEOUT) == [
        f"example.com: SOA not served authoritatively by {server.address}:{server.port} "
        "(REFUSED, not authoritative)"]


@pytest.mark.dns
def test_suspended_user_zone_is_withdrawn_and_unsuspending_restores_it(served):
    node, server = served
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    server.wait_synced()
    node.ok("v-suspend-user", "excom")
    server.wait_not_served("example.com")
    assert ask(server, "@", "SOA").rcode == "REFUSED"
    node.ok("v-unsuspend-user", "excom")
    server.wait_synced()
    assert ask(server, "@", "A").answers == (WEB_IP,)


@pytest.mark.dns
def test_deleting_the_user_removes_its_zones_from_the_server(served):
    node, server = served
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    node.ok("v-add-dns-domain", "excom", "example.org", WEB_IP)
    server.wait_synced()
    assert ask(server, "@", "SOA", zone="example.org").ok
    node.ok("v-delete-user", "excom")
    for zone in ("example.com", "example.org"):
        server.wait_not_served(zone)
    assert ask(server, "@", "SOA").rcode == "REFUSED"
    assert ask(server, "@", "SOA", zone="example.org").rcode == "REFUSED"
    assert list((node.path / "bind" / "zones").iterdir()) == []


@pytest.mark.dns
def test_stopped_server_is_not_answering_and_the_sim_exits_e_restart(served):
    node, server = served
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    server.wait_synced()
    with server.stopped():
        started = time.monotonic()
        problems = dnscheck.verify_zone(server.address, server.port, "example.com",
                                        [("@", "A", WEB_IP), ("www", "CNAME", "example.com")],
                                        0.5)
        assert time.monotonic() - started < 5  # one timed-out question, not one per record
        assert problems == [f"example.com: server {server.address}:{server.port} is not "
                            "answering (timed out after 0.5 s)"]
        # Like HestiaCP with bind9 down: the change is made, the restart fails (20).
        proc = node.run("v-add-dns-record", "excom", "example.com", "late", "A", "127.0.77.8")
        assert proc.returncode == 20, (proc.stdout, proc.stderr)
        assert proc.stdout == "Error: bind9 restart failed\n"
        assert "connection refused" in proc.stderr
        assert any(r["RECORD"] == "late" for r in node.records().values())
    server.wait_synced()
    assert ask(server, "late", "A").answers == ("127.0.77.8",)  # loaded at the restart


@pytest.mark.dns
def test_restart_no_leaves_the_server_on_the_old_zone_until_a_reload(served):
    node, server = served
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    server.wait_synced()
    before = ask(server, "@", "SOA").serial
    node.ok("v-add-dns-record", "excom", "example.com", "quiet", "A", "127.0.77.6", "", "", "no")
    assert "quiet" in node.zone_file.read_text()  # files written...
    assert ask(server, "@", "SOA").serial == before  # ...but no reload
    assert ask(server, "quiet", "A").rcode == "NXDOMAIN"
    server.reload()
    server.wait_synced()
    assert ask(server, "quiet", "A").answers == ("127.0.77.6",)


@pytest.mark.dns
def test_zone_made_before_the_server_existed_is_served(node, dns_node_servers):
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    for path in (node.zone_file, node.zones_conf):  # as on a node made before these files
        path.unlink()
    server = dns_node_servers.start_for(node.path, NODE_ADDRESS)
    try:
        assert ask(server, "@", "SOA").serial == node.serial()
        assert ask(server, "mail", "A").answers == (WEB_IP,)
    finally:
        server.detach()
    assert not (node.path / "bind" / "reload.json").exists()


# --------------------------------------------------------------------------- the resolver

@pytest.mark.dns
def test_resolver_set_a_changes_what_resolve_a_returns(test_resolver):
    where = ([test_resolver.address], test_resolver.port)
    assert dnscheck.resolve_a("shop.example.com", *where, timeout=TIMEOUT).error == \
        "does not exist (NXDOMAIN)"
    test_resolver.set_a("shop.example.com", WEB_IP)
    first = dnscheck.resolve_a("shop.example.com", *where, timeout=TIMEOUT)
    assert first.addresses == (WEB_IP,) and dnscheck.points_at(first, WEB_IP)
    test_resolver.set_a("shop.example.com", [WEB_IP, "127.0.77.99"])
    both = dnscheck.resolve_a("shop.example.com", *where, timeout=TIMEOUT)
    assert both.addresses == (WEB_IP, "127.0.77.99") and not dnscheck.points_at(both, WEB_IP)
    test_resolver.set_a("example.net", "127.0.77.2")
    assert dnscheck.resolve_a("example.net", *where, timeout=TIMEOUT).addresses == \
        ("127.0.77.2",)
    test_resolver.set_a("shop.example.com", None)
    assert dnscheck.resolve_a("shop.example.com", *where, timeout=TIMEOUT).addresses == ()
    assert dnscheck.resolve_a("example.com", *where, timeout=TIMEOUT).error == "has no A record"
    with pytest.raises(ValueError, match="in none of the resolver's zones"):
        test_resolver.set_a("shop.example.invalid", WEB_IP)


@pytest.mark.dns
def test_each_test_gets_a_resolver_without_earlier_records(test_resolver):
    test_resolver.set_a("left.example.org", WEB_IP)
    test_resolver.reset()
    assert test_resolver.addresses_of("left.example.org") == []
    assert dnscheck.resolve_a("left.example.org", [test_resolver.address], test_resolver.port,
                              timeout=TIMEOUT).error == "does not exist (NXDOMAIN)"


# --------------------------------------------------------------------------- without named

def test_plain_node_writes_valid_zone_files_without_any_dns_server(node):
    """No reload.json: files written, no reload, no subprocess import — the plain sandbox."""
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    node.ok("v-add-mail-domain", "excom", "example.com")
    text = node.zone_file.read_text()
    assert "$ORIGIN example.com.\n$TTL 14400\n" in text
    assert f"\t{node.serial()}\t; serial" in text
    assert node.zones_conf.read_text().splitlines()[1] == (
        f'zone "example.com" {{type master; file "{node.zone_file}";}};')
    check = subprocess.run(["named-checkzone", "example.com", str(node.zone_file)],
                           capture_output=True, text=True)
    assert check.returncode == 0 and f"loaded serial {node.serial()}" in check.stdout, \
        check.stdout
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import hestia_sim; "
         "code = hestia_sim.main(sys.argv[2:]); "
         "print(code, 'subprocess' in sys.modules)",
         str(Path(hestia_sim.__file__).parent), str(node.path), "v-add-dns-record", "excom",
         "example.com", "plain", "A", "127.0.77.5"],
        capture_output=True, text=True)
    assert probe.stdout.split() == ["0", "False"], probe.stderr
    assert "plain\t14400\tIN\tA\t127.0.77.5" in node.zone_file.read_text()


def test_reload_runs_once_per_command_and_a_failure_is_e_restart(node):
    marker = node.path / "reloads"
    hook = node.path / "bind" / "reload.json"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(json.dumps([sys.executable, "-c",
                                f"open({str(marker)!r}, 'a').write('x')"]))
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)
    node.ok("v-add-mail-domain", "excom", "example.com")  # two zone changes, one reload
    node.ok("v-list-dns-records", "excom", "example.com")  # no change, no reload
    node.ok("v-add-user", "other", node.tmpfile("S3cret-pass\n"), "o@example.com", "biz")
    assert marker.read_text() == "xx"

    hook.write_text(json.dumps(["false"]))
    proc = node.run("v-add-dns-record", "excom", "example.com", "kept", "A", "127.0.77.4")
    assert (proc.returncode, proc.stdout) == (20, "Error: bind9 restart failed\n")
    assert "kept" in node.zone_file.read_text()
    assert any(r["RECORD"] == "kept" for r in node.records().values())
    assert read_command_log(node.path)[-2]["exit"] == 20
    # A command that fails changes nothing and reloads nothing (no second error line).
    bad = node.run("v-add-dns-record", "excom", "example.com", "x", "A", "300.1.1.1")
    assert (bad.returncode, bad.stdout) == (2, "Error: invalid A record format :: 300.1.1.1\n")


def test_serial_is_yyyymmddnn_and_only_grows():
    today = time.strftime("%Y%m%d")
    assert hestia_sim.next_serial("", today) == today + "01"
    assert hestia_sim.next_serial("2001010105", today) == today + "01"  # an older day
    assert hestia_sim.next_serial(today + "07", today) == today + "08"
    assert hestia_sim.next_serial(today + "99", today) == str(int(today + "99") + 1)
    future = str(int(today) + 10000) + "01"  # a year ahead: never goes back
    assert hestia_sim.next_serial(future, today) == str(int(future) + 1)


def test_txt_rdata_splits_bytes_and_escapes_for_bind():
    assert hestia_sim.txt_rdata('"v=DKIM1\\; k=rsa\\; p=AB"') == '"v=DKIM1; k=rsa; p=AB"'
    assert hestia_sim.txt_rdata("it's") == '"it\'s"'
    assert hestia_sim.txt_rdata('"a\\"b" c\\\\d') == '"a\\"b" "c\\\\d"'
    assert hestia_sim.txt_rdata('"' + "z" * 256 + '"') == '"' + "z" * 255 + '" "z"'
    assert hestia_sim.txt_rdata('"caf\\195\\169"') == '"caf\\195\\169"'


@pytest.mark.dns
def test_timing_of_one_record_change_with_and_without_a_reload(node, dns_node_servers,
                                                               record_property):
    """The sim stays fast without a server; with one, the reload is the cost (reported)."""
    node.ok("v-add-dns-domain", "excom", "example.com", WEB_IP)

    def median_add(label: str) -> float:
        timings = []
        for index in range(5):
            started = time.perf_counter()
            node.ok("v-add-dns-record", "excom", "example.com", f"{label}{index}", "A",
                    "127.0.77.3")
            timings.append(time.perf_counter() - started)
        return statistics.median(timings)

    plain = median_add("plain")
    server = dns_node_servers.start_for(node.path, NODE_ADDRESS)
    try:
        reloading = median_add("reload")
        server.wait_synced()
        assert ask(server, "reload4", "A").answers == ("127.0.77.3",)
    finally:
        server.detach()
    record_property("v_add_dns_record_plain_s", round(plain, 4))
    record_property("v_add_dns_record_with_reload_s", round(reloading, 4))
    print(f"v-add-dns-record median: {plain * 1000:.1f} ms plain, "
          f"{reloading * 1000:.1f} ms with rndc reload")
    assert plain < 0.25
    assert reloading < 2.0
