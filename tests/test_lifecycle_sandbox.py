"""Lifecycle operations on the sandbox fleet, for every mode:
create -> suspend -> unsuspend -> change-package -> change-password -> terminate, checking the
simulated panels after each step, and that repeating a command changes nothing."""

from __future__ import annotations

import json

import pytest

from puqdeploy.sandbox.node import check_password, read_panel, set_faults

NODES = ("web1", "mail1", "ns1", "ns2", "host1")
MODES = {
    "split": ("sandbox-split", "example.com",
              {"web1": ["examplecom-web"], "mail1": ["examplecom-mail"],
               "ns1": ["examplecom-dns"], "ns2": ["examplecom-dns"]}),
    "unified": ("sandbox-unified", "example.com",
                {"host1": ["examplecom"], "ns1": ["examplecom-dns"], "ns2": ["examplecom-dns"]}),
    "vanity": ("sandbox-vanity", "shop.vanity.test", {"web1": ["shopvanitytest-web"]}),
}


def _panels(sandbox) -> dict:
    return {name: read_panel(sandbox.node(name)) for name in NODES}


def _status(sandbox, sid: str) -> dict:
    return json.loads(sandbox.cli("status", sid, "--json", check=True).stdout)


def _do(sandbox, *args, input=None) -> dict:
    """Queue an operation, run a tick, return the status."""
    out = json.loads(sandbox.cli(*args, "--json", input=input, check=True).stdout)
    assert out["operation"] == args[0]
    sandbox.cli("run", check=True)
    status = _status(sandbox, args[1])
    assert status["operation"] == args[0] and status["error"] is None, status
    return status


def _suspended(panels, users) -> dict:
    return {node: {u: panels[node]["users"][u]["suspended"] for u in names}
            for node, names in users.items()}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_lifecycle_of_each_mode(sandbox, mode):
    lifecycle_scenario(sandbox, mode)


def lifecycle_scenario(sandbox, mode: str) -> None:
    """create -> suspend -> unsuspend -> change-package -> change-password -> terminate,
    checking every node's panel after each step (shared with the SSH fleet test)."""
    product, domain, users = MODES[mode]
    sandbox.edit_config(ssl={"enabled": False})
    pristine = _panels(sandbox)
    sandbox.cli("create", "--service-id", "L1", "--product", product, "--domain", domain,
                "--password-stdin", input="First-Pass-123\n", check=True)
    sandbox.cli("run", check=True)
    assert _status(sandbox, "L1")["state"] == "active"
    deployed = _panels(sandbox)

    # suspend: every user suspended on every node, nothing deleted; again: no change
    assert _do(sandbox, "suspend", "L1")["state"] == "suspended"
    panels = _panels(sandbox)
    assert all(all(v.values()) for v in _suspended(panels, users).values())
    assert all(panels[n]["web"].keys() == deployed[n]["web"].keys() for n in NODES)
    counter = {n: panels[n]["suspended_users_counter"] for n in NODES}
    assert _do(sandbox, "suspend", "L1")["state"] == "suspended"
    assert _panels(sandbox) == panels
    if mode == "vanity":
        account = panels["mail1"]["mail"]["provider"]["vanity.test"]["accounts"]["shop"]
        assert account["suspended"] is True

    # unsuspend: back to the deployed state; again: no change, and Hestia's counter not corrupted
    assert _do(sandbox, "unsuspend", "L1")["state"] == "active"
    assert _panels(sandbox) == deployed
    assert _do(sandbox, "unsuspend", "L1")["state"] == "active"
    panels = _panels(sandbox)
    assert panels == deployed
    # the second unsuspend did not run v-unsuspend-user: HestiaCP's counter is back where it was
    assert {n: panels[n]["suspended_users_counter"] for n in NODES} == \
        {n: deployed[n]["suspended_users_counter"] for n in NODES}
    assert all(counter[n] >= deployed[n]["suspended_users_counter"] + len(users.get(n, []))
               for n in NODES)

    # change-package to the same mode's product with other limits (via --set at create: keep)
    status = _do(sandbox, "change-package", "L1", "--product", product)
    assert status["state"] == "active"
    assert _panels(sandbox) == deployed  # same product: nothing changes on any node

    # change-password: every user (and the Vanity mailbox) takes the new password
    status = _do(sandbox, "change-password", "L1", "--password-stdin", input="Second-Pass-456\n")
    assert status["state"] == "active"
    for node, names in users.items():
        for user in names:
            assert check_password(sandbox.node(node), user, "Second-Pass-456"), (node, user)
            assert not check_password(sandbox.node(node), user, "First-Pass-123")
    if mode == "vanity":
        assert check_password(sandbox.node("mail1"), "provider", "Second-Pass-456",
                              mailbox="shop@vanity.test")

    # terminate: nothing of the service remains anywhere; the provider's objects are untouched
    assert _do(sandbox, "terminate", "L1")["state"] == "terminated"
    after = _panels(sandbox)
    assert after == pristine, {n: (after[n]["users"], pristine[n]["users"]) for n in NODES}
    # a terminated service accepts nothing more, and cannot be resurrected
    for args in (("terminate", "L1"), ("suspend", "L1"), ("redeploy", "L1", "--yes")):
        proc = sandbox.cli(*args)
        assert proc.returncode == 2 and "terminated" in proc.stderr, (args, proc.stderr)
    assert _panels(sandbox) == pristine
    # the domain and usernames are free again
    sandbox.cli("create", "--service-id", "L2", "--product", product, "--domain", domain, check=True)
    with sandbox.db() as conn:
        names = json.loads(conn.execute("SELECT usernames FROM services WHERE id = 'L2'").fetchone()[0])
    assert set(names.values()) <= {n for v in users.values() for n in v}  # the same names again


