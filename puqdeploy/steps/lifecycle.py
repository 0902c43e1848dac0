"""Lifecycle steps: suspend, unsuspend, remove, change package, change password.

Each works on ONE Hestia user of the service on one node (or, for Vanity, on the customer's
mailbox and record inside the provider's objects), checks the current state first and then acts:
- suspend/unsuspend look at SUSPENDED first — HestiaCP's v-unsuspend-user has no "already
  active" check and would corrupt its suspended-users counter if called twice;
- remove refuses a user whose package is not its own (it was not made for this service), and
  deletes the user's package only when no other user's package name starts with it
  (v-delete-user-package moves every user whose package merely *starts* with the name);
- with `terminate --force`, a node that cannot be reached is recorded as abandoned instead of
  retried forever (the operator said the node is gone for good).
"""

from __future__ import annotations

from typing import Callable

from puqdeploy.outcomes import Done, Outcome
from puqdeploy.remote import PermanentTransportError, TransportError
from puqdeploy.steps.accounts import ensure_package
from puqdeploy.steps.base import StepContext, StepFailed, combine, step


def _user(ctx: StepContext) -> str:
    return ctx.service.usernames[ctx.args["role"]]


def forced(fn: Callable[[StepContext], Outcome]) -> Callable[[StepContext], Outcome]:
    """terminate --force: an unreachable node is abandoned (recorded), not retried."""

    def wrapper(ctx: StepContext) -> Outcome:
        try:
            return fn(ctx)
        except (TransportError, PermanentTransportError) as exc:
            if not ctx.args.get("force"):
                raise
            ctx.log("error", f"node unreachable, abandoned by --force: {exc}")
            return Done("abandoned (forced)",
                        f"{ctx.node.name} unreachable: its objects of {ctx.service.domain} were "
                        f"abandoned (terminate --force)")

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@step("user.suspend")
def user_suspend(ctx: StepContext) -> Outcome:
    user = _user(ctx)
    info = ctx.panel.list_user(user)
    if info is None:
        return Done("absent", f"{user} does not exist on {ctx.node.name}: nothing to suspend")
    if info.get("SUSPENDED") == "yes":
        return Done("already suspended", f"{user} already suspended on {ctx.node.name}")
    ctx.panel.suspend_user(user)
    return Done("suspended", f"{user} suspended on {ctx.node.name}")


@step("user.unsuspend")
def user_unsuspend(ctx: StepContext) -> Outcome:
    user = _user(ctx)
    info = ctx.panel.list_user(user)
    if info is None:
        return Done("absent", f"{user} does not exist on {ctx.node.name}: nothing to unsuspend")
    if info.get("SUSPENDED") != "yes":
        return Done("already active", f"{user} already active on {ctx.node.name}")
    ctx.panel.unsuspend_user(user)
    return Done("unsuspended", f"{user} unsuspended on {ctx.node.name}")


@step("user.delete")
@forced
def user_delete(ctx: StepContext) -> Outcome:
    user = _user(ctx)
    info = ctx.panel.list_user(user)
    results = []
    if info is None:
        results.append("already present")  # already absent: the goal state holds
    else:
        if info.get("PACKAGE") != user:
            raise StepFailed(f"Hestia user {user} on {ctx.node.name} has package "
                             f"{info.get('PACKAGE')!r}, not its own: not removing it")
        ctx.panel.delete_user(user)
        results.append("created")
    if ctx.panel.list_package(user) is not None:
        others = [name for name, data in ctx.panel.list_users().items()
                  if str(data.get("PACKAGE", "")).startswith(user)]
        if others:
            ctx.log("info", f"package {user} kept: users {', '.join(sorted(others))} have a "
                            "package starting with that name")
        else:
            ctx.panel.delete_package(user)
            results.append("created")
    removed = combine(results) != "already present"
    return Done("removed" if removed else "already absent",
                f"{user} {'removed from' if removed else 'already absent on'} {ctx.node.name}")


@step("user.package")
def user_package(ctx: StepContext) -> Outcome:
    user = _user(ctx)
    if ctx.panel.list_user(user) is None:
        raise StepFailed(f"Hestia user {user} does not exist on {ctx.node.name}: redeploy first")
    result = ensure_package(ctx, ctx.args["role"], user)
    ctx.panel.change_user_package(user, user)
    return Done(result if result != "already present" else "unchanged",
                f"Package of {user} on {ctx.node.name} is now {ctx.product.name}")


