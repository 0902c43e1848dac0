"""Queue semantics on a real SQLite file: claim, fencing, back-off, wait, rescue, retry.

Time is passed explicitly (`at=`) instead of sleeping, so back-off and lease expiry are tested
exactly and instantly.
"""

from __future__ import annotations

import random

import pytest

from puqdeploy import orders, queue, store
from puqdeploy.config import RetryConfig, load_config
from puqdeploy.outcomes import Done, Fail, Retry, Wait
from puqdeploy.secretbox import SecretBox

T0 = 1_900_000_000.0


@pytest.fixture
def env(sandbox):
    config = load_config(str(sandbox.config_path))
    conn = store.open_store(config.database)
    box = SecretBox.from_file(config.key_file)
    orders.create_service(conn, config, box, service_id="s1", product="sandbox-split",
                          domain="example.com", at=T0)
    limits = {name: node.max_concurrency for name, node in config.nodes.items()}
    return config, conn, limits


def _policy(config) -> RetryConfig:
    return config.retry


def _claim(conn, owner, limit, limits, lease_seconds, at, exclude=()):
    """A claim in a transaction of its own (the runner shares one with the outcomes)."""
    with store.write(conn):
        return queue.claim_in(conn, owner, limit, limits, lease_seconds, at, exclude)


def _finish(conn, lease, outcome, policy, at, rng=None):
    """One outcome in a transaction of its own (the runner records a round's together)."""
    with store.write(conn):
        return queue.finish_in(conn, [(lease, outcome)], policy, at, rng=rng)[0]


def _task(conn, action):
    return conn.execute("SELECT * FROM tasks WHERE action = ?", (action,)).fetchone()


def test_only_tasks_without_pending_dependencies_are_claimed(env):
    config, conn, limits = env
    leases = _claim(conn, "r1", 50, limits, 60, at=T0)
    assert sorted(l.action for l in leases) == ["mail.user", "web.user"]
    states = {r["action"]: r["state"] for r in conn.execute("SELECT action, state FROM tasks")}
    assert states["web.domain"] == "pending" and states["dns.zone"] == "pending"
    assert conn.execute("SELECT state FROM services").fetchone()[0] == "deploying"


def test_done_promotes_dependents_and_settles_service(env):
    config, conn, limits = env
    policy = _policy(config)
    at = T0
    for _ in range(10):
        leases = _claim(conn, "r1", 50, limits, 60, at=at)
        if not leases:
            break
        for lease in leases:
            assert _finish(conn, lease, Done("created"), policy, at=at) == "done"
        at += 1
    states = [r[0] for r in conn.execute("SELECT state FROM tasks ORDER BY seq")]
    assert states == ["done"] * len(states)
    svc = conn.execute("SELECT state, error FROM services").fetchone()
    assert tuple(svc) == ("active", None)
    assert conn.execute("SELECT state FROM operations").fetchone()[0] == "done"


def test_per_node_limit_holds_across_owners(env):
    config, conn, limits = env
    orders.create_service(conn, config, SecretBox.from_file(config.key_file), service_id="s2",
                          product="sandbox-split", domain="example.org", at=T0)
    first = _claim(conn, "r1", 50, limits, 60, at=T0)
    second = _claim(conn, "r2", 50, limits, 60, at=T0)
    assert {l.node for l in first} == {"web1", "mail1"} and len(first) == 2
    assert second == []  # s2's web.user and mail.user wait: web1 and mail1 are busy
    running = conn.execute("SELECT node, count(*) FROM tasks WHERE state = 'running' GROUP BY node")
    assert all(n == 1 for _, n in running)


def test_backoff_follows_policy_then_goes_terminal_and_cancels_dependents(env):
    config, conn, limits = env
    policy = _policy(config)
    rng = random.Random(7)
    at = T0
    for attempt in range(1, policy.max_attempts + 1):
        lease = next(l for l in _claim(conn, "r1", 50, limits, 60, at=at) if l.action == "web.user")
        assert lease.attempt == attempt
        state = _finish(conn, lease, Retry("E_RESTART"), policy, at=at, rng=rng)
        row = _task(conn, "web.user")
        if attempt < policy.max_attempts:
            assert state == "queued"
            raw = min(policy.max_seconds, policy.base_seconds * policy.factor ** (attempt - 1))
            delay = row["run_after"] - at
            assert raw * (1 - policy.jitter) <= delay <= raw * (1 + policy.jitter)
            at = row["run_after"]
        else:
            assert state == "failed"
    assert _task(conn, "web.user")["state"] == "failed"
    assert _task(conn, "web.domain")["state"] == "cancelled"
    assert _task(conn, "ssl.web")["state"] == "cancelled"
    svc = conn.execute("SELECT state, error FROM services").fetchone()
    assert svc["state"] == "error" and "Creating web user failed" in svc["error"]
    assert "E_RESTART" in svc["error"]
    outcomes = [r[0] for r in conn.execute(
        "SELECT outcome FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE t.action = 'web.user'")]
    assert outcomes == ["retry"] * policy.max_attempts
    # the mail branch was not held up
    assert _task(conn, "mail.user")["state"] in ("queued", "running", "done")

    assert queue.retry_tasks(conn, "s1", at=at) == 1
    row = _task(conn, "web.user")
    assert (row["state"], row["attempts"]) == ("queued", 0)
    assert _task(conn, "web.domain")["state"] == "pending"
    assert conn.execute("SELECT state FROM services").fetchone()[0] == "queued"


