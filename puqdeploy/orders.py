"""Accepting an order: validate, place, and write the service with its whole plan at once.

This is the billing hook's path, so it does no network I/O at all and imports only the store,
the config and validation. Everything is written in ONE `BEGIN IMMEDIATE` transaction: after
`create` returns 0 the service and every task are on disk (synchronous=FULL); if anything is
wrong nothing is written.

Idempotency: the billing system may repeat a call (timeouts, retries). The same service id
with the same parameters returns the existing service (`created: false`, exit 0); the same id
with different parameters is a conflict (exit 3). The password is not part of that comparison:
a repeated call without a password must not conflict with the one a first call generated.
"""

from __future__ import annotations

import json
import sqlite3
from puqdeploy.frozen import frozen
from typing import Mapping, Optional

from puqdeploy import pipeline, queue, store, validate
from puqdeploy.errors import ConflictError, NotFoundError, UsageError


@frozen
class OrderResult:
    service_id: str
    state: str
    tasks: int
    created: bool


def params_of(product: str, domain: str, username: Optional[str], email: Optional[str],
              overrides: Mapping[str, object]) -> dict:
    return {"product": product, "domain": domain, "username": username, "email": email,
            "limits": dict(sorted(overrides.items()))}


def canonical(params: Mapping[str, object]) -> str:
    """An order's parameters as canonical JSON: stored once, and compared as text when the
    billing system repeats a call."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def node_load(conn: sqlite3.Connection) -> dict[str, int]:
    """Services placed on each node (live services only), from the node_load counters."""
    return {row[0]: row[1] for row in conn.execute("SELECT node, services FROM node_load")}


def _usernames(conn: sqlite3.Connection, roles: tuple[str, ...], domain: str,
               requested: Optional[str]) -> dict:
    if not roles:
        return {}
    suffixes = [pipeline.ROLE_SUFFIX[r] for r in roles]

    def taken(name: str) -> bool:
        return conn.execute("SELECT 1 FROM usernames WHERE username = ?", (name,)).fetchone() is not None

    if requested:
        names = {s: requested + s for s in suffixes}  # Unified's main user: exactly `requested`
        for name in names.values():
            validate.username(name)
            if taken(name):
                raise UsageError(f"username {name} is already used by another service")
    else:
        names = validate.derive_username_set(domain, suffixes, taken)
    return {role: names[pipeline.ROLE_SUFFIX[role]] for role in roles}


def create_service(conn: sqlite3.Connection, config, box, *, service_id: str, product: str,
                   domain: str, username: Optional[str] = None, email: Optional[str] = None,
                   password: Optional[str] = None, overrides: Mapping[str, object] = (),
                   at: float | None = None) -> OrderResult:
    """Validate and accept an order; see the module docstring for the guarantees."""
    service_id = validate.service_id(service_id)
    product_cfg = config.product(product)
    domain = validate.domain(domain)
    if username is not None:
        username = validate.username(username)
    if email is not None:
        email = validate.email(email)
    if password is not None:
        validate.password(password)
    overrides = dict(overrides or {})
    if product_cfg.mode == "vanity":
        check_vanity_name(config, product_cfg, domain)
    params = params_of(product, domain, username, email, overrides)
    params_text = canonical(params)
    at = store.now() if at is None else at
    with store.write(conn):
        existing = conn.execute("SELECT state, params, id FROM services WHERE id = ?",
                                (service_id,)).fetchone()
        if existing is not None:
            if existing["params"] != params_text:
                raise ConflictError(f"service {service_id} already exists with different parameters")
            count = conn.execute("SELECT count(*) FROM tasks t JOIN services s ON "
                                 "t.operation_id = s.operation_id WHERE s.id = ?",
                                 (service_id,)).fetchone()[0]
            return OrderResult(service_id, existing["state"], count, False)
        other = conn.execute("SELECT id FROM services WHERE domain = ? AND state != 'terminated'",
                             (domain,)).fetchone()
        if other is not None:
            # bad input, not an id conflict (exit 3 is reserved for "same id, other parameters")
            raise UsageError(f"domain {domain} is already served by service {other['id']}")
        limits = {**product_cfg.limits, **overrides}
        placement = pipeline.place(config, product_cfg, node_load(conn), domain, limits)
        names = _usernames(conn, pipeline.usernames_for(product_cfg.mode, placement), domain,
                           username)
        plan = pipeline.deploy_plan(product_cfg.mode, domain, placement,
                                    ssl=config.ssl.enabled and product_cfg.ssl)
        secret = box.encrypt(password or validate.generate_password())
        conn.execute(
            "INSERT INTO services (id, product, mode, domain, state, params, placement, "
            "usernames, limits, email, password_enc, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
            (service_id, product, product_cfg.mode, domain, params_text,
             json.dumps(placement.as_dict()), json.dumps(names), json.dumps(limits),
             email or f"webmaster@{domain}", secret, at, at))
        conn.executemany("INSERT INTO usernames (username, service_id) VALUES (?, ?)",
                         [(name, service_id) for name in names.values()])
        for node in placement.nodes():
            conn.execute("INSERT INTO node_load (node, services) VALUES (?, 1) "
                         "ON CONFLICT (node) DO UPDATE SET services = services + 1", (node,))
        insert_operation(conn, service_id, "deploy", plan, config.retry.max_attempts, at)
        store.add_event(conn, service_id, f"Order accepted: {len(plan)} steps queued", at=at)
    return OrderResult(service_id, "queued", len(plan), True)


def check_vanity_name(config, product, domain: str) -> None:
    """`label.parent`: the parent is offered by the product, the label is allowed and free.

    "Free" here means no live service holds the name (the unique domain index enforces it in
    the transaction); a record of that name already in the parent zone is found by the DNS
    step, which then refuses to touch it.
    """
    label, _, _ = domain.partition(".")
    pipeline.vanity_parent(product, domain)
    group = config.groups[product.group]
    validate.vanity_label(label, group.reserved_names)


def insert_operation(conn: sqlite3.Connection, service_id: str, kind: str,
                     plan: list[pipeline.TaskSpec], max_attempts: int, at: float, *,
                     gated: bool = False, args: Optional[dict] = None) -> int:
    """Write an operation and its task DAG.

    Not gated: it becomes the service's current operation at once. Gated (another operation
    of the service is still open): it is `queued`, and each of its tasks carries one extra
    dependency that `queue.start_next_operation` releases when the earlier one ends.
    """
    pipeline.check_plan(plan)
    op_id = conn.execute("INSERT INTO operations (service_id, kind, state, created_at, args) "
                         "VALUES (?, ?, 'queued', ?, ?)",
                         (service_id, kind, at, json.dumps(args or {}))).lastrowid
    gate = 1 if gated else 0
    ids: dict[str, int] = {}
    for seq, spec in enumerate(plan):
        deps_left = len(spec.deps) + gate
        ids[spec.key] = conn.execute(
            "INSERT INTO tasks (service_id, operation_id, seq, action, label, node, args, blocking, "
            "state, deps_left, max_attempts, run_after, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (service_id, op_id, seq, spec.action, spec.label, spec.node,
             json.dumps(dict(spec.args)), int(spec.blocking),
             "pending" if deps_left else "queued", deps_left, max_attempts, at, at)).lastrowid
        conn.executemany("INSERT INTO task_deps (task_id, depends_on) VALUES (?, ?)",
                         [(ids[spec.key], ids[dep]) for dep in spec.deps])
    if not gated:
        queue.begin_operation(conn, service_id, op_id, kind, at)
    return op_id


def redeploy(conn: sqlite3.Connection, config, service_id: str, at: float | None = None) -> int:
    """Hard reset: cancel what is open, keep history (superseded), write a fresh plan.

    Running tasks cannot be interrupted mid-command; they are flagged `cancel_requested` and
    end as cancelled when their runner reports, still counting against the node's concurrency
    until then. Converges because every step is idempotent.
    """
    at = store.now() if at is None else at
    with store.write(conn):
        row = conn.execute("SELECT * FROM services WHERE id = ?", (service_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"service {service_id} not found")
        if row["state"] == "terminated":
            raise UsageError(f"service {service_id} is terminated; it cannot be redeployed")
        supersede_open_tasks(conn, service_id, at)
        product_cfg = config.product(row["product"])
        plan = pipeline.deploy_plan(row["mode"], row["domain"], stored_placement(row),
                                    ssl=config.ssl.enabled and product_cfg.ssl)
        op_id = insert_operation(conn, service_id, "redeploy", plan, config.retry.max_attempts, at)
        store.add_event(conn, service_id, f"Redeploy requested: {len(plan)} steps queued", at=at)
    return op_id


def supersede_open_tasks(conn: sqlite3.Connection, service_id: str, at: float) -> None:
    """Mark every task of earlier operations superseded; cancel those still open."""
    conn.execute("UPDATE tasks SET superseded = 1 WHERE service_id = ?", (service_id,))
    conn.execute("UPDATE tasks SET state = 'cancelled', finished_at = ?, result = 'superseded' "
                 "WHERE service_id = ? AND state IN ('pending', 'queued', 'waiting')",
                 (at, service_id))
    conn.execute("UPDATE tasks SET cancel_requested = 1 WHERE service_id = ? AND state = 'running'",
                 (service_id,))
    conn.execute("UPDATE operations SET state = 'cancelled', finished_at = ? "
                 "WHERE service_id = ? AND state IN ('queued', 'running')", (at, service_id))


def stored_placement(row) -> pipeline.Placement:
    data = json.loads(row["placement"])
    return pipeline.Placement(data["web"], data["mail"], tuple(data["dns"]))


@frozen
class OperationResult:
    service_id: str
    operation: str
    operation_id: int
    tasks: int
    created: bool
    queued_behind: bool


def request_operation(conn: sqlite3.Connection, config, box, service_id: str, kind: str, *,
                      product: Optional[str] = None, password: Optional[str] = None,
                      force: bool = False, at: float | None = None) -> OperationResult:
    """Queue a lifecycle operation (suspend, unsuspend, terminate, change-package,
    change-password) and return at once.

    Serialization, per service: a terminate cancels whatever is open (running steps finish
    first: the claim query holds the terminate's steps back while an older operation of the
    service still runs one) — it never waits behind a deploy that may be failing for hours. Every
    other operation queues behind the open one and starts when it ends (done or error).
    The same operation requested again while it is still open is not queued twice.
    A terminated service accepts no further operation (nothing can resurrect it).
    """
    at = store.now() if at is None else at
    if password is not None:
        validate.password(password)
    with store.write(conn):
        row = conn.execute("SELECT * FROM services WHERE id = ?", (service_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"service {service_id} not found")
        if row["state"] == "terminated":
            raise UsageError(f"service {service_id} is terminated")
        args: dict = {"force": force} if kind == "terminate" else {}
        if kind == "change-package":
            args = _package_args(config, row, product)
        open_ops = conn.execute("SELECT id, kind, args FROM operations WHERE service_id = ? "
                                "AND state IN ('queued', 'running') ORDER BY id",
                                (service_id,)).fetchall()
        for op in open_ops:
            if kind != "change-password" and op["kind"] == kind and json.loads(op["args"]) == args:
                count = conn.execute("SELECT count(*) FROM tasks WHERE operation_id = ?",
                                     (op["id"],)).fetchone()[0]
                return OperationResult(service_id, kind, op["id"], count, False, op != open_ops[0])
        if kind == "change-password":
            conn.execute("UPDATE services SET password_enc = ?, updated_at = ? WHERE id = ?",
                         (box.encrypt(password), at, service_id))
        gated = bool(open_ops)
        if kind == "terminate":
            supersede_open_tasks(conn, service_id, at)
            gated = False
        plan = pipeline.lifecycle_plan(kind, row["mode"], row["domain"], stored_placement(row),
                                       json.loads(row["usernames"]), args)
        op_id = insert_operation(conn, service_id, kind, plan, config.retry.max_attempts, at,
                                 gated=gated, args=args)
        verb = kind.replace("-", " ")
        store.add_event(conn, service_id, f"{verb.capitalize()} requested"
                        + (" (waits for the current operation)" if gated else ""), at=at)
        if not plan and not gated:
            queue.settle_operation(conn, op_id, at)
    return OperationResult(service_id, kind, op_id, len(plan), True, gated)


def _package_args(config, row, product: Optional[str]) -> dict:
    """change-package: the new product must keep the mode; limits are re-resolved from it."""
    if not product:
        raise UsageError("change-package needs --product")
    new = config.product(product)
    if new.mode != row["mode"]:
        raise UsageError(f"product {product} is {new.mode}, service {row['id']} is {row['mode']}: "
                         "changing the mode needs a new service (terminate and create)")
    overrides = json.loads(row["params"]).get("limits", {})
    return {"product": product, "limits": {**new.limits, **overrides}}
