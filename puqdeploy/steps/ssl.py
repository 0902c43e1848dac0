"""Auto-SSL: wait until the domain points at the node, then ask Let's Encrypt.

Non-blocking: the site is live (service `active`) while its certificate waits for DNS. While the
names do not resolve to the node the step returns Wait — re-checked every `ssl.recheck_seconds`,
no attempt used — until `ssl.give_up_after_hours`. A Let's Encrypt failure (exit 15: validation
or rate limit) is a Retry with back-off.
"""

from __future__ import annotations

from puqdeploy.hestia import E_NOTEXIST, HestiaError
from puqdeploy.outcomes import Done, Outcome, Wait
from puqdeploy.steps.base import StepContext, step


def _wait(ctx: StepContext, reason: str) -> Wait:
    ssl = ctx.config.ssl
    return Wait(reason, ssl.recheck_seconds, ssl.give_up_after_hours * 3600)


@step("ssl.web")
def ssl_web(ctx: StepContext) -> Outcome:
    if not ctx.config.ssl.enabled or not ctx.product.ssl:
        return Done("disabled", f"Auto-SSL is disabled for {ctx.service.domain}")
    from puqdeploy.dnscheck import points_at, resolve_a

    role = ctx.args.get("role", "web")
    user = ctx.service.usernames[role]
    domain = ctx.service.domain
    current = ctx.panel.list_web_domain(user, domain) or {}
    if current.get("LETSENCRYPT") == "yes":
        return Done("already present", f"SSL certificate for {domain} already installed")
    names = [domain] + list(ctx.args.get("aliases", [f"www.{domain}"]))
    dns = ctx.config.dns
    for name in names:
        resolution = resolve_a(name, dns.resolvers, dns.port, dns.timeout_seconds)
        ctx.log("check", f"{name} -> {', '.join(resolution.addresses) or resolution.error}")
        if not points_at(resolution, ctx.node.ip):
            seen = ", ".join(resolution.addresses) or resolution.error
            return _wait(ctx, f"{name} does not point at {ctx.node.ip} yet ({seen})")
    try:
        ctx.panel.add_letsencrypt(user, domain, names[1:], mail=False)
    except HestiaError as exc:
        if exc.code == E_NOTEXIST and "dns" in exc.output.lower():
            return _wait(ctx, f"the panel cannot resolve {domain} yet")
        raise
    return Done("created", f"SSL certificate issued for {domain}")
