"""Shared fixtures: a sandbox fleet in a temp folder and a way to run the real CLI.

`puqdeploy` always runs as a real subprocess here (`python -m puqdeploy`), against a real
SQLite file and the simulated HestiaCP nodes of the sandbox.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from puqdeploy.sandbox.fleet import write_sandbox

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.sshfleet", "tests.whmcs_fake", "tests.dnsfleet", "tests.simnode"]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    """Poll real state (the database, files) until `predicate()` is truthy; fail after `timeout`.

    Polling an observable event, not sleeping a guessed time: returns as soon as it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Sandbox:
    root: Path
    config_path: Path

    @property
    def db_path(self) -> Path:
        return self.root / "puqdeploy.db"

    def node(self, name: str) -> Path:
        return self.root / "nodes" / name

    def cli(self, *args: str, input: str | None = None, check: bool = False,
            timeout: float = 240) -> subprocess.CompletedProcess:
        """Run `puqdeploy --config CONFIG ARGS...` as a subprocess."""
        proc = subprocess.run(
            [sys.executable, "-m", "puqdeploy", "--config", str(self.config_path), *args],
            input=input, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
            env={**os.environ, "NO_COLOR": "1"})
        if check and proc.returncode != 0:
            raise AssertionError(f"puqdeploy {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "puqdeploy", "--config", str(self.config_path), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NO_COLOR": "1"}, **kwargs)

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def edit_config(self, **changes) -> None:
        """Change top-level config blocks (merged one level deep)."""
        data = yaml.safe_load(self.config_path.read_text())
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))

    def deploy_slowly(self, service_id: str, *, delay: float = 0.3, steps_done: int = 1):
        """A Split order on panels whose commands take `delay` s, and a `run` tick deploying
        it; returns (the tick's process, a connection) once `steps_done` steps are done."""
        from puqdeploy.sandbox.node import set_faults

        self.edit_config(ssl={"enabled": False})
        for name in ("web1", "mail1", "ns1", "ns2"):
            set_faults(self.node(name), delay_seconds=delay)
        self.cli("create", "--service-id", service_id, "--product", "sandbox-split",
                 "--domain", "example.com", check=True)
        runner = self.popen("run")
        conn = self.db()
        wait_for(lambda: conn.execute("SELECT count(*) FROM tasks WHERE state = 'done'")
                 .fetchone()[0] >= steps_done, what=f"{steps_done} step(s) done")
        return runner, conn

    def edit_node(self, name: str, **changes) -> None:
        data = yaml.safe_load(self.config_path.read_text())
        data["nodes"][name].update(changes)
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    """A fresh sandbox fleet with an initialised database."""
    config_path = Path(write_sandbox(str(tmp_path / "fleet")))
    box = Sandbox(root=config_path.parent, config_path=config_path)
    box.cli("init", check=True)
    return box
