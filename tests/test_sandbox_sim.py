"""The simulated HestiaCP command set, exercised the way puqdeploy uses it: real subprocesses
through the node's `bin/` wrappers (no mocks), asserting exit codes, the `Error:` lines on
stdout, JSON shapes, the real panel's quirks, the fault knobs and the instrumentation."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from puqdeploy.sandbox import hestia_sim
from puqdeploy.sandbox.node import (
    COMMAND_NAMES, check_password, clear_faults, install_node, read_command_log, read_panel,
    set_faults, start_fork_server, stop_fork_server,
)
from tests.conftest import wait_for
from tests.simnode import PACKAGE, Node

@pytest.fixture(scope="session")
def fast_dir(tmp_path_factory):
    """Where test nodes live: RAM (/dev/shm) when there is one — every simulated command
    rewrites a few small files, and on a slow disk that doubles the suite's run time."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="puqdeploy-simtest-", dir=shm))
        yield base
        shutil.rmtree(base, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("nodes")


@pytest.fixture
def node_dir(fast_dir, request):
    path = fast_dir / request.node.name.replace("/", "_").replace("[", "_").strip("]")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(node_dir, tmpfiles):
    return Node(node_dir / "web1", tmpfiles)


@pytest.fixture(scope="session")
def template(fast_dir, tmpfiles):
    """Package 'biz' and user 'excom', created once through the real commands."""
    base = Node(fast_dir / "template" / "web1", tmpfiles)
    base.package()
    base.user()
    return base.path


@pytest.fixture
def ready(template, node_dir, tmpfiles):
    """A copy of the template node; install_node re-points its wrapper at the copy."""
    shutil.copytree(template, node_dir / "web1", symlinks=True)
    return Node(node_dir / "web1", tmpfiles)


# --------------------------------------------------------------------------- install and shell

def test_install_creates_wrapper_symlinks_and_keeps_data_on_rerun(node):
    wrapper = node.bin / "hestia"
    text = wrapper.read_text()
    if os.access("/bin/bash", os.X_OK):  # bash tells the simulator when the command started
        assert text.startswith("#!/bin/bash\n") and "started=$EPOCHREALTIME" in text
    else:
        assert text.startswith("#!/bin/sh\n") and "EPOCHREALTIME" not in text
    assert os.access(wrapper, os.X_OK)
    for name in COMMAND_NAMES:
        assert os.readlink(node.bin / name) == "hestia"
    assert "v-add-remote-dns-host" not in COMMAND_NAMES
    assert not (node.bin / "v-add-remote-dns-host").exists()  # "a missing binary"
    assert (node.path / "faults.json").read_text().strip() == "{}"
    node.package()
    assert install_node(node.path) == node.bin
    assert "biz" in read_panel(node.path)["packages"]


def test_delay_counts_from_the_launch_stamp_not_from_the_interpreter_start(node):
    """`delay_seconds` is how long a command takes as its caller sees it: the time before
    hestia_sim runs (interpreter start) is inside it. A stamp 0.2 s in the past with a 0.3 s
    delay leaves ~0.1 s to sleep; counted from the interpreter start it would be 0.3 s."""
    set_faults(node.path, delay_seconds=0.3)
    stamp = time.time() - 0.2
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-I", "-S", hestia_sim.__file__, str(node.path),
                           "v-list-sys-info", "json"], capture_output=True, text=True,
                          env={**os.environ, "PUQDEPLOY_SIM_STARTED": repr(stamp)})
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    entry = read_command_log(node.path)[-1]
    assert entry["start"] == stamp and entry["end"] - entry["start"] >= 0.3
    assert wall < 0.25, f"slept from the interpreter start: {wall:.3f} s"
    # an implausible stamp (garbage, or in the future) is ignored: the delay counts from now
    for bad in ("soon", repr(time.time() + 100)):
        before = time.time()
        subprocess.run([sys.executable, "-I", "-S", hestia_sim.__file__, str(node.path),
                        "v-list-sys-info", "json"], capture_output=True,
                       env={**os.environ, "PUQDEPLOY_SIM_STARTED": bad}, check=True)
        entry = read_command_log(node.path)[-1]
        assert before <= entry["start"] and entry["end"] - entry["start"] >= 0.3