def test_fail_is_terminal_at_once(env):
    config, conn, limits = env
    lease = next(l for l in _claim(conn, "r1", 50, limits, 60, at=T0) if l.action == "mail.user")
    assert _finish(conn, lease, Fail("E_LIMIT"), _policy(config), at=T0) == "failed"
    assert _task(conn, "mail.user")["attempts"] == 1
    assert _task(conn, "mail.domain")["state"] == "cancelled"
    assert all(r[0] == "cancelled" for r in conn.execute(
        "SELECT state FROM tasks WHERE action = 'dns.zone'"))


def test_late_completion_from_an_expired_lease_is_rejected(env):
    config, conn, limits = env
    policy = _policy(config)
    old = next(l for l in _claim(conn, "dead", 50, limits, 10, at=T0) if l.action == "web.user")
    assert queue.rescue_expired(conn, policy, at=T0 + 5) == 0  # not expired yet
    assert queue.rescue_expired(conn, policy, at=T0 + 11) == 2
    lost = conn.execute("SELECT outcome, error FROM attempts WHERE id = ?", (old.attempt_id,)).fetchone()
    assert lost["outcome"] == "lost" and "lease expired" in lost["error"]
    new = next(l for l in _claim(conn, "alive", 50, limits, 60, at=T0 + 12) if l.action == "web.user")
    assert new.token != old.token
    assert _finish(conn, old, Done("created"), policy, at=T0 + 13) is None
    row = _task(conn, "web.user")
    assert (row["state"], row["lease_owner"]) == ("running", "alive")
    assert conn.execute("SELECT outcome FROM attempts WHERE id = ?", (old.attempt_id,)).fetchone()[0] == "lost"
    assert _finish(conn, new, Done("created"), policy, at=T0 + 14) == "done"


def test_heartbeat_extends_only_held_leases(env):
    config, conn, limits = env
    leases = _claim(conn, "r1", 50, limits, 10, at=T0)
    assert queue.heartbeat(conn, leases, 100, at=T0 + 5) == len(leases)
    assert queue.rescue_expired(conn, _policy(config), at=T0 + 50) == 0
    stale = leases[0].__class__(**{**leases[0].__dict__, "token": leases[0].token + 99})
    assert queue.heartbeat(conn, [stale], 1000, at=T0 + 6) == 0


def test_wait_uses_no_attempt_and_gives_up_at_the_deadline(env):
    config, conn, limits = env
    policy = _policy(config)
    limits = {**limits, "web1": 5}
    conn.execute("UPDATE tasks SET state = 'queued', deps_left = 0 WHERE action = 'ssl.web'")

    def claim_ssl(at):
        return [l for l in _claim(conn, "r1", 50, limits, 60, at=at) if l.action == "ssl.web"]

    lease, = claim_ssl(T0)
    assert _finish(conn, lease, Wait("dns not here", 300, 900), policy, at=T0) == "waiting"
    row = _task(conn, "ssl.web")
    assert (row["state"], row["attempts"], row["run_after"]) == ("waiting", 0, T0 + 300)
    assert claim_ssl(T0 + 299) == []
    at = T0 + 300
    while True:
        lease, = claim_ssl(at)
        state = _finish(conn, lease, Wait("dns not here", 300, 900), policy, at=at)
        if state == "failed":
            break
        assert _task(conn, "ssl.web")["attempts"] == 0
        at += 300
    row = _task(conn, "ssl.web")
    assert row["state"] == "failed" and "gave up waiting" in row["last_error"]
    assert at == T0 + 900
    # not blocking: the service is not put in error by it
    assert conn.execute("SELECT state FROM services").fetchone()[0] != "error"


def test_retry_policy_caps_the_delay():
    policy = RetryConfig(max_attempts=20, base_seconds=30, factor=2, max_seconds=3600, jitter=0.1)
    rng = random.Random(1)
    delays = [queue.backoff_delay(policy, n, rng) for n in range(1, 15)]
    assert max(delays) <= 3600 * 1.1
    assert delays[-1] >= 3600 * 0.9


def _dependents(conn, task_id):
    return [r[0] for r in conn.execute("SELECT task_id FROM task_deps WHERE depends_on = ?",
                                       (task_id,))]


