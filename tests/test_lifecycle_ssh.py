"""The lifecycle of every mode over the real sshd fleet (all five sandbox nodes over SSH)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from puqdeploy.sandbox.fleet import write_sandbox
from tests.conftest import Sandbox
from tests.test_lifecycle_sandbox import MODES, lifecycle_scenario, terminate_during_deploy_scenario

SSH_NODES = ("web1", "mail1", "ns1", "ns2", "host1")


@pytest.fixture
def ssh_sandbox(tmp_path: Path, ssh_fleet) -> Sandbox:
    for node in ssh_fleet:
        node.start()
    config_path = Path(write_sandbox(str(tmp_path / "fleet")))
    box = Sandbox(root=config_path.parent, config_path=config_path)
    data = yaml.safe_load(config_path.read_text())
    data["nodes"].update(ssh_fleet.config_nodes(
        {name: {"hestia_bin": str(box.node(name) / "bin"), "capacity": 100, "max_concurrency": 1}
         for name in SSH_NODES}))
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    box.cli("init", check=True)
    assert all(data["nodes"][n]["transport"] == "ssh" for n in SSH_NODES)
    return box


@pytest.mark.parametrize("mode", sorted(MODES))
def test_lifecycle_of_each_mode_over_ssh(ssh_sandbox, mode):
    lifecycle_scenario(ssh_sandbox, mode)


def test_terminate_while_the_deploy_runs_over_ssh(ssh_sandbox):
    terminate_during_deploy_scenario(ssh_sandbox)