def test_script_runs_standalone_with_isolated_interpreter(node):
    proc = subprocess.run([sys.executable, "-I", "-S", hestia_sim.__file__, str(node.path),
                           "v-list-sys-info", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)["sysinfo"]
    assert info["HESTIA"] == "1.10.3" and info["HOSTNAME"] == "web1"
    assert all(isinstance(value, str) for value in info.values())
    unknown = subprocess.run([sys.executable, "-I", "-S", hestia_sim.__file__, str(node.path),
                              "v-add-remote-dns-host"], capture_output=True, text=True)
    assert unknown.returncode == 127
    missing = node.path.parent / "not-a-node"
    proc = subprocess.run([sys.executable, "-I", "-S", hestia_sim.__file__, str(missing),
                           "v-list-users"], capture_output=True, text=True)
    assert proc.returncode == 1 and "not a simulated node" in proc.stderr
    assert not missing.exists()


def test_simulator_imports_only_the_standard_library():
    tree = ast.parse(Path(hestia_sim.__file__).read_text())
    names = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            names.update(alias.name.split(".")[0] for alias in item.names)
        elif isinstance(item, ast.ImportFrom):
            names.add(item.module.split(".")[0])
    assert names <= {"os", "sys", "time", "json", "hashlib", "binascii", "fcntl", "signal",
                     "getpass", "ipaddress", "subprocess"}
    assert "puqdeploy" not in names


def test_too_few_arguments_print_usage_and_exit_1(node):
    assert node.fails(1, "v-add-user", "x") == \
        "Usage: v-add-user USER PASSWORD EMAIL [PACKAGE] [NAME]"
    assert node.fails(1, "v-add-dns-record", "a", "b").startswith(
        "Usage: v-add-dns-record USER DOMAIN RECORD TYPE VALUE")


# --------------------------------------------------------------------------- packages

def test_package_add_list_and_exists(node):
    node.package()
    pkg = node.json("v-list-user-package", "biz")["biz"]
    assert pkg["WEB_DOMAINS"] == "1" and pkg["BACKEND_TEMPLATE"] == "PHP-8_3"
    assert all(isinstance(v, str) for v in pkg.values())
    assert set(node.json("v-list-user-packages")) == {"biz", "default", "system"}
    path = node.tmpfile("".join(f"{k}='{v}'\n" for k, v in PACKAGE.items()))
    assert node.fails(4, "v-add-user-package", path, "biz") == \
        "Error: package biz already exists."
    assert node.fails(3, "v-list-user-package", "nope", "json") == \
        "Error: package nope doesn't exist"


def test_package_rewrite_needs_existing_package_and_does_not_reach_users(ready):
    path = ready.tmpfile("".join(f"{k}='{v}'\n"
                                 for k, v in dict(PACKAGE, WEB_DOMAINS="5").items()))
    assert ready.fails(3, "v-add-user-package", path, "other", "yes") == \
        "Error: package other doesn't exist"
    ready.ok("v-add-user-package", path, "biz", "yes")
    assert ready.json("v-list-user-package", "biz")["biz"]["WEB_DOMAINS"] == "5"
    # Existing users keep the limits copied at creation until v-change-user-package.
    assert ready.json("v-list-user", "excom")["excom"]["WEB_DOMAINS"] == "1"
    ready.ok("v-change-user-package", "excom", "biz")
    assert ready.json("v-list-user", "excom")["excom"]["WEB_DOMAINS"] == "5"


def test_package_validation(node):
    bad = node.tmpfile("".join(f"{k}='{v}'\n" for k, v in dict(PACKAGE, WEB_DOMAINS="ten").items()))
    assert node.fails(2, "v-add-user-package", bad, "biz") == \
        "Error: invalid WEB_DOMAINS format :: ten"
    tpl = node.tmpfile("".join(f"{k}='{v}'\n" for k, v in dict(PACKAGE, DNS_TEMPLATE="x1").items()))
    assert node.fails(3, "v-add-user-package", tpl, "biz") == "Error: x1 dns template doesn't exist"
    assert node.fails(3, "v-add-user-package", "/tmp/does-not-exist-sim", "biz") == \
        "/tmp/does-not-exist-sim does not exist"  # Hestia's message has no "Error:"


def test_delete_package_moves_prefix_matching_users_to_default(ready):
    ready.package("bizplus")
    ready.user("other1", package="bizplus")
    ready.ok("v-delete-user-package", "biz")
    panel = read_panel(ready.path)
    assert "biz" not in panel["packages"] and "bizplus" in panel["packages"]
    assert panel["users"]["excom"]["package"] == "default"
    assert panel["users"]["other1"]["package"] == "default"  # 'bizplus' starts with 'biz'


# --------------------------------------------------------------------------- users

def test_add_user_reads_password_file_and_stores_only_a_hash(ready):
    assert check_password(ready.path, "excom", "S3cret-pass")
    assert not check_password(ready.path, "excom", "wrong")
    for path in ready.path.rglob("*"):
        if path.is_file():
            assert "S3cret-pass" not in path.read_text(errors="replace"), path
    user = ready.json("v-list-user", "excom")["excom"]
    assert user["PACKAGE"] == "biz" and user["CONTACT"] == "owner@example.com"
    assert user["HOME"] == "/home/excom" and user["SUSPENDED"] == "no"
    assert all(isinstance(v, str) for v in user.values())
    assert list(ready.json("v-list-users")) == ["admin", "excom"]
    assert read_panel(ready.path)["users"] == {
        "excom": {"package": "biz", "email": "owner@example.com", "suspended": False}}


ADD_USER_ERRORS = [
    ("excom", "a@example.com", "biz", 4, "Error: user excom exists"),
    ("admin", "a@example.com", "biz", 4, "Error: user admin exists"),
    ("www-data", "a@example.com", "biz", 4, "Error: user www-data exists"),
    ("Sudo", "a@example.com", "biz", 2, "Error: The user name 'Sudo' is reserved"),
    ("1excom", "a@example.com", "biz", 2, "Error: invalid user format :: 1excom"),
    ("ex.com", "a@example.com", "biz", 2, "Error: invalid user format :: ex.com"),
    ("x" * 31, "a@example.com", "biz", 2, "Error: invalid user format"),
    ("ExCom2", "a@example.com", "biz", 2, "Error: user creation failed"),  # Debian useradd
    ("newuser", "not-an-email", "biz", 2, "Error: invalid email format :: not-an-email"),
    ("newuser", "a@example.com", "gold", 3, "Error: package gold doesn't exist"),
]


def test_add_user_validation(ready):
    password = ready.tmpfile("pw\n")
    for user, email, package, code, message in ADD_USER_ERRORS:
        out = ready.fails(code, "v-add-user", user, password, email, package)
        assert out.startswith(message), (user, out)
    assert set(read_panel(ready.path)["users"]) == {"excom"}


def test_literal_password_works_but_is_masked_in_the_command_log(ready):
    ready.ok("v-add-user", "literal", "Plain-Pass1", "a@example.com", "biz")
    assert check_password(ready.path, "literal", "Plain-Pass1")
    entries = {e["argv"][0]: e for e in read_command_log(ready.path)
               if e["program"] == "v-add-user"}
    assert entries["literal"]["argv"][1] == "******"
    assert entries["excom"]["argv"][1].startswith("/tmp/simtest-")


def test_missing_password_file_makes_the_path_the_password(ready):
    ready.ok("v-add-user", "ghost", "/tmp/simtest-gone-123", "a@example.com", "biz")
    assert check_password(ready.path, "ghost", "/tmp/simtest-gone-123")


def test_change_password_from_file_and_from_stdin(ready):
    ready.ok("v-change-user-password", "excom", ready.tmpfile("Second-pass\n"))
    assert check_password(ready.path, "excom", "Second-pass")
    ready.ok("v-change-user-password", "excom", stdin="Third-pass\n")
    assert check_password(ready.path, "excom", "Third-pass")
    ready.ok("v-suspend-user", "excom")
    assert ready.fails(5, "v-change-user-password", "excom", ready.tmpfile("x\n")) == \
        "Error: user excom is suspended"


def test_change_user_package_respects_usage_unless_forced(ready):
    ready.package("tiny", WEB_DOMAINS="0", MAIL_DOMAINS="0")
    ready.ok("v-add-web-domain", "excom", "example.com")
    assert ready.fails(8, "v-change-user-package", "excom", "tiny") == \
        "Error: Package doesn't cover WEB_DOMAIN usage"
    ready.ok("v-change-user-package", "excom", "tiny", "yes")
    assert read_panel(ready.path)["users"]["excom"]["package"] == "tiny"
    # Hestia's MAIL_DOMAINS check is broken: fewer mail domains than in use is accepted.
    ready.package("nomail", MAIL_DOMAINS="0", WEB_DOMAINS="5")
    ready.ok("v-change-user-package", "excom", "biz", "yes")
    ready.ok("v-add-mail-domain", "excom", "example.com")
    ready.ok("v-change-user-package", "excom", "nomail")


# --------------------------------------------------------------------------- suspend

def test_suspend_user_cascades_and_refuses_twice(ready):
    ready.ok("v-add-web-domain", "excom", "example.com")
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10")
    ready.ok("v-add-mail-domain", "excom", "example.com")
    ready.ok("v-add-mail-account", "excom", "example.com", "info", ready.tmpfile("pw\n"))
    ready.ok("v-suspend-user", "excom")
    assert ready.fails(5, "v-suspend-user", "excom") == "Error: user excom is suspended"
    panel = read_panel(ready.path)
    assert panel["users"]["excom"]["suspended"] is True
    assert panel["web"]["excom"]["example.com"]["suspended"] is True
    assert panel["mail"]["excom"]["example.com"]["accounts"]["info"]["suspended"] is True
    zone = ready.json("v-list-dns-domain", "excom", "example.com")["example.com"]
    assert zone["SUSPENDED"] == "yes"
    assert panel["suspended_users_counter"] == 1
    assert ready.fails(5, "v-add-web-domain", "excom", "other.com") == \
        "Error: user excom is suspended"
    ready.ok("v-unsuspend-user", "excom")
    panel = read_panel(ready.path)
    assert panel["users"]["excom"]["suspended"] is False
    assert panel["mail"]["excom"]["example.com"]["accounts"]["info"]["suspended"] is False
    assert panel["suspended_users_counter"] == 0


def test_unsuspend_has_no_already_check_and_the_counter_drifts(ready):
    ready.user("second")
    ready.ok("v-suspend-user", "excom")
    ready.ok("v-suspend-user", "second")
    assert read_panel(ready.path)["suspended_users_counter"] == 2
    ready.ok("v-unsuspend-user", "excom")
    ready.ok("v-unsuspend-user", "excom")  # not suspended any more: still exit 0 ...
    panel = read_panel(ready.path)
    assert panel["users"]["second"]["suspended"] is True
    assert panel["suspended_users_counter"] == 0  # ... and the counter dropped again
    ready.ok("v-unsuspend-user", "excom")
    assert read_panel(ready.path)["suspended_users_counter"] == 0  # clamped like Hestia's


def test_unsuspending_a_mail_domain_revives_individually_suspended_accounts(ready):
    ready.ok("v-add-mail-domain", "excom", "example.com")
    ready.ok("v-add-mail-account", "excom", "example.com", "info", ready.tmpfile("pw\n"))
    ready.ok("v-suspend-mail-account", "excom", "example.com", "info")
    ready.ok("v-suspend-user", "excom")
    ready.ok("v-unsuspend-user", "excom")
    accounts = read_panel(ready.path)["mail"]["excom"]["example.com"]["accounts"]
    assert accounts["info"]["suspended"] is False


# --------------------------------------------------------------------------- web

def test_web_domain_normalisation_aliases_and_listing(ready):
    ready.package("many", WEB_DOMAINS="unlimited")
    ready.ok("v-change-user-package", "excom", "many")
    ready.ok("v-add-web-domain", "excom", "WWW.Example.COM.")
    ready.ok("v-add-web-domain", "excom", "shop.example.net")
    ready.ok("v-add-web-domain", "excom", "example.co.uk")
    ready.ok("v-add-web-domain", "excom", "alias.org", "", "", "b.alias.org,A.alias.org")
    web = read_panel(ready.path)["web"]["excom"]
    assert web["example.com"] == {"aliases": ["www.example.com"], "backend": "PHP-8_3",
                                  "ssl": False, "suspended": False}
    assert web["shop.example.net"]["aliases"] == []  # sub-domain: no www. alias
    assert web["example.co.uk"]["aliases"] == ["www.example.co.uk"]
    assert web["alias.org"]["aliases"] == ["a.alias.org", "b.alias.org"]
    listed = ready.json("v-list-web-domains", "excom")
    assert list(listed) == ["example.com", "shop.example.net", "example.co.uk", "alias.org"]
    one = ready.json("v-list-web-domain", "excom", "example.com")["example.com"]
    assert one["IP"] == "127.0.0.1" and one["ALIAS"] == "www.example.com"
    assert one["DOCUMENT_ROOT"] == "/home/excom/web/example.com/public_html/"
    assert ready.fails(3, "v-list-web-domain", "excom", "nope.com", "json") == \
        "Error: web domain nope.com doesn't exist"


WEB_DOMAIN_ERRORS = [
    ("exa_mple.com", 2, "Error: invalid domain format :: exa_mple.com"),
    ("-example.com", 2, "Error: invalid domain format :: -example.com"),
    ("exa..mple.com", 2, "Error: invalid domain format :: exa..mple.com"),
    ("12345", 2, "Error: invalid domain format :: 12345"),
    ("www", 2, "Error: invalid domain format :: www"),
    ("10.0.0.1", 1, "Error: Invalid domain format. IP address detected as input."),
]


def test_web_domain_validation(ready):
    for domain, code, message in WEB_DOMAIN_ERRORS:
        assert ready.fails(code, "v-add-web-domain", "excom", domain) == message
    assert "excom" not in read_panel(ready.path)["web"]


def test_web_domain_exists_limit_and_other_users(ready):
    ready.ok("v-add-web-domain", "excom", "example.com")
    # The limit is checked before existence: re-adding at WEB_DOMAINS=1 is E_LIMIT, not 4.
    assert ready.fails(8, "v-add-web-domain", "excom", "example.com") == \
        "Error: WEB_DOMAINS limit is reached :: upgrade user package"
    ready.package("many", WEB_DOMAINS="unlimited")
    ready.ok("v-change-user-package", "excom", "many")
    assert ready.fails(4, "v-add-web-domain", "excom", "example.com") == \
        "Error: Web domain example.com exists"
    ready.user("other")
    assert ready.fails(4, "v-add-web-domain", "other", "example.com") == \
        "Error: Web domain example.com exists"
    # One node, one owner per domain: a DNS zone or mail domain for another user is refused.
    assert ready.fails(4, "v-add-dns-domain", "other", "example.com", "203.0.113.10") == \
        "Error: Web domain example.com exists"
    assert ready.fails(3, "v-add-web-domain", "nobody1", "x.com") == \
        "Error: user nobody1 doesn't exist"


def test_web_aliases_limit_zero_counts_the_default_alias(ready):
    ready.package("noalias", WEB_ALIASES="0")
    ready.ok("v-change-user-package", "excom", "noalias")
    assert ready.fails(8, "v-add-web-domain", "excom", "example.com") == \
        "Error: WEB_ALIASES limit is reached :: upgrade user package"
    ready.ok("v-add-web-domain", "excom", "example.com", "", "", "none")
    assert read_panel(ready.path)["web"]["excom"]["example.com"]["aliases"] == []


def test_backend_template_change_and_delete(ready):
    ready.ok("v-add-web-domain", "excom", "example.com")
    ready.ok("v-change-web-domain-backend-tpl", "excom", "example.com", "PHP-8_2")
    assert read_panel(ready.path)["web"]["excom"]["example.com"]["backend"] == "PHP-8_2"
    assert ready.fails(3, "v-change-web-domain-backend-tpl", "excom", "example.com",
                       "PHP-5_6") == "Error: PHP-5_6 backend template doesn't exist"
    ready.ok("v-delete-web-domain", "excom", "www.example.com")
    assert "excom" not in read_panel(ready.path)["web"]
    assert ready.json("v-list-user", "excom")["excom"]["U_WEB_DOMAINS"] == "0"


# --------------------------------------------------------------------------- DNS

def test_dns_zone_from_template_with_package_nameservers(ready):
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10")
    records = ready.json("v-list-dns-records", "excom", "example.com")
    assert list(records) == [str(i) for i in [1, 2] + list(range(9, 22))]
    assert records["1"] == {"RECORD": "@", "TYPE": "NS", "PRIORITY": "",
                            "VALUE": "ns1.example.net.", "ID": "1", "SUSPENDED": "no",
                            "TIME": records["1"]["TIME"], "DATE": records["1"]["DATE"],
                            "TTL": "14400"}
    by_type = {(r["RECORD"], r["TYPE"]): r for r in records.values()}
    assert by_type[("@", "MX")]["PRIORITY"] == "0"
    assert by_type[("@", "MX")]["VALUE"] == "mail.example.com."
    assert by_type[("@", "TXT")]["VALUE"] == '"v=spf1 a mx ip4:203.0.113.10 -all"'
    assert by_type[("_dmarc", "TXT")]["VALUE"] == '"v=DMARC1; p=quarantine; pct=100"'
    assert by_type[("_imaps._tcp", "SRV")]["VALUE"] == "0 993 mail.example.com."
    zone = ready.json("v-list-dns-domain", "excom", "example.com")["example.com"]
    assert zone["SOA"] == "ns1.example.net" and zone["RECORDS"] == "15"
    assert zone["SERIAL"] == time.strftime("%Y%m%d") + "01" and zone["TTL"] == "14400"
    assert ready.json("v-list-user", "excom")["excom"]["U_DNS_RECORDS"] == "15"


def test_dns_zone_with_given_nameservers_and_nomail_template(ready):
    ready.package("nomail", DNS_TEMPLATE="default-nomail", DNS_DOMAINS="5")
    ready.ok("v-change-user-package", "excom", "nomail")
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10", "a.ns.net.",
             "b.ns.net", "c.ns.net")
    records = read_panel(ready.path)["dns"]["excom"]["example.com"]
    assert [r["value"] for r in records if r["type"] == "NS"] == \
        ["a.ns.net.", "b.ns.net.", "c.ns.net."]
    assert not [r for r in records if r["type"] in ("MX", "TXT", "SRV")]
    assert ready.fails(4, "v-add-dns-domain", "excom", "example.com", "203.0.113.10") == \
        "Error: DNS domain example.com exists"
    # NS2 empty: the package's list wins, even over a given NS1.
    ready.ok("v-add-dns-domain", "excom", "second.com", "203.0.113.10", "mine.ns.net")
    ns = [r["value"] for r in read_panel(ready.path)["dns"]["excom"]["second.com"]
          if r["type"] == "NS"]
    assert ns == ["ns1.example.net.", "ns2.example.net."]


