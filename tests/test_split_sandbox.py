"""A whole Split deployment on the sandbox fleet: create -> run -> active, and convergence.

The simulated panels are inspected directly (their data files), so the test checks what a real
operator would find on each node, not what puqdeploy believes it did.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from puqdeploy.sandbox.node import read_command_log, read_panel

NODES = ("web1", "mail1", "ns1", "ns2")


def _norm(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


def _records(zone: list[dict]) -> list[tuple[str, str, str, str]]:
    return sorted((r["record"], r["type"], _norm(r["value"]), str(r["priority"] or "")) for r in zone)


def _dkim(sandbox) -> str:
    out = subprocess.run([str(sandbox.node("mail1") / "bin" / "v-list-mail-domain-dkim-dns"),
                          "examplecom-mail", "example.com", "json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["mail._domainkey"]["TXT"].strip("'\"")


def expected_zone(dkim: str) -> list[tuple[str, str, str, str]]:
    """What a Split zone for example.com must hold on every DNS node of the sandbox."""
    return sorted([
        ("@", "NS", "ns1.sandbox.test.", ""), ("@", "NS", "ns2.sandbox.test.", ""),
        ("@", "A", "127.0.77.1", ""),
        ("www", "CNAME", "example.com.", ""), ("ftp", "CNAME", "example.com.", ""),
        ("mail", "A", "127.0.77.2", ""), ("webmail", "CNAME", "mail.example.com.", ""),
        ("@", "MX", "mail.example.com.", "10"),
        ("@", "TXT", "v=spf1 a mx ip4:127.0.77.2 -all", ""),
        ("_dmarc", "TXT", "v=DMARC1; p=quarantine; pct=100", ""),
        ("mail._domainkey", "TXT", dkim, ""),
        ("@", "CAA", '0 issue "letsencrypt.org"', ""),
    ])


def service_objects(panel: dict) -> dict:
    """A panel snapshot without the sandbox provider's own (pre-existing Vanity parent) objects."""
    return {key: ({user: v for user, v in value.items() if user != "provider"}
                  if isinstance(value, dict) and key != "packages" else value)
            for key, value in panel.items()}


def assert_split_panels(sandbox) -> dict:
    """Every node holds exactly the objects of the example.com Split service."""
    panels = {name: service_objects(read_panel(sandbox.node(name))) for name in NODES}
    web, mail = panels["web1"], panels["mail1"]
    assert set(web["users"]) == {"examplecom-web"}
    assert web["users"]["examplecom-web"]["package"] == "examplecom-web"
    assert web["web"] == {"examplecom-web": {"example.com": {
        "aliases": ["www.example.com"], "backend": "PHP-8_3", "ssl": False, "suspended": False}}}
    assert web["mail"] == {} and web["dns"] == {}
    assert set(mail["users"]) == {"examplecom-mail"}
    assert mail["mail"] == {"examplecom-mail": {"example.com": {"dkim": True, "accounts": {}}}}
    assert mail["web"] == {} and mail["dns"] == {}
    dkim = _dkim(sandbox)
    assert dkim.startswith("v=DKIM1")
    for ns in ("ns1", "ns2"):
        panel = panels[ns]
        assert set(panel["users"]) == {"examplecom-dns"}
        assert panel["web"] == {} and panel["mail"] == {}
        assert list(panel["dns"]["examplecom-dns"]) == ["example.com"]
        assert _records(panel["dns"]["examplecom-dns"]["example.com"]) == expected_zone(dkim)
    packages = panels["web1"]["packages"]["examplecom-web"]
    assert packages["DISK_QUOTA"] == "2048" and packages["MAIL_DOMAINS"] == "0"
    return panels


