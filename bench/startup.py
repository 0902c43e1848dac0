"""The short commands a billing hook, cron and a splash page run, against the floor, and the same
commands on a small and a big database (the scale figure).

The floor is `python -c "import click, yaml, sqlite3"`: the interpreter plus the libraries no
puqdeploy command can avoid. Every command is the console script pip would write
(`puqdeploy ...`), a whole process from fork to exit, timed round-robin with the floor.

Diagnostics (printed, not goals): which modules each command imports beyond the floor (from
`-X importtime`, self time per module), where the rest of its time goes (`phases`, run in a
fresh child: imports, config, store, query, output), and the query plan of every statement the
idle tick, `status`, the claim and a task completion run (captured with sqlite3's trace
callback, then `EXPLAIN QUERY PLAN`), with their time on the small and the big database.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

# What each command must not import (its path does not need it). The idle tick's rule is the
# issue's: "nothing but the store is imported when nothing is due" (the CLI and the config, which
# names the database, are unavoidable).
NEVER = ("paramiko", "rich", "dns", "puqdeploy.runner", "puqdeploy.ssh_transport",
         "puqdeploy.render", "puqdeploy.steps", "puqdeploy.hestia", "puqdeploy.remote")
NOT_FOR = {
    "create": NEVER + ("puqdeploy.views",),
    "status": NEVER + ("cryptography", "puqdeploy.orders", "puqdeploy.pipeline", "puqdeploy.queue",
                       "puqdeploy.outcomes", "puqdeploy.secretbox"),
    "idle": NEVER + ("cryptography", "puqdeploy.orders", "puqdeploy.pipeline", "puqdeploy.queue",
                     "puqdeploy.outcomes", "puqdeploy.secretbox", "puqdeploy.views"),
}

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def imports(argv: list[str], env: dict) -> dict[str, tuple[int, int]]:
    """module -> (self µs, cumulative µs) for one run of argv under `-X importtime`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, capture_output=True,
                          text=True)
    found = {}
    for line in proc.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            found[m.group(4)] = (int(m.group(1)), int(m.group(2)))
    return found


def import_report(name: str, argv: list[str], floor: dict, env: dict) -> tuple[list[str], dict]:
    mods = imports(argv, env)
    extra = {m: v for m, v in mods.items() if m not in floor}
    extra_us = sum(v[0] for v in extra.values())
    banned = NOT_FOR.get(name, NEVER)
    unwanted = sorted(m for m in mods if any(m == b or m.startswith(b + ".") for b in banned))
    # collapse packages: "cryptography (19 modules)"
    shown: dict[str, int] = {}
    for m in unwanted:
        top = next(b for b in banned if m == b or m.startswith(b + "."))
        shown[top] = shown.get(top, 0) + 1
    ours = sorted(m for m in mods if m.startswith("puqdeploy"))
    top = sorted(extra.items(), key=lambda kv: -kv[1][0])[:12]
    lines = [f"{name}: {len(mods)} modules ({len(extra)} beyond the floor, their own import time "
             f"{extra_us / 1000:.1f} ms under -X importtime); puqdeploy modules: {', '.join(ours) or '-'}",
             "    imported although this path does not need them: "
             + (", ".join(f"{k} ({v} modules)" if v > 1 else k for k, v in shown.items()) or "none"),
             "    biggest beyond the floor (self ms): "
             + ", ".join(f"{m} {v[0] / 1000:.1f}" for m, v in top)]
    return lines, {"modules": len(mods), "extra_modules": len(extra), "extra_self_ms": extra_us / 1000,
                   "puqdeploy_modules": ours, "unwanted": sorted(shown)}


# --------------------------------------------------------------------------- phases (child side)


def _phases_child(kind: str, config_path: str, service_id: str) -> dict:
    t0 = time.perf_counter()
    import click  # noqa: F401  (the floor's part)
    import yaml  # noqa: F401
    t_floor = time.perf_counter()
    import puqdeploy.cli  # noqa: F401
    t_cli = time.perf_counter()
    from puqdeploy.config import load_config
    t_cfg_import = time.perf_counter()
    config = load_config(config_path)
    t_cfg = time.perf_counter()
    from puqdeploy import store
    conn = store.open_store(config.database)
    t_open = time.perf_counter()
    if kind == "status":
        from puqdeploy import views
        t_imp = time.perf_counter()
        payload = views.status(conn, service_id)
        t_work = time.perf_counter()
        json.dumps(payload, indent=2)
    elif kind == "idle":
        t_imp = time.perf_counter()
        store.has_due(conn) or store.has_expired(conn)
        t_work = time.perf_counter()
    else:  # create
        from puqdeploy import orders
        from puqdeploy.secretbox import SecretBox
        t_imp = time.perf_counter()
        orders.create_service(conn, config, SecretBox.from_file(config.key_file),
                              service_id=service_id, product="sandbox-split",
                              domain=f"{service_id}.test")
        t_work = time.perf_counter()
    t_end = time.perf_counter()
    ms = lambda a, b: round((b - a) * 1000, 2)  # noqa: E731
    return {"floor imports": ms(t0, t_floor), "puqdeploy.cli import": ms(t_floor, t_cli),
            "config import": ms(t_cli, t_cfg_import), "load_config": ms(t_cfg_import, t_cfg),
            "open_store": ms(t_cfg, t_open), "command imports": ms(t_open, t_imp),
            "work (queries/commit)": ms(t_imp, t_work), "output": ms(t_work, t_end)}


