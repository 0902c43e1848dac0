"""The `puqdeploy` command line: parse, call the application, render. Nothing else.

Imports are deliberately lazy: a billing hook's `create`, the splash page's `status --json`
and an idle cron tick must start fast, so rich, paramiko and dnspython are only imported by the
commands that draw or connect. Every user error becomes one `Error: ...` line on stderr and the
exit code of CONTRACT.md (2 bad input, 3 conflict, 4 not found, 1 operational).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from typing import Optional

import click

from puqdeploy.errors import PuqError, UsageError

DEFAULT_CONFIG = "/etc/puqdeploy/config.yaml"


class PuqGroup(click.Group):
    """Turns library errors into the contract's one-line messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PuqError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except sqlite3.Error as exc:
            click.echo(f"Error: database problem: {exc}", err=True)
            ctx.exit(1)
        except OSError as exc:
            click.echo(f"Error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            ctx.exit(1)


def _config(ctx: click.Context):
    from puqdeploy.config import load_config

    obj = ctx.find_root().obj
    if obj.get("config") is None:
        obj["config"] = load_config(obj["config_path"])
    return obj["config"]


# The databases this command opened; `entry` closes them before it leaves.
_OPENED: list[sqlite3.Connection] = []


def _store(ctx: click.Context):
    from puqdeploy import store

    conn = store.open_store(_config(ctx).database)
    _OPENED.append(conn)
    return conn


def entry() -> None:
    """The `puqdeploy` console script (and `python -m puqdeploy`): the command, then a fast exit.

    The databases the command opened are closed first (the last connection to a WAL database
    checkpoints it on close, leaving the file self-contained), output is flushed, and the
    process leaves with os._exit: tearing down an interpreter that loaded ~130 modules costs
    ~10 ms here, a tenth of a `create`, for nothing — everything is written and synced by then.
    """
    try:
        main()
        code = 0
    except SystemExit as stop:  # click always ends this way
        code = stop.code
    for conn in _OPENED:
        try:
            conn.close()
        except sqlite3.Error:
            pass
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe (`puqdeploy tasks | head`): nothing more to say
            pass
    os._exit(code)


def _emit_json(payload) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=False))


@click.group(cls=PuqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH",
              help=f"Config file (default: $PUQDEPLOY_CONFIG, else {DEFAULT_CONFIG}).")
@click.version_option(package_name="puqdeploy")
@click.pass_context
def main(ctx: click.Context, config_path: Optional[str]) -> None:
    """Provision HestiaCP hosting services through a durable, cron-driven task queue."""
    ctx.obj = {"config_path": config_path or os.environ.get("PUQDEPLOY_CONFIG") or DEFAULT_CONFIG,
               "config": None}