@pytest.fixture
def deployed(sandbox):
    sandbox.cli("create", "--service-id", "1234", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    proc = sandbox.cli("run", check=True)
    assert "leased 8" in proc.stderr and "failed 0" in proc.stderr, proc.stderr
    return sandbox


def test_split_deploys_in_one_tick(deployed):
    status = json.loads(deployed.cli("status", "1234", "--json", check=True).stdout)
    assert status["state"] == "active"
    assert status["progress"] == {"done": 6, "total": 6, "percent": 100}
    assert status["error"] is None
    assert status["placement"] == {"web": "web1", "mail": "mail1", "dns": ["ns1", "ns2"]}
    blocking = [t for t in status["tasks"] if t["blocking"]]
    assert all(t["state"] == "done" and t["attempts"] == 1 for t in blocking)
    ssl = [t for t in status["tasks"] if not t["blocking"]]
    assert [t["action"] for t in ssl] == ["ssl.web", "ssl.mail"]
    assert [t["node"] for t in ssl] == ["web1", "mail1"]
    assert all(t["state"] == "waiting" and t["attempts"] == 0 for t in ssl)  # no attempt used
    assert any("ready" in a["message"] for a in status["activity"])
    assert_split_panels(deployed)


def test_running_again_changes_nothing(deployed):
    before = {name: read_panel(deployed.node(name)) for name in NODES}
    proc = deployed.cli("run", check=True)
    assert "nothing due" in proc.stderr
    assert {name: read_panel(deployed.node(name)) for name in NODES} == before


def test_redeploy_converges_without_duplicates_or_changes(deployed):
    before = assert_split_panels(deployed)
    logged = {name: len(read_command_log(deployed.node(name))) for name in NODES}
    deployed.cli("redeploy", "1234", "--yes", check=True)
    queued = json.loads(deployed.cli("status", "1234", "--json", check=True).stdout)
    assert queued["operation"] == "redeploy" and queued["state"] == "queued"
    deployed.cli("run", check=True)
    status = json.loads(deployed.cli("status", "1234", "--json", check=True).stdout)
    assert status["state"] == "active" and status["progress"]["percent"] == 100
    assert assert_split_panels(deployed) == before
    # check-first: the second pass only listed; it added nothing anywhere
    for name in NODES:
        programs = [c["program"] for c in read_command_log(deployed.node(name))[logged[name]:]]
        assert programs, name
        assert all(p.startswith("v-list-") for p in programs), (name, programs)
    text = deployed.cli("status", "1234", check=True).stdout
    timeline, earlier = text.split("Earlier operations")
    assert "redeploy" in timeline and "#1 deploy (done)" in earlier  # the timeline shows both
    assert earlier.count("Creating web user") == 1
    history = json.loads(deployed.cli("tasks", "1234", "--json", check=True).stdout)
    assert sum(t["superseded"] for t in history) == 8
    assert len(history) == 16


def test_password_is_never_in_argv_logs_or_output(sandbox):
    secret = "Zz9-Very-Secret-Pass"
    sandbox.cli("create", "--service-id", "p1", "--product", "sandbox-split",
                "--domain", "example.com", "--password-stdin", input=secret + "\n", check=True)
    run = sandbox.cli("run", check=True)
    outputs = [run.stdout, run.stderr]
    for command in ("status", "tasks"):
        outputs.append(sandbox.cli(command, "p1", check=True).stdout)
        outputs.append(sandbox.cli(command, "p1", "--json", check=True).stdout)
    for task_id in range(1, 9):
        outputs.append(sandbox.cli("log", str(task_id)).stdout)
    assert all(secret not in text for text in outputs)
    for name in NODES:
        log_text = (sandbox.node(name) / "commands.log").read_text()
        assert secret not in log_text
    assert secret.encode() not in sandbox.db_path.read_bytes()
    from puqdeploy.sandbox.node import check_password

    assert check_password(sandbox.node("web1"), "examplecom-web", secret)
    assert check_password(sandbox.node("ns2"), "examplecom-dns", secret)
    assert not check_password(sandbox.node("web1"), "examplecom-web", secret + "x")
