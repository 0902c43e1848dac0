"""Queue throughput: N no-op tasks through puqdeploy, Huey, litequeue and a raw SQL loop.

Every contender runs in its own process, on its own fresh database file in the same folder,
with WAL and `synchronous=FULL` (an fsync per commit), one after the other in the same run:

- **puqdeploy**: `puqdeploy --config CFG run --budget 600` drains N `test.noop` tasks (node
  NULL: no per-node limit) with everything a real task gets: lease + token (fencing), one
  attempt row per attempt, the attempt's log lines, the outcome, the DAG/operation bookkeeping,
  FULL sync. Wall time of the whole process (interpreter start included); peak RSS of that
  process (GNU time's %M, see `drain_puqdeploy`) is the memory figure.
- **Huey** (`SqliteHuey(fsync=True)`: huey's own switch, it runs `PRAGMA synchronous=2`, i.e.
  FULL, on its connection; journal_mode WAL is its default): N no-op tasks enqueued, then a
  `Consumer(workers=1, worker_type='thread')` drains them; drain = consumer start until the
  N-th task body ran. Huey deletes a task when it dequeues it (at-most-once, no lease, no ack,
  no attempt history).
- **litequeue**: `put` N, then `pop` + `done` until empty. litequeue sets
  `PRAGMA synchronous = NORMAL` in its constructor; we set `PRAGMA synchronous = FULL` on its
  connection right after (the pragma is per connection).
- **raw SQL ceiling**: the least a leased queue must do at FULL — per task `BEGIN IMMEDIATE;
  UPDATE ... RETURNING` (claim one, bump the token) `; COMMIT`, then `BEGIN IMMEDIATE; UPDATE`
  (fenced ack) `; COMMIT`: two fsyncs per task. Also a batched variant (claim 100 / ack 100 per
  transaction) to show what grouping commits buys.

Run as `python -m bench.throughput huey|litequeue|raw|rawbatch DB N` for one contender (this
is how run.py starts them); prints one JSON line.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path


def _fresh(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


# --------------------------------------------------------------------------- contenders (child side)


def huey_child(db: Path, n: int) -> dict:
    import logging

    from huey import SqliteHuey
    from huey.consumer import Consumer

    logging.getLogger("huey").setLevel(logging.ERROR)
    _fresh(db)
    huey = SqliteHuey("bench", filename=str(db), fsync=True, journal_mode="wal")
    done = threading.Event()
    count = [0]

    @huey.task()
    def noop():
        count[0] += 1
        if count[0] >= n:
            done.set()

    sync = huey.storage.conn.execute("PRAGMA synchronous").fetchone()[0]
    journal = huey.storage.conn.execute("PRAGMA journal_mode").fetchone()[0]
    started = time.perf_counter()
    for _ in range(n):
        noop()
    enqueue = time.perf_counter() - started
    consumer = Consumer(huey, workers=1, worker_type="thread", periodic=False,
                        initial_delay=0.01, backoff=1.15, max_delay=0.1,
                        check_worker_health=False)
    started = time.perf_counter()
    consumer.start()
    done.wait(3600)
    drain = time.perf_counter() - started
    consumer.stop(graceful=True)
    return {"enqueue_s": enqueue, "drain_s": drain, "tasks": count[0], "synchronous": sync,
            "journal_mode": journal}


def litequeue_child(db: Path, n: int) -> dict:
    from litequeue import LiteQueue

    _fresh(db)
    q = LiteQueue(str(db))
    q.conn.execute("PRAGMA synchronous = FULL")  # litequeue itself sets NORMAL
    sync = q.conn.execute("PRAGMA synchronous").fetchone()[0]
    journal = q.conn.execute("PRAGMA journal_mode").fetchone()[0]
    started = time.perf_counter()
    for i in range(n):
        q.put(str(i))
    enqueue = time.perf_counter() - started
    started = time.perf_counter()
    count = 0
    while True:
        message = q.pop()
        if message is None:
            break
        q.done(message.message_id)
        count += 1
    drain = time.perf_counter() - started
    return {"enqueue_s": enqueue, "drain_s": drain, "tasks": count, "synchronous": sync,
            "journal_mode": journal}


_RAW_SCHEMA = """
CREATE TABLE q (id INTEGER PRIMARY KEY, state TEXT NOT NULL, run_after REAL NOT NULL,
                lease_owner TEXT, lease_token INTEGER NOT NULL DEFAULT 0, lease_expires REAL,
                attempts INTEGER NOT NULL DEFAULT 0, finished_at REAL);
