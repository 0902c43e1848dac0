"""Vanity steps: the mailbox on the provider's mail user, and the one A record in the parent zone.

The parent's mail domain, the parent zone (beyond this service's single record) and the
provider user are never created, changed or removed here: if they are missing the step fails
for an operator to look at rather than "fixing" shared infrastructure.

Ownership: a mailbox or record of the customer's name that exists before this service claimed
it belongs to somebody else. The step writes its claim (a service fact) BEFORE creating the
object, so a retry after a crash between the two still recognises its own work.
"""

from __future__ import annotations

from puqdeploy.outcomes import Done, Outcome
from puqdeploy.steps.base import StepContext, StepFailed, step
from puqdeploy.zonetemplate import record_key


def _parent(ctx: StepContext):
    label, _, parent_name = ctx.service.domain.partition(".")
    return label, parent_name, ctx.product.parent_domains[parent_name]


def _claim(ctx: StepContext, key: str) -> bool:
    """True when this service already claimed `key`; otherwise record the claim now."""
    if ctx.service.facts.get(key):
        return True
    ctx.set_fact(key, True)
    return False


@step("mail.account")
def mail_account(ctx: StepContext) -> Outcome:
    label, parent_name, parent = _parent(ctx)
    provider = parent.mail_user
    if ctx.panel.list_mail_domain(provider, parent_name) is None:
        raise StepFailed(f"the parent mail domain {parent_name} of user {provider} does not exist "
                         f"on {ctx.node.name}; puqdeploy never creates it")
    claim = f"mailbox:{label}@{parent_name}"
    existing = ctx.panel.list_mail_account(provider, parent_name, label)
    claimed = ctx.service.facts.get(claim)
    if existing is not None:
        if not claimed:
            raise StepFailed(f"mailbox {label}@{parent_name} already exists on {ctx.node.name} and "
                             f"was not created by service {ctx.service.id}")
        return Done("already present", f"Mailbox {label}@{parent_name} already present")
    _claim(ctx, claim)
    quota = ctx.service.limits.get("mail_disk_quota", "unlimited")
    result = ctx.panel.add_mail_account(provider, parent_name, label, ctx.password(), str(quota))
    return Done(result, f"Mailbox {label}@{parent_name} created")


@step("dns.record")
def dns_record(ctx: StepContext) -> Outcome:
    label, parent_name, parent = _parent(ctx)
    owner = parent.zone_owner
    address = ctx.config.nodes[ctx.service.placement["web"]].ip
    records = ctx.panel.list_dns_records(owner, parent_name) if ctx.panel.list_dns_domain(
        owner, parent_name) is not None else None
    if records is None:
        raise StepFailed(f"the parent zone {parent_name} of user {owner} does not exist on "
                         f"{ctx.node.name}; puqdeploy never creates it")
    wanted = record_key(label, "A", address)
    same_name = [r for r in records if r.get("RECORD", "").lower() == label]
    claim = f"record:{label}.{parent_name}@{ctx.node.name}"
    if any(record_key(r.get("RECORD", ""), r.get("TYPE", ""), r.get("VALUE", ""),
                      r.get("PRIORITY", "")) == wanted for r in same_name):
        if len(same_name) == 1:
            _claim(ctx, claim)
            return Done("already present", f"{ctx.service.domain} already published on {ctx.node.name}")
    if same_name:
        raise StepFailed(f"the name {label} is already used in zone {parent_name} on "
                         f"{ctx.node.name} ({len(same_name)} record(s)); it was not left for this service")
    _claim(ctx, claim)
    result = ctx.panel.add_dns_record(owner, parent_name, label, "A", address)
    return Done(result, f"{ctx.service.domain} published on {ctx.node.name}")
