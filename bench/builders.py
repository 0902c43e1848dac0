"""Databases the benchmarks run against, built with puqdeploy's own code wherever that is fast
enough, so they follow the schema as it evolves:

- `template_db`: N real Split services created with `orders.create_service` and deployed by
  real `puqdeploy run` ticks on the sandbox fleet (every row — tasks, attempts, attempt logs,
  events — written by puqdeploy itself); two thirds of them redeployed once more (history:
  superseded tasks), so a service averages 10 tasks. A few services queued for later are added
  by `add_future_services` (nothing is due, but the due index is not empty).
- `multiply_db`: the template copied K times in bulk SQL (one INSERT ... SELECT per table,
  columns read from the schema, ids shifted per copy) — 100,000 services / 1,000,000 tasks
  in about a minute instead of hours.
- `noop_db`: one service whose current operation holds N `test.noop` tasks (node NULL, so no
  per-node limit), all due now: the queue-throughput drain.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Callable

from bench.common import copy_db, init_db


def _store():
    from puqdeploy import store

    return store


def _config(config_path: Path):
    from puqdeploy.config import load_config

    return load_config(str(config_path))


def _box(config):
    from puqdeploy.secretbox import SecretBox

    return SecretBox.from_file(config.key_file)


def remove_db(path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def create_services(config_path: Path, ids: list[str], *, product: str = "sandbox-split",
                    synchronous: str = "FULL") -> None:
    """`create` in-process (the same function the CLI calls) for each id; domain = ID.test."""
    from puqdeploy import orders

    config = _config(config_path)
    box = _box(config)
    conn = _store().connect(config.database, synchronous=synchronous)
    try:
        for sid in ids:
            orders.create_service(conn, config, box, service_id=sid, product=product,
                                  domain=f"{sid}.test")
    finally:
        conn.close()


def run_tick(python: str, script: Path, config_path: Path, env: dict, budget: float = 3600) -> str:
    proc = subprocess.run([str(script), "--config", str(config_path), "run", "--budget", str(budget)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"puqdeploy run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stderr.strip()


def template_db(python: str, script: Path, config_path: Path, env: dict, services: int,
                log: Callable[[str], None]) -> dict:
    """Deploy `services` Split services for real on the sandbox (see module docstring)."""
    from puqdeploy import orders

    remove_db(_config(config_path).database)
    init_db(python, config_path, env)
    ids = [f"sb{i:05d}" for i in range(services)]
    started = time.monotonic()
    create_services(config_path, ids)
    first = run_tick(python, script, config_path, env)
    config = _config(config_path)
    conn = _store().open_store(config.database)
    try:
        for sid in ids[: services * 2 // 3]:
            orders.redeploy(conn, config, sid)
    finally:
        conn.close()
    second = run_tick(python, script, config_path, env)
    conn = sqlite3.connect(config.database)
    states = dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
    svc = dict(conn.execute("SELECT state, count(*) FROM services GROUP BY state").fetchall())
    conn.close()
    open_left = sum(n for s, n in states.items() if s not in ("done", "cancelled"))
    if open_left:
        raise RuntimeError(f"template deploy left open tasks: {states} (ticks: {first} / {second})")
    log(f"template: {services} services deployed for real in {time.monotonic() - started:.1f} s "
        f"({first}; then redeploys: {second})")
    return {"task_states": states, "service_states": svc}


def add_future_services(config_path: Path, db: Path, count: int = 5, prefix: str = "later") -> None:
    """`count` freshly created services whose queued tasks are due only tomorrow (a back-off):
    an idle tick must find nothing due although the due index is not empty."""
    from bench.common import config_variant

    variant = config_variant(config_path, f".future-{db.stem}.yaml", database=db.name)
    create_services(variant, [f"{prefix}{i}" for i in range(count)])
    variant.unlink()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE tasks SET run_after = ?, last_error = 'bench: retry tomorrow' "
                 "WHERE state IN ('queued', 'waiting')", (time.time() + 86400,))
    conn.close()


# --------------------------------------------------------------------------- multiplication

# How each id-like column is shifted in copy k; other columns are copied unchanged.
# {o} is replaced by the table's id offset, {k} by the copy number (a SQL column).
_SHIFT = {
    "services": {"id": "s.id || '-c' || k.n", "domain": "'c' || k.n || '-' || s.domain",
                 "operation_id": "s.operation_id + k.n * {op}"},
    "usernames": {"username": "s.username || 'c' || k.n", "service_id": "s.service_id || '-c' || k.n"},
    "operations": {"id": "s.id + k.n * {op}", "service_id": "s.service_id || '-c' || k.n"},
    "tasks": {"id": "s.id + k.n * {task}", "service_id": "s.service_id || '-c' || k.n",
              "operation_id": "s.operation_id + k.n * {op}"},
    "task_deps": {"task_id": "s.task_id + k.n * {task}", "depends_on": "s.depends_on + k.n * {task}"},
    "attempts": {"id": "s.id + k.n * {att}", "task_id": "s.task_id + k.n * {task}"},
    "attempt_logs": {"id": "s.id + k.n * {log}", "attempt_id": "s.attempt_id + k.n * {att}"},
    "events": {"id": "s.id + k.n * {ev}", "service_id": "s.service_id || '-c' || k.n",
               "task_id": "s.task_id + k.n * {task}"},
}
_OFFSET_OF = {"op": "operations", "task": "tasks", "att": "attempts", "log": "attempt_logs",
              "ev": "events"}


def multiply_db(template: Path, target: Path, copies: int, log: Callable[[str], None],
                with_logs: bool = True) -> dict:
    """`target` = the template plus `copies - 1` shifted copies of every row (bulk SQL).

    Built with synchronous=OFF and an in-memory rollback journal in ONE transaction (the build
    only; every measured command opens the result with puqdeploy's own pragmas: WAL, FULL).
    Tables this code does not know are left as in the template (and reported).
    """
    copy_db(template, target)
    started = time.monotonic()
    conn = sqlite3.connect(target, isolation_level=None)
    conn.execute("PRAGMA journal_mode = MEMORY")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute(f"ATTACH DATABASE '{template}' AS tpl")
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM tpl.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    offsets = {}
    for key, table in _OFFSET_OF.items():
        offsets[key] = (conn.execute(f"SELECT coalesce(max(id), 0) FROM tpl.{table}").fetchone()[0] or 0) + 1
    skipped = []
    counts = {}
    conn.execute("BEGIN")
    for table in tables:
        if table not in _SHIFT or (table == "attempt_logs" and not with_logs):
            skipped.append(table)
            continue
        cols = [r[1] for r in conn.execute(f"PRAGMA tpl.table_info({table})")]
        exprs = [(_SHIFT[table].get(c) or f"s.{c}").format(**offsets) for c in cols]
        conn.execute(
            f"WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < {copies - 1}) "
            f"INSERT INTO main.{table} ({', '.join(cols)}) "
            f"SELECT {', '.join(exprs)} FROM k CROSS JOIN tpl.{table} AS s ORDER BY k.n")
        counts[table] = conn.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0]
    if "node_load" in tables:
        conn.execute("UPDATE main.node_load SET services = services * ?", (copies,))
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE tpl")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    size = target.stat().st_size
    skipped = [t for t in skipped if t != "node_load"]  # scaled above
    log(f"multiplied x{copies}: {counts.get('services', 0):,} services, {counts.get('tasks', 0):,} tasks, "
        f"{counts.get('attempts', 0):,} attempts, {counts.get('events', 0):,} events"
        + (f", {counts['attempt_logs']:,} log lines" if "attempt_logs" in counts else "")
        + f", {size / 2**20:.0f} MiB in {time.monotonic() - started:.1f} s"
        + (f" (copied once, not multiplied: {', '.join(skipped)})" if skipped else ""))
    return {"counts": counts, "bytes": size, "skipped_tables": skipped}


# --------------------------------------------------------------------------- the drain database


def noop_db(python: str, config_path: Path, env: dict, tasks: int, services: int = 1) -> dict:
    """`services` services whose current operation holds tasks//services `test.noop` tasks each.

    Each service is created by `orders.create_service` (valid rows whatever the schema holds);
    its deploy tasks are then replaced by no-op tasks in the same operation, all due now.
    """
    remove_db(_config(config_path).database)
    init_db(python, config_path, env)
    ids = [f"noop{i:05d}" for i in range(services)]
    create_services(config_path, ids)
    config = _config(config_path)
    conn = sqlite3.connect(config.database, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    now = time.time() - 1
    per = tasks // services
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM task_deps")
    conn.execute("DELETE FROM tasks")
    rows = []
    for sid in ids:
        op = conn.execute("SELECT operation_id FROM services WHERE id = ?", (sid,)).fetchone()[0]
        rows += [(sid, op, seq, "test.noop", f"No-op {seq}", None, "{}", 1, "queued", 0,
                  config.retry.max_attempts, now, now) for seq in range(per)]
    conn.executemany(
        "INSERT INTO tasks (service_id, operation_id, seq, action, label, node, args, blocking, "
        "state, deps_left, max_attempts, run_after, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"tasks": len(rows), "services": services}
