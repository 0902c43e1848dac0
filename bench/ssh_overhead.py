"""SSH overhead: puqdeploy's pooled SSH transport against bare paramiko, same server, same command.

- bare: one open `paramiko.Transport` (socket with TCP_NODELAY, as puqdeploy's); per run `open_session()`, `exec_command(PATH)`, read
  stdout to EOF, `recv_exit_status()`. The least any paramiko program can do per command.
- puqdeploy: `SSHTransport.run(Command("v-bench-true"))` on its warm pooled connection: one
  channel per command, the pid-reporting `/bin/sh -c` wrapper, streaming with masking, exit
  status — what every step's command pays.
Both alternate run by run (A B A B ...) after a warm-up, so noise hits both alike; the figure is
median(puqdeploy) ÷ median(bare).

Also measured (informational): the same command as a whole queued task — claim, step, one SSH
command through `Panel.run`, attempt log, outcome, finish — by an in-process `Runner` tick over
N tasks on one node (max_concurrency 1): per-task wall time ÷ bare.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from bench.common import Sample

TRUE_SCRIPT = "#!/bin/sh\necho ok\n"


def _bare_transport(sshd, nodelay: bool = True):
    import paramiko

    sock = socket.create_connection((sshd.address, sshd.port), timeout=5)
    if nodelay:  # as puqdeploy does; without it Nagle + delayed ACK add ~40 ms per command
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    key = paramiko.Ed25519Key.from_private_key_file(str(sshd.client_key))
    transport.auth_publickey("root", key)
    return transport


def _bare_run(transport, line: str) -> int:
    channel = transport.open_session()
    try:
        channel.exec_command(line)
        while channel.recv(65536):
            pass
        return channel.recv_exit_status()
    finally:
        channel.close()


def measure(workdir: Path, runs: int, tasks: int, skip_bashrc: bool, log) -> dict:
    from puqdeploy.commands import Command
    from puqdeploy.ssh_transport import SSHTransport

    from bench.sshd import BenchSSHD

    bin_dir = workdir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "v-bench-true"
    script.write_text(TRUE_SCRIPT)
    script.chmod(0o755)
    sshd = BenchSSHD(workdir / ("sshd-light" if skip_bashrc else "sshd-bashrc"),
                     skip_bashrc=skip_bashrc).start()
    try:
        config_path = _config(workdir, sshd, bin_dir)
        from puqdeploy.config import load_config

        node = load_config(str(config_path)).nodes["bench1"]
        bare = _bare_transport(sshd)
        puq = SSHTransport(node)
        command = Command("v-bench-true")
        line = str(script)
        bare_s, puq_s = Sample(), Sample()
        for i in range(-5, runs):
            t = time.perf_counter()
            code = _bare_run(bare, line)
            b = time.perf_counter() - t
            t = time.perf_counter()
            result = puq.run(command, timeout=30)
            p = time.perf_counter() - t
            if code != 0 or result.exit_code != 0 or result.stdout.strip() != "ok":
                raise RuntimeError(f"trivial command failed: bare {code}, puqdeploy {result}")
            if i >= 0:
                bare_s.values.append(b)
                puq_s.values.append(p)
        out = {"bare": bare_s, "puqdeploy": puq_s, "port": sshd.port}
        if tasks:
            out["task"] = _task_level(config_path, tasks)
        puq.close()
        bare.close()
        return out
    finally:
        sshd.stop()


def _config(workdir: Path, sshd, bin_dir: Path) -> Path:
    """The sandbox config plus node `bench1`: this sshd, key, known_hosts, max_concurrency 1."""
    from bench.common import config_variant, load_yaml, write_sandbox

    sandbox = write_sandbox(workdir / "fleet")
    nodes = load_yaml(sandbox)["nodes"]
    nodes["bench1"] = {"host": sshd.address, "ip": sshd.address, "port": sshd.port, "user": "root",
                       "key_file": str(sshd.client_key), "known_hosts": str(sshd.known_hosts),
                       "transport": "ssh", "hestia_bin": str(bin_dir), "roles": ["web"],
                       "max_concurrency": 1, "command_timeout_seconds": 60}
    return config_variant(sandbox, "ssh.yaml", nodes=nodes, database="ssh.db")


def _task_level(config_path: Path, tasks: int) -> dict:
    """`tasks` queued tasks, each one SSH command via Panel.run, drained by one Runner tick
    (in this process, so the benchmark's step can be registered)."""
    import sqlite3
    import sys

    from puqdeploy import store
    from puqdeploy.config import load_config
    from puqdeploy.outcomes import Done
    from puqdeploy.runner import Runner
    from puqdeploy.steps import base

    from bench import builders
    from bench.common import benchmark_env

    @base.step("bench.ssh_true")
    def ssh_true(ctx):  # registered in this process only: the benchmark's trivial SSH step
        ctx.panel.run("v-bench-true")
        return Done("done")

    builders.noop_db(sys.executable, config_path, benchmark_env(), tasks, 1)
    config = load_config(str(config_path))
    conn = sqlite3.connect(config.database, isolation_level=None)
    conn.execute("UPDATE tasks SET action = 'bench.ssh_true', node = 'bench1'")
    conn.close()
    runner = Runner(config, workers=1, budget=600)
    started = time.perf_counter()
    summary = runner.tick()
    wall = time.perf_counter() - started
    conn = store.open_store(config.database)
    done = conn.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0]
    conn.close()
    return {"tasks": tasks, "done": done, "wall_s": wall, "per_task_s": wall / tasks,
            "summary": summary.line()}
