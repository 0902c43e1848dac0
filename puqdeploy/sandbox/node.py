"""Simulated HestiaCP nodes: install one into a directory, inject faults, read its state back.

A node is a directory::

    NODE/bin/hestia          /bin/sh wrapper running hestia_sim for the name it is called by
    NODE/bin/v-add-user ...  one symlink per simulated command (-> hestia): NODE/bin is the
                             node's `hestia_bin`, so transports run it like /usr/local/hestia/bin
    NODE/data/               panel state in Hestia's own layout (see hestia_sim)
    NODE/faults.json         fault knobs (see `set_faults`)
    NODE/commands.log        one JSON line per command run (see `read_command_log`)
    NODE/running/            markers of commands running now (overlap detection)

Stdlib only, and importing it is cheap: puqdeploy's `sandbox`/`demo` commands and the tests use
it; nothing here talks to a real panel.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from puqdeploy.sandbox import hestia_sim as sim

SIM_PATH = Path(sim.__file__).resolve()
COMMAND_NAMES: tuple[str, ...] = tuple(sorted(sim.COMMANDS))
FAULT_KNOBS = ("delay_seconds", "rules", "hang", "stream", "hestia_raw_json")
RULE_KEYS = ("program", "match", "exit", "message", "times", "after", "stdout_lines")
DEFAULT_PHP_VERSIONS = ("8.1", "8.2", "8.3", "8.4")
DEFAULT_VERSION = "1.10.3"

# Facts of HestiaCP's stock packages (install/common/packages), written out here as data.
_STOCK_LIMITS = {
    "WEB_TEMPLATE": "default", "PROXY_TEMPLATE": "default", "BACKEND_TEMPLATE": "default",
    "DNS_TEMPLATE": "default", "RATE_LIMIT": "200", "CRON_JOBS": "unlimited",
    "DISK_QUOTA": "unlimited", "CPU_QUOTA": "unlimited", "CPU_QUOTA_PERIOD": "unlimited",
    "MEMORY_LIMIT": "unlimited", "SWAP_LIMIT": "unlimited", "BANDWIDTH": "unlimited",
    "NS": "ns1.domain.tld,ns2.domain.tld", "SHELL": "nologin", "BACKUPS": "1",
    "BACKUPS_INCREMENTAL": "no", "DNS_RECORDS": "unlimited",
}
STOCK_PACKAGES = {
    "default": dict(_STOCK_LIMITS, WEB_DOMAINS="unlimited", WEB_ALIASES="unlimited",
                    DNS_DOMAINS="unlimited", MAIL_DOMAINS="unlimited",
                    MAIL_ACCOUNTS="unlimited", DATABASES="unlimited"),
    "system": dict(_STOCK_LIMITS, WEB_DOMAINS="1", WEB_ALIASES="1", DNS_DOMAINS="1",
                   MAIL_DOMAINS="1", MAIL_ACCOUNTS="1", DATABASES="0"),
}

WRAPPER_SH = """#!/bin/sh
# Simulated HestiaCP command (puqdeploy sandbox): runs hestia_sim for the name it is called by.
# Imports hestia_sim rather than running it as a script so its bytecode is cached (~3x faster);
# `python -I -S hestia_sim.py NODE PROGRAM ARGS...` is the same entry point.
# ${{0##*/}} is `basename "$0"` without forking a process.
exec {python} -I -S -c {code} {sim_dir} {node} "${{0##*/}}" "$@"
"""
WRAPPER_BASH = """#!/bin/bash
# Simulated HestiaCP command (puqdeploy sandbox): runs hestia_sim for the name it is called by.
# $EPOCHREALTIME tells the simulator when the command started, before any interpreter did
# (see hestia_sim.launched_at). When the sandbox's fork server runs (simd.py, which wrote
# simd.port), the command goes to it: a forked child runs it with this script's own stdio, at
# a fraction of an interpreter start. Otherwise (or if the server answers `exec`) python runs
# hestia_sim, imported rather than run as a script so its bytecode is cached (~3x faster);
# `python -I -S hestia_sim.py NODE PROGRAM ARGS...` is the same entry point.
# ${{0##*/}} is `basename "$0"` without forking a process.
started=$EPOCHREALTIME
if [ -e {node}/simd.port ] && read -r port < {node}/simd.port \\
    && {{ exec 3<>"/dev/tcp/127.0.0.1/$port"; }} 2>/dev/null; then
  printf '%s\\0' "$#" "$started" "$$" {node} "${{0##*/}}" "$@" >&3
  read -r -u 3 code || code=70  # the server went away during the command
  if [ "$code" != exec ]; then exit "$code"; fi
  exec 3>&-
