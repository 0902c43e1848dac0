"""A fork server for the simulated panel: hestia_sim imported once, one forked child per command.

A simulated command started the plain way is a fresh Python process: 15–40 ms of CPU before
hestia_sim runs a line. On a small machine a fleet of busy nodes then spends its cores starting
interpreters, and every command gets slower the more nodes work at once — which is not how a
real HestiaCP fleet (separate machines) behaves. With this server running, the node's bash
wrapper forwards the command here and a forked child runs it (~1–3 ms of CPU), with the same
argv, output, exit code, commands.log line and faults as a process of its own:

- the child writes straight into the wrapper's own stdout and stderr (opened through
  /proc/WRAPPER_PID/fd/1 and 2) and reads its stdin, so output streams exactly as before;
- the command's pid (commands.log, NODE/running/ markers) is the child's;
- when the wrapper dies (a timeout kills its process group), the connection closes and the
  child is killed at once (SIGKILL), as the command itself would have been;
- if the child cannot reach the wrapper's stdio (e.g. a socket, which /proc cannot reopen), it
  answers `exec` and the wrapper runs the command the plain way.

Optional: without a server (no NODE/simd.port, or nobody listening) the wrapper runs the
command the plain way. Protocol, one TCP connection on 127.0.0.1 per command: the wrapper sends
NUL-terminated fields COUNT STARTED WRAPPER_PID NODE_DIR PROGRAM ARG1..ARGn (COUNT = n) and
reads one line back, the exit code (or `exec`).

Run: `python -I -S simd.py NODE_DIR...` (stdlib only, like hestia_sim). It writes
NODE_DIR/simd.port for every node it serves, and removes them on SIGTERM/SIGINT.
"""

import os
import signal
import socket
import sys
import threading
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hestia_sim  # noqa: E402  (what the children run, imported once here)

# modules hestia_sim imports inside functions: loaded once here, not in every child
import binascii  # noqa: E402,F401
import fcntl  # noqa: E402,F401
import hashlib  # noqa: E402,F401
import json  # noqa: E402,F401
import subprocess  # noqa: E402,F401

PORT_FILE = "simd.port"


def _read_request(conn):
    """The request's fields (COUNT + 4 fixed ones + COUNT arguments), or None if cut short."""
    buffer = b""
    while True:
        fields = buffer.split(b"\0")[:-1]  # the NUL-terminated ones so far
        try:
            wanted = int(fields[0]) + 5 if fields else None
        except ValueError:
            return None
        if wanted is not None and len(fields) >= wanted:
            return [f.decode("utf-8", "surrogateescape") for f in fields[:wanted]]
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk


def _attach_stdio(wrapper_pid):
    """Make fds 0, 1 and 2 the wrapper's; False when one cannot be reopened."""
    try:
        targets = [os.open(f"/proc/{wrapper_pid}/fd/0", os.O_RDONLY),
                   os.open(f"/proc/{wrapper_pid}/fd/1", os.O_WRONLY | os.O_APPEND),
                   os.open(f"/proc/{wrapper_pid}/fd/2", os.O_WRONLY | os.O_APPEND)]
    except OSError:
        return False
    for fd, target in enumerate(targets):
        os.dup2(target, fd)
        os.close(target)
    return True


def _die_with_wrapper(conn):
    """Block until the wrapper's end of the connection closes; then end this command."""
    try:
        while conn.recv(64):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _child(conn):
    """Run one command in this forked child; never returns."""
    code = 70
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        fields = _read_request(conn)
        if fields is None:
            os._exit(1)
        started, wrapper_pid, node_dir, program = fields[1:5]
        args = fields[5:]
        if not _attach_stdio(int(wrapper_pid)):
            conn.sendall(b"exec\n")
            os._exit(0)
        os.environ["PUQDEPLOY_SIM_STARTED"] = started
        threading.Thread(target=_die_with_wrapper, args=(conn,), daemon=True).start()
        try:
            code = hestia_sim.main([node_dir, program, *args])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except Exception:  # as an interpreter would: the traceback on stderr, exit 1
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        conn.sendall(f"{code}\n".encode())
    finally:
        os._exit(0)


def serve(node_dirs):
    """Accept commands until SIGTERM/SIGINT; one fork per command."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    port = server.getsockname()[1]
    port_files = [os.path.join(os.path.abspath(d), PORT_FILE) for d in node_dirs]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished commands

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for path in port_files:
            hestia_sim.write_atomic(path, f"{port}\n")
        sys.stdout.write("ready\n")  # whoever started us may go on (node.start_fork_server)
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 1)  # nothing more goes there; fd 1 stays valid
        while True:
            try:
                conn, _ = server.accept()
            except InterruptedError:
                continue
            if os.fork() == 0:
                server.close()
                _child(conn)
            conn.close()
    finally:
        for path in port_files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.stderr.write("usage: simd.py NODE_DIR...\n")
        sys.exit(2)
    serve(sys.argv[1:])