CREATE INDEX q_due ON q(run_after, id) WHERE state = 'queued';
"""


def _raw_db(db: Path, n: int) -> sqlite3.Connection:
    _fresh(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(_RAW_SCHEMA)
    now = time.time() - 1
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO q (state, run_after) VALUES ('queued', ?)", [(now,)] * n)
    conn.execute("COMMIT")
    return conn


def raw_child(db: Path, n: int, batch: int = 1) -> dict:
    conn = _raw_db(db, n)
    owner = f"bench:{os.getpid()}"
    claim = ("UPDATE q SET state = 'running', lease_owner = :owner, lease_token = lease_token + 1, "
             "lease_expires = :exp, attempts = attempts + 1 WHERE id IN (SELECT id FROM q "
             "WHERE state = 'queued' AND run_after <= :now ORDER BY run_after, id LIMIT :lim) "
             "RETURNING id, lease_token")
    ack = ("UPDATE q SET state = 'done', lease_owner = NULL, lease_expires = NULL, finished_at = ? "
           "WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_token = ?")
    count = 0
    started = time.perf_counter()
    while True:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(claim, {"owner": owner, "exp": now + 300, "now": now, "lim": batch}).fetchall()
        conn.execute("COMMIT")
        if not rows:
            break
        conn.execute("BEGIN IMMEDIATE")
        for task_id, token in rows:
            count += conn.execute(ack, (time.time(), task_id, owner, token)).rowcount
        conn.execute("COMMIT")
    drain = time.perf_counter() - started
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return {"drain_s": drain, "tasks": count, "synchronous": sync, "batch": batch,
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0]}


def _child_main(argv: list[str]) -> None:
    kind, db, n = argv[0], Path(argv[1]), int(argv[2])
    if kind == "huey":
        result = huey_child(db, n)
    elif kind == "litequeue":
        result = litequeue_child(db, n)
    elif kind == "raw":
        result = raw_child(db, n, 1)
    elif kind == "rawbatch":
        result = raw_child(db, n, 100)
    else:
        raise SystemExit(f"unknown contender {kind}")
    print(json.dumps(result))


# --------------------------------------------------------------------------- driver side


def run_child(kind: str, db: Path, n: int, env: dict) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "bench.throughput", kind, str(db), str(n)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


_SUMMARY = re.compile(r"leased (\d+), done (\d+).* in ([\d.]+) s")


def drain_puqdeploy(script: Path, config_path: Path, env: dict, db: Path, n: int,
                    profile: str | None = None) -> dict:
    """One `puqdeploy run` draining the no-op database: wall time, peak RSS, what it kept.

    Peak RSS comes from GNU time (`/usr/bin/time -f %M`): a small process that fork()s and
    exec()s the drain. Measuring it from this driver with wait4/getrusage would be wrong on
    Linux: subprocess starts children with vfork, and the kernel carries the parent's RSS high
    water mark over the exec, so the child would "peak" at whatever this driver holds.
    Without GNU time, /proc/PID/status VmHWM is polled every 20 ms instead (said in the result).
    """
    import shutil as _shutil

    argv = [str(script), "--config", str(config_path), "run", "--budget", "600"]
    if profile:
        argv = [sys.executable, "-m", "pyinstrument", "-o", profile, "-r", "text", *argv]
    rss_file = Path(f"{db}.maxrss")
    gnu_time = _shutil.which("time", path="/usr/bin:/bin")
    if gnu_time:
        argv = [gnu_time, "-f", "%M", "-o", str(rss_file), *argv]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hwm = [0]
    if not gnu_time:
        def poll() -> None:
            while proc.poll() is None:
                try:
                    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            hwm[0] = max(hwm[0], int(line.split()[1]))
                except OSError:
                    pass
                time.sleep(0.02)
        threading.Thread(target=poll, daemon=True).start()
    err = proc.stderr.read().decode(errors="replace")
    rc = proc.wait()
    wall = time.perf_counter() - started
    max_rss_kib = hwm[0]
    if gnu_time and rss_file.exists():
        numbers = [line for line in rss_file.read_text().split() if line.isdigit()]
        max_rss_kib = int(numbers[-1]) if numbers else 0
    lines = [line for line in err.strip().splitlines() if line.startswith(("puqdeploy run:", "Error:"))]
    match = _SUMMARY.search(err)
    conn = sqlite3.connect(db)
    states = dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
    attempts = conn.execute("SELECT count(*) FROM attempts").fetchone()[0]
    tokens = dict(conn.execute("SELECT lease_token, count(*) FROM tasks GROUP BY lease_token").fetchall())
    logs = conn.execute("SELECT count(*) FROM attempt_logs").fetchone()[0]
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    return {"wall_s": wall, "exit": rc, "tick_s": float(match.group(3)) if match else None,
            "done": states.get("done", 0), "states": states, "attempt_rows": attempts,
            "lease_tokens": tokens, "log_lines": logs, "journal_mode": journal,
            "max_rss_mib": max_rss_kib / 1024, "rss_source": "GNU time %M" if gnu_time else "VmHWM polling",
            "summary": " / ".join(lines) or err.strip()[-300:]}


if __name__ == "__main__":
    _child_main(sys.argv[1:])
