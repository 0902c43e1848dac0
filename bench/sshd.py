"""One real OpenSSH server on loopback for the SSH-overhead figure (a minimal cousin of
tests/sshfleet.py, which is a pytest plugin and imports pytest).

The server runs as root (as the tests' fleet does) with its own host key, one authorized client
key and `MaxSessions 64`. Root's login shell is bash, and bash sources ~/.bashrc for a command
started by sshd (Debian builds it with SSH_SOURCE_BASHRC) — on this machine that runs
`pyenv init`, ~250 ms per command, which would drown what is measured. `skip_bashrc=True` adds
`SetEnv SHLVL=1` to the server config: bash then counts itself as a nested shell and skips
~/.bashrc, as a production node with a stock bashrc costs next to nothing. Both variants run
the bare and the puqdeploy path through the same shell, so each ratio compares like with like.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from tests.sshkeys import generate_key, read_banner  # shared with the test fleet (no pytest)

SSHD = "/usr/sbin/sshd"

CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile {directory}/sshd.pid
AuthorizedKeysFile {directory}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
LogLevel ERROR
UseDNS no
PrintMotd no
PrintLastLog no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
{extra}"""


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class BenchSSHD:
    def __init__(self, directory: Path, address: str = "127.0.77.9", skip_bashrc: bool = True) -> None:
        self.directory = directory
        self.address = address
        self.port = free_port(address)
        self.skip_bashrc = skip_bashrc
        self.process: Optional[subprocess.Popen] = None
        self.client_key = directory / "id_ed25519"
        self.known_hosts = directory / "known_hosts"

    def start(self) -> "BenchSSHD":
        if not os.path.exists(SSHD):
            raise RuntimeError(f"{SSHD} is not installed (apt-get install openssh-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        host_key = self.directory / "ssh_host_ed25519_key"
        host_public = generate_key(host_key, "bench-host")
        client_public = generate_key(self.client_key, "bench-client")
        (self.directory / "authorized_keys").write_text(client_public + "\n")
        self.known_hosts.write_text(f"[{self.address}]:{self.port} {host_public}\n")
        extra = "SetEnv SHLVL=1\n" if self.skip_bashrc else ""
        config = self.directory / "sshd_config"
        config.write_text(CONFIG.format(port=self.port, address=self.address, host_key=host_key,
                                        directory=self.directory, extra=extra))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.directory / "sshd.log", "ab")
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.directory / 'sshd.log').read_text()}")
            banner = read_banner(self.address, self.port, timeout=0.5)
            if banner and banner.startswith(b"SSH-"):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("sshd did not come up")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: listener + connections
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