def test_dns_records_have_no_duplicate_check_and_txt_is_quoted(ready):
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10")
    for _ in range(2):
        ready.ok("v-add-dns-record", "excom", "example.com", "Shop", "A", "203.0.113.20")
    ready.ok("v-add-dns-record", "excom", "example.com", "_verify", "txt", "token one; two")
    ready.ok("v-add-dns-record", "excom", "example.com", "single", "TXT", "it's")
    ready.ok("v-add-dns-record", "excom", "example.com", "@", "MX", "mx2.example.com", "20")
    records = ready.json("v-list-dns-records", "excom", "example.com")
    shop = [r for r in records.values() if r["RECORD"] == "shop"]
    assert [r["ID"] for r in shop] == ["22", "23"]  # stored twice, new IDs
    assert records["24"]["VALUE"] == '"token one; two"' and records["24"]["TYPE"] == "TXT"
    assert records["25"]["VALUE"] == "it's"
    assert (records["26"]["VALUE"], records["26"]["PRIORITY"]) == ("mx2.example.com.", "20")
    snapshot = read_panel(ready.path)["dns"]["excom"]["example.com"]
    assert snapshot.count({"record": "shop", "type": "A", "priority": "",
                           "value": "203.0.113.20", "ttl": "14400"}) == 2
    ready.ok("v-delete-dns-record", "excom", "example.com", "23")
    assert ready.fails(3, "v-delete-dns-record", "excom", "example.com", "23") == \
        "Error: example.com id 23 doesn't exist"
    assert ready.json("v-list-dns-domain", "excom", "example.com")["example.com"]["SERIAL"] == \
        time.strftime("%Y%m%d") + "07"  # YYYYMMDD01 at creation, +1 per record change


