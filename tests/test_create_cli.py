"""`puqdeploy create` as a billing hook calls it: idempotency, conflicts, bad input, durability."""

from __future__ import annotations

import json
import sqlite3

import pytest


def _counts(sandbox) -> tuple[int, int, int]:
    with sandbox.db() as conn:
        return tuple(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                     for table in ("services", "tasks", "events"))


def test_create_returns_json_and_is_idempotent(sandbox):
    args = ("create", "--service-id", "1234", "--product", "sandbox-split",
            "--domain", "example.com", "--json")
    first = sandbox.cli(*args, check=True)
    payload = json.loads(first.stdout)
    assert payload == {"service_id": "1234", "state": "queued", "tasks": payload["tasks"],
                       "created": True}
    assert payload["tasks"] == 8  # 2 web, 2 mail, 1 zone per DNS node (2), Auto-SSL web + mail
    again = sandbox.cli(*args, check=True)
    assert json.loads(again.stdout) == {**payload, "created": False}
    assert _counts(sandbox)[:2] == (1, 8)


def test_same_id_with_different_parameters_is_a_conflict(sandbox):
    sandbox.cli("create", "--service-id", "1234", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    before = _counts(sandbox)
    proc = sandbox.cli("create", "--service-id", "1234", "--product", "sandbox-split",
                       "--domain", "example.org")
    assert proc.returncode == 3
    assert proc.stderr.startswith("Error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert _counts(sandbox) == before


@pytest.mark.parametrize("domain", ["ex;ample.com", "$(reboot).com", "a..b", "", "a" * 300,
                                    "exa mple.com", "-bad.com", "1234"])
def test_bad_domains_are_refused_with_one_line_and_nothing_written(sandbox, domain):
    proc = sandbox.cli("create", "--service-id", "9", "--product", "sandbox-split",
                       "--domain", domain)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "Traceback" not in proc.stderr
    assert _counts(sandbox) == (0, 0, 0)


@pytest.mark.parametrize("args, code", [
    (("--service-id", "bad id!", "--product", "sandbox-split", "--domain", "example.com"), 2),
    (("--service-id", "7", "--product", "nope", "--domain", "example.com"), 2),
    (("--service-id", "7", "--product", "sandbox-split", "--domain", "example.com",
      "--set", "web_disk_quota=lots"), 2),
    (("--service-id", "7", "--product", "sandbox-split", "--domain", "example.com",
      "--set", "no_such_limit=1"), 2),
    (("--service-id", "7", "--product", "sandbox-split", "--domain", "example.com",
      "--username", "1abc"), 2),
])
def test_bad_input_exits_2_and_writes_nothing(sandbox, args, code):
    proc = sandbox.cli("create", *args)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("Error: ")
    assert _counts(sandbox) == (0, 0, 0)


def test_no_fitting_node_exits_2_and_writes_nothing(sandbox):
    sandbox.edit_node("web1", active=False)
    proc = sandbox.cli("create", "--service-id", "7", "--product", "sandbox-split",
                       "--domain", "example.com")
    assert proc.returncode == 2
    assert "no web node" in proc.stderr
    assert _counts(sandbox) == (0, 0, 0)


def test_accepted_order_is_on_disk_when_create_returns(sandbox):
    proc = sandbox.cli("create", "--service-id", "42", "--product", "sandbox-split",
                       "--domain", "münchen.de", "--password-stdin", input="S3cret-Passw0rd\n")
    assert proc.returncode == 0, proc.stderr
    conn = sqlite3.connect(sandbox.db_path)  # a fresh connection: what a restart would see
    svc = conn.execute("SELECT domain, state, password_enc FROM services WHERE id = '42'").fetchone()
    assert svc[0] == "xn--mnchen-3ya.de" and svc[1] == "queued"
    assert b"S3cret-Passw0rd" not in svc[2]
    tasks = conn.execute("SELECT count(*) FROM tasks WHERE service_id = '42'").fetchone()[0]
    assert tasks == 8
    assert b"S3cret-Passw0rd" not in sandbox.db_path.read_bytes()


def test_database_and_key_file_are_private(sandbox):
    assert sandbox.db_path.stat().st_mode & 0o777 == 0o600
    assert (sandbox.root / "secret.key").stat().st_mode & 0o777 == 0o600
    assert sandbox.db_path.parent.stat().st_mode & 0o777 == 0o700


def test_init_is_safe_to_rerun(sandbox):
    sandbox.cli("create", "--service-id", "1", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    key = (sandbox.root / "secret.key").read_bytes()
    proc = sandbox.cli("init", check=True)
    assert "up to date" in proc.stdout and "kept" in proc.stdout
    assert (sandbox.root / "secret.key").read_bytes() == key
    assert _counts(sandbox)[0] == 1


def test_create_path_imports_nothing_slow(sandbox):
    import subprocess
    import sys

    # the click command itself (`entry` would leave with os._exit before the list is printed)
    code = ("import sys; sys.argv = ['puqdeploy', '--config', %r, 'create', '--service-id',"
            " 'imp', '--product', 'sandbox-split', '--domain', 'example.net'];"
            "\nfrom puqdeploy.cli import main\ntry:\n    main()\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('paramiko', 'rich', 'dns', 'puqdeploy', 'cryptography', 'secrets', 'hashlib')))"
            ) % str(sandbox.config_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout.strip().splitlines()[-1])
    assert "puqdeploy.chacha" in loaded  # the password was sealed ...
    # ... without the slow imports: cryptography (OpenSSL bindings), secrets/hashlib (libcrypto)
    assert not [m for m in loaded if m.split(".")[0] in ("paramiko", "rich", "dns", "cryptography",
                                                          "secrets", "hashlib")]
    assert "puqdeploy.runner" not in loaded and "puqdeploy.ssh_transport" not in loaded


def test_commands_close_the_database_before_their_fast_exit(sandbox):
    """`entry` leaves with os._exit, after closing what the command opened: the last
    connection's close checkpoints the WAL into the database file and removes it."""
    wal = sandbox.db_path.with_name(sandbox.db_path.name + "-wal")
    for args in (("create", "--service-id", "w1", "--product", "sandbox-split", "--domain",
                  "example.com"), ("run",), ("status", "w1", "--json")):
        proc = sandbox.cli(*args, check=True)
        assert not wal.exists(), f"{args[0]} left {wal.name} behind"
    assert '"service_id": "w1"' in proc.stdout  # the output was flushed before the exit
    assert sandbox.cli("status", "nope").returncode == 4  # exit codes pass through