@main.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the database (folder 0700, file 0600) and key file, and apply migrations."""
    from puqdeploy import secretbox, store

    config = _config(ctx)
    conn = store.connect(config.database, create=True)
    before, after = store.migrate(conn)
    conn.close()
    made_key = secretbox.create_key_file(config.key_file)
    click.echo(f"database {config.database}: schema {before} -> {after}" if before != after
               else f"database {config.database}: schema {after}, up to date")
    click.echo(f"key file {config.key_file}: {'created' if made_key else 'kept'}")


def _read_password(password_stdin: bool, password_file: Optional[str]) -> Optional[str]:
    if password_stdin and password_file:
        raise UsageError("use either --password-stdin or --password-file, not both")
    if password_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    elif password_file:
        try:
            with open(password_file, encoding="utf-8") as handle:
                value = handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read password file {password_file}: {exc.strerror}") from None
    else:
        return None
    if not value:
        raise UsageError("the password given is empty")
    return value


@main.command()
@click.option("--service-id", required=True, help="The billing system's id ([A-Za-z0-9._-]{1,64}).")
@click.option("--product", required=True, help="Product name from the config.")
@click.option("--domain", required=True, help="Customer domain (IDN accepted).")
@click.option("--username", help="Base Hestia username (default: derived from the domain).")
@click.option("--email", help="Contact e-mail for the Hestia users (default webmaster@DOMAIN).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--password-file", type=click.Path(dir_okay=False), help="Read the password from a file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a product limit, e.g. web_disk_quota=2048 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def create(ctx, service_id, product, domain, username, email, password_stdin, password_file,
           overrides, as_json) -> None:
    """Accept an order: validate, place, queue the whole plan, return at once (no network I/O)."""
    from puqdeploy import orders
    from puqdeploy.config import parse_limit_overrides
    from puqdeploy.secretbox import SecretBox

    password = _read_password(password_stdin, password_file)
    config = _config(ctx)
    limits = parse_limit_overrides(list(overrides))
    conn = _store(ctx)
    result = orders.create_service(conn, config, SecretBox.from_file(config.key_file),
                                   service_id=service_id, product=product, domain=domain,
                                   username=username, email=email, password=password,
                                   overrides=limits)
    if as_json:
        _emit_json({"service_id": result.service_id, "state": result.state,
                    "tasks": result.tasks, "created": result.created})
    elif result.created:
        click.echo(f"service {result.service_id} accepted: {result.tasks} tasks queued")
    else:
        click.echo(f"service {result.service_id} already accepted ({result.state}, "
                   f"{result.tasks} tasks)")


@main.command()
@click.option("--budget", type=float, help="Seconds to keep leasing work (default runner.budget_seconds).")
@click.option("--workers", type=click.IntRange(1, 256), help="Parallel steps (default runner.workers).")
@click.option("--once", is_flag=True, help="Lease what is due now once, run it, and stop.")
@click.option("--loop", is_flag=True, help="Keep running ticks (for a systemd service) until stopped.")
@click.pass_context
def run(ctx, budget, workers, once, loop) -> None:
    """One cron tick: rescue expired leases, then run due tasks until done or out of budget."""
    import time

    from puqdeploy import store

    if once and loop:
        raise UsageError("--once and --loop exclude each other")
    config = _config(ctx)
    conn = _store(ctx)
    budget = config.runner.budget_seconds if budget is None else budget
    workers = workers or config.runner.workers
    runner = None
    try:
        while True:
            if store.has_due(conn) or store.has_expired(conn):
                if runner is None:
                    from puqdeploy.runner import Runner  # only now: the idle tick stays light

                    runner = Runner(config, workers=workers, budget=budget, once=once)
                summary = runner.tick()
                click.echo(summary.line(), err=True)
            elif not loop:
                click.echo("puqdeploy run: nothing due", err=True)
            if not loop:
                return
            time.sleep(config.runner.poll_seconds)
    finally:
        if runner is not None:
            runner.close()


@main.command()
@click.argument("service_id")
@click.option("--json", "as_json", is_flag=True, help="Print the contract's JSON payload.")
@click.option("--watch", is_flag=True, help="Refresh live until the deploy settles (Ctrl-C stops).")
@click.pass_context
def status(ctx, service_id, as_json, watch) -> None:
    """A service: state, progress, timeline of every task, recent activity, error."""
    from puqdeploy import views

    conn = _store(ctx)
    private = views.private_aliases(_config(ctx))
    if as_json:
        _emit_json(views.status(conn, service_id, private))
        return
    from puqdeploy import render

    if watch:
        render.watch_status(lambda: views.status(conn, service_id, private))
    else:
        render.print_status(views.status(conn, service_id, private),
                            views.history(conn, service_id))


@main.command()
@click.option("--state", help="Only services in this state.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def services(ctx, state, as_json) -> None:
    """List services with the count per state."""
    from puqdeploy import views

    payload = views.services(_store(ctx), state)
    if as_json:
        _emit_json(payload)
    else:
        from puqdeploy import render

        render.print_services(payload)


@main.command()
@click.argument("service_id", required=False)
@click.option("--state", help="Only tasks in this state (e.g. failed: the morning view).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tasks(ctx, service_id, state, as_json) -> None:
    """List tasks: action, node, state, attempts, timestamps."""
    from puqdeploy import views

    payload = views.tasks(_store(ctx), service_id, state)
    if as_json:
        _emit_json(payload)
    else:
        from puqdeploy import render

        render.print_tasks(payload)


@main.command()
@click.argument("task_id", type=int)
@click.option("--attempt", type=int, help="Attempt number (default: the latest).")
@click.option("--follow", is_flag=True, help="Keep printing lines until the attempt ends.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log(ctx, task_id, attempt, follow, as_json) -> None:
    """The streamed command log of a task attempt (secrets masked)."""
    import time

    from puqdeploy import views

    conn = _store(ctx)
    payload = views.attempt_log(conn, task_id, attempt)
    if as_json:
        _emit_json(payload)
        return
    click.echo(f"# task {task_id} attempt {payload['attempt']} by {payload['runner_id']} "
               f"started {payload['started_at']}")
    last = 0
    while True:
        for line in payload["lines"]:
            click.echo(f"{line['at']} {line['stream']:>6} {line['line']}")
            last = line["id"]
        if payload["ended_at"] is not None or not follow:
            break
        time.sleep(0.2)
        payload = views.attempt_log(conn, task_id, payload["attempt"], after_id=last)
    if payload["ended_at"] is not None:
        click.echo(f"# ended {payload['ended_at']}: {payload['outcome']}"
                   + (f" ({payload['error']})" if payload["error"] else ""))


@main.command()
@click.argument("service_id", required=False)
@click.option("--task", "task_id", type=int, help="Retry one task instead of all failed ones.")
@click.pass_context
def retry(ctx, service_id, task_id) -> None:
    """Put terminally failed tasks back in the queue with fresh attempts."""
    from puqdeploy import queue
    from puqdeploy.errors import NotFoundError

    conn = _store(ctx)
    if task_id is not None:
        row = conn.execute("SELECT service_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"task {task_id} not found")
        if service_id and service_id != row[0]:
            raise UsageError(f"task {task_id} belongs to service {row[0]}, not {service_id}")
        service_id = row[0]
    elif not service_id:
        raise UsageError("give a SERVICE_ID or --task TASK")
    elif conn.execute("SELECT 1 FROM services WHERE id = ?", (service_id,)).fetchone() is None:
        raise NotFoundError(f"service {service_id} not found")
    count = queue.retry_tasks(conn, service_id, task_id)
    if not count:
        raise UsageError(f"nothing to retry: no failed task in the current operation of {service_id}")
    click.echo(f"service {service_id}: {count} task(s) queued again")


@main.command()
@click.argument("service_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def redeploy(ctx, service_id, yes) -> None:
    """Hard reset: cancel what is open and re-run the whole chain from the first step."""
    from puqdeploy import orders

    if not yes and not click.confirm(f"Redeploy service {service_id} from the first step?"):
        raise UsageError("redeploy not confirmed")
    orders.redeploy(_store(ctx), _config(ctx), service_id)
    click.echo(f"service {service_id}: redeploy queued")


def _queue_operation(ctx: click.Context, service_id: str, kind: str, as_json: bool,
                     **options) -> None:
    """Queue a lifecycle operation and report it (text or the --json document)."""
    from puqdeploy import orders
    from puqdeploy.secretbox import SecretBox

    config = _config(ctx)
    result = orders.request_operation(_store(ctx), config, SecretBox.from_file(config.key_file),
                                      service_id, kind, **options)
    if as_json:
        _emit_json({"service_id": result.service_id, "operation": result.operation,
                    "operation_id": result.operation_id, "tasks": result.tasks,
                    "created": result.created, "queued_behind": result.queued_behind})
        return
    verb = kind.replace("-", " ")
    if not result.created:
        click.echo(f"service {service_id}: {verb} already queued ({result.tasks} tasks)")
    else:
        behind = " behind the current operation" if result.queued_behind else ""
        click.echo(f"service {service_id}: {verb} queued{behind}: {result.tasks} tasks")


_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


@main.command()
@click.argument("service_id")
@_json_option
@click.pass_context
def suspend(ctx, service_id, as_json) -> None:
    """Suspend the service's Hestia users on every node (nothing is deleted)."""
    _queue_operation(ctx, service_id, "suspend", as_json)