DNS_RECORD_ERRORS = [
    ("@", "CNAME", "example.net", (), 2, "Error: CNAME on root is not allowed"),
    ("x", "A", "300.1.1.1", (), 2, "Error: invalid A record format :: 300.1.1.1"),
    ("x", "BOGUS", "1", (), 2, "Error: invalid dns record type format :: BOGUS"),
    ("x y", "A", "1.1.1.1", (), 2, "Error: invalid record format :: x y"),
    ("x", "CNAME", "host", (), 2, "Error: CNAME record host should be a fully qualified"),
    ("x", "A", "1.1.1.1", ("", "5"), 4, "Error: ID=5 already exists"),
    ("x", "NS", "ns9.example.com", (), 3, "Error: IN A ns9.example.com does not exist"),
    ("_sip._tcp", "SRV", "5 5060 sip.example.com", (), 2,
     "Error: invalid SRV record weight format"),  # Hestia reads "5" as the target
]


def test_dns_record_validation(ready):
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10", "ns1.a.net",
             "ns2.a.net", "ns3.a.net", "ns4.a.net", "ns5.a.net")
    for record, rtype, value, extra, code, message in DNS_RECORD_ERRORS:
        out = ready.fails(code, "v-add-dns-record", "excom", "example.com", record, rtype,
                          value, *extra)
        assert out.startswith(message), (record, rtype, out)
    ready.ok("v-add-dns-record", "excom", "example.com", "_sip._tcp", "SRV",
             "0 5060 sip.example.com", "5")
    sip = [r for r in read_panel(ready.path)["dns"]["excom"]["example.com"]
           if r["record"] == "_sip._tcp"]
    assert sip == [{"record": "_sip._tcp", "type": "SRV", "priority": "5",
                    "value": "0 5060 sip.example.com.", "ttl": "14400"}]