fi
PUQDEPLOY_SIM_STARTED=$started exec {python} -I -S -c {code} {sim_dir} {node} "${{0##*/}}" "$@"
"""
BASH = "/bin/bash"
_BOOT = ("import sys; sys.path.append(sys.argv.pop(1)); import hestia_sim; "
         "sys.exit(hestia_sim.main(sys.argv[1:]))")


def install_node(node_dir: Path, python: str = sys.executable, *, hostname: Optional[str] = None,
                 ips: Optional[Sequence[str]] = None, version: str = DEFAULT_VERSION,
                 php_versions: Sequence[str] = DEFAULT_PHP_VERSIONS) -> Path:
    """Create (or refresh) a simulated node in `node_dir`; returns its `hestia_bin` directory.

    Idempotent: an existing panel (users, domains, packages) is kept; only the wrapper and the
    command symlinks are rewritten, so re-running after moving the interpreter still works.
    `ips` are the server's addresses: when given, `v-add-web-domain` refuses any other IP
    ("IP x doesn't exist"), like a real node; when omitted any IPv4 is accepted and the default
    is 127.0.0.1. `php_versions` decide which `PHP-X_Y` backend templates exist."""
    node = Path(node_dir).resolve()
    bin_dir = node / "bin"
    data = node / "data"
    for directory in (bin_dir, data / "users", data / "packages", node / "running"):
        directory.mkdir(parents=True, exist_ok=True)
    if not (node / "faults.json").exists():
        (node / "faults.json").write_text("{}\n")
    if not (data / "hestia.conf").exists():
        _write_system_conf(data, hostname or node.name, ips, version, php_versions)
        _create_stock_packages(data)
        _create_admin(node)
    _write_wrapper(bin_dir, node, python)
    return bin_dir


def _write_system_conf(data: Path, hostname: str, ips: Optional[Sequence[str]], version: str,
                       php_versions: Sequence[str]) -> None:
    conf = {
        "ROOT_USER": "admin", "HOSTNAME": hostname, "VERSION": version,
        "RELEASE_BRANCH": "release", "OS": "Debian", "OS_VERSION": "12",
        "IP": (list(ips)[0] if ips else "127.0.0.1"), "IPS": ",".join(ips or ()),
        "PHP_VERSIONS": ",".join(php_versions), "WEBMAIL_ALIAS": "webmail",
        "WEB_SYSTEM": "nginx", "WEB_BACKEND": "php-fpm", "MAIL_SYSTEM": "exim4",
        "IMAP_SYSTEM": "dovecot", "DNS_SYSTEM": "bind9",
    }
    sim.write_conf(str(data / "hestia.conf"), conf)


def _create_stock_packages(data: Path) -> None:
    for name, limits in STOCK_PACKAGES.items():
        conf = {key: limits.get(key, "") for key in sim.PACKAGE_KEYS}
        conf.update(TIME="00:00:00", DATE="2022-01-20")
        sim.write_conf(str(data / "packages" / f"{name}.pkg"), conf)


def _create_admin(node: Path) -> None:
    """The panel's own admin account: it holds the U_USERS / SUSPENDED_USERS counters, owns
    the name 'admin', and has no usable password (its shadow entry is locked)."""
    panel = sim.Panel(str(node), {})
    sim.create_user(panel, "admin", os.urandom(16).hex(), f"admin@{panel.sys['HOSTNAME']}",
                    "system", "System Administrator", role="admin")
    panel.set_shadow("admin", "!")
    conf = panel.user_conf("admin")
    conf["MD5"] = "!"
    panel.save_user_conf("admin", conf)


def _write_wrapper(bin_dir: Path, node: Path, python: str) -> None:
    # without bash: a POSIX sh, the simulator's own start time, and no fork server
    template = WRAPPER_BASH if os.access(BASH, os.X_OK) else WRAPPER_SH
    text = template.format(python=shlex.quote(python), code=shlex.quote(_BOOT),
                          sim_dir=shlex.quote(str(SIM_PATH.parent)), node=shlex.quote(str(node)))
    wrapper = bin_dir / "hestia"
    tmp = bin_dir / ".hestia.tmp"
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, wrapper)
    for name in COMMAND_NAMES:
        link = bin_dir / name
        if link.is_symlink() and os.readlink(link) == "hestia":
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to("hestia")


# --------------------------------------------------------------------------- fork server

SIMD_PATH = SIM_PATH.parent / "simd.py"


def start_fork_server(node_dirs: list[Path], python: str = sys.executable) -> subprocess.Popen:
    """Start the simulator's fork server (simd.py) for these nodes and return once it serves
    them: their bash wrappers then hand commands to it instead of starting an interpreter each
    (see simd.py). Stop it with `stop_fork_server`."""
    proc = subprocess.Popen([python, "-I", "-S", str(SIMD_PATH), *map(str, node_dirs)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            start_new_session=True)
    line = proc.stdout.readline()  # "ready" once every simd.port is written
    proc.stdout.close()
    if line.strip() != b"ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the simulator's fork server did not start (exit {proc.returncode})")
    return proc


def stop_fork_server(proc: subprocess.Popen) -> None:
    """Stop the fork server (it removes the simd.port files); commands still running finish."""
    proc.terminate()
    proc.wait()


# --------------------------------------------------------------------------- faults

def set_faults(node_dir: Path, **knobs: Any) -> None:
    """Replace the node's fault knobs (and reset the `times` counters). Knobs, all optional:

    - ``delay_seconds``: float, every command takes at least this long in all (a slow panel):
      counted from the moment its wrapper started, so the simulator's own interpreter start
      (~20 ms) and work are part of it rather than added to it (see ``hestia_sim.launched_at``).
    - ``rules``: list of ``{"program": "v-add-user" | "*", "match": "substring of the joined
      arguments" (optional), "exit": 20, "message": "Error: ...", "times": N (only the first N
      matching runs fail; omit = always), "after": bool (do the real work first, then fail —
      E_RESTART after the change was made), "stdout_lines": [...] (printed first)}``. The first
      rule that matches and has budget left applies. A transient dpkg lock is
      ``{"exit": 1, "message": "E: Could not get lock /var/lib/dpkg/lock-frontend"}``.
    - ``hang``: ``{"program", "match", "seconds", "line"}``: print `line`, flush, sleep (a hung
      command; SIGTERM still logs it, SIGKILL does not).
    - ``stream``: ``{"program", "match", "lines": N, "interval": s}``: print N progress lines
      with a flush and a pause between them before doing the work (streamed output).
    - ``hestia_raw_json``: true = `v-list-dns-records` escapes only `"` like the real panel, so a
      value holding a backslash (Hestia's own DKIM record, ``v=DKIM1\\; k=rsa\\; ...``) makes
      the JSON invalid, exactly as on a real node.
    """
    unknown = sorted(set(knobs) - set(FAULT_KNOBS))
    if unknown:
        raise ValueError(f"unknown fault knob(s): {', '.join(unknown)}")
    for rule in knobs.get("rules") or ():
        bad = sorted(set(rule) - set(RULE_KEYS))
        if bad:
            raise ValueError(f"unknown rule key(s): {', '.join(bad)}")
    node = Path(node_dir)
    _atomic_write(node / "faults.json", json.dumps(knobs, indent=2) + "\n")
    (node / "fault_counters.json").unlink(missing_ok=True)


def clear_faults(node_dir: Path) -> None:
    """No faults: commands behave like a healthy panel again."""
    set_faults(node_dir)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- reading state

def read_panel(node_dir: Path) -> dict:
    """A plain, comparable snapshot of the panel (the admin account itself is left out)::

        {"users": {USER: {"package", "email", "suspended": bool}},
         "packages": {NAME: {KEY: value}},            # the .pkg limits, TIME/DATE dropped
         "web": {USER: {DOMAIN: {"aliases": [...], "backend", "ssl": bool, "suspended": bool}}},
         "mail": {USER: {DOMAIN: {"dkim": bool,
                                  "accounts": {ACCOUNT: {"quota", "suspended": bool}}}}},
         "dns": {USER: {DOMAIN: [{"record", "type", "priority", "value", "ttl"}, ...]}},
         "certificates": {USER: {NAME: [names...]}},  # Let's Encrypt certs, NAME = domain or
                                                      # mail.DOMAIN for a MAIL=yes certificate
         "suspended_users_counter": int}              # the admin's SUSPENDED_USERS

    DNS records are sorted and duplicates kept (Hestia stores a record added twice twice);
    values are as stored (TXT quoted, ``%quote%`` restored to ``'``); ttl is the record's own
    or the zone's. Users without objects of a kind are absent from that kind's mapping."""
    data = Path(node_dir) / "data"
    panel = sim.Panel(str(node_dir), {})
    snapshot: dict = {"users": {}, "packages": _read_packages(data / "packages"), "web": {},
                      "mail": {}, "dns": {}, "certificates": {}}
    for user in panel.all_users():
        if user == panel.root_user:
            continue
        conf = panel.user_conf(user)
        snapshot["users"][user] = {"package": conf.get("PACKAGE", ""),
                                   "email": conf.get("CONTACT", ""),
                                   "suspended": conf.get("SUSPENDED") == "yes"}
        _collect_user_objects(panel, user, snapshot)
    admin = panel.user_conf(panel.root_user)
    snapshot["suspended_users_counter"] = int(admin.get("SUSPENDED_USERS", "0") or 0)
    return snapshot


def _read_packages(pkg_dir: Path) -> dict:
    packages = {}
    for path in sorted(pkg_dir.glob("*.pkg")):
        conf = sim.read_conf(str(path))
        packages[path.stem] = {k: v for k, v in conf.items() if k not in ("TIME", "DATE")}
    return packages


def _collect_user_objects(panel: "sim.Panel", user: str, snapshot: dict) -> None:
    web = {obj["DOMAIN"]: {"aliases": [a for a in obj.get("ALIAS", "").split(",") if a],
                           "backend": obj.get("BACKEND", ""), "ssl": obj.get("SSL") == "yes",
                           "suspended": obj.get("SUSPENDED") == "yes"}
           for obj in panel.objects(user, "web")}
    mail = {}
    for obj in panel.objects(user, "mail"):
        accounts = {acc["ACCOUNT"]: {"quota": acc.get("QUOTA", ""),
                                     "suspended": acc.get("SUSPENDED") == "yes"}
                    for acc in panel.objects(user, "mail/" + obj["DOMAIN"])}
        mail[obj["DOMAIN"]] = {"dkim": obj.get("DKIM") == "yes", "accounts": accounts}
    dns = {}
    for zone in panel.objects(user, "dns"):
        records = [{"record": r.get("RECORD", ""), "type": r.get("TYPE", ""),
                    "priority": r.get("PRIORITY", ""),
                    "value": r.get("VALUE", "").replace("%quote%", "'"),
                    "ttl": r.get("TTL") or zone.get("TTL", "")}
                   for r in panel.objects(user, "dns/" + zone["DOMAIN"])]
        records.sort(key=lambda r: (r["record"], r["type"], r["priority"], r["value"], r["ttl"]))
        dns[zone["DOMAIN"]] = records
    certificates = {}
    ssl_dir = Path(panel.path(user, "ssl"))
    for cert in sorted(ssl_dir.glob("*.crt")) if ssl_dir.is_dir() else ():
        certificates[cert.name[:-4]] = cert.read_text().split()
    for key, value in (("web", web), ("mail", mail), ("dns", dns),
                       ("certificates", certificates)):
        if value:
            snapshot[key][user] = value


def check_password(node_dir: Path, user: str, password: str,
                   mailbox: Optional[str] = None) -> bool:
    """Does `password` open the panel user `user` — or, with ``mailbox="info@example.com"``,
    that mailbox of `user`? Compares against the stored salted hashes only."""
    panel = sim.Panel(str(node_dir), {})
    if mailbox is None:
        stored = dict(panel.shadow()).get(user)
    else:
        account, _, domain = mailbox.partition("@")
        obj = panel.find(user, "mail/" + domain, "ACCOUNT", account) if panel.user_exists(
            user) and panel.has_file(user, "mail/" + domain) else None
        stored = obj.get("MD5") if obj else None
    return bool(stored) and _verify_ssha512(password, stored)


def _verify_ssha512(password: str, stored: str) -> bool:
    prefix = "{SSHA512}"
    if not stored.startswith(prefix):
        return False
    try:
        raw = binascii.a2b_base64(stored[len(prefix):])
    except binascii.Error:
        return False
    digest, salt = raw[:64], raw[64:]
    candidate = hashlib.sha512(password.encode("utf-8", "surrogateescape") + salt).digest()
    return hmac.compare_digest(candidate, digest)


def read_command_log(node_dir: Path) -> list[dict]:
    """Every command run on the node, oldest first: ``{"pid", "program", "argv" (the arguments
    after the program name, as received: /tmp/ paths not their contents; a literal password is
    shown as "******"), "start", "end" (time.time()), "exit", "overlap" (another simulated
    command ran on this node at the same time)}``."""
    path = Path(node_dir) / "commands.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

