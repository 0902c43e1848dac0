"""`puqdeploy prune`: old finished history goes, the present and young history stay, terminal
failures are kept for their longer retention."""

from __future__ import annotations

import json
import time

from puqdeploy.sandbox.node import clear_faults, set_faults

DAY = 86400


def _age(sandbox, op_id: int, days: float) -> None:
    """Pretend an operation (and its events) ended `days` ago."""
    at = time.time() - days * DAY
    with sandbox.db() as conn:
        conn.execute("UPDATE operations SET finished_at = ?, created_at = ? WHERE id = ?", (at, at, op_id))
        conn.execute("UPDATE events SET at = ? WHERE task_id IN (SELECT id FROM tasks WHERE operation_id = ?)",
                     (at, op_id))


def _ops(sandbox) -> dict[int, tuple[str, str, int]]:
    with sandbox.db() as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
            "SELECT o.id, o.kind, o.state, (SELECT count(*) FROM tasks t WHERE t.operation_id = o.id) "
            "FROM operations o")}


def test_prune_keeps_young_history_current_operations_and_failures(sandbox):
    sandbox.edit_config(ssl={"enabled": False}, retention={"finished_days": 30, "failed_days": 90})
    # A: deployed, then redeployed -> the first deploy is old finished history
    sandbox.cli("create", "--service-id", "A", "--product", "sandbox-split", "--domain", "a.example.com", check=True)
    sandbox.cli("run", check=True)
    sandbox.cli("redeploy", "A", "--yes", check=True)
    sandbox.cli("run", check=True)
    # B: a deploy that failed for good (kept 90 days), then a successful redeploy
    set_faults(sandbox.node("web1"), rules=[{"program": "v-add-web-domain", "exit": 8, "message": "Error: limit"}])
    sandbox.cli("create", "--service-id", "B", "--product", "sandbox-split", "--domain", "b.example.com", check=True)
    sandbox.cli("run", check=True)
    clear_faults(sandbox.node("web1"))
    sandbox.cli("redeploy", "B", "--yes", check=True)
    sandbox.cli("run", check=True)
    # C: a suspend that ended recently (young)
    sandbox.cli("create", "--service-id", "C", "--product", "sandbox-split", "--domain", "c.example.com", check=True)
    sandbox.cli("run", check=True)
    sandbox.cli("suspend", "C", check=True)
    sandbox.cli("run", check=True)

    ops = _ops(sandbox)
    by = {(kind, state): op for op, (kind, state, _) in ops.items()}
    a_deploy, b_failed = min(o for o, v in ops.items() if v[0] == "deploy"), by[("deploy", "error")]
    c_deploy = max(o for o, v in ops.items() if v[0] == "deploy" and v[1] == "done")
    _age(sandbox, a_deploy, 40)        # finished, older than 30 days  -> pruned
    _age(sandbox, b_failed, 40)        # failed, younger than 90 days  -> kept
    _age(sandbox, c_deploy, 10)        # finished, younger than 30 days -> kept
    for op, (kind, state, _) in ops.items():
        if kind == "redeploy":
            _age(sandbox, op, 400)     # current operations are kept whatever their age

    out = json.loads(sandbox.cli("prune", "--json", check=True).stdout)
    after = _ops(sandbox)
    assert a_deploy not in after and out["operations"] == 1 and out["tasks"] == ops[a_deploy][2]
    assert b_failed in after and c_deploy in after
    assert all(v[0] in after for v in [(op,) for op, (k, _, _) in ops.items() if k == "redeploy"])
    for sid in ("A", "B", "C"):
        status = json.loads(sandbox.cli("status", sid, "--json", check=True).stdout)
        assert status["tasks"], sid  # the status page still works
    # a second prune has nothing left to do
    assert json.loads(sandbox.cli("prune", "--json", check=True).stdout)["operations"] == 0

    # beyond the failure retention the failed operation goes too; --older-than overrides
    _age(sandbox, b_failed, 100)
    sandbox.cli("prune", check=True)
    assert b_failed not in _ops(sandbox)
    out = json.loads(sandbox.cli("prune", "--older-than", "5d", "--json", check=True).stdout)
    assert c_deploy not in _ops(sandbox) and out["operations"] == 1


def test_prune_rejects_a_bad_duration(sandbox):
    proc = sandbox.cli("prune", "--older-than", "soon")
    assert proc.returncode == 2 and proc.stderr.startswith("Error: bad duration")
