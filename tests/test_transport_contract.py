"""One contract, every transport (remote.py's module docstring), plus what only SSH can get wrong.

The contract tests run unchanged against LocalTransport and against SSHTransport talking to a
real sshd of the test fleet (tests/sshfleet.py). Both reach the same bin dir of tiny shell
scripts, so the remote side's view (argv, pids, temp files) can be checked on this machine.
No test synchronises by sleeping: it waits for a line, a thread or a bounded condition poll.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from puqdeploy.commands import Command, TempFile, secret_file
from puqdeploy.remote import CommandTimeout, LocalTransport, PermanentTransportError, TransportError

SCRIPTS = {
    # argv, one "<arg>" line each, and NUL-separated into $1 for a byte-exact comparison
    "v-record-args": 'out=$1; shift; printf "%s\\0" "$@" > "$out"; for a in "$@"; do printf "<%s>\\n" "$a"; done',
    "v-exit": 'echo "out $1"; echo "err $1" >&2; exit "$1"',
    "v-wait-for": 'echo ready; while [ ! -e "$1" ]; do sleep 0.01; done; echo finished',
    # $1: where to write "PID CHILDPID" once both run
    "v-hang": 'sleep 300 & echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"; echo started; wait',
    "v-read-file": 'echo "path=$1"; stat -c "mode=%a type=%F" "$1"; cat "$1"; exit "${2:-0}"',
    "v-read-file-hang": 'sleep 300 & echo "path=$1"; cat "$1"; wait',
    "v-echo-secret": 's=$(head -n 1 "$1"); echo "stdout has $s here"; echo "stderr has $s" >&2',
    "v-big": ('yes "$(printf "%099d" 7)" | head -n "$1" & '
              'yes "err-line-of-text" | head -n "$2" >&2; wait'),
    "v-long-line": 'head -c "$1" /dev/zero | tr "\\0" a; echo; printf "last line without newline"',
    "v-touch": 'touch "$1"',
    "v-list-sys-info": ('echo \'{"sysinfo": {"HOSTNAME": "node", "OS": "Debian", "VERSION": "12", '
                        '"HESTIA": "1.9.4", "RELEASE": "release"}}\''),
}

TRICKY_ARGS = [
    "with space", "it's", 'say "hi"', "$(touch {marker})", "`touch {marker}`", "a; touch {marker}",
    "a && touch {marker}", "| touch {marker}", "> {marker}", "$HOME", "*", "", "  padded  ",
    "back\\slash", "tab\there", "new\nline", "ünïcødé ✓", "-n", "--", "~root", "{{a,b}}", "#hash",
]


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The stand-in panel: a folder of small /bin/sh scripts both transports execute."""
    folder = tmp_path_factory.mktemp("contract-bin")
    for name, body in SCRIPTS.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return str(folder)


@pytest.fixture(params=["local", "ssh"])
def transport(request: pytest.FixtureRequest, bin_dir: str):
    """Each contract test runs once per transport; SSH starts the fleet only when needed."""
    if request.param == "local":
        made = LocalTransport(bin_dir)
    else:
        from puqdeploy.ssh_transport import SSHTransport

        fleet = request.getfixturevalue("ssh_fleet")
        made = SSHTransport(fleet.node_config("web1", hestia_bin=bin_dir))
    yield made
    made.close()


