"""Unified and Vanity deployments on the sandbox fleet, checked on the simulated panels."""

from __future__ import annotations

import json

import pytest

from puqdeploy.sandbox.node import check_password, read_panel

PANEL_NODES = ("web1", "mail1", "ns1", "ns2", "host1")


def _status(sandbox, sid):
    return json.loads(sandbox.cli("status", sid, "--json", check=True).stdout)


def _keys(records):
    return sorted((r["record"], r["type"]) for r in records)


def _panels(sandbox):
    return {name: read_panel(sandbox.node(name)) for name in PANEL_NODES}


def test_unified_one_user_holds_web_mail_and_local_zone(sandbox):
    sandbox.cli("create", "--service-id", "u1", "--product", "sandbox-unified",
                "--domain", "example.com", check=True)
    sandbox.cli("run", check=True)
    status = _status(sandbox, "u1")
    assert status["state"] == "active", status
    assert status["placement"] == {"web": "host1", "mail": "host1", "dns": ["ns1", "ns2"]}
    host = read_panel(sandbox.node("host1"))
    assert set(host["users"]) == {"examplecom"}
    assert host["users"]["examplecom"]["package"] == "examplecom"
    assert list(host["web"]["examplecom"]) == ["example.com"]
    assert host["mail"]["examplecom"]["example.com"]["dkim"] is True
    local = host["dns"]["examplecom"]["example.com"]
    # HestiaCP added the DKIM record to the local zone itself (zone made before the mail domain)
    dkim = [r for r in local if r["record"] == "mail._domainkey"]
    assert len(dkim) == 1 and "DKIM1" in dkim[0]["value"]
    assert len(_keys(local)) == len(set(map(tuple, (tuple(r.values()) for r in local))))
    package = host["packages"]["examplecom"]
    assert package["WEB_DOMAINS"] != "0" and package["MAIL_DOMAINS"] != "0" and package["DNS_DOMAINS"] != "0"
    for ns in ("ns1", "ns2"):
        panel = read_panel(sandbox.node(ns))
        zone = panel["dns"]["examplecom-dns"]["example.com"]
        a = {r["record"]: r["value"] for r in zone if r["type"] == "A"}
        assert a == {"@": "127.0.77.5", "mail": "127.0.77.5"}
        assert any(r["record"] == "mail._domainkey" for r in zone)
    # nothing of it anywhere else
    for name in ("web1", "mail1"):
        panel = read_panel(sandbox.node(name))
        assert not any("examplecom" in user for user in panel["users"])


def test_unified_redeploy_adds_nothing(sandbox):
    sandbox.cli("create", "--service-id", "u2", "--product", "sandbox-unified",
                "--domain", "example.com", check=True)
    sandbox.cli("run", check=True)
    before = _panels(sandbox)
    sandbox.cli("redeploy", "u2", "--yes", check=True)
    sandbox.cli("run", check=True)
    assert _status(sandbox, "u2")["state"] == "active"
    assert _panels(sandbox) == before


def test_vanity_push_touches_only_its_own_objects(sandbox):
    before = _panels(sandbox)
    parent_zone = {ns: before[ns]["dns"]["provider"]["vanity.test"] for ns in ("ns1", "ns2")}
    sandbox.cli("create", "--service-id", "v1", "--product", "sandbox-vanity",
                "--domain", "shop.vanity.test", "--password-stdin", input="Vanity-Pass-123\n",
                check=True)
    sandbox.cli("run", check=True)
    status = _status(sandbox, "v1")
    assert status["state"] == "active", status
    after = _panels(sandbox)
    web = after["web1"]
    assert set(web["users"]) == {"shopvanitytest-web"}
    assert list(web["web"]["shopvanitytest-web"]) == ["shop.vanity.test"]
    # the mailbox lives under the provider's mail domain, which is otherwise unchanged
    mail_before, mail_after = before["mail1"], after["mail1"]
    assert mail_after["users"] == mail_before["users"]
    accounts = mail_after["mail"]["provider"]["vanity.test"]["accounts"]
    assert list(accounts) == ["shop"] and accounts["shop"]["quota"] == "256"
    assert check_password(sandbox.node("mail1"), "provider", "Vanity-Pass-123",
                          mailbox="shop@vanity.test")
    for ns in ("ns1", "ns2"):
        zone = after[ns]["dns"]["provider"]["vanity.test"]
        added = [r for r in zone if r not in parent_zone[ns]]
        assert [(r["record"], r["type"], r["value"]) for r in added] == [("shop", "A", "127.0.77.1")]
        assert all(r in zone for r in parent_zone[ns])  # nothing removed or changed
        assert after[ns]["users"] == before[ns]["users"]
    # redeploy: still exactly one record, one mailbox
    sandbox.cli("redeploy", "v1", "--yes", check=True)
    sandbox.cli("run", check=True)
    assert _panels(sandbox) == after


