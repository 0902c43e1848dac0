"""DNS role step: the DNS user, the zone and the template records on one DNS node.

One task per DNS node of the group, so a slow or dead name server holds up only its own task.
HestiaCP's v-add-dns-record has no duplicate check, so the zone is listed first and only the
records it lacks are added: re-running the step never doubles a record.
"""

from __future__ import annotations

from puqdeploy.outcomes import Done, Outcome
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
    for record in zone_records(ctx):
        if record.key() in present:
            continue
        ctx.panel.add_dns_record(user, domain, record.name, record.type, record.value,
                                 record.priority)
        present.add(record.key())
        added += 1
    results.append("created" if added else "already present")
    result = combine(results)
    detail = f", {added} record(s) added" if added else ""
    return Done(result, f"DNS zone {domain} {_verb(result)} on {ctx.node.name}{detail}")