def test_dns_limits_and_last_a_record(ready):
    ready.package("fewrec", DNS_RECORDS="16")
    ready.ok("v-change-user-package", "excom", "fewrec")
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10")
    ready.ok("v-add-dns-record", "excom", "example.com", "a", "A", "203.0.113.1")
    assert ready.fails(8, "v-add-dns-record", "excom", "example.com", "b", "A", "1.1.1.1") == \
        "Error: DNS_RECORDS limit is reached :: upgrade user package"
    assert ready.fails(8, "v-add-dns-domain", "excom", "two.com", "203.0.113.10") == \
        "Error: DNS_DOMAINS limit is reached :: upgrade user package"
    # Hestia's own DKIM record hits the same limit: printed, ignored, exit 0.
    proc = ready.run("v-add-mail-domain", "excom", "example.com")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "Error: DNS_RECORDS limit is reached :: upgrade user package"
    assert read_panel(ready.path)["mail"]["excom"]["example.com"]["dkim"] is True
    ready.ok("v-delete-dns-record", "excom", "example.com", "9")
    ready.ok("v-delete-dns-record", "excom", "example.com", "12")
    assert ready.fails(2, "v-delete-dns-record", "excom", "example.com", "22") == \
        "Error: at least one A record should remain active"
    ready.ok("v-delete-dns-domain", "excom", "example.com")
    assert ready.fails(3, "v-list-dns-records", "excom", "example.com", "json") == \
        "Error: dns domain example.com doesn't exist"