def test_change_package_applies_new_limits_and_refuses_mode_change(sandbox, tmp_path):
    import yaml

    data = yaml.safe_load(sandbox.config_path.read_text())
    data["products"]["sandbox-split-big"] = {**data["products"]["sandbox-split"],
                                             "limits": {"web_disk_quota": 8192, "mail_accounts": 50}}
    sandbox.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    sandbox.edit_config(ssl={"enabled": False})
    sandbox.cli("create", "--service-id", "P1", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    sandbox.cli("run", check=True)
    wrong = sandbox.cli("change-package", "P1", "--product", "sandbox-unified")
    assert wrong.returncode == 2 and "mode" in wrong.stderr
    status = _do(sandbox, "change-package", "P1", "--product", "sandbox-split-big")
    assert status["state"] == "active"
    web = read_panel(sandbox.node("web1"))
    assert web["packages"]["examplecom-web"]["DISK_QUOTA"] == "8192"
    mail = read_panel(sandbox.node("mail1"))
    assert mail["packages"]["examplecom-mail"]["MAIL_ACCOUNTS"] == "50"
    listing = json.loads(sandbox.cli("services", "--json", check=True).stdout)
    assert listing["services"][0]["product"] == "sandbox-split-big"


def test_change_package_below_usage_fails_terminally_with_the_reason(sandbox):
    sandbox.edit_config(ssl={"enabled": False})
    sandbox.cli("create", "--service-id", "P2", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    sandbox.cli("run", check=True)
    set_faults(sandbox.node("web1"), rules=[{"program": "v-change-user-package", "exit": 8,
                                             "message": "Error: disk quota is below current usage"}])
    sandbox.cli("change-package", "P2", "--product", "sandbox-split", check=True)
    sandbox.cli("run", check=True)
    status = _status(sandbox, "P2")
    assert status["state"] == "error" and "E_LIMIT" in status["error"]
    failed = [t for t in status["tasks"] if t["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["node"] == "web1" and failed[0]["attempts"] == 1


def test_terminate_while_the_deploy_runs_leaves_nothing_behind(sandbox):
    terminate_during_deploy_scenario(sandbox)


def terminate_during_deploy_scenario(sandbox) -> None:
    """Terminate while the deploy still runs: nothing is left on any node afterwards."""
    pristine = _panels(sandbox)
    runner, conn = sandbox.deploy_slowly("T1")
    out = json.loads(sandbox.cli("terminate", "T1", "--json", check=True).stdout)
    assert out["created"] is True and out["queued_behind"] is False
    runner.communicate(timeout=300)
    sandbox.cli("run", check=True)  # whatever the first tick did not reach
    status = _status(sandbox, "T1")
    assert status["state"] == "terminated", status
    assert _panels(sandbox) == pristine
    # the deploy's open steps were cancelled, none ran after the terminate began
    rows = conn.execute("SELECT t.state, t.result FROM tasks t JOIN operations o ON o.id = t.operation_id "
                        "WHERE o.kind = 'deploy'").fetchall()
    assert {r[0] for r in rows} <= {"done", "cancelled"} and any(r[0] == "cancelled" for r in rows)