@main.command()
@click.argument("service_id")
@_json_option
@click.pass_context
def unsuspend(ctx, service_id, as_json) -> None:
    """Unsuspend the service's Hestia users on every node."""
    _queue_operation(ctx, service_id, "unsuspend", as_json)


@main.command()
@click.argument("service_id")
@click.option("--force", is_flag=True,
              help="A node that cannot be reached is abandoned (recorded) instead of retried.")
@_json_option
@click.pass_context
def terminate(ctx, service_id, force, as_json) -> None:
    """Remove the service from every node, then mark it terminated (cancels what is open)."""
    _queue_operation(ctx, service_id, "terminate", as_json, force=force)


@main.command("change-package")
@click.argument("service_id")
@click.option("--product", required=True, help="The new product (same mode).")
@_json_option
@click.pass_context
def change_package(ctx, service_id, product, as_json) -> None:
    """Apply another product's limits to the service's Hestia packages."""
    _queue_operation(ctx, service_id, "change-package", as_json, product=product)


@main.command("change-password")
@click.argument("service_id")
@click.option("--password-stdin", is_flag=True, required=True,
              help="Read the new password from the first line of stdin.")
@_json_option
@click.pass_context
def change_password(ctx, service_id, password_stdin, as_json) -> None:
    """Set a new password on the service's Hestia users (and a Vanity mailbox)."""
    _queue_operation(ctx, service_id, "change-password", as_json,
                     password=_read_password(password_stdin, None))