# --------------------------------------------------------------------------- mail

def test_mail_domain_dkim_goes_to_an_existing_local_zone_only(ready):
    ready.ok("v-add-mail-domain", "excom", "example.com")  # no zone yet
    assert "excom" not in read_panel(ready.path)["dns"]
    dkim = ready.json("v-list-mail-domain-dkim-dns", "excom", "example.com")
    assert list(dkim) == ["mail._domainkey"] and dkim["mail._domainkey"]["TTL"] == "3600"
    txt = dkim["mail._domainkey"]["TXT"]
    assert txt.startswith("'v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA")
    assert txt.endswith("IDAQAB'")
    ready.ok("v-delete-mail-domain", "excom", "example.com")
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10")
    ready.ok("v-add-mail-domain", "excom", "example.com")
    key = ready.json("v-list-mail-domain-dkim-dns", "excom", "example.com")
    pub = key["mail._domainkey"]["TXT"].split("p=")[1].rstrip("'")
    records = read_panel(ready.path)["dns"]["excom"]["example.com"]
    dkim_records = [r for r in records if r["record"] == "mail._domainkey"]
    assert dkim_records == [{"record": "mail._domainkey", "type": "TXT", "priority": "",
                             "value": f'"v=DKIM1\\; k=rsa\\; p={pub}"', "ttl": "14400"}]
    listed = ready.json("v-list-dns-records", "excom", "example.com")  # still valid JSON
    assert listed["22"]["VALUE"] == f'"v=DKIM1\\; k=rsa\\; p={pub}"'
    ready.ok("v-delete-mail-domain", "excom", "example.com")  # takes its DKIM record along
    assert not [r for r in read_panel(ready.path)["dns"]["excom"]["example.com"]
                if r["record"] == "mail._domainkey"]


def test_raw_json_knob_reproduces_hestias_unescaped_backslashes(ready):
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10")
    ready.ok("v-add-mail-domain", "excom", "example.com")
    set_faults(ready.path, hestia_raw_json=True)
    raw = ready.ok("v-list-dns-records", "excom", "example.com", "json")
    assert '\\"v=DKIM1\\; k=rsa\\;' in raw
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


def test_dkim_dns_without_dkim_exits_0_with_a_placeholder(ready):
    ready.ok("v-add-mail-domain", "excom", "example.com", "yes", "yes", "no")
    out = ready.json("v-list-mail-domain-dkim-dns", "excom", "example.com")
    assert out["mail._domainkey"]["TXT"] == "'v=DKIM1; k=rsa; p=DKIM-SUPPORT-IS-NOT-ACTIVATED'"
    assert read_panel(ready.path)["mail"]["excom"]["example.com"]["dkim"] is False
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10")
    ready.ok("v-add-mail-domain-dkim", "excom", "example.com")
    assert ready.fails(4, "v-add-mail-domain-dkim", "excom", "example.com") == \
        "Error: DKIM=yes already exists"
    panel = read_panel(ready.path)
    assert panel["mail"]["excom"]["example.com"]["dkim"] is True
    assert [r for r in panel["dns"]["excom"]["example.com"] if r["record"] == "mail._domainkey"]


def test_mail_domain_errors(ready):
    ready.ok("v-add-mail-domain", "excom", "example.com")
    assert ready.fails(4, "v-add-mail-domain", "excom", "example.com") == \
        "Error: Mail domain example.com exists"
    assert ready.fails(8, "v-add-mail-domain", "excom", "other.com") == \
        "Error: MAIL_DOMAINS limit is reached :: upgrade user package"
    assert ready.fails(2, "v-add-mail-domain", "excom", "x.com", "maybe") == \
        "Error: invalid antispam format :: maybe"
    mail = ready.json("v-list-mail-domain", "excom", "example.com")["example.com"]
    assert mail["DKIM"] == "yes" and mail["WEBMAIL_ALIAS"] == "webmail.example.com"
    assert list(ready.json("v-list-mail-domains", "excom")) == ["example.com"]


