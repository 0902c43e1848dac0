"""Auto-SSL, one non-blocking task per role: wait until the names point at the node, then ask
Let's Encrypt through HestiaCP.

- web role: the domain and its aliases (www.) must resolve to the web node's `ip`;
- mail role: mail.DOMAIN must resolve to the mail node's `ip`; HestiaCP's MAIL=yes certificate
  covers mail.DOMAIN and webmail.DOMAIN.

Non-blocking: the site is live (service `active`) while its certificate waits for DNS. While the
names do not resolve to the node the step returns Wait — re-checked every `ssl.recheck_seconds`,
no attempt used — until `ssl.give_up_after_hours`, then it fails without blocking. A Let's
Encrypt failure (exit 15: validation, rate limit) is a Retry with back-off.
"""

from __future__ import annotations

from puqdeploy.hestia import E_NOTEXIST, HestiaError
from puqdeploy.outcomes import Done, Outcome, Wait
from puqdeploy.steps.base import StepContext, step


def _wait(ctx: StepContext, reason: str) -> Wait:
    ssl = ctx.config.ssl
    return Wait(reason, ssl.recheck_seconds, ssl.give_up_after_hours * 3600)


def _unresolved(ctx: StepContext, names: list[str]) -> str | None:
    """Why the names do not point at this node yet (None when they all do)."""
    from puqdeploy.dnscheck import points_at, resolve_a

    dns = ctx.config.dns
    for name in names:
        resolution = resolve_a(name, dns.resolvers, dns.port, dns.timeout_seconds)
        ctx.log("check", f"{name} -> {', '.join(resolution.addresses) or resolution.error}")
        if not points_at(resolution, ctx.node.ip):
            seen = ", ".join(resolution.addresses) or resolution.error
            return f"{name} does not point at {ctx.node.ip} yet ({seen})"
    return None


def _issue(ctx: StepContext, user: str, domain: str, aliases: list[str], mail: bool):
    try:
        ctx.panel.add_letsencrypt(user, domain, aliases, mail=mail)
    except HestiaError as exc:
        if exc.code == E_NOTEXIST and "dns" in exc.output.lower():
            return _wait(ctx, f"the panel cannot resolve {domain} yet")
        raise
    return None


def _enabled(ctx: StepContext) -> bool:
    return ctx.config.ssl.enabled and ctx.product.ssl


@step("ssl.web")
def ssl_web(ctx: StepContext) -> Outcome:
    domain = ctx.service.domain
    if not _enabled(ctx):
        return Done("disabled", f"Auto-SSL is disabled for {domain}")
    user = ctx.service.usernames[ctx.args.get("role", "web")]
    if (ctx.panel.list_web_domain(user, domain) or {}).get("LETSENCRYPT") == "yes":
        return Done("already present", f"SSL certificate for {domain} already installed")
    aliases = list(ctx.args.get("aliases", [f"www.{domain}"]))
    reason = _unresolved(ctx, [domain, *aliases])
    if reason:
        return _wait(ctx, reason)
    return _issue(ctx, user, domain, aliases, mail=False) or Done(
        "created", f"SSL certificate issued for {domain}")


@step("ssl.mail")
def ssl_mail(ctx: StepContext) -> Outcome:
    domain = ctx.service.domain
    if not _enabled(ctx):
        return Done("disabled", f"Auto-SSL is disabled for mail.{domain}")
    user = ctx.service.usernames[ctx.args.get("role", "mail")]
    if (ctx.panel.list_mail_domain(user, domain) or {}).get("LETSENCRYPT") == "yes":
        return Done("already present", f"SSL certificate for mail.{domain} already installed")
    reason = _unresolved(ctx, [f"mail.{domain}"])
    if reason:
        return _wait(ctx, reason)
    return _issue(ctx, user, domain, [], mail=True) or Done(
        "created", f"SSL certificate issued for mail.{domain}")