def test_vanity_external_writes_no_dns_and_quota_zero_omits_the_mailbox(sandbox):
    before = _panels(sandbox)
    sandbox.cli("create", "--service-id", "v2", "--product", "sandbox-vanity",
                "--domain", "blog.external.test", check=True)
    sandbox.cli("create", "--service-id", "v3", "--product", "sandbox-vanity",
                "--domain", "site.vanity.test", "--set", "mail_disk_quota=0", check=True)
    sandbox.cli("run", check=True)
    for sid in ("v2", "v3"):
        assert _status(sandbox, sid)["state"] == "active"
    actions = {t["action"] for t in _status(sandbox, "v3")["tasks"]}
    assert "mail.account" not in actions and "web.domain" in actions
    after = _panels(sandbox)
    assert after["mail1"] == before["mail1"]  # no mailbox for either
    for ns in ("ns1", "ns2"):
        zone = after[ns]["dns"]["provider"]["vanity.test"]
        assert [r["record"] for r in zone if r not in before[ns]["dns"]["provider"]["vanity.test"]] == ["site"]
        assert "blog" not in {r["record"] for r in zone}


@pytest.mark.parametrize("domain, message", [
    ("www.vanity.test", "reserved"),
    ("mail.vanity.test", "reserved"),
    ("_dmarc.vanity.test", ""),
    ("shop.other.test", "offers names under"),
    ("a.b.vanity.test", "offers names under"),
    ("Sh_op.vanity.test", ""),
])
def test_vanity_refuses_bad_names_at_create(sandbox, domain, message):
    proc = sandbox.cli("create", "--service-id", "bad", "--product", "sandbox-vanity",
                       "--domain", domain)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: ") and message in proc.stderr
    with sandbox.db() as conn:
        assert conn.execute("SELECT count(*) FROM services").fetchone()[0] == 0


def test_vanity_taken_name_is_refused(sandbox):
    sandbox.cli("create", "--service-id", "v1", "--product", "sandbox-vanity",
                "--domain", "shop.vanity.test", check=True)
    proc = sandbox.cli("create", "--service-id", "v9", "--product", "sandbox-vanity",
                       "--domain", "shop.vanity.test")
    assert proc.returncode == 2 and "already served by service v1" in proc.stderr


def test_vanity_name_already_in_the_parent_zone_is_not_taken_over(sandbox):
    import subprocess

    for ns in ("ns1", "ns2"):
        subprocess.run([str(sandbox.node(ns) / "bin" / "v-add-dns-record"), "provider",
                        "vanity.test", "shop", "CNAME", "elsewhere.example."], check=True)
    before = _panels(sandbox)
    sandbox.cli("create", "--service-id", "v1", "--product", "sandbox-vanity",
                "--domain", "shop.vanity.test", check=True)
    sandbox.cli("run", check=True)
    status = _status(sandbox, "v1")
    assert status["state"] == "error" and "already used in zone vanity.test" in status["error"]
    for ns in ("ns1", "ns2"):
        assert read_panel(sandbox.node(ns))["dns"] == before[ns]["dns"]