def test_mail_accounts_lifecycle(ready):
    ready.ok("v-add-mail-domain", "excom", "example.com")
    ready.ok("v-add-mail-account", "excom", "example.com", "Info", ready.tmpfile("Mail-pw1\n"),
             "100")
    assert check_password(ready.path, "excom", "Mail-pw1", mailbox="info@example.com")
    assert ready.fails(4, "v-add-mail-account", "excom", "example.com", "info",
                       ready.tmpfile("x\n")) == "Error: mail account info already exists"
    assert ready.fails(2, "v-add-mail-account", "excom", "example.com", "bad/name",
                       ready.tmpfile("x\n")) == "Error: invalid account format :: bad/name"
    ready.ok("v-add-mail-account", "excom", "example.com", "sales", ready.tmpfile("x\n"))
    assert ready.fails(8, "v-add-mail-account", "excom", "example.com", "third",
                       ready.tmpfile("x\n")) == \
        "Error: MAIL_ACCOUNTS limit is reached :: upgrade user package"
    account = ready.json("v-list-mail-account", "excom", "example.com", "info")["info"]
    assert account["QUOTA"] == "100" and account["WEBMAIL_ALIAS"] == "webmail.example.com"
    ready.ok("v-change-mail-account-quota", "excom", "example.com", "info", "0")
    ready.ok("v-change-mail-account-password", "excom", "example.com", "info",
             ready.tmpfile("Mail-pw2\n"))
    assert check_password(ready.path, "excom", "Mail-pw2", mailbox="info@example.com")
    ready.ok("v-suspend-mail-account", "excom", "example.com", "info")
    assert ready.fails(5, "v-suspend-mail-account", "excom", "example.com", "info") == \
        "Error: example.com info is suspended"
    assert ready.fails(5, "v-change-mail-account-password", "excom", "example.com", "info",
                       ready.tmpfile("x\n")) == "Error: example.com info is suspended"
    ready.ok("v-unsuspend-mail-account", "excom", "example.com", "info")
    assert ready.fails(6, "v-unsuspend-mail-account", "excom", "example.com", "info") == \
        "Error: example.com info is not suspended"
    ready.ok("v-delete-mail-account", "excom", "example.com", "sales")
    assert ready.fails(3, "v-list-mail-account", "excom", "example.com", "sales", "json") == \
        "Error: example.com account sales doesn't exist"
    accounts = read_panel(ready.path)["mail"]["excom"]["example.com"]["accounts"]
    assert accounts == {"info": {"quota": "unlimited", "suspended": False}}
    domain = ready.json("v-list-mail-domain", "excom", "example.com")["example.com"]
    assert domain["ACCOUNTS"] == "1"


# --------------------------------------------------------------------------- SSL, delete

def test_letsencrypt_web_and_mail(ready):
    assert ready.fails(3, "v-add-letsencrypt-domain", "excom", "example.com") == \
        "Error: web domain example.com doesn't exist"
    ready.ok("v-add-web-domain", "excom", "example.com")
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10")
    assert ready.fails(3, "v-add-letsencrypt-domain", "excom", "example.com",
                       "shop.example.com") == "Error: domain alias shop.example.com doesn't exist"
    ready.ok("v-add-letsencrypt-domain", "excom", "example.com", "www.example.com")
    web = ready.json("v-list-web-domain", "excom", "example.com")["example.com"]
    assert (web["SSL"], web["LETSENCRYPT"]) == ("yes", "yes")
    ready.ok("v-add-mail-domain", "excom", "example.com")
    ready.ok("v-add-letsencrypt-domain", "excom", "example.com", "", "yes")
    mail = ready.json("v-list-mail-domain", "excom", "example.com")["example.com"]
    assert (mail["SSL"], mail["LETSENCRYPT"]) == ("yes", "yes")
    panel = read_panel(ready.path)
    assert panel["certificates"]["excom"] == {
        "example.com": ["example.com", "www.example.com"],
        "mail.example.com": ["mail.example.com", "webmail.example.com"]}
    caa = [r for r in panel["dns"]["excom"]["example.com"] if r["type"] == "CAA"]
    assert caa == [{"record": "@", "type": "CAA", "priority": "",
                    "value": '0 issue "letsencrypt.org"', "ttl": "14400"}]
    ready.ok("v-add-letsencrypt-domain", "excom", "example.com")  # renew: CAA not doubled
    assert len([r for r in read_panel(ready.path)["dns"]["excom"]["example.com"]
                if r["type"] == "CAA"]) == 1


def test_delete_user_removes_everything(ready):
    ready.ok("v-add-web-domain", "excom", "example.com")
    ready.ok("v-add-dns-domain", "excom", "example.com", "203.0.113.10")
    ready.ok("v-add-mail-domain", "excom", "example.com")
    ready.ok("v-delete-user", "excom")
    panel = read_panel(ready.path)
    assert panel["users"] == {} and panel["web"] == panel["mail"] == panel["dns"] == {}
    assert not check_password(ready.path, "excom", "S3cret-pass")
    assert ready.fails(3, "v-list-user", "excom", "json") == "Error: user excom doesn't exist"
    assert ready.json("v-list-user", "admin")["admin"]["U_USERS"] == "1"
    ready.user()  # the name is free again
    ready.ok("v-add-web-domain", "excom", "example.com")


# --------------------------------------------------------------------------- faults

def test_fault_rule_times_and_counter(ready):
    set_faults(ready.path, rules=[{"program": "v-add-web-domain", "exit": 1, "times": 2,
                                   "message": "E: Could not get lock /var/lib/dpkg/lock-frontend"}])
    for _ in range(2):
        assert ready.fails(1, "v-add-web-domain", "excom", "example.com") == \
            "E: Could not get lock /var/lib/dpkg/lock-frontend"
    assert "excom" not in read_panel(ready.path)["web"]  # failed before doing anything
    ready.ok("v-add-web-domain", "excom", "example.com")
    ready.ok("v-list-user", "excom", "json")  # other programs unaffected


def test_fault_rule_after_the_work_like_e_restart(ready):
    set_faults(ready.path, rules=[{"program": "*", "match": "example.com", "exit": 20,
                                   "after": True, "message": "Error: Web restart failed",
                                   "stdout_lines": ["restarting nginx"]}])
    proc = ready.run("v-add-web-domain", "excom", "example.com")
    assert proc.returncode == 20
    assert proc.stdout.splitlines() == ["restarting nginx", "Error: Web restart failed"]
    assert "example.com" in read_panel(ready.path)["web"]["excom"]  # the change was made
    proc = ready.run("v-add-web-domain", "excom", "example.com")  # a real error wins
    assert proc.returncode == 8
    assert proc.stdout.splitlines()[-1] == "Error: WEB_DOMAINS limit is reached :: upgrade " \
                                           "user package"
    ready.ok("v-list-user", "excom", "json")  # no "example.com" in its arguments
    clear_faults(ready.path)
    assert (ready.path / "faults.json").read_text().strip() == "{}"


