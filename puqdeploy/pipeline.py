"""The task plan (a small DAG) of each deployment mode, and node placement.

A plan is pure data computed at `create` time from the config and the placement; it is written
with the service in one transaction, so from then on the queue alone drives the deployment and
a config change cannot alter a plan already accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from puqdeploy.errors import UsageError

ROLE_SUFFIX = {"web": "-web", "mail": "-mail", "dns": "-dns"}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a plan; `key` is unique within the plan and used for dependencies."""

    key: str
    action: str
    label: str
    node: Optional[str]
    deps: tuple[str, ...] = ()
    blocking: bool = True
    args: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
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
    candidates = []
    for position, name in enumerate(group.nodes):
        node = config.nodes[name]
        if role in node.roles and node.active:
            used = load.get(name, 0)
            if used < node.capacity:
                candidates.append((used / node.capacity, position, name))
    if not candidates:
        described = ", ".join(
            f"{n} {load.get(n, 0)}/{config.nodes[n].capacity}{'' if config.nodes[n].active else ' inactive'}"
            for n in group.nodes if role in config.nodes[n].roles) or "none"
        raise UsageError(f"no {role} node with free capacity in group {group_name} "
                         f"(nodes with that role: {described})")
    return min(candidates)[2]


def place(config, product, load: Mapping[str, int]) -> Placement:
    """Choose nodes for every role the product's mode needs."""
    group = config.groups[product.group]
    dns_nodes = tuple(n for n in group.nodes
                      if "dns" in config.nodes[n].roles and config.nodes[n].active)
    if product.mode == "split":
        if not dns_nodes:
            raise UsageError(f"group {product.group} has no active dns node")
        return Placement(least_loaded(config, product.group, "web", load),
                         least_loaded(config, product.group, "mail", load), dns_nodes)
    raise UsageError(f"product {product.name}: mode {product.mode} is not supported yet")


def usernames_for(mode: str) -> tuple[str, ...]:
    """The Hestia users (by role) a service of this mode owns."""
    if mode == "split":
        return ("web", "mail", "dns")
    raise UsageError(f"mode {mode} is not supported yet")


def split_plan(domain: str, placement: Placement, ssl: bool = True) -> list[TaskSpec]:
    """Split: one Hestia user per role; the zone pushed to every DNS node (one task each)."""
    plan = [
        TaskSpec("web.user", "web.user", "Creating web user", placement.web),
        TaskSpec("web.domain", "web.domain", f"Adding website {domain}", placement.web,
                 deps=("web.user",)),
        TaskSpec("mail.user", "mail.user", "Creating mail user", placement.mail),
        TaskSpec("mail.domain", "mail.domain", "Adding mail domain with DKIM", placement.mail,
                 deps=("mail.user",)),
    ]
    zone_keys = []
    for node in placement.dns:
        key = f"dns.zone@{node}"
        zone_keys.append(key)
        plan.append(TaskSpec(key, "dns.zone", f"Deploying DNS zone to {node}", node,
                             deps=("mail.domain",)))
    if ssl:
        plan.append(TaskSpec("ssl.web", "ssl.web", "Issuing SSL certificate", placement.web,
                             deps=("web.domain", *zone_keys), blocking=False))
    return plan


PLANNERS: dict[str, Callable[..., list[TaskSpec]]] = {"split": split_plan}


def deploy_plan(mode: str, domain: str, placement: Placement, ssl: bool = True) -> list[TaskSpec]:
    """The deployment plan for a mode."""
    try:
        planner = PLANNERS[mode]
    except KeyError:
        raise UsageError(f"mode {mode} is not supported yet") from None
    return planner(domain, placement, ssl)


def check_plan(plan: list[TaskSpec]) -> None:
    """Every dependency names an earlier task (so the plan is acyclic by construction)."""
    seen: set[str] = set()
    for spec in plan:
        missing = [dep for dep in spec.deps if dep not in seen]
        if missing or spec.key in seen:
            raise ValueError(f"bad plan at {spec.key}: unknown or later deps {missing}")
        seen.add(spec.key)