def test_one_transaction_records_every_kind_of_outcome(env):
    """A grouped commit: successes, a retry, a failure and a lost lease, in one transaction,
    each recorded exactly as it would be alone."""
    config, conn, limits = env
    box = SecretBox.from_file(config.key_file)
    orders.create_service(conn, config, box, service_id="s2", product="sandbox-split",
                          domain="example.org", at=T0)
    wide = {node: 10 for node in limits}  # both services' first steps at once
    stale = _claim(conn, "dead", 50, wide, 10, at=T0)  # 4 leases, expire at T0 + 10
    assert queue.rescue_expired(conn, _policy(config), at=T0 + 11) == 4
    leases = {(l.service_id, l.action): l for l in _claim(conn, "r1", 50, wide, 60, at=T0 + 12)}
    assert len(leases) == 4
    results = [(leases["s1", "web.user"], Done("created")),
               (leases["s1", "mail.user"], Retry("E_CONNECT")),
               (leases["s2", "web.user"], Fail("E_LIMIT")),
               (leases["s2", "mail.user"], Done("created")),
               (stale[0], Done("created"))]  # the dead runner's late completion
    at = T0 + 13
    lines = [(leases["s1", "web.user"].attempt_id, at, "info", "one line")]
    with store.write(conn):
        states = queue.finish_in(conn, results, _policy(config), at,
                                 rng=random.Random(1), log_lines=lines)
    assert states == ["done", "queued", "failed", "done", None]

    def state(task_id):
        return conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]

    s1_web, s1_mail = leases["s1", "web.user"], leases["s1", "mail.user"]
    s2_web, s2_mail = leases["s2", "web.user"], leases["s2", "mail.user"]
    # the success released its dependents; the failure cancelled its own
    assert {state(t) for t in _dependents(conn, s1_web.task_id)} <= {"queued", "pending"}
    assert "queued" in {state(t) for t in _dependents(conn, s1_web.task_id)}
    assert {state(t) for t in _dependents(conn, s2_web.task_id)} == {"cancelled"}
    retry = conn.execute("SELECT run_after, last_error FROM tasks WHERE id = ?",
                         (s1_mail.task_id,)).fetchone()
    assert retry["run_after"] > at and retry["last_error"] == "E_CONNECT"
    outcomes = dict(conn.execute("SELECT id, outcome FROM attempts WHERE ended_at = ?", (at,)))
    assert outcomes == {s1_web.attempt_id: "done", s1_mail.attempt_id: "retry",
                        s2_web.attempt_id: "fail", s2_mail.attempt_id: "done"}
    # the late completion changed nothing: its attempt stays as the rescue recorded it
    assert conn.execute("SELECT outcome FROM attempts WHERE id = ?",
                        (stale[0].attempt_id,)).fetchone()[0] == "lost"
    assert conn.execute("SELECT line FROM attempt_logs WHERE attempt_id = ?",
                        (s1_web.attempt_id,)).fetchall()[0][0] == "one line"
    services = dict(conn.execute("SELECT id, state FROM services"))
    assert services == {"s1": "deploying", "s2": "error"}
    feed = [r[0] for r in conn.execute("SELECT message FROM events WHERE at = ? ORDER BY id", (at,))]
    assert len(feed) == 3 and any("failed" in m for m in feed)


def test_tasks_without_a_node_are_leased_beyond_the_limit_but_node_tasks_never(env):
    config, conn, limits = env
    op = conn.execute("SELECT operation_id FROM services WHERE id = 's1'").fetchone()[0]
    with store.write(conn):
        conn.executemany(
            "INSERT INTO tasks (service_id, operation_id, seq, action, label, node, args, blocking, "
            "state, deps_left, max_attempts, run_after, created_at) "
            "VALUES ('s1', ?, ?, 'test.noop', 'No-op', NULL, '{}', 0, 'queued', 0, 3, ?, ?)",
            [(op, 100 + i, T0, T0) for i in range(10)])
    with store.write(conn):
        leases = queue.claim_in(conn, "r1", 1, limits, 60, T0, nodeless_limit=6)
    on_nodes = [l for l in leases if l.node is not None]
    assert len(on_nodes) == 1 and len(leases) == 6
    with store.write(conn):
        assert queue.claim_in(conn, "r1", 0, limits, 60, T0, nodeless_limit=0) == []


def test_a_round_finds_its_rows_by_key_however_many_tasks_wait(env):
    """Every statement of a claim + record round reaches its rows through a key or a range
    scan of due/running work, never through all queued services or all pending tasks — the
    plans SQLite chooses here (no ANALYZE statistics) are the ones it chooses on any size."""
    config, conn, limits = env
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    with store.write(conn):
        leases = queue.claim_in(conn, "r1", 8, limits, 60, T0)
        # a success (releases its dependents) and a terminal failure (cancels its own)
        queue.finish_in(conn, [(leases[0], Done("created")), (leases[1], Fail("E_LIMIT"))],
                        _policy(config), T0)
    conn.set_trace_callback(None)
    assert len(leases) == 2
    plans = {}
    for sql in statements:
        if sql.split()[0].upper() in ("SELECT", "UPDATE", "INSERT", "WITH"):
            plans[sql] = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
    assert plans and not [p for p in plans.values() if "SCAN tasks" in p or "SCAN services" in p]
    by_id = {sql: plan for sql, plan in plans.items() if " id IN (SELECT" in sql and "UPDATE" in sql}
    assert len(by_id) >= 4  # the claim, the service state, the promotion, the cancellation
    for sql, plan in by_id.items():
        assert "PRIMARY KEY" in plan or "autoindex" in plan, (sql, plan)
        assert "tasks_state" not in plan and "services_state" not in plan, (sql, plan)
