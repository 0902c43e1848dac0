"""Read models: the status payload, task and service listings, as plain dicts.

These dicts ARE the `--json` documents of the contract, and the rich views in render.py draw
from the same dicts, so text and JSON can never disagree. Only the store is imported: the
splash page polls `status --json` every few seconds.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from typing import Optional

from puqdeploy import store
from puqdeploy.errors import NotFoundError

ACTIVITY_LIMIT = 20


def iso(ts: Optional[float]) -> Optional[str]:
    """ISO 8601 UTC with a Z, to the second, as the contract shows."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _duration(row) -> Optional[float]:
    if row["started_at"] is None:
        return None
    end = row["finished_at"] if row["finished_at"] is not None else (
        store.now() if row["state"] == "running" else None)
    return None if end is None else round(max(0.0, end - row["started_at"]), 3)


def task_dict(row) -> dict:
    """One task as the contract's `tasks[]` entry (plus internal ids for operators)."""
    return {
        "id": row["id"], "action": row["action"], "label": row["label"], "node": row["node"],
        "state": row["state"], "attempts": row["attempts"], "max_attempts": row["max_attempts"],
        "run_after": iso(row["run_after"]), "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]), "duration_s": _duration(row),
        "result": row["result"], "last_error": row["last_error"] if row["state"] != "done" else None,
        "blocking": bool(row["blocking"]),
    }