@step("user.password")
def user_password(ctx: StepContext) -> Outcome:
    user = _user(ctx)
    if ctx.panel.list_user(user) is None:
        raise StepFailed(f"Hestia user {user} does not exist on {ctx.node.name}: redeploy first")
    ctx.panel.change_user_password(user, ctx.password())
    return Done("changed", f"Password of {user} changed on {ctx.node.name}")


def _mailbox(ctx: StepContext):
    """(provider user, parent, label, existing account or None) of a Vanity service, refusing
    a mailbox this service never claimed."""
    label, _, parent_name = ctx.service.domain.partition(".")
    provider = ctx.product.parent_domains[parent_name].mail_user
    account = ctx.panel.list_mail_account(provider, parent_name, label)
    if account is not None and not ctx.service.facts.get(f"mailbox:{label}@{parent_name}"):
        raise StepFailed(f"mailbox {label}@{parent_name} on {ctx.node.name} was not created by "
                         f"service {ctx.service.id}: not touching it")
    return provider, parent_name, label, account


@step("mailbox.suspend")
def mailbox_suspend(ctx: StepContext) -> Outcome:
    provider, parent, label, account = _mailbox(ctx)
    if account is None:
        return Done("absent", f"Mailbox {label}@{parent} does not exist")
    if account.get("SUSPENDED") == "yes":
        return Done("already suspended", f"Mailbox {label}@{parent} already suspended")
    ctx.panel.suspend_mail_account(provider, parent, label)
    return Done("suspended", f"Mailbox {label}@{parent} suspended")


@step("mailbox.unsuspend")
def mailbox_unsuspend(ctx: StepContext) -> Outcome:
    provider, parent, label, account = _mailbox(ctx)
    if account is None:
        return Done("absent", f"Mailbox {label}@{parent} does not exist")
    if account.get("SUSPENDED") != "yes":
        return Done("already active", f"Mailbox {label}@{parent} already active")
    ctx.panel.unsuspend_mail_account(provider, parent, label)
    return Done("unsuspended", f"Mailbox {label}@{parent} unsuspended")


@step("mailbox.delete")
@forced
def mailbox_delete(ctx: StepContext) -> Outcome:
    provider, parent, label, account = _mailbox(ctx)
    if account is None:
        return Done("already absent", f"Mailbox {label}@{parent} already absent")
    ctx.panel.delete_mail_account(provider, parent, label)
    return Done("removed", f"Mailbox {label}@{parent} removed")


@step("mailbox.quota")
def mailbox_quota(ctx: StepContext) -> Outcome:
    provider, parent, label, account = _mailbox(ctx)
    if account is None:
        raise StepFailed(f"mailbox {label}@{parent} does not exist: redeploy first")
    quota = str(ctx.limits.get("mail_disk_quota", "unlimited"))
    if str(account.get("QUOTA", "")) == quota:
        return Done("unchanged", f"Mailbox {label}@{parent} quota already {quota} MB")
    ctx.panel.change_mail_quota(provider, parent, label, quota)
    return Done("changed", f"Mailbox {label}@{parent} quota set to {quota} MB")


@step("mailbox.password")
def mailbox_password(ctx: StepContext) -> Outcome:
    provider, parent, label, account = _mailbox(ctx)
    if account is None:
        raise StepFailed(f"mailbox {label}@{parent} does not exist: redeploy first")
    ctx.panel.change_mail_password(provider, parent, label, ctx.password())
    return Done("changed", f"Password of mailbox {label}@{parent} changed")


@step("record.delete")
@forced
def record_delete(ctx: StepContext) -> Outcome:
    """Remove exactly this service's A record from the parent zone, nothing else."""
    from puqdeploy.zonetemplate import record_key

    label, _, parent_name = ctx.service.domain.partition(".")
    owner = ctx.product.parent_domains[parent_name].zone_owner
    if not ctx.service.facts.get(f"record:{label}.{parent_name}@{ctx.node.name}"):
        return Done("already absent", f"{ctx.service.domain} was never published on {ctx.node.name}")
    address = ctx.config.nodes[ctx.service.placement["web"]].ip
    wanted = record_key(label, "A", address)
    ours = [r for r in ctx.panel.list_dns_records(owner, parent_name)
            if record_key(r.get("RECORD", ""), r.get("TYPE", ""), r.get("VALUE", ""),
                          r.get("PRIORITY", "")) == wanted]
    for record in ours:
        ctx.panel.delete_dns_record(owner, parent_name, str(record["ID"]))
    if not ours:
        return Done("already absent", f"{ctx.service.domain} already absent on {ctx.node.name}")
    return Done("removed", f"{ctx.service.domain} removed from zone {parent_name} on {ctx.node.name}")
