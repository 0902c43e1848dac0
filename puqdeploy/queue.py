"""The durable task queue: lease, heartbeat, complete (fenced), back off, rescue.

Semantics (see README "Design"):
- At-least-once execution made safe by idempotent steps.
- A task is `pending` until its dependencies are done (`deps_left` reaches 0), then `queued`.
  Keeping the count on the row (instead of joining the DAG at claim time) keeps the claim query
  an index range scan however many finished tasks the database holds.
- `claim_in` takes due tasks in ONE `UPDATE ... RETURNING` inside the caller's
  `BEGIN IMMEDIATE`, never more per node than that node's `max_concurrency` minus what is
  already running there — counted in the database, so it holds across overlapping cron ticks
  and several hosts. `finish_in` records outcomes in the same kind of transaction; the runner
  does both in one (a grouped commit).
- Each claim bumps `lease_token`; every completion is fenced by (id, state running, owner,
  token), so a runner that lost its lease can never overwrite the task's new life.
- Expired leases are rescued at the start of every tick; the lost attempt is recorded.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Protocol, Sequence

from puqdeploy import store
from puqdeploy.frozen import frozen
from puqdeploy.outcomes import Done, Fail, Outcome, Retry, Wait

if TYPE_CHECKING:
    import random

OPEN_STATES = ("pending", "queued", "running", "waiting")

# What a finished operation leaves the service as (None: the state it had before).
FINAL_SERVICE_STATE = {
    "deploy": "active", "redeploy": "active", "unsuspend": "active", "change-package": None,
    "change-password": None, "suspend": "suspended", "terminate": "terminated",
}
# The service's state while an operation of this kind runs (None: unchanged).
# A deploy shows `queued` until its first step is leased, then `deploying` (see claim).
RUNNING_SERVICE_STATE = {"deploy": "queued", "redeploy": "queued"}


@frozen
class Lease:
    """A claimed task as the runner sees it."""

    task_id: int
    service_id: str
    operation_id: int
    action: str
    label: str
    node: Optional[str]
    args: dict
    blocking: bool
    attempt: int
    max_attempts: int
    attempt_id: int
    owner: str
    token: int
    wait_deadline: Optional[float]


class RetryPolicy(Protocol):
    """The config's `retry:` block (puqdeploy.config.RetryConfig) as the queue reads it."""

    max_attempts: int
    base_seconds: float
    factor: float
    max_seconds: float
    jitter: float


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before retry number `attempt` (1 = after the first failure).

    min(cap, base * factor^(attempt-1)), then scaled by a uniform factor in
    [1 - jitter, 1 + jitter] so that tasks failing together do not retry together.
    """
    if rng is None:
        import random  # lazy: `create` imports this module and never backs off

        rng = random  # the module's shared generator
    raw = min(policy.max_seconds, policy.base_seconds * policy.factor ** max(0, attempt - 1))
    return raw * (1 + rng.uniform(-policy.jitter, policy.jitter))


_DUE_ON_NODE = """
SELECT id FROM tasks AS t INDEXED BY tasks_due_node
 WHERE {node} AND state IN ('queued', 'waiting') AND run_after <= :now
   AND id NOT IN (SELECT value FROM json_each(:exclude))
   -- an operation waits while an older one of the same service still runs a step
   -- (a terminate never deletes under a deploy step that is still running)
   AND NOT EXISTS (SELECT 1 FROM tasks r WHERE r.service_id = t.service_id
                   AND r.state = 'running' AND r.operation_id != t.operation_id)
 ORDER BY id LIMIT :free
"""

_CLAIM_SQL = """
UPDATE tasks
   SET state = 'running', lease_owner = :owner, lease_token = lease_token + 1,
       lease_expires = :expires, attempts = attempts + 1, started_at = :now, finished_at = NULL
 WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING id, service_id, operation_id, action, label, node, args, blocking, attempts,
          max_attempts, lease_token, wait_deadline
