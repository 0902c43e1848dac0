"""Split deployments over real OpenSSH servers (the `ssh_fleet` of tests/sshfleet.py).

Everything here is real: four sshd processes on 127.0.77.1-4, the puqdeploy CLI as a
subprocess, an SQLite file, and the simulated HestiaCP of the sandbox installed fresh for each
test in its own folder (`hestia_bin` points there; sshd runs it as root like a real panel).
Nothing is mocked. If sshd cannot start, the session fixture fails the tests (never skips).

Synchronisation is always by polling real state (the database, a node's commands.log or its
running/ markers) with a bounded deadline, never by sleeping a guessed amount.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest
import yaml

from puqdeploy.sandbox.fleet import write_sandbox
from puqdeploy.sandbox.node import (
    check_password,
    clear_faults,
    read_command_log,
    read_panel,
    set_faults,
)
from puqdeploy.ssh_transport import fingerprint
from tests.test_split_sandbox import _norm, expected_zone
from tests.conftest import Sandbox, wait_for
from tests.sshfleet import generate_key

NODES = ("web1", "mail1", "ns1", "ns2")
PRODUCT = "sandbox-split"
RETRY = {"max_attempts": 5, "base_seconds": 2, "factor": 2, "max_seconds": 30, "jitter": 0.1}
TMP_FILE = re.compile(r"/tmp/puqdeploy-[A-Za-z0-9_]+")


# --------------------------------------------------------------------------- helpers


def alive(pid: int) -> bool:
    """A live, non-zombie process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def make_ssh_box(root: Path, fleet, per_node: Optional[dict] = None,
                 retry: Optional[dict] = None) -> Sandbox:
    """A sandbox (fresh simulated panels under ROOT/nodes/) whose nodes are reached over SSH.

    Same groups, products and node settings as `puqdeploy sandbox`, but every node of the
    fleet (the four Split nodes and host1) is `transport: ssh` to its sshd, with `hestia_bin`
    pointing at this test's own panel.
    """
    config_path = Path(write_sandbox(str(root)))
    box = Sandbox(root=config_path.parent, config_path=config_path)
    blocks = {node.name: {"hestia_bin": str(box.node(node.name) / "bin"), "capacity": 100,
                          "max_concurrency": 1} for node in fleet}  # every fleet node, host1 too
    for name, extra in (per_node or {}).items():
        blocks[name].update(extra)
    data = yaml.safe_load(config_path.read_text())
    data["nodes"].update(fleet.config_nodes(blocks))  # other sandbox nodes stay local
    data["ssl"] = {"enabled": False}
    data["retry"] = {**RETRY, **(retry or {})}
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    box.cli("init", check=True)
    return box


@pytest.fixture
def fleet(ssh_fleet):
    """The session fleet, every sshd up at the start of the test and again at its end."""
    for node in ssh_fleet:
        node.start()
    yield ssh_fleet
    for node in ssh_fleet:
        node.start()


@pytest.fixture
def ssh_box(tmp_path, fleet):
    """Factory: `ssh_box(per_node={...}, retry={...})` -> a fresh SSH sandbox."""
    count = iter(range(100))

    def make(**kwargs) -> Sandbox:
        return make_ssh_box(tmp_path / f"ssh{next(count)}", fleet, **kwargs)

    return make


def create(box: Sandbox, service_id: str = "s1", password: Optional[str] = None) -> None:
    args = ["create", "--service-id", service_id, "--product", PRODUCT, "--domain", "example.com"]
    if password is not None:
        args.append("--password-stdin")
    box.cli(*args, input=None if password is None else password + "\n", check=True)


def status(box: Sandbox, service_id: str = "s1") -> dict:
    return json.loads(box.cli("status", service_id, "--json", check=True).stdout)


def task_row(conn: sqlite3.Connection, action: str, node: Optional[str] = None) -> sqlite3.Row:
    sql, params = "SELECT * FROM tasks WHERE action = ? AND superseded = 0", [action]
    if node is not None:
        sql += " AND node = ?"
        params.append(node)
    rows = conn.execute(sql, params).fetchall()
    assert len(rows) == 1, (action, node, [dict(r) for r in rows])
    return rows[0]