class Recorder:
    """An on_line sink that keeps every line and can signal when a wanted line shows up."""

    def __init__(self, wanted: Callable[[str, str], bool] = lambda stream, line: False) -> None:
        self.lines: list[tuple[str, str]] = []
        self.wanted = wanted
        self.seen = threading.Event()

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))
        if self.wanted(stream, line):
            self.seen.set()

    def of(self, stream: str) -> list[str]:
        return [line for s, line in self.lines if s == stream]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll an observable condition (a process gone, a file removed), bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def alive(pid: int) -> bool:
    """Running (zombies count as gone: they are dead, just not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def path_from(recorder: Recorder) -> str:
    return next(line[5:] for stream, line in recorder.lines if line.startswith("path="))


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("code", [0, 1, 3, 4, 20])
def test_exit_code_stdout_and_stderr_are_preserved(transport, code):
    result = transport.run(Command("v-exit", (str(code),)), timeout=30)
    assert (result.exit_code, result.stdout, result.stderr) == (code, f"out {code}", f"err {code}")
    assert result.duration_s > 0


def test_arguments_arrive_byte_exact_and_no_shell_sees_them(transport, tmp_path):
    marker = tmp_path / "pwned"
    args = [arg.format(marker=marker) for arg in TRICKY_ARGS]
    recorded = tmp_path / "argv"
    result = transport.run(Command("v-record-args", (str(recorded), *args)), timeout=30)
    assert result.exit_code == 0, result.stderr
    assert recorded.read_bytes() == b"".join(arg.encode() + b"\0" for arg in args)
    assert result.stdout == "\n".join(f"<{arg}>" for arg in args)
    assert not marker.exists(), "an argument was interpreted by a shell"


def test_lines_are_streamed_before_the_command_ends(transport, tmp_path):
    flag = tmp_path / "go"
    recorder = Recorder(lambda stream, line: line == "ready")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault(
        "result", transport.run(Command("v-wait-for", (str(flag),)), timeout=60, on_line=recorder)))
    worker.start()
    try:
        assert recorder.seen.wait(30), "the first line never reached on_line"
        assert worker.is_alive() and not flag.exists()  # so the line came while it still ran
    finally:
        flag.touch()
        worker.join(30)
    assert outcome["result"].exit_code == 0
    assert recorder.of("stdout") == ["ready", "finished"]


def test_timeout_kills_the_command_and_what_it_started(transport, tmp_path):
    pids = tmp_path / "pids"
    recorder = Recorder()
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="v-hang timed out after 1.5 s"):
        transport.run(Command("v-hang", (str(pids),)), timeout=1.5, on_line=recorder)
    assert time.monotonic() - started < 15
    assert recorder.of("stdout") == ["started"], "the script did not start before the timeout"
    leader, child = (int(pid) for pid in pids.read_text().split())
    assert wait_until(lambda: not alive(leader)), f"command pid {leader} still running"
    assert wait_until(lambda: not alive(child)), f"its child {child} still running"


def test_temp_file_is_private_under_tmp_and_removed(transport):
    recorder = Recorder()
    result = transport.run(Command("v-read-file", (TempFile("first line\nsecond line\n", label="pkg"),)),
                           timeout=30, on_line=recorder)
    path = path_from(recorder)
    assert result.exit_code == 0, result.stderr
    assert os.path.dirname(path) == "/tmp" and os.path.basename(path).startswith("puqdeploy-")
    assert result.stdout.splitlines()[1:] == ["mode=600 type=regular file", "first line", "second line"]
    assert not os.path.exists(path)


def test_temp_file_is_removed_after_a_failing_command(transport):
    recorder = Recorder()
    result = transport.run(Command("v-read-file", (TempFile("x\n"), "3")), timeout=30, on_line=recorder)
    assert result.exit_code == 3
    assert not os.path.exists(path_from(recorder))


def test_temp_file_is_removed_after_a_timeout(transport):
    recorder = Recorder()
    with pytest.raises(CommandTimeout):
        transport.run(Command("v-read-file-hang", (TempFile("y\n"),)), timeout=1.5, on_line=recorder)
    assert recorder.of("stdout")[1:] == ["y"], "the script did not read its file before the timeout"
    assert not os.path.exists(path_from(recorder))


def test_secret_never_reaches_argv_output_or_on_line(transport, tmp_path):
    secret = "S3cr3t-Passw0rd!"
    recorded = tmp_path / "argv"
    result = transport.run(Command("v-record-args", (str(recorded), "user", secret_file(secret))), timeout=30)
    argv = recorded.read_bytes().split(b"\0")[:-1]
    assert argv[0] == b"user" and argv[1].startswith(b"/tmp/puqdeploy-")
    assert secret.encode() not in recorded.read_bytes()
    recorder = Recorder()
    result = transport.run(Command("v-echo-secret", (secret_file(secret),)), timeout=30, on_line=recorder)
    assert result.stdout == "stdout has *** here" and result.stderr == "stderr has ***"
    assert recorder.lines and all(secret not in line for _, line in recorder.lines)
    assert ("stdout", "stdout has *** here") in recorder.lines


def test_large_output_on_both_streams_arrives_complete(transport):
    out_lines, err_lines = 52_429, 20_000  # 52,429 lines x 100 bytes = 5 MB on stdout
    counts = {"stdout": 0, "stderr": 0}

    def count(stream: str, line: str) -> None:
        counts[stream] += 1

    result = transport.run(Command("v-big", (str(out_lines), str(err_lines))), timeout=120, on_line=count)
    assert result.exit_code == 0
    assert counts == {"stdout": out_lines, "stderr": err_lines}
    expected_line = "0" * 98 + "7"
    assert len(result.stdout) == out_lines * 100 - 1
    assert set(result.stdout.split("\n")) == {expected_line}
    assert result.stderr.split("\n") == ["err-line-of-text"] * err_lines


def test_a_huge_line_and_an_unterminated_last_line_arrive_intact(transport):
    recorder = Recorder()
    result = transport.run(Command("v-long-line", (str(1 << 20),)), timeout=60, on_line=recorder)
    assert result.stdout == "a" * (1 << 20) + "\nlast line without newline"
    assert recorder.of("stdout") == ["a" * (1 << 20), "last line without newline"]


# --------------------------------------------------------------------------- SSH only


@pytest.fixture
def ssh(ssh_fleet, bin_dir):
    """Build SSHTransports for fleet nodes; every one made is closed after the test."""
    from puqdeploy.ssh_transport import SSHTransport

    made: list = []

    def make(name: str = "web1", **overrides):
        made.append(SSHTransport(ssh_fleet.node_config(name, **{"hestia_bin": bin_dir, **overrides})))
        return made[-1]

    yield make
    for transport in made:
        transport.close()


def openssh_fingerprint(public_line: str) -> str:
    """Computed here, independently of the module under test."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_fingerprint_matches_ssh_keygen(ssh_fleet):
    from puqdeploy.ssh_transport import fingerprint

    pub = ssh_fleet["web1"].host_key_file.with_suffix(".pub")
    listed = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True)
    assert fingerprint(ssh_fleet["web1"].host_key) == listed.stdout.split()[1]


