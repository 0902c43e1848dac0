"""The task plan (a small DAG) of each deployment mode, and node placement.

A plan is pure data computed at `create` time from the config and the placement; it is written
with the service in one transaction, so from then on the queue alone drives the deployment and
a config change cannot alter a plan already accepted.
"""

from __future__ import annotations

from puqdeploy.frozen import field, frozen
from typing import Callable, Mapping, Optional

from puqdeploy.errors import UsageError

ROLE_SUFFIX = {"web": "-web", "mail": "-mail", "dns": "-dns", "all": ""}


@frozen
class TaskSpec:
    """One task of a plan; `key` is unique within the plan and used for dependencies."""

    key: str
    action: str
    label: str
    node: Optional[str]
    deps: tuple[str, ...] = ()
    blocking: bool = True
    args: Mapping[str, object] = field(default_factory=dict)


@frozen
class Placement:
    """Which node serves which role; DNS is every DNS node of the group, not a choice."""

    web: Optional[str]
    mail: Optional[str]
    dns: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"web": self.web, "mail": self.mail, "dns": list(self.dns)}

    def nodes(self) -> list[str]:
        """Every node the service lives on (for load counting), without duplicates."""
        seen: list[str] = []
        for name in [self.web, self.mail, *self.dns]:
            if name and name not in seen:
                seen.append(name)
        return seen


def least_loaded(config, group_name: str, role: str, load: Mapping[str, int]) -> str:
    """The active node with `role` in the group with the lowest services/capacity ratio.

    A node whose load reached its capacity does not fit. Ties go to the node listed first in
    the group, so placement is deterministic.
    """
    group = config.groups[group_name]
    needed = set(role.split("+"))  # "web+mail": one node with both roles (Unified)
    candidates = []
    for position, name in enumerate(group.nodes):
        node = config.nodes[name]
        if needed <= node.roles and node.active:
            used = load.get(name, 0)
            if used < node.capacity:
                candidates.append((used / node.capacity, position, name))
    if not candidates:
        described = ", ".join(
            f"{n} {load.get(n, 0)}/{config.nodes[n].capacity}{'' if config.nodes[n].active else ' inactive'}"
            for n in group.nodes if needed <= config.nodes[n].roles) or "none"
        raise UsageError(f"no {role} node with free capacity in group {group_name} "
                         f"(nodes with that role: {described})")
    return min(candidates)[2]


def place(config, product, load: Mapping[str, int], domain: str = "",
          limits: Optional[Mapping[str, object]] = None) -> Placement:
    """Choose nodes for every role the product's mode needs (`limits`: the resolved limits)."""
    limits = product.limits if limits is None else limits
    group = config.groups[product.group]
    dns_nodes = tuple(n for n in group.nodes
                      if "dns" in config.nodes[n].roles and config.nodes[n].active)
    if product.mode == "split":
        if not dns_nodes:
            raise UsageError(f"group {product.group} has no active dns node")
        return Placement(least_loaded(config, product.group, "web", load),
                         least_loaded(config, product.group, "mail", load), dns_nodes)
    if product.mode == "unified":
        node = least_loaded(config, product.group, "web+mail", load)
        return Placement(node, node, tuple(n for n in dns_nodes if n != node))
    if product.mode == "vanity":
        parent = vanity_parent(product, domain)
        web = least_loaded(config, product.group, "web", load) if has_site(limits) else None
        mail = parent.mail_node if has_mailbox(limits, parent) else None
        return Placement(web, mail, dns_nodes if parent.dns == "push" and web else ())
    raise UsageError(f"product {product.name}: unknown mode {product.mode}")


def vanity_parent(product, domain: str):
    """The product's parent domain that `domain` (label.parent) sits under."""
    label, _, parent = domain.partition(".")
    if parent not in product.parent_domains:
        offered = ", ".join(sorted(product.parent_domains)) or "none"
        raise UsageError(f"{domain}: product {product.name} offers names under {offered}, "
                         f"not under {parent or domain}")
    return product.parent_domains[parent]


def has_site(limits: Mapping[str, object]) -> bool:
    """Vanity: a web quota of 0 means the service has no website."""
    return limits.get("web_disk_quota") != 0


