"""The package + user pair every role starts with, shared by web, mail and DNS steps."""

from __future__ import annotations

from puqdeploy.packages import differs, package_values
from puqdeploy.steps.base import StepContext, StepFailed


def group_nameservers(ctx: StepContext) -> list[str]:
    product = ctx.product
    group = ctx.config.groups[product.group]
    return list(group.nameservers)


def ensure_package(ctx: StepContext, role: str, package: str) -> str:
    """Create or rewrite the user's package so it holds exactly the service's limits."""
    product = ctx.product
    wanted = package_values(role, ctx.limits, group_nameservers(ctx),
                            product.backend_template if role in ("web", "all") else None)
    current = ctx.panel.list_package(package)
    if current is not None and not differs(wanted, current):
        return "already present"
    ctx.panel.add_package(package, wanted, rewrite=current is not None)
    return "created" if current is None else "updated"


def ensure_user(ctx: StepContext, role: str) -> str:
    """Create the service's Hestia user for `role`, refusing to adopt somebody else's user.

    The package carries the user's name, so a user that exists with another package was not
    made for this service (a name clash with a pre-existing account): that is a permanent
    failure for an operator to look at, never something to overwrite.
    """
    user = ctx.service.usernames[role]
    package = user
    results = [ensure_package(ctx, role, package)]
    current = ctx.panel.list_user(user)
    if current is not None:
        if current.get("PACKAGE") != package:
            raise StepFailed(
                f"Hestia user {user} already exists on {ctx.node.name} with package "
                f"{current.get('PACKAGE')!r}: it does not belong to service {ctx.service.id}")
        results.append("already present")
    else:
        results.append(ctx.panel.add_user(user, ctx.password(), ctx.service.email, package))
    from puqdeploy.steps.base import combine

    return combine(results)