def test_unknown_host_key_is_refused_and_nothing_runs(ssh_fleet, ssh, tmp_path):
    web1 = ssh_fleet["web1"]
    empty = tmp_path / "known_hosts"
    empty.write_text(ssh_fleet["mail1"].known_hosts_line + "\n")  # other nodes only
    marker = tmp_path / "ran"
    before = web1.accepted_connections()
    with pytest.raises(PermanentTransportError) as caught:
        ssh(known_hosts=str(empty)).run(Command("v-touch", (str(marker),)), timeout=30)
    message = str(caught.value)
    assert "web1" in message and "127.0.77.1:2222" in message and "unknown host key" in message
    assert openssh_fingerprint(web1.host_key) in message
    assert "puqdeploy nodes trust web1" in message
    assert not marker.exists() and web1.accepted_connections() == before


def test_missing_known_hosts_file_is_an_unknown_key(ssh, tmp_path):
    with pytest.raises(PermanentTransportError, match="unknown host key"):
        ssh(known_hosts=str(tmp_path / "absent")).run(Command("v-exit", ("0",)), timeout=30)


def test_changed_host_key_is_refused(ssh_fleet, ssh, tmp_path):
    web1, mail1 = ssh_fleet["web1"], ssh_fleet["mail1"]
    forged = tmp_path / "known_hosts"
    forged.write_text(f"[{web1.address}]:{web1.port} {mail1.host_key}\n")
    marker = tmp_path / "ran"
    with pytest.raises(PermanentTransportError) as caught:
        ssh(known_hosts=str(forged)).run(Command("v-touch", (str(marker),)), timeout=30)
    message = str(caught.value)
    assert "CHANGED" in message and "web1" in message
    assert openssh_fingerprint(web1.host_key) in message and openssh_fingerprint(mail1.host_key) in message
    assert not marker.exists()


def test_pinned_host_key_is_enforced(ssh_fleet, ssh):
    good = ssh(known_hosts=None, host_key=ssh_fleet["web1"].host_key).run(Command("v-exit", ("0",)), timeout=30)
    assert good.exit_code == 0
    with pytest.raises(PermanentTransportError, match="CHANGED.*update host_key"):
        ssh(known_hosts=None, host_key=ssh_fleet["ns1"].host_key).run(Command("v-exit", ("0",)), timeout=30)


def test_hashed_known_hosts_entries_are_understood(ssh_fleet, ssh, tmp_path):
    import paramiko

    web1 = ssh_fleet["web1"]
    hashed = tmp_path / "known_hosts"
    name = paramiko.HostKeys.hash_host(f"[{web1.address}]:{web1.port}")
    hashed.write_text(f"{name} {web1.host_key}\n")
    assert ssh(known_hosts=str(hashed)).run(Command("v-exit", ("0",)), timeout=30).exit_code == 0


