"""SQLite storage: connections, schema migrations, and transaction helpers.

Why these settings:
- WAL lets operators and the splash page read while a tick writes.
- `synchronous=FULL` (the default here) fsyncs every commit, so an order that `create` accepted
  survives a power cut; it is configurable only for benchmarks and throwaway sandboxes.
- `busy_timeout` makes overlapping cron ticks wait for each other instead of failing.
- foreign keys keep tasks, attempts, logs and events tied to their service.
- the schema version lives in `PRAGMA user_version`; each migration and its version bump run in
  one transaction, so a crash mid-upgrade leaves the old schema intact.
- the database folder is created 0700 and the file 0600: it holds customer data.

All SQL of the project lives here and in `queue.py`, behind small functions, so a second engine
(PostgreSQL) can be added without touching the rest.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

from puqdeploy.errors import OperationalError

BUSY_TIMEOUT_MS = 30_000

MIGRATIONS: tuple[str, ...] = (
    # 1: services, operations, the task DAG, attempts, logs, events.
    """
    CREATE TABLE services (
        id            TEXT PRIMARY KEY,
        product       TEXT NOT NULL,
        mode          TEXT NOT NULL,
        domain        TEXT NOT NULL,
        state         TEXT NOT NULL,
        operation_id  INTEGER,
        params_hash   TEXT NOT NULL,
        params        TEXT NOT NULL,
        placement     TEXT NOT NULL,
        usernames     TEXT NOT NULL,
        limits        TEXT NOT NULL,
        email         TEXT NOT NULL,
        password_enc  BLOB NOT NULL,
        facts         TEXT NOT NULL DEFAULT '{}',
        error         TEXT,
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL
    );
    CREATE INDEX services_state ON services(state);
    CREATE UNIQUE INDEX services_live_domain ON services(domain) WHERE state != 'terminated';

    CREATE TABLE usernames (
        username    TEXT PRIMARY KEY,
        service_id  TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE INDEX usernames_service ON usernames(service_id);

    CREATE TABLE node_load (
        node      TEXT PRIMARY KEY,
        services  INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;

    CREATE TABLE operations (
        id           INTEGER PRIMARY KEY,
        service_id   TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        kind         TEXT NOT NULL,
        state        TEXT NOT NULL,
        created_at   REAL NOT NULL,
        finished_at  REAL,
        error        TEXT
    );
    CREATE INDEX operations_service ON operations(service_id, id);

    CREATE TABLE tasks (
        id                INTEGER PRIMARY KEY,
        service_id        TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        operation_id      INTEGER NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
        seq               INTEGER NOT NULL,
        action            TEXT NOT NULL,
        label             TEXT NOT NULL,
        node              TEXT,
        args              TEXT NOT NULL DEFAULT '{}',
        blocking          INTEGER NOT NULL DEFAULT 1,
        state             TEXT NOT NULL,
        deps_left         INTEGER NOT NULL DEFAULT 0,
        attempts          INTEGER NOT NULL DEFAULT 0,
        max_attempts      INTEGER NOT NULL,
        run_after         REAL NOT NULL,
        lease_owner       TEXT,
        lease_token       INTEGER NOT NULL DEFAULT 0,
        lease_expires     REAL,
        wait_deadline     REAL,
        cancel_requested  INTEGER NOT NULL DEFAULT 0,
        superseded        INTEGER NOT NULL DEFAULT 0,
        started_at        REAL,
        finished_at       REAL,
        result            TEXT,
        last_error        TEXT,
        created_at        REAL NOT NULL
    );
    CREATE INDEX tasks_due ON tasks(run_after, id) WHERE state IN ('queued', 'waiting');
    CREATE INDEX tasks_running ON tasks(node, lease_expires) WHERE state = 'running';
    CREATE INDEX tasks_service ON tasks(service_id, operation_id, seq);
    CREATE INDEX tasks_state ON tasks(state, service_id);

    CREATE TABLE task_deps (
        task_id     INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        depends_on  INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        PRIMARY KEY (task_id, depends_on)
    ) WITHOUT ROWID;
    CREATE INDEX task_deps_reverse ON task_deps(depends_on, task_id);

    CREATE TABLE attempts (
        id          INTEGER PRIMARY KEY,
        task_id     INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        number      INTEGER NOT NULL,
        runner_id   TEXT NOT NULL,
        started_at  REAL NOT NULL,
        ended_at    REAL,
        outcome     TEXT,
        error       TEXT,
        counted     INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX attempts_task ON attempts(task_id, number);

    CREATE TABLE attempt_logs (
        id          INTEGER PRIMARY KEY,
        attempt_id  INTEGER NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
        at          REAL NOT NULL,
        stream      TEXT NOT NULL,
        line        TEXT NOT NULL
    );
    CREATE INDEX attempt_logs_attempt ON attempt_logs(attempt_id, id);

    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        service_id  TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        task_id     INTEGER,
        at          REAL NOT NULL,
        level       TEXT NOT NULL DEFAULT 'info',
        message     TEXT NOT NULL
    );
    CREATE INDEX events_service ON events(service_id, id);
    """,
    # 2: lifecycle operations queue behind each other; a service's running tasks are found fast
    # (an operation's tasks wait while an older operation of the same service still runs one).
    """
    ALTER TABLE operations ADD COLUMN resume_state TEXT;
    ALTER TABLE operations ADD COLUMN args TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE operations ADD COLUMN ticket TEXT;
    CREATE INDEX operations_open ON operations(service_id, state) WHERE state IN ('queued', 'running');
    CREATE INDEX tasks_service_running ON tasks(service_id) WHERE state = 'running';
    CREATE INDEX tasks_operation ON tasks(operation_id, seq);
    CREATE INDEX tasks_open_blocking ON tasks(operation_id, state) WHERE blocking = 1;
    CREATE INDEX tasks_due_node ON tasks(node, id) WHERE state IN ('queued', 'waiting');
    CREATE INDEX services_created ON services(created_at);
    """,
    # 3: an order's parameters are kept once, as canonical JSON in `params` (a hash of them
    # beside it was derived state)
    """
    ALTER TABLE services DROP COLUMN params_hash;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def now() -> float:
    """Wall-clock time as stored everywhere (UNIX seconds, UTC)."""
    return time.time()


def ensure_private_file(path: str) -> None:
    """Create the database folder (0700) and an empty file (0600) before SQLite opens it.

    SQLite would create the file with the umask's mode; creating it ourselves first makes the
    permissions right from the first byte. The -wal/-shm files inherit the file's mode.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
    if not os.path.exists(path):
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    os.chmod(path, 0o600)


def connect(path: str, *, synchronous: str = "FULL", create: bool = False) -> sqlite3.Connection:
    """Open the database with the project's pragmas; autocommit mode (we issue BEGIN ourselves).

    Without `create`, a missing database is an operational error telling the operator to run
    `puqdeploy init`, instead of silently creating an empty one somewhere unexpected.
    """
    if create:
        ensure_private_file(path)
    elif not os.path.exists(path):
        raise OperationalError(f"database {path} does not exist: run `puqdeploy init` first")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise OperationalError(f"cannot open database {path}: {exc}") from exc
    return conn


def open_store(path: str, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Connect and refuse a database whose schema is older or newer than this code."""
    conn = connect(path, synchronous=synchronous)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        conn.close()
        if version < SCHEMA_VERSION:
            raise OperationalError(
                f"database {path} has schema {version}, this puqdeploy needs {SCHEMA_VERSION}: "
                "run `puqdeploy init` to migrate")
        raise OperationalError(
            f"database {path} has schema {version}, newer than this puqdeploy ({SCHEMA_VERSION})")
    return conn


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Apply pending migrations, each with its version bump in one transaction.

    Returns (version before, version after). Safe to run concurrently: BEGIN IMMEDIATE makes
    the second caller wait, then it finds nothing left to do.
    """
    before = conn.execute("PRAGMA user_version").fetchone()[0]
    current = before
    while current < SCHEMA_VERSION:
        with write(conn):
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current >= SCHEMA_VERSION:
                break
            for statement in _split_sql(MIGRATIONS[current]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {current + 1}")
        current += 1
    return before, max(current, before)


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (executescript would COMMIT our transaction)."""
    return [part.strip() for part in script.split(";") if part.strip()]


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction taken with BEGIN IMMEDIATE (the write lock up front, no upgrades).

    Taking the lock at BEGIN avoids SQLITE_BUSY deadlocks between two readers that both try to
    upgrade, which is what overlapping cron ticks would otherwise hit.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A consistent snapshot for multi-query views (status reads several tables)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def add_event(conn: sqlite3.Connection, service_id: str, message: str, *, level: str = "info",
              task_id: int | None = None, at: float | None = None) -> None:
    """Append one line to a service's activity feed (customer-readable wording)."""
    add_events(conn, [(service_id, task_id, at if at is not None else now(), level, message)])


def add_events(conn: sqlite3.Connection, rows: Iterable[tuple]) -> None:
    """Append feed lines given as (service_id, task_id, at, level, message) rows."""
    conn.executemany(
        "INSERT INTO events (service_id, task_id, at, level, message) VALUES (?, ?, ?, ?, ?)", rows)


def add_log_lines(conn: sqlite3.Connection, rows: Iterable[tuple]) -> None:
    """Append attempt log lines given as (attempt_id, at, stream, line) rows."""
    conn.executemany("INSERT INTO attempt_logs (attempt_id, at, stream, line) VALUES (?, ?, ?, ?)",
                     rows)


def service_rows(conn: sqlite3.Connection, service_ids: Iterable[str]) -> dict[str, sqlite3.Row]:
    """The `services` rows of the given ids, by id (one statement for a claimed batch)."""
    import json  # not at module level: the idle tick imports nothing it does not need

    rows = conn.execute("SELECT * FROM services WHERE id IN (SELECT value FROM json_each(?))",
                        (json.dumps(sorted(set(service_ids))),))
    return {row["id"]: row for row in rows}


def set_fact(conn: sqlite3.Connection, service_id: str, key: str, value_json: str) -> None:
    """Record one fact a step learned (DKIM key, a claim on a name) on the service row.

    The key is quoted in the JSON path: fact names hold dots and @ (mailbox:a@b.c).
    """
    with write(conn):
        conn.execute("UPDATE services SET facts = json_set(facts, '$.\"' || ? || '\"', json(?)) "
                     "WHERE id = ?", (key, value_json, service_id))


def has_due(conn: sqlite3.Connection, at: float | None = None) -> bool:
    """Is any task due now? The idle tick asks this before importing anything else."""
    at = now() if at is None else at
    return conn.execute("SELECT 1 FROM tasks WHERE state IN ('queued', 'waiting') "
                        "AND run_after <= ? LIMIT 1", (at,)).fetchone() is not None


def has_expired(conn: sqlite3.Connection, at: float | None = None) -> bool:
    """Does any running task's lease lie in the past (a runner died)? Also asked when idle."""
    at = now() if at is None else at
    return conn.execute("SELECT 1 FROM tasks WHERE state = 'running' AND lease_expires < ? LIMIT 1",
                        (at,)).fetchone() is not None