def test_fault_knob_validation(node):
    with pytest.raises(ValueError):
        set_faults(node.path, delay=1)
    with pytest.raises(ValueError):
        set_faults(node.path, rules=[{"program": "*", "code": 1}])


def test_hang_is_killed_by_a_timeout_after_its_first_line(ready):
    set_faults(ready.path, hang={"program": "v-add-web-domain", "seconds": 30})
    proc = subprocess.Popen([str(ready.bin / "v-add-web-domain"), "excom", "example.com"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    first = proc.stdout.readline()
    assert "waiting" in first
    proc.terminate()
    assert proc.wait(timeout=5) == 143
    entry = read_command_log(ready.path)[-1]
    assert (entry["program"], entry["exit"]) == ("v-add-web-domain", 143)
    assert "excom" not in read_panel(ready.path)["web"]


def test_stream_lines_arrive_one_by_one(ready):
    set_faults(ready.path, stream={"program": "v-list-user", "lines": 3, "interval": 0.1})
    proc = subprocess.Popen([str(ready.bin / "v-list-user"), "excom", "json"],
                            stdout=subprocess.PIPE, text=True)
    arrivals = []
    for _ in range(3):
        line = proc.stdout.readline()
        arrivals.append(time.monotonic())
        assert "progress" in line
    rest = proc.stdout.read()
    assert proc.wait(timeout=5) == 0
    assert json.loads(rest)["excom"]["PACKAGE"] == "biz"
    assert arrivals[2] - arrivals[0] >= 0.15  # streamed, not buffered until the end


def test_overlap_is_detected_and_logged(ready):
    set_faults(ready.path, delay_seconds=0.25)
    procs = [subprocess.Popen([str(ready.bin / "v-list-user"), "excom", "json"],
                              stdout=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=10) for p in procs] == [0, 0]
    clear_faults(ready.path)
    ready.ok("v-list-users", "json")
    log = read_command_log(ready.path)
    concurrent = [e for e in log if e["program"] == "v-list-user"]
    assert [e["overlap"] for e in concurrent] == [True, True]
    assert all(e["end"] - e["start"] >= 0.25 for e in concurrent)
    assert log[-1]["program"] == "v-list-users" and log[-1]["overlap"] is False
    assert not any(e["overlap"] for e in log[:-3])  # the sequential set-up runs
    assert set(log[0]) == {"pid", "program", "argv", "start", "end", "exit", "overlap"}


def test_stale_running_marker_of_a_dead_process_is_ignored(ready):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (ready.path / "running" / str(dead.pid)).write_text("v-add-user 0\n")
    ready.ok("v-list-user", "excom", "json")
    assert read_command_log(ready.path)[-1]["overlap"] is False
    assert not (ready.path / "running" / str(dead.pid)).exists()


def test_one_command_is_fast(ready):
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        ready.ok("v-list-user", "excom", "json")
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.25


# --------------------------------------------------------------------------- fork server

def test_fork_server_runs_commands_exactly_like_their_own_process(ready):
    """Same exit code, stdout, stderr, stdin and panel changes with the server as without; a
    served command is a forked child (its own pid), a plain one is the wrapper exec'ing."""
    calls = [("v-list-sys-info", "json"), ("v-list-user", "excom", "json"),
             ("v-list-user", "nobody", "json"), ("v-add-user-package",),
             ("v-add-web-domain", "excom", "bad..domain")]

    def run_all():
        results = []
        for call in calls:
            proc = subprocess.Popen([str(ready.bin / call[0]), *call[1:]], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = proc.communicate(timeout=20)
            results.append((proc.returncode, out, err, read_command_log(ready.path)[-1]["pid"] == proc.pid))
        return results

    plain = run_all()
    server = start_fork_server([ready.path])
    try:
        served = run_all()
        ready.ok("v-change-user-password", "excom", stdin="Served-pass\n")  # stdin reaches it
    finally:
        stop_fork_server(server)
    assert [r[:3] for r in served] == [r[:3] for r in plain]
    assert {r[0] for r in plain} >= {0, 3}  # successes and failures both compared
    assert all(r[3] for r in plain) and not any(r[3] for r in served)
    assert check_password(ready.path, "excom", "Served-pass")
    assert not (ready.path / "simd.port").exists()
    wrapper = subprocess.Popen([str(ready.bin / "v-list-sys-info"), "json"], stdout=subprocess.PIPE)
    wrapper.communicate(timeout=20)
    assert read_command_log(ready.path)[-1]["pid"] == wrapper.pid  # stopped: plain again


def test_fork_server_streams_output_and_kills_the_command_with_its_wrapper(node):
    set_faults(node.path, hang={"program": "v-list-sys-info", "seconds": 60, "line": "stuck"})
    server = start_fork_server([node.path])
    try:
        proc = subprocess.Popen([str(node.bin / "v-list-sys-info"), "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        assert proc.stdout.readline() == b"stuck\n"  # streamed while the command runs
        markers = [m for m in os.listdir(node.path / "running") if m.isdigit()]
        assert len(markers) == 1 and int(markers[0]) != proc.pid
        child = int(markers[0])
        os.killpg(proc.pid, signal.SIGKILL)  # what a timeout does to a command
        proc.wait()
        wait_for(lambda: not Path(f"/proc/{child}").exists(), timeout=10,
                 what="the served command to die with its wrapper")
    finally:
        stop_fork_server(server)