def test_the_known_key_type_is_negotiated_when_sshd_has_several(ssh_fleet, bin_dir, tmp_path):
    """sshd would present ed25519 first; knowing only its ECDSA key must still connect."""
    from puqdeploy.ssh_transport import SSHTransport
    from tests.sshfleet import SSHNode, generate_key

    node = SSHNode("multi", "127.0.77.15", ssh_fleet.port, ["web"], tmp_path / "multi", ssh_fleet.authorized_keys)
    node.prepare()
    ecdsa = generate_key(tmp_path / "multi" / "ssh_host_ecdsa_key", "root@multi", kind="ecdsa")
    with open(node.config_path, "a") as config:
        config.write(f"HostKey {tmp_path / 'multi' / 'ssh_host_ecdsa_key'}\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{node.address}]:{node.port} {ecdsa}\n")
    node.start()
    try:
        fleet_config = ssh_fleet.node_config("web1", name="multi", host=node.address, ip=node.address,
                                             known_hosts=str(known_hosts), hestia_bin=bin_dir)
        with SSHTransport(fleet_config) as transport:
            assert transport.run(Command("v-exit", ("0",)), timeout=30).exit_code == 0
    finally:
        node.stop()


def test_refused_authentication_is_permanent_and_names_node_and_user(ssh_fleet, ssh):
    stranger = ssh_fleet.new_client_key("id_stranger")
    with pytest.raises(PermanentTransportError) as caught:
        ssh(key_file=str(stranger)).run(Command("v-exit", ("0",)), timeout=30)
    message = str(caught.value)
    assert "web1" in message and "root@127.0.77.1:2222" in message and "refused" in message


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_ecdsa_and_rsa_key_files_log_in(ssh_fleet, ssh, kind):
    key = ssh_fleet.new_client_key(f"id_{kind}_client", kind=kind, authorize=True)
    assert ssh(key_file=str(key)).run(Command("v-exit", ("0",)), timeout=30).exit_code == 0


def test_unreadable_key_file_is_permanent(ssh, tmp_path):
    with pytest.raises(PermanentTransportError, match="cannot read key_file"):
        ssh(key_file=str(tmp_path / "no-such-key")).run(Command("v-exit", ("0",)), timeout=30)


def test_stopped_node_is_a_transient_error_and_comes_back_with_its_key(ssh_fleet, ssh):
    transport = ssh("ns2")
    with ssh_fleet["ns2"].stopped():
        with pytest.raises(TransportError) as caught:
            transport.run(Command("v-exit", ("0",)), timeout=30)
        assert not isinstance(caught.value, CommandTimeout)
        assert "ns2" in str(caught.value) and "127.0.77.4:2222" in str(caught.value)
    assert transport.run(Command("v-exit", ("0",)), timeout=30).exit_code == 0  # same known_hosts


def test_command_is_killed_when_the_caller_stops_listening(ssh, tmp_path):
    pids = tmp_path / "pids"

    def give_up(stream: str, line: str) -> None:
        raise KeyboardInterrupt  # what Ctrl-C in `puqdeploy run` looks like to run()

    with pytest.raises(KeyboardInterrupt):
        ssh().run(Command("v-hang", (str(pids),)), timeout=60, on_line=give_up)
    leader, child = (int(pid) for pid in pids.read_text().split())
    assert wait_until(lambda: not alive(leader) and not alive(child)), "abandoned command still runs"


def test_threads_share_one_connection(ssh_fleet, ssh):
    mail1 = ssh_fleet["mail1"]
    transport = ssh("mail1")
    before = mail1.accepted_connections()
    workers = 8
    barrier = threading.Barrier(workers)
    results: dict[int, object] = {}

    def work(index: int) -> None:
        barrier.wait(30)
        results[index] = transport.run(Command("v-exit", (str(index),)), timeout=60)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert {i: (r.exit_code, r.stdout) for i, r in results.items()} == {i: (i, f"out {i}") for i in range(workers)}
    assert mail1.accepted_connections() - before == 1


def test_dropped_connection_is_reopened_at_the_next_run(ssh_fleet, ssh):
    ns1 = ssh_fleet["ns1"]
    transport = ssh("ns1")
    before = ns1.accepted_connections()
    assert transport.run(Command("v-exit", ("0",)), timeout=30).exit_code == 0
    assert ns1.drop_connections() > 0
    assert transport.run(Command("v-exit", ("4",)), timeout=30).exit_code == 4
    assert ns1.accepted_connections() - before == 2