"""


def _candidates(conn: sqlite3.Connection, limit: int, nodeless_limit: int,
                node_limits: Mapping[str, int], at: float, exclude: str) -> list[int]:
    """Due task ids, oldest first (plan order): at most `limit` on nodes (and each node's free
    capacity), and at most `nodeless_limit` in all.

    One index range scan per node (`tasks_due_node`), so the cost grows with the number of
    nodes and the batch, not with how many tasks are due. Oldest first means a service's
    next step (promoted when its dependency finished) runs before later services' first
    steps, so services finish one after the other instead of all at the end.
    """
    busy = dict(conn.execute("SELECT node, count(*) FROM tasks WHERE state = 'running' "
                             "GROUP BY node").fetchall())

    def due(node: Optional[str], free: int) -> list[int]:
        if free <= 0:
            return []
        sql = _DUE_ON_NODE.format(node="node IS NULL" if node is None else "node = :node")
        return [row[0] for row in conn.execute(sql, {"node": node, "now": at, "exclude": exclude,
                                                     "free": free})]

    on_nodes = sorted(task for node, cap in node_limits.items()
                      for task in due(node, min(limit, cap - busy.get(node, 0))))[:limit]
    return sorted(on_nodes + due(None, max(limit, nodeless_limit)))[:max(limit, nodeless_limit)]


_ATTEMPT_ROWS_SQL = """
INSERT INTO attempts (task_id, number, runner_id, started_at)
SELECT j.value, (SELECT count(*) FROM attempts a WHERE a.task_id = j.value) + 1, :owner, :now
  FROM json_each(:ids) AS j
RETURNING id, task_id
"""


def claim_in(conn: sqlite3.Connection, owner: str, limit: int, node_limits: Mapping[str, int],
             lease_seconds: float, at: float, exclude: Iterable[int] = (),
             nodeless_limit: int = 0) -> list[Lease]:
    """Lease up to `limit` due tasks for `owner`, respecting per-node concurrency (tasks on a
    node missing from `node_limits` are not leased: see `fail_unknown_nodes`). The caller
    holds the write transaction (the runner commits a claim together with the outcomes it
    records, one fsync for both).

    `nodeless_limit` raises the total for tasks without a node (in-process steps such as
    tickets): the runner prefetches those beyond its free workers, so that one commit
    records and claims many of them; tasks on nodes never exceed `limit`.

    `exclude`: tasks this tick already attempted — a retry whose short back-off ran out while
    the tick was still busy waits for the next tick instead of burning attempts in this one.

    Whatever the batch size, this is a fixed number of statements: the candidate scans, one
    UPDATE ... RETURNING, one INSERT ... SELECT of the attempt rows and one service update.
    """
    if limit <= 0 and nodeless_limit <= 0:
        return []
    ids = _candidates(conn, limit, nodeless_limit, node_limits, at, json.dumps(list(exclude)))
    if not ids:
        return []
    ids_json = json.dumps(ids)
    rows = conn.execute(_CLAIM_SQL, {"ids": ids_json, "now": at, "owner": owner,
                                     "expires": at + lease_seconds}).fetchall()
    attempt_ids = dict((task, attempt) for attempt, task in conn.execute(
        _ATTEMPT_ROWS_SQL, {"ids": ids_json, "owner": owner, "now": at}))
    leases = [Lease(
        task_id=row["id"], service_id=row["service_id"], operation_id=row["operation_id"],
        action=row["action"], label=row["label"], node=row["node"],
        args=json.loads(row["args"]), blocking=bool(row["blocking"]),
        attempt=row["attempts"], max_attempts=row["max_attempts"],
        attempt_id=attempt_ids[row["id"]], owner=owner, token=row["lease_token"],
        wait_deadline=row["wait_deadline"]) for row in sorted(rows, key=lambda r: r["id"])]
    # `+state`: look the services up by id, not through every queued service (services_state)
    conn.execute("UPDATE services SET state = 'deploying', updated_at = ? WHERE +state = 'queued' "
                 "AND id IN (SELECT value FROM json_each(?))",
                 (at, json.dumps(sorted({lease.service_id for lease in leases}))))
    return leases


def heartbeat(conn: sqlite3.Connection, leases: Iterable[Lease], lease_seconds: float,
              at: float | None = None) -> int:
    """Extend the leases still held; returns how many were extended (fenced by token)."""
    at = store.now() if at is None else at
    extended = 0
    with store.write(conn):
        for lease in leases:
            extended += conn.execute(
                "UPDATE tasks SET lease_expires = ? WHERE id = ? AND state = 'running' "
                "AND lease_owner = ? AND lease_token = ?",
                (at + lease_seconds, lease.task_id, lease.owner, lease.token)).rowcount
    return extended


# CROSS JOIN fixes the loop order: each lease looks its task up by primary key (a plain JOIN
# lets the planner walk every running task through tasks_state instead). json_extract rather
# than `->>`, which needs SQLite 3.38.
_HELD_SQL = """
SELECT t.id, t.lease_token, t.lease_owner, t.cancel_requested FROM json_each(:leases) AS j
 CROSS JOIN tasks AS t ON t.id = json_extract(j.value, '$[0]')
 WHERE t.state = 'running' AND t.lease_token = json_extract(j.value, '$[1]')
   AND t.lease_owner = json_extract(j.value, '$[2]')
