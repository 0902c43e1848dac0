"""DNS role step: the DNS user, the zone and the template records on one DNS node.

One task per DNS node of the group, so a slow or dead name server holds up only its own task.
HestiaCP's v-add-dns-record has no duplicate check, so the zone is listed first and only the
records it lacks are added: re-running the step never doubles a record.
"""

from __future__ import annotations

from puqdeploy.outcomes import Done, Outcome, Retry
from puqdeploy.steps.accounts import ensure_user, group_nameservers
from puqdeploy.steps.base import StepContext, combine, step
from puqdeploy.steps.web import _verb
from puqdeploy.zonetemplate import Record, load_template, placeholders, record_key, render


def zone_records(ctx: StepContext) -> list[Record]:
    """The records this service's zone must hold, from the product's (or group's) template."""
    config, service = ctx.config, ctx.service
    product = ctx.product
    group = config.groups[product.group]
    placement = service.placement
    web_ip = config.nodes[placement["web"]].ip
    mail_node = config.nodes.get(placement.get("mail") or "")
    template = load_template(product.dns_template or group.dns_template)
    values = placeholders(
        service.domain, web_ip, mail_node.ip if mail_node else "", list(group.nameservers),
        mail_server_hostname=f"mail.{service.domain}" if mail_node else "",
        domainkey=service.facts.get("dkim", "") if mail_node else "",
        service_id=service.id, client_id=str(service.params.get("client_id", "")))
    return render(template, values)


@step("dns.zone")
def dns_zone(ctx: StepContext) -> Outcome:
    role = ctx.args.get("role", "dns")
    user = ctx.service.usernames[role]
    domain = ctx.service.domain
    results = [ensure_user(ctx, role)] if ctx.args.get("with_user", True) else []
    web_ip = ctx.config.nodes[ctx.service.placement["web"]].ip
    if ctx.panel.list_dns_domain(user, domain) is None:
        results.append(ctx.panel.add_dns_domain(user, domain, web_ip, group_nameservers(ctx)))
    else:
        results.append("already present")
    present = {record_key(r.get("RECORD", ""), r.get("TYPE", ""), r.get("VALUE", ""),
                          r.get("PRIORITY", "")) for r in ctx.panel.list_dns_records(user, domain)}
    added = 0
    wanted = zone_records(ctx)
    for record in wanted:
        if record.key() in present:
            continue
        ctx.panel.add_dns_record(user, domain, record.name, record.type, record.value,
                                 record.priority)
        present.add(record.key())
        added += 1
    results.append("created" if added else "already present")
    if ctx.config.dns.verify_zones and "dns" in ctx.node.roles:
        problem = verify_served(ctx, wanted)
        if problem:
            return Retry(problem)
    result = combine(results)
    detail = f", {added} record(s) added" if added else ""
    return Done(result, f"DNS zone {domain} {_verb(result)} on {ctx.node.name}{detail}")


VERIFIED_TYPES = ("NS", "A", "MX", "TXT")


def verify_served(ctx: StepContext, records: list[Record]) -> str | None:
    """Ask the node's own DNS server (its `ip`, `dns_port`) for the zone: an authoritative SOA
    and the key records must come back. None when served; otherwise why not (the step retries:
    a reload may still be under way, or the name server is down)."""
    from puqdeploy.dnscheck import verify_zone

    expected = [(r.name, r.type, f"{r.priority} {r.value}".strip() if r.priority else r.value)
                for r in records if r.type in VERIFIED_TYPES]
    problems = verify_zone(ctx.node.ip, ctx.node.dns_port, ctx.service.domain, expected,
                           ctx.config.dns.timeout_seconds)
    for problem in problems:
        ctx.log("check", problem)
    if not problems:
        ctx.log("check", f"{ctx.node.ip}:{ctx.node.dns_port} serves {ctx.service.domain} "
                         f"authoritatively ({len(expected)} records checked)")
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{ctx.node.name} does not serve {ctx.service.domain} yet: {problems[0]}{more}"
