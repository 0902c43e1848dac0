"""Mail role steps: the mail user (with its package) and the mail domain with DKIM.

The mail domain step also reads the DKIM public record and stores it as a service fact, so the
DNS steps that follow (on other nodes) can publish it.
"""

from __future__ import annotations

from puqdeploy.outcomes import Done, Outcome
from puqdeploy.steps.accounts import ensure_user
from puqdeploy.steps.base import StepContext, StepFailed, combine, step
from puqdeploy.steps.web import _verb


def mail_role(ctx: StepContext) -> str:
    return ctx.args.get("role", "mail")


@step("mail.user")
def mail_user(ctx: StepContext) -> Outcome:
    role = mail_role(ctx)
    result = ensure_user(ctx, role)
    user = ctx.service.usernames[role]
    return Done(result, f"Mail user {user} {_verb(result)} on {ctx.node.name}")


@step("mail.domain")
def mail_domain(ctx: StepContext) -> Outcome:
    role = mail_role(ctx)
    user = ctx.service.usernames[role]
    domain = ctx.service.domain
    results = []
    if ctx.panel.list_mail_domain(user, domain) is None:
        results.append(ctx.panel.add_mail_domain(user, domain))
    else:
        results.append("already present")
    dkim = ctx.panel.dkim_record(user, domain)
    if dkim is None:
        results.append(ctx.panel.add_dkim(user, domain))
        dkim = ctx.panel.dkim_record(user, domain)
    if not dkim:
        raise StepFailed(f"mail domain {domain} on {ctx.node.name} has no DKIM key after creating one")
    ctx.set_fact("dkim", dkim)
    result = combine(results)
    return Done(result, f"Mail domain {domain} {_verb(result)} on {ctx.node.name} (DKIM ready)")