def test_temp_file_left_by_a_lost_connection_is_removed_after_reconnecting(ssh_fleet, ssh):
    ns1 = ssh_fleet["ns1"]
    transport = ssh("ns1")
    recorder = Recorder(lambda stream, line: line == "z")

    def drop_when_read(stream: str, line: str) -> None:
        """The command has read its temp file: now the connection dies under it."""
        first = not recorder.seen.is_set()
        recorder(stream, line)
        if first and recorder.seen.is_set():
            ns1.drop_connections()

    with pytest.raises(TransportError) as caught:
        transport.run(Command("v-read-file-hang", (TempFile("z\n"),)), timeout=60, on_line=drop_when_read)
    assert not isinstance(caught.value, CommandTimeout)
    path = path_from(recorder)
    assert os.path.exists(path) and transport.orphaned_temp_files == [path]
    assert transport.run(Command("v-exit", ("0",)), timeout=30).exit_code == 0
    assert not os.path.exists(path) and transport.orphaned_temp_files == []


def test_fetch_host_key_then_trust_then_connect(ssh_fleet, ssh, tmp_path):
    from puqdeploy.ssh_transport import append_known_host, fetch_host_key

    web1 = ssh_fleet["web1"]
    known_hosts = tmp_path / "etc" / "known_hosts"  # neither file nor folder exist yet
    config = ssh_fleet.node_config("web1", known_hosts=str(known_hosts))
    before = web1.accepted_connections()
    key_type, key_b64, fingerprint = fetch_host_key(config)
    assert f"{key_type} {key_b64}" == web1.host_key
    assert fingerprint == openssh_fingerprint(web1.host_key)
    assert web1.accepted_connections() == before, "fetching the key must not log in"
    assert append_known_host(str(known_hosts), config, key_type, key_b64) is True
    assert append_known_host(str(known_hosts), config, key_type, key_b64) is False
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert known_hosts.read_text() == f"[127.0.77.1]:2222 {web1.host_key}\n"
    assert ssh(known_hosts=str(known_hosts)).run(Command("v-exit", ("0",)), timeout=30).exit_code == 0


def test_append_known_host_uses_the_bare_host_on_port_22(ssh_fleet, tmp_path):
    from puqdeploy.ssh_transport import append_known_host

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("other.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH+i1ro+w3c8NDKmMh+k+/ohp1T+BGtXu7BPt16oAB8/")
    key_type, key_b64 = ssh_fleet["ns1"].host_key.split()
    node = ssh_fleet.node_config("ns1", host="node.example", port=22)
    assert append_known_host(str(known_hosts), node, key_type, key_b64)
    assert known_hosts.read_text().splitlines()[1] == f"node.example {key_type} {key_b64}"


def test_probe_reports_reachability_latency_and_version(ssh_fleet, bin_dir):
    from puqdeploy.ssh_transport import probe

    report = probe(ssh_fleet.node_config("web1", hestia_bin=bin_dir))
    assert report["reachable"] is True and report["error"] is None
    assert report["version"] == "1.9.4" and report["latency_ms"] > 0
    down = probe(ssh_fleet.node_config("web1", host="127.0.77.9"))  # nothing listens there
    assert down["reachable"] is False and down["version"] is None
    assert "127.0.77.9:2222" in down["error"]


def test_probe_against_the_simulated_panel(ssh_fleet):
    from puqdeploy.ssh_transport import probe

    bin_path = ssh_fleet["mail1"].install_panel()
    report = probe(ssh_fleet.node_config("mail1", hestia_bin=bin_path))
    assert report["reachable"] is True and report["error"] is None and report["version"]


def test_remote_line_quotes_each_argument_once_and_prefixes_sudo():
    from puqdeploy.ssh_transport import remote_command_line

    argv = ["/usr/local/hestia/bin/v-add-user", "it's", "$(reboot)", "a;b", ""]
    plain = shlex.split(remote_command_line(argv))
    assert plain[:3] == ["exec", "/bin/sh", "-c"] and plain[4:] == ["puqdeploy", *argv]
    assert shlex.split(remote_command_line(argv, sudo=True))[4:] == ["puqdeploy", "sudo", "-n", *argv]