def has_mailbox(limits: Mapping[str, object], parent) -> bool:
    """Vanity: a mail quota of 0 (or a parent without a provider mail user) means no mailbox."""
    return parent.mail_user is not None and limits.get("mail_disk_quota") != 0


def usernames_for(mode: str, placement: Placement) -> tuple[str, ...]:
    """The Hestia users (by role) a service of this mode owns on its nodes.

    Vanity owns only its web user: the mailbox lives under the provider's user, which is never
    the service's (and so never recorded as such, so nothing can ever delete it)."""
    if mode == "vanity":
        return ("web",) if placement.web else ()
    return {"split": ("web", "mail", "dns"), "unified": ("all", "dns")}[mode]


def split_plan(domain: str, placement: Placement, ssl: bool = True, **_: object) -> list[TaskSpec]:
    """Split: one Hestia user per role; the zone pushed to every DNS node (one task each)."""
    plan = [
        TaskSpec("web.user", "web.user", "Creating web user", placement.web),
        TaskSpec("web.domain", "web.domain", f"Adding website {domain}", placement.web,
                 deps=("web.user",)),
        TaskSpec("mail.user", "mail.user", "Creating mail user", placement.mail),
        TaskSpec("mail.domain", "mail.domain", "Adding mail domain with DKIM", placement.mail,
                 deps=("mail.user",)),
    ]
    zone_keys = _zone_tasks(plan, placement.dns, deps=("mail.domain",))
    if ssl:
        plan += [
            TaskSpec("ssl.web", "ssl.web", "Issuing SSL certificate", placement.web,
                     deps=("web.domain", *zone_keys), blocking=False),
            TaskSpec("ssl.mail", "ssl.mail", "Issuing mail SSL certificate", placement.mail,
                     deps=("mail.domain", *zone_keys), blocking=False),
        ]
    return plan


def _zone_tasks(plan: list[TaskSpec], nodes, deps: tuple[str, ...], **args: object) -> list[str]:
    keys = []
    for node in nodes:
        key = f"dns.zone@{node}"
        keys.append(key)
        plan.append(TaskSpec(key, "dns.zone", f"Deploying DNS zone to {node}", node, deps=deps,
                             args=args))
    return keys


def unified_plan(domain: str, placement: Placement, ssl: bool = True, **_: object) -> list[TaskSpec]:
    """Unified: one user on one node holds web, mail and the local zone.

    The local zone is created before the mail domain, so HestiaCP adds the DKIM record to it
    itself; the zone is then pushed to the group's other DNS nodes (after DKIM exists).
    """
    node = placement.web
    plan = [
        TaskSpec("web.user", "web.user", "Creating hosting user", node, args={"role": "all"}),
        TaskSpec("web.domain", "web.domain", f"Adding website {domain}", node,
                 deps=("web.user",), args={"role": "all"}),
        TaskSpec("dns.local", "dns.zone", "Creating the DNS zone", node, deps=("web.user",),
                 args={"role": "all", "with_user": False}),
        TaskSpec("mail.domain", "mail.domain", "Adding mail domain with DKIM", node,
                 deps=("dns.local",), args={"role": "all"}),
    ]
    zone_keys = _zone_tasks(plan, placement.dns, deps=("mail.domain",))
    if ssl:
        plan += [
            TaskSpec("ssl.web", "ssl.web", "Issuing SSL certificate", node,
                     deps=("web.domain", "dns.local", *zone_keys), blocking=False,
                     args={"role": "all"}),
            TaskSpec("ssl.mail", "ssl.mail", "Issuing mail SSL certificate", node,
                     deps=("mail.domain", *zone_keys), blocking=False, args={"role": "all"}),
        ]
    return plan


