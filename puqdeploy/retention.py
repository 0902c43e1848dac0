"""`puqdeploy prune`: forget old history, never the present.

What goes: tasks (with their attempts and command logs) of operations that ended before the
cut-off, and activity events older than it. Operations that ended in a terminal failure have a
longer cut-off (post-mortems, tickets). What always stays: every service row, the current
operation of every service (its status page must keep working), and anything still open.
"""

from __future__ import annotations

import re
import sqlite3
from puqdeploy.frozen import frozen

from puqdeploy import store
from puqdeploy.errors import UsageError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w` or a bare number of days -> seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise UsageError(f"bad duration {text!r}: use e.g. 30d, 12h, 90m, 2w")
    return float(match.group(1)) * _UNIT[match.group(2)]


@frozen
class PruneResult:
    operations: int
    tasks: int
    attempts: int
    log_lines: int
    events: int


def prune(conn: sqlite3.Connection, finished_seconds: float, failed_seconds: float,
          at: float | None = None) -> PruneResult:
    """Delete history beyond retention in one transaction (see the module docstring)."""
    at = store.now() if at is None else at
    finished_cut, failed_cut = at - finished_seconds, at - max(failed_seconds, finished_seconds)
    with store.write(conn):
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS prune_ops (id INTEGER PRIMARY KEY)")
        conn.execute("DELETE FROM prune_ops")
        conn.execute(
            """INSERT INTO prune_ops (id)
               SELECT o.id FROM operations o
                WHERE o.finished_at IS NOT NULL
                  AND o.id NOT IN (SELECT operation_id FROM services WHERE operation_id IS NOT NULL)
                  AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.operation_id = o.id
                                  AND t.state IN ('pending', 'queued', 'running', 'waiting'))
                  AND o.finished_at < CASE WHEN o.state = 'error' THEN :failed ELSE :finished END""",
            {"failed": failed_cut, "finished": finished_cut})
        counts = conn.execute(
            """SELECT (SELECT count(*) FROM prune_ops),
                      (SELECT count(*) FROM tasks WHERE operation_id IN (SELECT id FROM prune_ops)),
                      (SELECT count(*) FROM attempts WHERE task_id IN
                           (SELECT id FROM tasks WHERE operation_id IN (SELECT id FROM prune_ops))),
                      (SELECT count(*) FROM attempt_logs WHERE attempt_id IN
                           (SELECT a.id FROM attempts a JOIN tasks t ON t.id = a.task_id
                             WHERE t.operation_id IN (SELECT id FROM prune_ops)))""").fetchone()
        # foreign keys cascade: attempts and their log lines go with their tasks
        conn.execute("DELETE FROM task_deps WHERE task_id IN (SELECT id FROM tasks WHERE "
                     "operation_id IN (SELECT id FROM prune_ops))")
        conn.execute("DELETE FROM tasks WHERE operation_id IN (SELECT id FROM prune_ops)")
        conn.execute("DELETE FROM operations WHERE id IN (SELECT id FROM prune_ops)")
        events = conn.execute(
            """DELETE FROM events WHERE at < :finished AND NOT (
                   level = 'error' AND at >= :failed)""",
            {"finished": finished_cut, "failed": failed_cut}).rowcount
    return PruneResult(counts[0], counts[1], counts[2], counts[3], events)
