"""One cron tick: rescue expired leases, then lease and run due tasks until the work or the
budget runs out.

- A bounded pool of `workers` threads runs steps; the main thread keeps leasing as tasks
  finish, so tasks unblocked during the tick start in the same tick and a healthy service
  deploys in ONE tick.
- Grouped commits: the main thread alone writes the queue, one transaction per round — the
  outcomes and due log lines the workers reported since the last round, then the next leases
  for the freed workers — so one fsync serves many tasks.
- Per-node concurrency is enforced by the claim query in the database (across processes).
- One transport (connection) per node per tick, shared by that node's tasks.
- A heartbeat thread extends the leases of running tasks so long commands keep their lease;
  if this process dies, the leases expire and the next tick rescues the tasks.
- When the budget is spent no new task is leased; running ones finish (they cannot be
  interrupted mid-command safely) and the tick ends.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Callable, Optional

from puqdeploy import queue, store
from puqdeploy.hestia import Panel
from puqdeploy.outcomes import Done, Fail, Outcome, Retry, Wait
from puqdeploy.queue import Lease
from puqdeploy.remote import Transport, open_transport
from puqdeploy.secretbox import SecretBox
from puqdeploy.steps import base


# Tasks without a node (in-process steps: tickets, benchmarks) leased beyond the free workers.
# They wait in this runner's pool for a worker; leasing them ahead lets one commit record and
# claim dozens of fast tasks instead of a few. Tasks on nodes are never leased ahead: a leased
# task holds its node's slot, and other runners could be using it.
NODELESS_PREFETCH = 56


@dataclass
class TickSummary:
    """Counts printed as the one-line summary on stderr."""

    rescued: int = 0
    leased: int = 0
    done: int = 0
    retried: int = 0
    waiting: int = 0
    failed: int = 0
    lost: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"puqdeploy run: leased {self.leased}, done {self.done}, retried {self.retried}, "
                f"waiting {self.waiting}, failed {self.failed}, rescued {self.rescued}"
                + (f", lost {self.lost}" if self.lost else "") + f" in {self.seconds:.2f} s")


def new_runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class StepPool:
    """`size` threads running leased tasks in the order they were leased.

    Lighter than ThreadPoolExecutor (no future, condition and semaphore per task), which
    matters when a step takes microseconds. `run(*job)` returns the result put on `results`;
    it must not raise (Runner._run_lease maps every error to an outcome), but if it does the
    thread still reports, so the tick never waits for a task forever.
    """

    def __init__(self, size: int, run: Callable[..., tuple], results: SimpleQueue) -> None:
        self.jobs: SimpleQueue = SimpleQueue()
        self.threads = [threading.Thread(target=self._loop, args=(run, results), daemon=True,
                                         name=f"step-{i}") for i in range(size)]

    def _loop(self, run: Callable[..., tuple], results: SimpleQueue) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                results.put(run(*job))
            except BaseException as exc:  # noqa: BLE001 - reported as the task's outcome
                results.put((job[0], Retry(base.internal_error(exc)), []))

    def submit(self, *job) -> None:
        self.jobs.put(job)

    def __enter__(self) -> "StepPool":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()


class SharedConnection:
    """The one database connection of a runner process, used by all its threads in turn.

    SQLite allows one writer at a time; with a connection per thread the threads of one
    process fight over the write lock through SQLite's sleeping busy handler, and under load a
    waiter can time out ("database is locked"). One connection behind a lock queues them
    fairly in Python instead; only other processes (overlapping ticks) wait on busy_timeout.
    """

    def __init__(self, path: str) -> None:
        self.conn = store.open_store(path)
        self.lock = threading.RLock()

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        return self.conn

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class LogBuffer:
    """Collects an attempt's log lines until the main thread writes them.

    When a line is due — a command line at once (`puqdeploy log --follow` shows what runs
    now), streamed output at least every `interval` seconds — the buffer asks the main thread
    (`request`, once until its lines are taken), which writes them in its next grouped commit,
    together with other workers' lines and outcomes. The worker never waits for an fsync
    before starting its command. Whatever is left goes with the attempt's outcome.
    """

    def __init__(self, attempt_id: int, request: Callable[["LogBuffer"], None],
                 interval: float = 0.25) -> None:
        self.attempt_id = attempt_id
        self.request = request
        self.interval = interval
        self.pending: list[tuple[int, float, str, str]] = []
        self.requested = False
        self.last_take = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, stream: str, line: str) -> None:
        with self.lock:
            self.pending.append((self.attempt_id, store.now(), stream, line))
            due = not self.requested and (
                stream == "cmd" or time.monotonic() - self.last_take >= self.interval)
            if due:
                self.requested = True
        if due:
            self.request(self)

    def take(self) -> list[tuple[int, float, str, str]]:
        """The lines not written yet (the caller writes them in its own transaction)."""
        with self.lock:
            batch, self.pending = self.pending, []
            self.requested = False
            self.last_take = time.monotonic()
        return batch


@dataclass
class Runner:
    """Runs ticks against one database with one config."""

    config: object
    workers: int
    budget: float
    once: bool = False
    runner_id: str = field(default_factory=new_runner_id)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.policy = self.config.retry
        self.lease_seconds = self.config.runner.lease_seconds
        self.node_limits = {name: node.max_concurrency for name, node in self.config.nodes.items()}
        self._shared: Optional[SharedConnection] = None
        self._transports: dict[str, Transport] = {}
        self._transport_lock = threading.Lock()
        self._active: dict[int, Lease] = {}
        self._active_lock = threading.Lock()
        self._box: Optional[SecretBox] = None
        self._results: SimpleQueue = SimpleQueue()  # what the workers report to the main thread
        self.tickets = self.config.tickets.enabled

    # -- connections -------------------------------------------------------------------------

    def _db(self) -> SharedConnection:
        if self._shared is None:
            self._shared = SharedConnection(self.config.database)
        return self._shared

    def _transport(self, node) -> Transport:
        with self._transport_lock:
            transport = self._transports.get(node.name)
            if transport is None:
                transport = open_transport(node)
                self._transports[node.name] = transport
            return transport

    def close(self) -> None:
        """Close the runner's database connection (a later tick opens a new one)."""
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def _secret_box(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox.from_file(self.config.key_file)
        return self._box

    # -- the tick ----------------------------------------------------------------------------

    def tick(self) -> TickSummary:
        """Lease, run and record until nothing is due (or the budget is spent).

        The main thread is the only one that claims and records outcomes, and it does both in
        ONE write transaction per round (a grouped commit): every outcome that arrived while
        the previous round committed is recorded, and the freed workers' next tasks are
        claimed, with a single fsync. Steps run in the pool meanwhile.
        """
        started = time.monotonic()
        deadline = started + self.budget
        summary = TickSummary()
        db = self._db()
        with db as conn:
            summary.rescued = queue.rescue_expired(conn, self.policy, tickets=self.tickets)
            summary.failed += queue.fail_unknown_nodes(conn, self.config.nodes)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat_loop, args=(stop,), daemon=True)
        beat.start()
        # from the workers: (lease, outcome, log lines) when a task ends, or a LogBuffer whose
        # lines are due now
        results: SimpleQueue = self._results
        arrived: list[tuple[Lease, Outcome, list]] = []
        logs: list[LogBuffer] = []
        retried: set[int] = set()  # back in the queue after a failed attempt in this tick
        first_round = True
        try:
            with StepPool(self.workers, self._run_lease, results) as pool:
                while True:
                    may_claim = time.monotonic() < deadline and (first_round or not self.once)
                    free = self.workers - len(self._active) + len(arrived)
                    if arrived or logs or (may_claim and free + NODELESS_PREFETCH > 0):
                        leases, rows = self._record_and_claim(
                            db, arrived, logs, summary, retried, free if may_claim else None)
                        arrived, logs = [], []
                        # each service row decoded once per round; every attempt gets its own
                        # copy of the facts it may add to
                        views = {sid: base.service_from_row(row) for sid, row in rows.items()}
                        with self._active_lock:
                            self._active.update((lease.task_id, lease) for lease in leases)
                        summary.leased += len(leases)
                        for lease in leases:
                            view = views.get(lease.service_id)
                            pool.submit(lease, rows.get(lease.service_id),
                                        view and view.for_attempt())
                    first_round = False
                    if not self._active:
                        break
                    try:  # wait for one report, then take every other one already there
                        item = results.get(timeout=0.5)
                        while True:
                            (logs if isinstance(item, LogBuffer) else arrived).append(item)
                            item = results.get_nowait()
                    except Empty:
                        pass
        finally:
            stop.set()
            beat.join()
            self._close_transports()
        summary.seconds = time.monotonic() - started
        return summary

    def _record_and_claim(self, db: SharedConnection, arrived: list, logs: list,
                          summary: TickSummary, retried: set[int],
                          free: Optional[int]) -> tuple[list[Lease], dict]:
        """One grouped commit: the log lines that are due, the outcomes that arrived, then new
        leases for `free` workers (None: claim nothing), with their services' rows read in
        the same snapshot."""
        with db as conn, store.write(conn):
            # one clock reading for both halves, under the write lock: a task claimed on a node
            # never appears to start before the one it replaced ended
            at = store.now()
            store.add_log_lines(conn, [line for buffer in logs for line in buffer.take()])
            if arrived:
                states = queue.finish_in(
                    conn, [(lease, outcome) for lease, outcome, _ in arrived], self.policy, at,
                    rng=self.rng, tickets=self.tickets,
                    log_lines=[line for _, _, lines in arrived for line in lines])
                with self._active_lock:
                    for (lease, _, _), state in zip(arrived, states):
                        self._active.pop(lease.task_id, None)
                        if state == "queued":
                            retried.add(lease.task_id)
                        _count(summary, state)
            leases = [] if free is None else queue.claim_in(
                conn, self.runner_id, free, self.node_limits, self.lease_seconds, at,
                exclude=retried, nodeless_limit=free + NODELESS_PREFETCH)
            rows = store.service_rows(conn, (lease.service_id for lease in leases)) if leases else {}
        return leases, rows

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        """Extend held leases every heartbeat interval until the tick ends."""
        db = self._db()
        while not stop.wait(self.config.runner.heartbeat):
            with self._active_lock:
                leases = list(self._active.values())
            if leases:
                try:
                    with db as conn:
                        queue.heartbeat(conn, leases, self.lease_seconds)
                except sqlite3.Error:
                    pass  # the next beat tries again; the lease is long enough for one miss

    def _close_transports(self) -> None:
        with self._transport_lock:
            for transport in self._transports.values():
                try:
                    transport.close()
                except Exception:
                    pass
            self._transports.clear()

    # -- one task ----------------------------------------------------------------------------

    def _run_lease(self, lease: Lease, row: Optional[sqlite3.Row],
                   service: Optional[base.ServiceView]) -> tuple[Lease, Outcome, list]:
        """Run one leased task; returns what the main thread records: the lease, the outcome
        and the log lines not written yet."""
        log = LogBuffer(lease.attempt_id, self._results.put)
        try:
            outcome = self._outcome(lease, row, service, log)
        except Exception as exc:  # building the context failed (e.g. key file unreadable)
            log("error", base.internal_error(exc))
            outcome = Retry(base.internal_error(exc))
        return lease, outcome, log.take()

    def _outcome(self, lease: Lease, row: Optional[sqlite3.Row],
                 service: Optional[base.ServiceView], log: LogBuffer) -> Outcome:
        fn = base.lookup(lease.action)
        if fn is None:
            return Fail(f"unknown action {lease.action!r} (written by a newer puqdeploy?)")
        if row is None or service is None:
            return Fail(f"service {lease.service_id} is gone")
        db = self._db()
        node = None
        panel = None
        if lease.node is not None:
            node = self.config.nodes.get(lease.node)
            if node is None:
                return Fail(f"node {lease.node} is no longer in the config")
            panel = Panel(self._transport(node), node.command_timeout_seconds, log)

        def password() -> str:
            return self._secret_box().decrypt(row["password_enc"])

        def set_fact(key: str, value) -> None:
            service.facts[key] = value
            with db as conn:
                store.set_fact(conn, lease.service_id, key, json.dumps(value))

        def get_ticket():
            with db as conn:
                return queue.operation_ticket(conn, lease.operation_id)

        def set_ticket(reference: str) -> None:
            with db as conn:
                queue.set_operation_ticket(conn, lease.operation_id, reference)

        log("info", f"attempt {lease.attempt}/{lease.max_attempts} of {lease.action}"
                    f"{' on ' + lease.node if lease.node else ''} by {self.runner_id}")
        extra = {"get_ticket": get_ticket, "set_ticket": set_ticket}
        ctx = base.StepContext(action=lease.action, args=lease.args, service=service,
                               config=self.config, node=node, panel=panel, log=log,
                               password=password, set_fact=set_fact, extra=extra)
        outcome = base.execute(fn, ctx)
        log("info", f"outcome: {_describe(outcome)}")
        return outcome


def _describe(outcome: Outcome) -> str:
    if isinstance(outcome, Done):
        return f"done ({outcome.result})"
    if isinstance(outcome, Wait):
        return f"waiting: {outcome.reason}"
    if isinstance(outcome, Retry):
        return f"retry: {outcome.error}"
    return f"failed: {outcome.error}"


def _count(summary: TickSummary, state: Optional[str]) -> None:
    if state is None:
        summary.lost += 1
    elif state == "done":
        summary.done += 1
    elif state == "queued":
        summary.retried += 1
    elif state == "waiting":
        summary.waiting += 1
    elif state == "failed":
        summary.failed += 1