"""


def finish_in(conn: sqlite3.Connection, results: Sequence[tuple[Lease, Outcome]],
              policy: RetryPolicy, at: float, rng: random.Random | None = None,
              tickets: bool = False, log_lines: Iterable[tuple] = ()) -> list[Optional[str]]:
    """Record the outcomes of several steps in the caller's write transaction (grouped commit:
    one fsync for all of them). Returns each task's new state, None where the lease was lost.

    Per outcome: the fenced task update (id, state running, owner, token), the attempt row,
    the DAG promotion or cancellation, the service state and the activity event; plus the
    attempts' last log lines (`log_lines`: (attempt_id, at, stream, line) rows not yet
    written). Successes, the bulk of any batch, are recorded with a fixed number of
    statements whatever their number; the rarer outcomes one by one.
    """
    store.add_log_lines(conn, log_lines)
    # the leases still held, as (task, token, owner) -> cancel requested
    held = {(task, token, owner): cancel for task, token, owner, cancel in conn.execute(
        _HELD_SQL, {"leases": json.dumps([[lease.task_id, lease.token, lease.owner]
                                          for lease, _ in results])})}
    states: list[Optional[str]] = []
    done: list[tuple[Lease, Done]] = []
    for lease, outcome in results:
        cancel = held.get((lease.task_id, lease.token, lease.owner))
        if cancel is None:
            _end_attempt(conn, lease.attempt_id, at, "rejected",
                         "late completion rejected: the lease had expired and was taken over")
            states.append(None)
        elif cancel:  # cancel requested (superseded or terminated) while it ran
            _end_attempt(conn, lease.attempt_id, at, _outcome_name(outcome), _outcome_error(outcome))
            _set_task(conn, lease, "cancelled", at, result="superseded")
            states.append("cancelled")
        elif isinstance(outcome, Done):
            done.append((lease, outcome))
            states.append("done")
        else:
            states.append(_finish_unsuccessful(conn, lease, outcome, policy, at, rng, tickets))
    if done:
        _on_done(conn, done, at)
    return states


def _finish_unsuccessful(conn: sqlite3.Connection, lease: Lease, outcome: Outcome,
                         policy: RetryPolicy, at: float, rng: random.Random | None,
                         tickets: bool) -> str:
    if isinstance(outcome, Wait):
        return _on_wait(conn, lease, outcome, at, tickets)
    if isinstance(outcome, Retry):
        _end_attempt(conn, lease.attempt_id, at, "timeout" if outcome.timeout else "retry",
                     outcome.error)
        if lease.attempt >= lease.max_attempts:
            return _go_terminal(conn, lease.task_id, lease.service_id, at,
                                f"gave up after {lease.attempt} attempts: {outcome.error}",
                                tickets)
        delay = backoff_delay(policy, lease.attempt, rng)
        _set_task(conn, lease, "queued", at, run_after=at + delay, error=outcome.error,
                  finished=False)
        return "queued"
    _end_attempt(conn, lease.attempt_id, at, "fail", outcome.error)
    return _go_terminal(conn, lease.task_id, lease.service_id, at, outcome.error, tickets)


def _outcome_name(outcome: Outcome) -> str:
    return {Done: "done", Wait: "wait", Retry: "retry", Fail: "fail"}[type(outcome)]


def _outcome_error(outcome: Outcome) -> Optional[str]:
    return getattr(outcome, "error", None) or getattr(outcome, "reason", None)


def _end_attempt(conn: sqlite3.Connection, attempt_id: int, at: float, outcome: str,
                 error: Optional[str], counted: bool = True) -> None:
    conn.execute("UPDATE attempts SET ended_at = ?, outcome = ?, error = ?, counted = ? "
                 "WHERE id = ? AND ended_at IS NULL",
                 (at, outcome, error, int(counted), attempt_id))


def _set_task(conn: sqlite3.Connection, lease: Lease, state: str, at: float, *,
              run_after: float | None = None, result: str | None = None,
              error: str | None = None, finished: bool = True) -> None:
    conn.execute(
        "UPDATE tasks SET state = ?, lease_owner = NULL, lease_expires = NULL, "
        "run_after = coalesce(?, run_after), result = coalesce(?, result), "
        "last_error = ?, finished_at = ? WHERE id = ?",
        (state, run_after, result, error, at if finished else None, lease.task_id))


_DEPENDENTS = "SELECT task_id FROM task_deps WHERE depends_on IN (SELECT value FROM json_each(:done))"


def _on_done(conn: sqlite3.Connection, done: Sequence[tuple[Lease, Done]], at: float) -> None:
    """Successes: attempt rows, task rows, feed lines, then the dependents they release and the
    operations they may complete — a fixed number of statements for the whole batch."""
    conn.executemany("UPDATE attempts SET ended_at = ?, outcome = 'done', error = NULL, "
                     "counted = 1 WHERE id = ? AND ended_at IS NULL",
                     [(at, lease.attempt_id) for lease, _ in done])
    conn.executemany("UPDATE tasks SET state = 'done', lease_owner = NULL, lease_expires = NULL, "
                     "result = coalesce(?, result), last_error = NULL, finished_at = ? WHERE id = ?",
                     [(outcome.result, at, lease.task_id) for lease, outcome in done])
    store.add_events(conn, [(lease.service_id, lease.task_id, at, "info",
                             outcome.message or f"{lease.label}: {outcome.result}")
                            for lease, outcome in done])
    params = {"done": json.dumps([lease.task_id for lease, _ in done]), "at": at}
    conn.execute("UPDATE tasks SET deps_left = deps_left - (SELECT count(*) FROM task_deps d "
                 "WHERE d.task_id = tasks.id AND d.depends_on IN (SELECT value FROM json_each(:done))) "
                 f"WHERE id IN ({_DEPENDENTS})", params)
    # `+state`: the dependents by id, not every pending task of the database (tasks_state)
    conn.execute("UPDATE tasks SET state = 'queued', run_after = :at WHERE +state = 'pending' "
                 f"AND deps_left <= 0 AND id IN ({_DEPENDENTS})", params)
    for operation_id in dict.fromkeys(lease.operation_id for lease, _ in done):
        settle_operation(conn, operation_id, at)


def _on_wait(conn: sqlite3.Connection, lease: Lease, outcome: Wait, at: float,
             tickets: bool = False) -> str:
    deadline = lease.wait_deadline or at + outcome.deadline_seconds
    if at >= deadline:  # giving up is not an attempt either: waiting never uses attempts
        _end_attempt(conn, lease.attempt_id, at, "fail", outcome.reason, counted=False)
        conn.execute("UPDATE tasks SET attempts = attempts - 1 WHERE id = ?", (lease.task_id,))
        return _go_terminal(conn, lease.task_id, lease.service_id, at,
                            f"gave up waiting: {outcome.reason}", tickets)
    _end_attempt(conn, lease.attempt_id, at, "wait", outcome.reason, counted=False)
    conn.execute(
        "UPDATE tasks SET state = 'waiting', attempts = attempts - 1, lease_owner = NULL, "
        "lease_expires = NULL, run_after = ?, wait_deadline = ?, last_error = ?, finished_at = NULL "
        "WHERE id = ?", (at + outcome.recheck_seconds, deadline, outcome.reason, lease.task_id))
    if lease.wait_deadline is None:
        store.add_event(conn, lease.service_id, f"{lease.label}: waiting ({outcome.reason})",
                        task_id=lease.task_id, at=at)
    return "waiting"


def _go_terminal(conn: sqlite3.Connection, task_id: int, service_id: str, at: float,
                 error: str, tickets: bool = False) -> str:
    """A task failed for good: record it, cancel what depended on it, flag the service, and
    (tickets enabled, blocking task) queue the support ticket that tells staff."""
    conn.execute("UPDATE tasks SET state = 'failed', lease_owner = NULL, lease_expires = NULL, "
                 "last_error = ?, finished_at = ? WHERE id = ?", (error, at, task_id))
    task = conn.execute("SELECT label, blocking, operation_id, action FROM tasks WHERE id = ?",
                        (task_id,)).fetchone()
    conn.execute(  # `+state`: the downstream tasks by id, not every open task (tasks_state)
        """WITH RECURSIVE downstream(id) AS (
               SELECT task_id FROM task_deps WHERE depends_on = :id
               UNION SELECT d.task_id FROM task_deps d JOIN downstream ON d.depends_on = downstream.id)
           UPDATE tasks SET state = 'cancelled', finished_at = :at,
                  last_error = 'cancelled: ' || :label || ' failed'
            WHERE id IN (SELECT id FROM downstream) AND +state IN ('pending', 'queued', 'waiting')""",
        {"id": task_id, "at": at, "label": task["label"]})
    if task["blocking"]:
        reason = f"{task['label']} failed: {error}"
        conn.execute("UPDATE services SET state = 'error', error = ?, updated_at = ? WHERE id = ?",
                     (reason, at, service_id))
        ended = conn.execute("UPDATE operations SET state = 'error', error = ?, finished_at = ? "
                             "WHERE id = ? AND state = 'running'",
                             (reason, at, task["operation_id"])).rowcount
        store.add_event(conn, service_id, f"{task['label']} failed", level="error",
                        task_id=task_id, at=at)
        if tickets and task["action"] != TICKET_ACTION:
            queue_ticket(conn, task_id, at)
        if ended:
            start_next_operation(conn, service_id, at)
    else:
        store.add_event(conn, service_id, f"{task['label']} did not complete", level="warning",
                        task_id=task_id, at=at)
    return "failed"


TICKET_ACTION = "ticket.open"
LOG_TAIL_LINES = 20


def queue_ticket(conn: sqlite3.Connection, failed_task_id: int, at: float) -> int:
    """Queue the support ticket for a terminal failure, as a task of the same operation.

    A task, so that an unreachable ticket endpoint is retried with back-off like any step, and
    the failure itself is already recorded whatever happens to the ticket. The facts are frozen
    into the task now (the failed attempt's last log lines included). A second failure in the
    same operation waits for the first ticket task, so it replies to that ticket instead of
    opening another.
    """
    row = conn.execute(
        """SELECT t.id, t.service_id, t.operation_id, t.label, t.action, t.node, t.attempts,
                  t.max_attempts, t.last_error, t.max_attempts, s.domain, s.product, s.mode,
                  o.kind FROM tasks t JOIN services s ON s.id = t.service_id
             JOIN operations o ON o.id = t.operation_id WHERE t.id = ?""",
        (failed_task_id,)).fetchone()
    tail = [r[0] for r in conn.execute(
        "SELECT line FROM attempt_logs WHERE attempt_id = (SELECT id FROM attempts WHERE task_id = ? "
        "ORDER BY number DESC LIMIT 1) ORDER BY id DESC LIMIT ?", (failed_task_id, LOG_TAIL_LINES))]
    facts = {
        "service_id": row["service_id"], "domain": row["domain"], "product": row["product"],
        "mode": row["mode"], "operation": row["kind"], "operation_id": row["operation_id"],
        "step": row["label"], "action": row["action"], "node": row["node"],
        "attempts": row["attempts"], "max_attempts": row["max_attempts"],
        "last_error": row["last_error"] or "", "log_tail": list(reversed(tail)),
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
    }
    earlier = conn.execute("SELECT id FROM tasks WHERE operation_id = ? AND action = ? AND state "
                           "IN ('pending', 'queued', 'running', 'waiting') ORDER BY id DESC LIMIT 1",
                           (row["operation_id"], TICKET_ACTION)).fetchone()
    seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM tasks WHERE operation_id = ?",
                       (row["operation_id"],)).fetchone()[0]
    max_attempts = conn.execute("SELECT max_attempts FROM tasks WHERE id = ?",
                                (failed_task_id,)).fetchone()[0]
    ticket_id = conn.execute(
        "INSERT INTO tasks (service_id, operation_id, seq, action, label, node, args, blocking, "
        "state, deps_left, max_attempts, run_after, created_at) "
        "VALUES (?, ?, ?, ?, ?, NULL, ?, 0, ?, ?, ?, ?, ?)",
        (row["service_id"], row["operation_id"], seq, TICKET_ACTION,
         f"Opening a support ticket ({row['label']})", json.dumps({"facts": facts}),
         "pending" if earlier else "queued", 1 if earlier else 0, max_attempts, at, at)).lastrowid
    if earlier:
        conn.execute("INSERT INTO task_deps (task_id, depends_on) VALUES (?, ?)",
                     (ticket_id, earlier[0]))
    return ticket_id


def operation_ticket(conn: sqlite3.Connection, operation_id: int) -> Optional[str]:
    return conn.execute("SELECT ticket FROM operations WHERE id = ?", (operation_id,)).fetchone()[0]


def set_operation_ticket(conn: sqlite3.Connection, operation_id: int, ticket: str) -> None:
    with store.write(conn):
        conn.execute("UPDATE operations SET ticket = ? WHERE id = ?", (ticket, operation_id))


def settle_operation(conn: sqlite3.Connection, operation_id: int, at: float) -> bool:
    """When every blocking task of a running operation is done, finish it and the service."""
    left = conn.execute(
        "SELECT 1 FROM tasks WHERE operation_id = ? AND blocking = 1 AND state IN "
        "('pending', 'queued', 'running', 'waiting', 'failed', 'cancelled') LIMIT 1",
        (operation_id,)).fetchone()  # index lookups (tasks_open_blocking), not a count
    if left:
        return False
    op = conn.execute("SELECT service_id, kind, resume_state, args FROM operations "
                      "WHERE id = ? AND state = 'running'", (operation_id,)).fetchone()
    if op is None:
        return False
    conn.execute("UPDATE operations SET state = 'done', finished_at = ? WHERE id = ?",
                 (at, operation_id))
    final = FINAL_SERVICE_STATE.get(op["kind"]) or op["resume_state"] or "active"
    conn.execute("UPDATE services SET state = ?, error = NULL, updated_at = ? "
                 "WHERE id = ? AND operation_id = ?", (final, at, op["service_id"], operation_id))
    if final == "terminated":
        release_service(conn, op["service_id"])
    if op["kind"] == "change-package":
        args = json.loads(op["args"])
        conn.execute("UPDATE services SET product = ?, limits = ? WHERE id = ?",
                     (args["product"], json.dumps(args["limits"]), op["service_id"]))
    store.add_event(conn, op["service_id"], _final_message(op["kind"], final), at=at)
    start_next_operation(conn, op["service_id"], at)
    return True


def start_next_operation(conn: sqlite3.Connection, service_id: str, at: float) -> Optional[int]:
    """Start the oldest operation queued behind the one that just ended (if any).

    Its tasks were written `pending` with one extra dependency (the "gate"); opening the gate
    queues those whose own dependencies are already met.
    """
    if conn.execute("SELECT 1 FROM operations WHERE service_id = ? AND state = 'running'",
                    (service_id,)).fetchone():
        return None
    op = conn.execute("SELECT id, kind FROM operations WHERE service_id = ? AND state = 'queued' "
                      "ORDER BY id LIMIT 1", (service_id,)).fetchone()
    if op is None:
        return None
    begin_operation(conn, service_id, op["id"], op["kind"], at)
    conn.execute("UPDATE tasks SET deps_left = deps_left - 1 WHERE operation_id = ?", (op["id"],))
    conn.execute("UPDATE tasks SET state = 'queued', run_after = ? WHERE operation_id = ? "
                 "AND state = 'pending' AND deps_left <= 0", (at, op["id"]))
    settle_operation(conn, op["id"], at)  # an operation with nothing left to do ends at once
    return op["id"]


def begin_operation(conn: sqlite3.Connection, service_id: str, op_id: int, kind: str,
                    at: float) -> None:
    """Make `op_id` the service's current operation and remember the state to return to."""
    state = conn.execute("SELECT state FROM services WHERE id = ?", (service_id,)).fetchone()[0]
    resume = "suspended" if state == "suspended" else "active"
    conn.execute("UPDATE operations SET state = 'running', resume_state = ? WHERE id = ?",
                 (resume, op_id))
    running_state = RUNNING_SERVICE_STATE.get(kind)
    conn.execute("UPDATE services SET operation_id = ?, state = coalesce(?, state), error = NULL, "
                 "updated_at = ? WHERE id = ?", (op_id, running_state, at, service_id))
    if kind not in ("deploy", "redeploy"):
        store.add_event(conn, service_id, f"{kind.replace('-', ' ').capitalize()} started", at=at)


def release_service(conn: sqlite3.Connection, service_id: str) -> None:
    """A terminated service gives back its usernames and its share of node load."""
    conn.execute("DELETE FROM usernames WHERE service_id = ?", (service_id,))
    placement = json.loads(conn.execute("SELECT placement FROM services WHERE id = ?",
                                        (service_id,)).fetchone()[0])
    nodes = {n for n in [placement.get("web"), placement.get("mail"), *placement.get("dns", [])] if n}
    for node in nodes:
        conn.execute("UPDATE node_load SET services = max(0, services - 1) WHERE node = ?", (node,))


def _final_message(kind: str, final: str) -> str:
    return {"deploy": "Your service is ready", "redeploy": "Your service is ready",
            "suspend": "Service suspended", "unsuspend": "Service unsuspended",
            "terminate": "Service terminated", "change-package": "Package changed",
            "change-password": "Password changed"}.get(kind, f"{kind} completed")


def rescue_expired(conn: sqlite3.Connection, policy: RetryPolicy, at: float | None = None,
                   tickets: bool = False) -> int:
    """Put tasks whose runner vanished (lease expired) back in the queue, recording the loss.

    A lost runner is usually not the task's fault (a reboot, a kill), so the task is due again
    at once; the lost attempt still counts, so a step that crashes its runner every time ends
    terminal instead of looping forever.
    """
    at = store.now() if at is None else at
    with store.write(conn):
        rows = conn.execute(
            "SELECT id, service_id, attempts, max_attempts, cancel_requested FROM tasks "
            "WHERE state = 'running' AND lease_expires < ?", (at,)).fetchall()
        for row in rows:
            conn.execute("UPDATE attempts SET ended_at = ?, outcome = 'lost', "
                         "error = 'runner lost: lease expired' WHERE task_id = ? AND ended_at IS NULL",
                         (at, row["id"]))
            if row["cancel_requested"]:
                conn.execute("UPDATE tasks SET state = 'cancelled', lease_owner = NULL, "
                             "lease_expires = NULL, finished_at = ? WHERE id = ?", (at, row["id"]))
            elif row["attempts"] >= row["max_attempts"]:
                _go_terminal(conn, row["id"], row["service_id"], at,
                             f"gave up after {row['attempts']} attempts: runner lost", tickets)
            else:
                conn.execute("UPDATE tasks SET state = 'queued', lease_owner = NULL, "
                             "lease_expires = NULL, run_after = ?, last_error = ? WHERE id = ?",
                             (at, "runner lost: lease expired", row["id"]))
    return len(rows)


def fail_unknown_nodes(conn: sqlite3.Connection, known: Iterable[str],
                       at: float | None = None) -> int:
    """Open tasks on a node that is no longer in the config can never run: fail them with a
    reason an operator can act on (put the node back, then `retry`), once per tick."""
    at = store.now() if at is None else at
    known_json = json.dumps(list(known))
    with store.write(conn):
        rows = conn.execute(
            "SELECT id, service_id, node FROM tasks WHERE state IN ('queued', 'waiting') "
            "AND node IS NOT NULL AND node NOT IN (SELECT value FROM json_each(?))",
            (known_json,)).fetchall()
        for row in rows:
            _go_terminal(conn, row["id"], row["service_id"], at,
                         f"node {row['node']} is not in the config (removed or renamed?)")
    return len(rows)


def retry_tasks(conn: sqlite3.Connection, service_id: str, task_id: int | None = None,
                at: float | None = None) -> int:
    """Give terminally failed (and the tasks they cancelled) fresh attempts.

    The failed task goes back to `queued` with its attempt counter reset; tasks cancelled
    because of it go back to `pending` with their dependency count recomputed, so the DAG
    resumes exactly where it stopped. The operation is `running` again and the service shows
    the state it has while such an operation runs (`deploying` for a deploy).
    """
    at = store.now() if at is None else at
    with store.write(conn):
        op_id = conn.execute("SELECT operation_id FROM services WHERE id = ?",
                             (service_id,)).fetchone()[0]
        op = conn.execute("SELECT kind, resume_state FROM operations WHERE id = ?", (op_id,)).fetchone()
        where = "operation_id = ? AND state = 'failed'"
        params: list = [op_id]
        if task_id is not None:
            where += " AND id = ?"
            params.append(task_id)
        failed = [r[0] for r in conn.execute(f"SELECT id FROM tasks WHERE {where}", params)]
        if not failed:
            return 0
        for tid in failed:
            conn.execute("UPDATE tasks SET state = 'queued', attempts = 0, run_after = ?, "
                         "wait_deadline = NULL, finished_at = NULL, last_error = NULL WHERE id = ?",
                         (at, tid))
        conn.execute(
            """UPDATE tasks SET state = 'pending', finished_at = NULL, last_error = NULL,
                   deps_left = (SELECT count(*) FROM task_deps d JOIN tasks t2 ON t2.id = d.depends_on
                                 WHERE d.task_id = tasks.id AND t2.state != 'done')
                WHERE operation_id = ? AND state = 'cancelled' AND superseded = 0
                  AND last_error LIKE 'cancelled: %'""", (op_id,))
        conn.execute("UPDATE tasks SET state = 'queued', run_after = ? WHERE operation_id = ? "
                     "AND state = 'pending' AND deps_left = 0", (at, op_id))
        conn.execute("UPDATE operations SET state = 'running', error = NULL, finished_at = NULL "
                     "WHERE id = ?", (op_id,))
        state = RUNNING_SERVICE_STATE.get(op["kind"]) or op["resume_state"] or "active"
        conn.execute("UPDATE services SET state = ?, error = NULL, updated_at = ? "
                     "WHERE id = ?", (state, at, service_id))
        store.add_event(conn, service_id, f"Retrying {len(failed)} failed step(s)", at=at)
    return len(failed)