def _service_row(conn: sqlite3.Connection, service_id: str):
    row = conn.execute("SELECT id, product, mode, domain, state, operation_id, placement, error "
                       "FROM services WHERE id = ?", (service_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"service {service_id} not found")
    return row


def private_aliases(config) -> dict[str, str]:
    """Node name -> what customers see instead, for nodes the operator marked `private`."""
    return {name: "/".join(sorted(node.roles)).replace("dns", "DNS") + " server"
            for name, node in config.nodes.items() if getattr(node, "private", False)}


def _mask(text, aliases: dict[str, str]):
    if not text or not aliases or not isinstance(text, str):
        return text
    for name, alias in aliases.items():
        text = re.sub(rf"\b{re.escape(name)}\b", alias, text)
    return text


def _masked(payload: dict, aliases: dict[str, str]) -> dict:
    """The payload with private node names replaced everywhere a customer could read them."""
    if not aliases:
        return payload
    placement = payload["placement"]
    payload["placement"] = {role: ([_mask(n, aliases) for n in v] if isinstance(v, list)
                                   else _mask(v, aliases)) for role, v in placement.items()}
    for task in payload["tasks"]:
        for key in ("node", "label", "result", "last_error"):
            task[key] = _mask(task[key], aliases)
    for item in payload["activity"]:
        item["message"] = _mask(item["message"], aliases)
    payload["error"] = _mask(payload["error"], aliases)
    return payload


def status(conn: sqlite3.Connection, service_id: str,
           private: Optional[dict[str, str]] = None) -> dict:
    """The contract's `status --json` payload for one service (the customer's view: nodes the
    operator marked private appear by role, see `private_aliases`)."""
    with store.read(conn):
        svc = _service_row(conn, service_id)
        op = conn.execute("SELECT kind FROM operations WHERE id = ?", (svc["operation_id"],)).fetchone()
        tasks = conn.execute("SELECT * FROM tasks WHERE operation_id = ? ORDER BY seq",
                             (svc["operation_id"],)).fetchall()
        events = conn.execute("SELECT at, message FROM events WHERE service_id = ? "
                              "ORDER BY id DESC LIMIT ?", (service_id, ACTIVITY_LIMIT)).fetchall()
    blocking = [t for t in tasks if t["blocking"]]
    done = sum(1 for t in blocking if t["state"] == "done")
    total = len(blocking)
    return _masked({
        "service_id": svc["id"], "product": svc["product"], "mode": svc["mode"],
        "domain": svc["domain"], "state": svc["state"],
        "operation": op["kind"] if op else None,
        "progress": {"done": done, "total": total,
                     "percent": round(100 * done / total) if total else 100},
        "error": svc["error"],
        "placement": json.loads(svc["placement"]),
        "tasks": [task_dict(t) for t in tasks],
        "activity": [{"at": iso(e["at"]), "message": e["message"]} for e in reversed(events)],
    }, private or {})


def history(conn: sqlite3.Connection, service_id: str, limit: int = 5) -> list[dict]:
    """Earlier operations of a service (newest first) with their tasks, for the operator's
    timeline: a redeploy shows the superseded plan under the fresh one."""
    ops = conn.execute(
        "SELECT o.id, o.kind, o.state, o.created_at, o.finished_at, o.error FROM operations o "
        "JOIN services s ON s.id = o.service_id WHERE o.service_id = ? AND o.id != s.operation_id "
        "ORDER BY o.id DESC LIMIT ?", (service_id, limit)).fetchall()
    out = []
    for op in ops:
        rows = conn.execute("SELECT * FROM tasks WHERE operation_id = ? ORDER BY seq", (op["id"],))
        out.append({"operation_id": op["id"], "kind": op["kind"], "state": op["state"],
                    "created_at": iso(op["created_at"]), "finished_at": iso(op["finished_at"]),
                    "error": op["error"], "tasks": [task_dict(r) for r in rows]})
    return out


def tasks(conn: sqlite3.Connection, service_id: Optional[str] = None,
          state: Optional[str] = None, limit: int = 1000) -> list[dict]:
    """Tasks of one service (all operations, plan order) or across services by state."""
    where, params = [], []
    if service_id is not None:
        _service_row(conn, service_id)
        where.append("service_id = ?")
        params.append(service_id)
    if state is not None:
        where.append("state = ?")
        params.append(state)
    sql = "SELECT * FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY operation_id, seq" if service_id else " ORDER BY id DESC"
    rows = conn.execute(sql + " LIMIT ?", (*params, limit)).fetchall()
    out = []
    for row in rows:
        item = task_dict(row)
        item["service_id"] = row["service_id"]
        item["operation_id"] = row["operation_id"]
        item["superseded"] = bool(row["superseded"])
        out.append(item)
    return out


def services(conn: sqlite3.Connection, state: Optional[str] = None, limit: int = 1000) -> dict:
    """Services (newest first) and the count per state."""
    counts = {row[0]: row[1] for row in conn.execute(
        "SELECT state, count(*) FROM services GROUP BY state")}
    sql = "SELECT id, product, mode, domain, state, error, created_at FROM services"
    params: list = []
    if state is not None:
        sql += " WHERE state = ?"
        params.append(state)
    rows = conn.execute(sql + " ORDER BY created_at DESC LIMIT ?", (*params, limit)).fetchall()
    return {
        "counts": counts,
        "services": [{"service_id": r["id"], "product": r["product"], "mode": r["mode"],
                      "domain": r["domain"], "state": r["state"], "error": r["error"],
                      "created_at": iso(r["created_at"])} for r in rows],
    }


def attempt_log(conn: sqlite3.Connection, task_id: int, attempt: Optional[int] = None,
                after_id: int = 0) -> dict:
    """An attempt's log lines (the latest attempt unless `attempt` is given)."""
    if conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
        raise NotFoundError(f"task {task_id} not found")
    if attempt is None:
        row = conn.execute("SELECT * FROM attempts WHERE task_id = ? ORDER BY number DESC LIMIT 1",
                           (task_id,)).fetchone()
    else:
        row = conn.execute("SELECT * FROM attempts WHERE task_id = ? AND number = ?",
                           (task_id, attempt)).fetchone()
    if row is None:
        raise NotFoundError(f"task {task_id} has no attempt {attempt if attempt else 'yet'}")
    lines = conn.execute("SELECT id, at, stream, line FROM attempt_logs WHERE attempt_id = ? "
                         "AND id > ? ORDER BY id", (row["id"], after_id)).fetchall()
    return {
        "task_id": task_id, "attempt": row["number"], "runner_id": row["runner_id"],
        "started_at": iso(row["started_at"]), "ended_at": iso(row["ended_at"]),
        "outcome": row["outcome"], "error": row["error"],
        "lines": [{"id": r["id"], "at": iso(r["at"]), "stream": r["stream"], "line": r["line"]}
                  for r in lines],
    }
