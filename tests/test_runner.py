"""The runner's grouped commits, measured on a real `puqdeploy run` process and a real file.

One tick records the outcomes that arrived together, and claims the next tasks, in one write
transaction; every task keeps everything a task alone gets (its attempt row, its log lines,
its fenced lease). A grouped round is visible in the database: the tasks it recorded share
one `ended_at` (the round's clock reading).
"""

from __future__ import annotations

N_TASKS = 300


def _replace_plan_with_noops(sandbox, service_id: str, count: int) -> None:
    conn = sandbox.db()
    with conn:
        op = conn.execute("SELECT operation_id FROM services WHERE id = ?", (service_id,)).fetchone()[0]
        conn.execute("DELETE FROM task_deps")
        conn.execute("DELETE FROM tasks")
        conn.executemany(
            "INSERT INTO tasks (service_id, operation_id, seq, action, label, node, args, blocking, "
            "state, deps_left, max_attempts, run_after, created_at) VALUES "
            "(?, ?, ?, 'test.noop', ?, NULL, '{}', 1, 'queued', 0, 3, 0, 0)",
            [(service_id, op, seq, f"No-op {seq}") for seq in range(count)])
    conn.close()


def test_one_tick_groups_outcomes_into_few_commits_and_keeps_every_record(sandbox):
    sandbox.cli("create", "--service-id", "g1", "--product", "sandbox-split",
                "--domain", "example.com", check=True)
    _replace_plan_with_noops(sandbox, "g1", N_TASKS)
    proc = sandbox.cli("run", check=True)
    assert f"leased {N_TASKS}, done {N_TASKS}" in proc.stderr
    conn = sandbox.db()
    per_task = conn.execute("SELECT count(*), min(lease_token), max(lease_token), min(attempts), "
                            "max(attempts) FROM tasks WHERE state = 'done'").fetchone()
    assert tuple(per_task) == (N_TASKS, 1, 1, 1, 1)
    attempts = conn.execute("SELECT count(*), count(DISTINCT task_id), count(DISTINCT ended_at) "
                            "FROM attempts WHERE outcome = 'done'").fetchone()
    assert attempts[0] == attempts[1] == N_TASKS
    rounds = attempts[2]
    assert rounds <= N_TASKS // 2, f"{rounds} commits for {N_TASKS} outcomes: not grouped"
    lines = conn.execute("SELECT count(*) FROM attempt_logs").fetchone()[0]
    assert lines == 2 * N_TASKS  # "attempt 1/3 ..." and "outcome: done (done)" for each
    assert conn.execute("SELECT state FROM services WHERE id = 'g1'").fetchone()[0] == "active"
