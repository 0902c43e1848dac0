"""Web role steps: the web user (with its package) and the web domain with its PHP backend."""

from __future__ import annotations

from puqdeploy.outcomes import Done, Outcome
from puqdeploy.steps.accounts import ensure_user
from puqdeploy.steps.base import StepContext, combine, step


def web_role(ctx: StepContext) -> str:
    """`web` for Split/Vanity, `all` for the single Unified user."""
    return ctx.args.get("role", "web")


@step("web.user")
def web_user(ctx: StepContext) -> Outcome:
    role = web_role(ctx)
    result = ensure_user(ctx, role)
    user = ctx.service.usernames[role]
    return Done(result, f"Web user {user} {_verb(result)} on {ctx.node.name}")


@step("web.domain")
def web_domain(ctx: StepContext) -> Outcome:
    role = web_role(ctx)
    user = ctx.service.usernames[role]
    domain = ctx.service.domain
    results = []
    current = ctx.panel.list_web_domain(user, domain)
    if current is None:
        results.append(ctx.panel.add_web_domain(user, domain))
        current = ctx.panel.list_web_domain(user, domain) or {}
    else:
        results.append("already present")
    template = ctx.product.backend_template
    if template and current.get("BACKEND") != template:
        results.append(ctx.panel.change_backend(user, domain, template))
    result = combine(results)
    return Done(result, f"Website {domain} {_verb(result)} on {ctx.node.name}")


def _verb(result: str) -> str:
    return {"created": "created", "updated": "updated"}.get(result, "already present")