def attempts_of(conn: sqlite3.Connection, task_id: int) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM attempts WHERE task_id = ? ORDER BY number",
                        (task_id,)).fetchall()


def wait_until_due(conn: sqlite3.Connection, task_id: int, timeout: float = 30.0) -> float:
    """Poll the clock against the task's run_after (read from the database)."""
    run_after = conn.execute("SELECT run_after FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]
    wait_for(lambda: time.time() >= run_after + 0.01, timeout, f"task {task_id} to be due")
    return run_after


def _service_part(panel: dict, owned: bool) -> dict:
    """The part of a snapshot that belongs to the example.com service (`owned`) or not."""
    def mine(name: str) -> bool:
        return name.startswith("examplecom-") == owned

    part = {key: {k: v for k, v in panel[key].items() if mine(k)}
            for key in ("users", "packages", "web", "mail", "dns", "certificates")}
    if not owned:
        part["suspended_users_counter"] = panel["suspended_users_counter"]
    return part


def snapshot(box: Sandbox) -> dict:
    return {name: read_panel(box.node(name)) for name in NODES}


def assert_split_panels(box: Sandbox, baseline: dict) -> dict:
    """Each node holds exactly the example.com Split objects, and nothing else changed there."""
    panels = snapshot(box)
    for name in NODES:
        assert _service_part(panels[name], owned=False) == \
            _service_part(baseline[name], owned=False), name
    web, mail = (_service_part(panels[n], owned=True) for n in ("web1", "mail1"))
    assert web["users"] == {"examplecom-web": {"package": "examplecom-web",
                                               "email": "webmaster@example.com",
                                               "suspended": False}}
    assert web["web"] == {"examplecom-web": {"example.com": {
        "aliases": ["www.example.com"], "backend": "PHP-8_3", "ssl": False, "suspended": False}}}
    assert web["mail"] == {} and web["dns"] == {}
    assert web["packages"]["examplecom-web"]["DISK_QUOTA"] == "2048"
    assert list(mail["users"]) == ["examplecom-mail"]
    assert mail["mail"] == {"examplecom-mail": {"example.com": {"dkim": True, "accounts": {}}}}
    assert mail["web"] == {} and mail["dns"] == {}
    out = subprocess.run([str(box.node("mail1") / "bin" / "v-list-mail-domain-dkim-dns"),
                          "examplecom-mail", "example.com", "json"],
                         capture_output=True, text=True, check=True).stdout
    dkim = json.loads(out)["mail._domainkey"]["TXT"].strip("'\"")
    assert dkim.startswith("v=DKIM1")
    for ns in ("ns1", "ns2"):
        dns = _service_part(panels[ns], owned=True)
        assert list(dns["users"]) == ["examplecom-dns"]
        assert dns["web"] == {} and dns["mail"] == {}
        assert list(dns["dns"]["examplecom-dns"]) == ["example.com"]
        zone = dns["dns"]["examplecom-dns"]["example.com"]
        records = sorted((r["record"], r["type"], _norm(r["value"]), str(r["priority"] or ""))
                         for r in zone)
        assert records == expected_zone(dkim), ns
    return panels


def _normalise_dkim(panel: dict) -> dict:
    """The DKIM key is generated per mail domain, so it legitimately differs between fleets."""
    panel = copy.deepcopy(panel)
    for zones in panel["dns"].values():
        for records in zones.values():
            for record in records:
                if record["record"] == "mail._domainkey" and "DKIM1" in record["value"]:
                    record["value"] = "<dkim>"
    return panel


def _normalise_dkim_all(panels: dict) -> dict:
    return {name: _normalise_dkim(panel) for name, panel in panels.items()}


def _normalise_command(entry: dict) -> tuple:
    """(program, argv) with temp file names and DKIM keys replaced (both random per run)."""
    argv = [TMP_FILE.sub("/tmp/puqdeploy-*", a) for a in entry["argv"]]
    argv = ["<dkim>" if a.startswith("v=DKIM1") else a for a in argv]
    return entry["program"], tuple(argv), entry["exit"]


# --------------------------------------------------------------------------- 1. parity


def test_split_over_ssh_ends_active_and_equals_the_local_sandbox(ssh_box, sandbox):
    box = ssh_box()
    sandbox.edit_config(ssl={"enabled": False})
    baseline = {"ssh": snapshot(box), "local": snapshot(sandbox)}
    assert _normalise_dkim_all(baseline["ssh"]) == _normalise_dkim_all(baseline["local"])
    for target in (box, sandbox):
        create(target)
        proc = target.cli("run", check=True)
        assert "leased 6, done 6" in proc.stderr and "failed 0" in proc.stderr, proc.stderr
    remote = status(box)
    assert remote["state"] == "active" and remote["error"] is None, remote
    assert remote["progress"] == {"done": 6, "total": 6, "percent": 100}
    assert all(t["state"] == "done" and t["attempts"] == 1 for t in remote["tasks"])
    assert status(sandbox)["state"] == "active"

    ssh_panels = assert_split_panels(box, baseline["ssh"])
    local_panels = assert_split_panels(sandbox, baseline["local"])
    for name in NODES:
        assert _normalise_dkim(ssh_panels[name]) == _normalise_dkim(local_panels[name]), name
        # and the very same commands, with the very same arguments, reached each panel
        ssh_log = [_normalise_command(c) for c in read_command_log(box.node(name))]
        local_log = [_normalise_command(c) for c in read_command_log(sandbox.node(name))]
        assert ssh_log == local_log, name
        assert not any(c["overlap"] for c in read_command_log(box.node(name))), name
    # the DKIM key is the SSH mail node's own, published on both name servers
    dkim = [r["value"] for r in ssh_panels["ns1"]["dns"]["examplecom-dns"]["example.com"]
            if r["record"] == "mail._domainkey"]
    assert dkim == [r["value"] for r in ssh_panels["ns2"]["dns"]["examplecom-dns"]["example.com"]
                    if r["record"] == "mail._domainkey"]
    assert dkim != [r["value"] for r in local_panels["ns1"]["dns"]["examplecom-dns"]["example.com"]
                    if r["record"] == "mail._domainkey"]


# --------------------------------------------------------------------------- 2. connections


def test_one_ssh_connection_per_node_per_tick(ssh_box, fleet):
    box = ssh_box()
    create(box)
    conn = box.db()
    expected_tasks = {"web1": 2, "mail1": 2, "ns1": 1, "ns2": 1}
    for tick, prepare in enumerate((lambda: None,
                                    lambda: box.cli("redeploy", "s1", "--yes", check=True))):
        prepare()
        logged = {name: len(read_command_log(box.node(name))) for name in NODES}
        before = {name: fleet[name].accepted_connections() for name in NODES}
        started = time.time()
        proc = box.cli("run", check=True)
        ended = time.time()
        assert "leased 6, done 6" in proc.stderr, proc.stderr
        accepted = {name: fleet[name].accepted_connections() - before[name] for name in NODES}
        ran = dict(conn.execute(
            "SELECT t.node, count(*) FROM attempts a JOIN tasks t ON t.id = a.task_id "
            "WHERE a.started_at BETWEEN ? AND ? AND a.outcome = 'done' GROUP BY t.node",
            (started, ended)).fetchall())
        commands = {name: len(read_command_log(box.node(name))) - logged[name] for name in NODES}
        print(f"tick {tick + 1}: connections {accepted}, tasks {ran}, commands {commands}")
        assert ran == expected_tasks, ran
        assert all(commands[name] >= 3 for name in NODES), commands
        assert accepted == {name: 1 for name in NODES}, accepted
    assert status(box)["state"] == "active"


# --------------------------------------------------------------------------- 3. node down


def test_sshd_stopped_mid_deploy_backs_off_then_converges_without_duplicates(ssh_box, fleet):
    box = ssh_box()
    ns2 = fleet["ns2"]
    set_faults(box.node("ns2"), delay_seconds=0.3)  # ns2 is slow: we stop it mid-zone
    baseline = snapshot(box)
    create(box)
    conn = box.db()
    runner = box.popen("run")

    def ns2_mid_zone_and_rest_done():
        states = dict(conn.execute("SELECT coalesce(action || '@' || node, action), state "
                                   "FROM tasks").fetchall())
        ns2_state = states.pop("dns.zone@ns2")
        assert ns2_state in ("pending", "queued", "running"), "ns2 finished before we stopped it"
        added = any(c["program"] == "v-add-dns-record" for c in read_command_log(box.node("ns2")))
        return added and all(state == "done" for state in states.values())

    try:
        # stop ns2 in the middle of its zone, once nothing else runs: the tick must then end
        # without leasing ns2's task again (its back-off outlasts the tick)
        wait_for(ns2_mid_zone_and_rest_done, what="ns2 mid-zone with every other task done")
        ns2.stop()
        stopped_at = time.time()
        partial = read_panel(box.node("ns2"))["dns"]["examplecom-dns"]["example.com"]
        out, err = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 0, err
    assert "retried 1" in err and "failed 0" in err, err

    task = task_row(conn, "dns.zone", "ns2")
    assert task["state"] == "queued" and task["attempts"] == 1, dict(task)
    assert "ns2 unreachable" in task["last_error"], task["last_error"]
    (attempt,) = attempts_of(conn, task["id"])
    assert attempt["outcome"] == "retry" and attempt["ended_at"] >= stopped_at - 1
    backoff = task["run_after"] - attempt["ended_at"]
    base, jitter = RETRY["base_seconds"], RETRY["jitter"]
    print(f"ns2 stopped mid-zone with {len(partial)} records; back-off {backoff:.3f} s; "
          f"error: {task['last_error']}")
    assert base * (1 - jitter) - 1e-6 <= backoff <= base * (1 + jitter) + 1e-6, backoff
    others = conn.execute("SELECT action, node, state FROM tasks WHERE id != ?",
                          (task["id"],)).fetchall()
    assert all(row["state"] == "done" for row in others), [dict(r) for r in others]
    assert status(box)["state"] != "active"

    ns2.start()
    clear_faults(box.node("ns2"))
    wait_until_due(conn, task["id"])
    proc = box.cli("run", check=True)
    assert "leased 1, done 1" in proc.stderr, proc.stderr
    final = status(box)
    assert final["state"] == "active", final
    assert [a["outcome"] for a in attempts_of(conn, task["id"])] == ["retry", "done"]
    panels = assert_split_panels(box, baseline)  # exactly the expected records: nothing doubled
    full = panels["ns2"]["dns"]["examplecom-dns"]["example.com"]
    assert len(partial) < len(full), (len(partial), len(full))
    assert panels["ns2"]["dns"] == panels["ns1"]["dns"]


# --------------------------------------------------------------------------- 4. host key


@pytest.mark.parametrize("where", ["known_hosts", "host_key"])
def test_changed_host_key_fails_terminally_and_nothing_runs(ssh_box, fleet, tmp_path, where):
    web1 = fleet["web1"]
    impostor = generate_key(tmp_path / "impostor", "impostor")
    if where == "known_hosts":
        lines = [line for line in fleet.known_hosts.read_text().splitlines()
                 if not line.startswith(f"[{web1.address}]:")]
        lines.append(f"[{web1.address}]:{web1.port} {impostor}")
        (tmp_path / "known_hosts").write_text("\n".join(lines) + "\n")
        override = {"known_hosts": str(tmp_path / "known_hosts")}
    else:
        override = {"host_key": impostor}
    box = ssh_box(per_node={"web1": override})
    create(box)
    before = web1.accepted_connections()
    proc = box.cli("run", check=True)
    assert "failed 1" in proc.stderr, proc.stderr
    conn = box.db()
    task = task_row(conn, "web.user")
    assert task["state"] == "failed" and task["attempts"] == 1, dict(task)
    error = task["last_error"]
    print(f"{where}: {error}")
    assert "web1" in error and "CHANGED" in error
    assert fingerprint(web1.host_key) in error  # what the node offered
    assert fingerprint(impostor) in error  # what we expected
    assert task_row(conn, "web.domain")["state"] == "cancelled"
    assert [a["outcome"] for a in attempts_of(conn, task["id"])] == ["fail"]
    # refused before authentication: no login, and nothing ran on web1
    assert web1.accepted_connections() == before
    assert read_command_log(box.node("web1")) == []
    assert read_panel(box.node("web1"))["users"] == {}
    # the rest of the service went on
    for action in ("mail.user", "mail.domain", "dns.zone"):
        assert {r["state"] for r in conn.execute(
            "SELECT state FROM tasks WHERE action = ?", (action,))} == {"done"}, action
    final = status(box)
    assert final["state"] == "error" and "web1" in final["error"], final


# --------------------------------------------------------------------------- 5. timeout


def test_hung_command_is_killed_at_the_timeout_and_retried(ssh_box):
    box = ssh_box(per_node={"web1": {"command_timeout_seconds": 2}})
    web1 = box.node("web1")
    set_faults(web1, hang={"program": "v-add-web-domain", "seconds": 60})
    create(box)
    conn = box.db()

    def hung_marker():
        for marker in (web1 / "running").iterdir():
            try:
                text = marker.read_text() if marker.name.isdigit() else ""
            except FileNotFoundError:
                continue
            if text.startswith("v-add-web-domain"):
                return int(marker.name), float(text.split()[1])
        return None

    # `--once` ticks: the first runs the users; the second leases web.domain (and mail.domain)
    # and nothing after its first claim, so the timed-out task cannot be leased again in it
    first = box.cli("run", "--once", check=True)
    assert "leased 2, done 2" in first.stderr, first.stderr
    runner = box.popen("run", "--once")
    try:
        pid, _ = wait_for(hung_marker, what="v-add-web-domain to hang on web1")
        assert alive(pid)
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 0, err
    wait_for(lambda: not alive(pid), timeout=5, what=f"the hung command (pid {pid}) to be gone")
    assert [m.name for m in (web1 / "running").iterdir()] == []
    hung = [c for c in read_command_log(web1) if c["program"] == "v-add-web-domain"]
    assert len(hung) == 1 and hung[0]["pid"] == pid
    assert hung[0]["exit"] == 143  # SIGTERM, relayed to the command's process group
    killed_after = hung[0]["end"] - hung[0]["start"]
    task = task_row(conn, "web.domain")
    (attempt,) = attempts_of(conn, task["id"])
    (sent_at,) = conn.execute("SELECT at FROM attempt_logs WHERE attempt_id = ? AND stream = 'cmd' "
                              "AND line LIKE '$ v-add-web-domain %'", (attempt["id"],)).fetchone()
    gave_up_after = attempt["ended_at"] - sent_at
    print(f"timeout 2 s: the runner gave up {gave_up_after:.2f} s after sending the command; "
          f"the command itself lived {killed_after:.2f} s (TERM, exit 143); {attempt['error']}")
    assert 2.0 <= gave_up_after < 4.5, gave_up_after
    assert 1.5 <= killed_after < 4.5, killed_after  # (the sim starts its clock after booting)
    assert attempt["outcome"] == "timeout" and "timed out after 2 s" in attempt["error"]
    assert task["state"] == "queued" and task["attempts"] == 1, dict(task)
    assert read_panel(web1)["web"] == {}
    assert "leased 2, done 1, retried 1" in err, err

    clear_faults(web1)
    wait_until_due(conn, task["id"])
    proc = box.cli("run", check=True)
    assert "leased 3, done 3" in proc.stderr, (proc.stderr, [tuple(r) for r in conn.execute(
        "SELECT action, state, attempts, last_error FROM tasks WHERE last_error IS NOT NULL")])
    assert status(box)["state"] == "active"
    assert [a["outcome"] for a in attempts_of(conn, task["id"])] == ["timeout", "done"]
    assert list(read_panel(web1)["web"]["examplecom-web"]) == ["example.com"]


# --------------------------------------------------------------------------- 6. password


def _cmdlines() -> list[bytes]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    found.append(handle.read())
            except OSError:
                pass
    return found


def test_password_never_in_process_arguments_logs_or_output(ssh_box, fleet):
    secret = "Qx7-Ssh-Only-Secret-42"
    box = ssh_box()
    for name in NODES:  # slow panel: every command lives long enough to be seen in /proc
        set_faults(box.node(name), delay_seconds=0.2)
    create(box, password=secret)
    sshd_before = {name: len(fleet[name].log()) for name in NODES}

    runner = box.popen("run")
    mine = str(box.root).encode()  # other test sessions may run panels on this machine too
    samples, seen_add_user, leaks = 0, [], []
    try:
        while runner.poll() is None:
            for cmdline in _cmdlines():
                if secret.encode() in cmdline:
                    leaks.append(cmdline)
                if mine in cmdline and re.search(rb"(^|[\x00/])v-add-user\x00", cmdline):
                    seen_add_user.append(cmdline)
            samples += 1
            time.sleep(0.005)  # the sampling rate (each command lives >= 0.2 s), not a wait
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    print(f"{samples} samples of /proc/*/cmdline, v-add-user seen {len(seen_add_user)} times")
    assert runner.returncode == 0, err
    assert not leaks, leaks
    assert samples >= 20 and seen_add_user, samples
    # what was seen is the temp file's path where the password would be
    assert all(re.search(rb"v-add-user\x00[^\x00]+\x00/tmp/puqdeploy-", c)
               for c in seen_add_user), set(seen_add_user)
    assert status(box)["state"] == "active"

    texts = {"run stdout": out, "run stderr": err}
    for command in ("status", "tasks"):
        texts[command] = box.cli(command, "s1", check=True).stdout
        texts[f"{command} --json"] = box.cli(command, "s1", "--json", check=True).stdout
    conn = box.db()
    for task_id, number in conn.execute("SELECT task_id, number FROM attempts"):
        log = box.cli("log", str(task_id), "--attempt", str(number), check=True).stdout
        assert "$ v-" in log
        texts[f"log {task_id}/{number}"] = log
        texts[f"log {task_id}/{number} --json"] = box.cli(
            "log", str(task_id), "--attempt", str(number), "--json", check=True).stdout
    assert len([k for k in texts if k.startswith("log ")]) == 12
    for name in NODES:
        texts[f"sshd log {name}"] = fleet[name].log()[sshd_before[name]:]
        texts[f"commands.log {name}"] = (box.node(name) / "commands.log").read_text()
        assert "Accepted publickey" in texts[f"sshd log {name}"]
    leaked = [where for where, text in texts.items() if secret in text]
    assert not leaked, leaked
    for suffix in ("", "-wal"):
        path = Path(f"{box.db_path}{suffix}")
        if path.exists():
            assert secret.encode() not in path.read_bytes(), path
    assert not [p for p in Path("/tmp").glob("puqdeploy-*")
                if p.is_file() and secret.encode() in p.read_bytes()]
    # ...and yet the password did reach every panel
    for name, user in (("web1", "examplecom-web"), ("mail1", "examplecom-mail"),
                       ("ns1", "examplecom-dns"), ("ns2", "examplecom-dns")):
        assert check_password(box.node(name), user, secret), name


# --------------------------------------------------------------------------- 7. nodes CLI


def _check(box: Sandbox, *args: str) -> tuple[int, dict]:
    proc = box.cli("nodes", "check", *args, "--json")
    return proc.returncode, {row["name"]: row for row in json.loads(proc.stdout)["nodes"]}


def test_nodes_list_check_and_trust(ssh_box, fleet, tmp_path):
    web1, ns1, ns2 = fleet["web1"], fleet["ns1"], fleet["ns2"]
    fresh = tmp_path / "trust" / "known_hosts"  # does not exist yet
    box = ssh_box(per_node={"web1": {"known_hosts": str(fresh)},
                            "ns2": {"host_key": ns2.host_key}})
    create(box)

    listing = json.loads(box.cli("nodes", "--json", check=True).stdout)["nodes"]
    assert [n["name"] for n in listing][:4] == list(NODES)
    assert listing[0] == {"name": "web1", "host": "127.0.77.1", "port": web1.port,
                          "transport": "ssh", "roles": ["web"], "capacity": 100,
                          "used": 1, "active": True, "max_concurrency": 1}
    assert all(n["used"] == 1 and n["transport"] == "ssh" for n in listing[:4])
    assert [(n["name"], n["used"]) for n in listing[4:]] == [("host1", 0)]  # the Unified node, unused
    text = box.cli("nodes", check=True).stdout
    for name in NODES:
        assert re.search(rf"^{name}\s+127\.0\.77\.\d\s+{web1.port}\s+ssh\s+\w+\s+1/100\s+yes\s+1$",
                         text, re.M), text

    # web1's known_hosts is empty: refused, with the fingerprint and the fix
    code, rows = _check(box, "web1")
    assert code == 1 and not rows["web1"]["reachable"]
    assert "unknown host key" in rows["web1"]["error"]
    assert fingerprint(web1.host_key) in rows["web1"]["error"]
    assert "nodes trust web1" in rows["web1"]["error"]

    declined = box.cli("nodes", "trust", "web1", input="n\n")
    assert declined.returncode == 2 and fingerprint(web1.host_key) in declined.stdout
    assert not fresh.exists()
    trusted = box.cli("nodes", "trust", "web1", "--yes", check=True)
    assert f"ssh-ed25519 {fingerprint(web1.host_key)}" in trusted.stdout
    assert fresh.read_text() == web1.known_hosts_line + "\n"
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    again = box.cli("nodes", "trust", "web1", "--yes", check=True)
    assert "already" in again.stdout and fresh.read_text() == web1.known_hosts_line + "\n"

    code, rows = _check(box)
    assert code == 0, rows
    assert list(rows) == [n["name"] for n in listing]
    for name in rows:
        row = rows[name]
        assert row["reachable"] and row["ok"] and row["error"] is None, row
        assert row["version"] == "1.10.3" and row["latency_ms"] > 0
    print("latency ms:", {name: rows[name]["latency_ms"] for name in NODES})

    with ns1.stopped():
        code, rows = _check(box)
        assert code == 1
        assert not rows["ns1"]["reachable"] and "cannot connect" in rows["ns1"]["error"]
        assert "ns1" in rows["ns1"]["error"] and rows["ns1"]["version"] is None
        assert all(row["ok"] for name, row in rows.items() if name != "ns1"), rows
        text = box.cli("nodes", "check")
        assert text.returncode == 1 and re.search(r"^ns1\s.*\sno\s", text.stdout, re.M)
        assert box.cli("nodes", "check", "ns1").returncode == 1
        assert _check(box, "mail1")[0] == 0

    unknown = box.cli("nodes", "check", "nope")
    assert unknown.returncode == 4 and unknown.stderr.startswith("Error:")
    assert box.cli("nodes", "trust", "nope", "--yes").returncode == 4
    pinned = box.cli("nodes", "trust", "ns2", "--yes")
    assert pinned.returncode == 2 and "host_key" in pinned.stderr, pinned.stderr

    # a different key already filed for web1 (the MITM case): refused, file untouched
    impostor = generate_key(tmp_path / "impostor", "impostor")
    fresh.write_text(f"[{web1.address}]:{web1.port} {impostor}\n")
    refused = box.cli("nodes", "trust", "web1", "--yes")
    assert refused.returncode == 2 and fingerprint(impostor) in refused.stderr, refused.stderr
    assert fresh.read_text() == f"[{web1.address}]:{web1.port} {impostor}\n"


def test_nodes_on_a_local_sandbox(sandbox):
    code, rows = _check(sandbox)
    assert code == 0 and all(r["ok"] and r["version"] == "1.10.3" for r in rows.values()), rows
    listing = json.loads(sandbox.cli("nodes", "--json", check=True).stdout)["nodes"]
    assert {n["transport"] for n in listing} == {"local"} and all(n["used"] == 0 for n in listing)
    refused = sandbox.cli("nodes", "trust", "web1", "--yes")
    assert refused.returncode == 2 and "local transport" in refused.stderr
    sandbox.edit_node("web1", hestia_bin="nodes/web1/missing-bin")
    code, rows = _check(sandbox)
    assert code == 1 and not rows["web1"]["ok"] and rows["mail1"]["ok"], rows