def phases(kind: str, config_path: Path, service_id: str, env: dict, runs: int = 5) -> dict:
    """Median per phase over `runs` fresh child processes."""
    import statistics

    samples: dict[str, list[float]] = {}
    for i in range(runs):
        sid = f"{service_id}{i}" if kind == "create" else service_id
        out = subprocess.run([sys.executable, "-m", "bench.startup", kind, str(config_path), sid],
                             env=env, capture_output=True, text=True, check=True).stdout
        for k, v in json.loads(out).items():
            samples.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in samples.items()}


# --------------------------------------------------------------------------- query plans


CTE_OR_VIRTUAL = ("json_each", "(subquery", "lim", "busy", "due", "downstream", "k ")


def _partial_indexes(conn) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '% WHERE %'")}


def _flag(detail: str, partial: set[str]) -> str:
    if not detail.startswith("SCAN ") or "VIRTUAL TABLE" in detail:
        return ""
    target = detail[5:]
    if any(target.startswith(c) for c in CTE_OR_VIRTUAL):
        return ""
    m = re.search(r"USING (?:COVERING )?INDEX (\S+)", detail)
    if m and m.group(1) in partial:
        return "   (partial index: only matching rows)"
    return "   <-- FULL SCAN" + (" (of an index)" if m else "")


def explain(conn, sql: str, params=()) -> list[str]:
    partial = _partial_indexes(conn)
    rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    depth = {0: 0}
    out = []
    for node_id, parent, _, detail in rows:
        depth[node_id] = depth.get(parent, 0) + 1
        out.append("  " * depth[node_id] + detail + _flag(detail, partial))
    return out


def _traced(conn, fn) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        fn()
    finally:
        conn.set_trace_callback(None)
    return [s for s in seen if not re.match(r"\s*(BEGIN|COMMIT|ROLLBACK|PRAGMA|SAVEPOINT|RELEASE)", s, re.I)]


def _distinct(statements: list[str]) -> list[str]:
    """One of each statement shape (executemany traces every row; literals differ)."""
    seen: dict[str, str] = {}
    for sql in statements:
        seen.setdefault(re.sub(r"'[^']*'|\b\d+(\.\d+)?\b", "?", sql), sql)
    return list(seen.values())


def query_plans(small_db: Path, big_db: Path, small_sid: str, big_sid: str, node_limits: dict) -> tuple[list[str], dict]:
    """Plans of what the idle tick, status, the claim and a completion run; timed on both DBs."""
    from puqdeploy import queue, store, views

    def statements(db: Path, sid: str) -> dict[str, list[str]]:
        conn = store.open_store(str(db))
        op = conn.execute("SELECT operation_id FROM services WHERE id = ?", (sid,)).fetchone()[0]
        groups = {
            "idle tick: has_due": _traced(conn, lambda: store.has_due(conn)),
            "idle tick: has_expired": _traced(conn, lambda: store.has_expired(conn)),
            "status --json: views.status": _traced(conn, lambda: views.status(conn, sid)),
        }

        def a_round():
            """One grouped commit of the runner, rolled back: claim what is due (the queued
            services' first steps, due "tomorrow": the clock is moved on), then record their
            successes, which settles nothing yet and releases their dependents."""
            from puqdeploy.config import RetryConfig
            from puqdeploy.outcomes import Done

            at = time.time() + 3 * 86400
            conn.execute("BEGIN IMMEDIATE")
            try:
                leases = queue.claim_in(conn, "bench", 8, node_limits, 300, at)
                queue.finish_in(conn, [(lease, Done("created")) for lease in leases],
                                RetryConfig(), at, log_lines=[(l.attempt_id, at, "info", "x")
                                                              for l in leases])
            finally:
                conn.execute("ROLLBACK")

        groups["a runner round: claim_in + finish_in"] = _distinct(_traced(conn, a_round))
        conn.close()
        return groups

    small = statements(small_db, small_sid)
    big = statements(big_db, big_sid)
    conn_s = sqlite3.connect(small_db, isolation_level=None)
    conn_b = sqlite3.connect(big_db, isolation_level=None)
    lines: list[str] = []
    raw: dict = {}
    for group, sqls in big.items():
        lines.append(f"[{group}]")
        for i, sql in enumerate(sqls):
            small_sql = small[group][i] if i < len(small[group]) else sql
            t_small = _time_query(conn_s, small_sql)
            t_big = _time_query(conn_b, sql)
            first = " ".join(sql.split())
            lines.append(f"  {first[:150]}{' ...' if len(first) > 150 else ''}")
            lines.append(f"    time: small {t_small * 1e3:.3f} ms, big {t_big * 1e3:.3f} ms "
                         f"(x{t_big / t_small if t_small else 0:.1f})")
            lines += ["    " + p for p in explain(conn_b, sql)]
            raw.setdefault(group, []).append({"sql": first, "small_ms": t_small * 1e3, "big_ms": t_big * 1e3})
    conn_s.close()
    conn_b.close()
    return lines, raw


def _time_query(conn, sql: str, runs: int = 30) -> float:
    import statistics

    values = []
    is_select = sql.lstrip().upper().startswith(("SELECT", "WITH"))
    for _ in range(runs):
        t = time.perf_counter()
        if is_select:
            conn.execute(sql).fetchall()
        else:  # a write (e.g. settle's UPDATE): time it inside a rolled-back transaction
            conn.execute("BEGIN")
            conn.execute(sql)
            conn.execute("ROLLBACK")
        values.append(time.perf_counter() - t)
    return statistics.median(values)


if __name__ == "__main__":
    print(json.dumps(_phases_child(sys.argv[1], sys.argv[2], sys.argv[3])))