@main.command()
@click.option("--older-than", metavar="AGE",
              help="Cut-off for finished history, e.g. 30d, 12h (default retention.finished_days).")
@_json_option
@click.pass_context
def prune(ctx, older_than, as_json) -> None:
    """Delete finished history beyond retention (terminal failures are kept longer)."""
    from puqdeploy import retention
    from puqdeploy.frozen import fields_of

    config = _config(ctx)
    finished = (retention.parse_duration(older_than) if older_than
                else config.retention.finished_days * 86400)
    failed = max(finished, config.retention.failed_days * 86400)
    result = retention.prune(_store(ctx), finished, failed)
    if as_json:
        _emit_json(fields_of(result))
    else:
        click.echo(f"pruned {result.operations} operation(s): {result.tasks} tasks, "
                   f"{result.attempts} attempts, {result.log_lines} log lines; "
                   f"{result.events} events")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--delay", type=float, default=0.0, help="Seconds each simulated command takes.")
def sandbox(directory, delay) -> None:
    """Write a self-contained trial fleet (local transport, simulated HestiaCP) into DIRECTORY."""
    from puqdeploy.sandbox.fleet import write_sandbox

    config_path = write_sandbox(directory, delay_seconds=delay)
    click.echo(f"sandbox written: {config_path}")
    click.echo(f"try: puqdeploy --config {config_path} init")


@main.command()
@click.option("--keep", is_flag=True, help="Keep the temporary sandbox folder afterwards.")
@click.option("--delay", type=float, default=0.4, help="Seconds each simulated command takes.")
def demo(keep, delay) -> None:
    """Make a sandbox, create a Split service, run it and show live progress to completion."""
    from puqdeploy.sandbox.demo import run_demo

    run_demo(keep=keep, delay_seconds=delay)


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def nodes(ctx, as_json) -> None:
    """Nodes with roles, load/capacity, active flag; `check` and `trust` below.

    Without a subcommand: every configured node with its host, port, transport, roles,
    services placed on it against its capacity, the active flag and max_concurrency.
    """
    if ctx.invoked_subcommand is not None:
        return
    from puqdeploy import nodes as nodes_mod

    rows = nodes_mod.listing(_config(ctx), _store(ctx))
    if as_json:
        _emit_json({"nodes": rows})
        return
    for line in nodes_mod.listing_lines(rows):
        click.echo(line)


@nodes.command("check")
@click.argument("node", required=False)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds v-list-sys-info may take on a node.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def nodes_check(ctx, node, timeout, as_json) -> None:
    """Connect to every node (or NODE) and run `v-list-sys-info json`.

    Reports per node: reachable, latency in ms, the HestiaCP version and the error, if any.
    Nodes are checked in parallel. Exit codes: 0 every checked node answered with a version,
    1 at least one node is unreachable or its panel did not answer properly, 4 unknown NODE.
    """
    from puqdeploy import nodes as nodes_mod

    rows = nodes_mod.check(_config(ctx), [node] if node else None, timeout=timeout)
    if as_json:
        _emit_json({"nodes": rows})
    else:
        for line in nodes_mod.check_lines(rows):
            click.echo(line)
    if not all(row["ok"] for row in rows):
        ctx.exit(1)


@nodes.command("trust")
@click.argument("node")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (you checked the fingerprint).")
@click.pass_context
def nodes_trust(ctx, node, yes) -> None:
    """Fetch NODE's SSH host key, show its fingerprint, and add it to the node's known_hosts.

    Compare the fingerprint with the node's console first
    (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`). Refused (exit 2) for a local node, a
    node with a pinned host_key, or when known_hosts already holds a different key for it.
    """
    from puqdeploy import nodes as nodes_mod

    target = nodes_mod.trust_target(_config(ctx), node)
    key = nodes_mod.fetch_host_key(target)
    click.echo(f"node {target.name} ({target.host} port {target.port}) presents host key "
               f"{key.key_type} {key.fingerprint}")
    nodes_mod.refuse_if_conflicting(target, key)  # before asking anything
    if not yes and not click.confirm(f"Trust this key for node {target.name}?"):
        raise UsageError("host key not trusted: nothing written")
    if nodes_mod.trust(target, key):
        click.echo(f"added to {target.known_hosts}")
    else:
        click.echo(f"already in {target.known_hosts}: nothing changed")


if __name__ == "__main__":  # pragma: no cover
    main()