def vanity_plan(domain: str, placement: Placement, ssl: bool = True, **_: object) -> list[TaskSpec]:
    """Vanity `label.parent`: a web user for the name, one mailbox on the provider's mail user,
    and (parent DNS mode push) one A record in the parent zone on every DNS node. Nothing else
    of the parent is ever touched."""
    label, _, parent = domain.partition(".")
    plan: list[TaskSpec] = []
    site_keys: tuple[str, ...] = ()
    if placement.web:
        plan += [
            TaskSpec("web.user", "web.user", "Creating web user", placement.web),
            TaskSpec("web.domain", "web.domain", f"Adding website {domain}", placement.web,
                     deps=("web.user",)),
        ]
        site_keys = ("web.domain",)
    if placement.mail:
        plan.append(TaskSpec("mail.account", "mail.account", f"Creating mailbox {label}@{parent}",
                             placement.mail))
    record_keys = []
    for node in placement.dns:
        key = f"dns.record@{node}"
        record_keys.append(key)
        plan.append(TaskSpec(key, "dns.record", f"Publishing {domain} on {node}", node,
                             deps=site_keys))
    if ssl and placement.web:
        plan.append(TaskSpec("ssl.web", "ssl.web", "Issuing SSL certificate", placement.web,
                             deps=(*site_keys, *record_keys), blocking=False,
                             args={"aliases": []}))
    return plan


PLANNERS: dict[str, Callable[..., list[TaskSpec]]] = {
    "split": split_plan, "unified": unified_plan, "vanity": vanity_plan}


def deploy_plan(mode: str, domain: str, placement: Placement, ssl: bool = True) -> list[TaskSpec]:
    """The deployment plan for a mode."""
    try:
        planner = PLANNERS[mode]
    except KeyError:
        raise UsageError(f"unknown mode {mode}") from None
    plan = planner(domain, placement, ssl)
    if not plan:
        raise UsageError(f"{domain}: the product gives this service nothing to deploy "
                         "(no website and no mailbox)")
    return plan


ROLE_NAMES = {"web": "web user", "mail": "mail user", "dns": "DNS user", "all": "hosting user"}
LIFECYCLE_STEPS = {
    # kind: (user action, verb for labels, vanity mailbox action)
    "suspend": ("user.suspend", "Suspending", "mailbox.suspend"),
    "unsuspend": ("user.unsuspend", "Unsuspending", "mailbox.unsuspend"),
    "terminate": ("user.delete", "Removing", "mailbox.delete"),
    "change-package": ("user.package", "Changing the package of", "mailbox.quota"),
    "change-password": ("user.password", "Changing the password of", "mailbox.password"),
}


def service_users(mode: str, placement: Placement) -> list[tuple[str, str]]:
    """(role, node) of every Hestia user the service owns, in plan order."""
    if mode == "split":
        users = [("web", placement.web), ("mail", placement.mail)]
    elif mode == "unified":
        users = [("all", placement.web)]
    else:
        users = [("web", placement.web)] if placement.web else []
    return users + [("dns", node) for node in placement.dns if mode != "vanity"]


def lifecycle_plan(kind: str, mode: str, domain: str, placement: Placement,
                   usernames: Mapping[str, str], args: Mapping[str, object]) -> list[TaskSpec]:
    """Tasks of a lifecycle operation: one per Hestia user per node, plus Vanity's mailbox
    (on the provider's mail user) and, for terminate, its record on each DNS node. The tasks
    are independent of each other, so one unreachable node holds up only its own task."""
    try:
        action, verb, mailbox_action = LIFECYCLE_STEPS[kind]
    except KeyError:
        raise UsageError(f"unknown operation {kind}") from None
    plan = []
    for role, node in service_users(mode, placement):
        plan.append(TaskSpec(f"{action}.{role}@{node}", action,
                             f"{verb} {ROLE_NAMES[role]} {usernames[role]} on {node}", node,
                             args={"role": role, **args}))
    if mode == "vanity":
        label, _, parent = domain.partition(".")
        if placement.mail:
            plan.append(TaskSpec(mailbox_action, mailbox_action,
                                 f"{verb} mailbox {label}@{parent}", placement.mail, args=dict(args)))
        if kind == "terminate":
            for node in placement.dns:
                plan.append(TaskSpec(f"record.delete@{node}", "record.delete",
                                     f"Removing {domain} from zone {parent} on {node}", node,
                                     args=dict(args)))
    return plan


def check_plan(plan: list[TaskSpec]) -> None:
    """Every dependency names an earlier task (so the plan is acyclic by construction)."""
    seen: set[str] = set()
    for spec in plan:
        missing = [dep for dep in spec.deps if dep not in seen]
        if missing or spec.key in seen:
            raise ValueError(f"bad plan at {spec.key}: unknown or later deps {missing}")
        seen.add(spec.key)
