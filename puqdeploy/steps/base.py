"""The step protocol: what a step receives, how it reports, and the one place errors map to outcomes.

A step is a function `(ctx: StepContext) -> Outcome` registered under its action name
(`web.user`, `dns.zone`, ...). Steps read the current state first (a `v-list-*` "fact") and
then act or report "already present", so running one twice is harmless — the queue delivers
at least once.

Errors a step does not handle are mapped here, in one place:
- TransportError / CommandTimeout / transient HestiaError -> Retry (back off)
- PermanentTransportError / other HestiaError / StepFailed -> Fail (terminal)
- anything else (a bug) -> Retry with the exception text, so it is visible and bounded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from puqdeploy.hestia import HestiaError, Panel
from puqdeploy.outcomes import Done, Fail, Outcome, Retry
from puqdeploy.remote import CommandTimeout, PermanentTransportError, TransportError


class StepFailed(Exception):
    """Raised by a step for a permanent problem an operator must fix."""


@dataclass
class ServiceView:
    """The parts of a service row steps need, decoded once."""

    id: str
    product: str
    mode: str
    domain: str
    email: str
    placement: dict
    usernames: dict
    limits: dict
    facts: dict
    params: dict

    def for_attempt(self) -> "ServiceView":
        """A copy for one step attempt: its own facts dict (set_fact adds to it), the rest
        shared read-only with the other attempts of the same round."""
        return ServiceView(**{**self.__dict__, "facts": dict(self.facts)})


@dataclass
class StepContext:
    """Everything one step attempt may use. Built by the runner per lease."""

    action: str
    args: dict
    service: ServiceView
    config: Any  # puqdeploy.config.Config
    node: Any  # puqdeploy.config.NodeConfig or None
    panel: Optional[Panel]
    log: Callable[[str, str], None]
    password: Callable[[], str]
    set_fact: Callable[[str, Any], None]
    extra: dict = field(default_factory=dict)

    @property
    def product(self):
        """The product the step works for: a change-package names the new one in its args."""
        return self.config.products.get(self.args.get("product") or self.service.product)

    @property
    def limits(self) -> dict:
        """The limits to apply: a change-package carries the new ones in its args."""
        return self.args.get("limits") or self.service.limits


StepFn = Callable[[StepContext], Outcome]
REGISTRY: dict[str, StepFn] = {}


def step(action: str) -> Callable[[StepFn], StepFn]:
    """Register a step function under its action name."""

    def register(fn: StepFn) -> StepFn:
        REGISTRY[action] = fn
        return fn

    return register


_loaded = False


def lookup(action: str) -> Optional[StepFn]:
    """The step for an action; importing the step modules registers them on first use."""
    global _loaded
    if not _loaded:
        from puqdeploy.steps import (dns, lifecycle, mail, ssl, ticket, vanity,  # noqa: F401
                                     web)  # importing registers them
        _loaded = True
    return REGISTRY.get(action)


def execute(fn: StepFn, ctx: StepContext) -> Outcome:
    """Run a step and map every exception to an outcome (see module docstring)."""
    try:
        return fn(ctx)
    except CommandTimeout as exc:
        ctx.log("error", str(exc))
        return Retry(str(exc), timeout=True)
    except TransportError as exc:
        ctx.log("error", f"connection problem: {exc}")
        name = ctx.node.name if ctx.node else "?"
        detail = str(exc).removeprefix(f"node {name}: ")  # SSH errors already name the node
        return Retry(f"node {name} unreachable: {detail}")
    except PermanentTransportError as exc:
        ctx.log("error", str(exc))
        return Fail(str(exc))
    except HestiaError as exc:
        ctx.log("error", str(exc))
        return Retry(str(exc)) if exc.transient else Fail(str(exc))
    except StepFailed as exc:
        ctx.log("error", str(exc))
        return Fail(str(exc))
    except Exception as exc:  # a bug: keep it visible and bounded by max_attempts
        ctx.log("error", internal_error(exc))
        return Retry(internal_error(exc))


def internal_error(exc: BaseException) -> str:
    """How a bug shows in the log and as the task's error: visible, bounded by max_attempts."""
    return f"internal error: {type(exc).__name__}: {exc}"


def combine(results: list[str]) -> str:
    """One result word for a step made of several checks/acts."""
    changed = [r for r in results if r not in ("already present", "unchanged")]
    if not changed:
        return "already present"
    return "updated" if "already present" in results else "created"


def service_from_row(row) -> ServiceView:
    """Decode a `services` row into the view steps use."""
    return ServiceView(
        id=row["id"], product=row["product"], mode=row["mode"], domain=row["domain"],
        email=row["email"], placement=json.loads(row["placement"]),
        usernames=json.loads(row["usernames"]), limits=json.loads(row["limits"]),
        facts=json.loads(row["facts"]), params=json.loads(row["params"]))


@step("test.noop")
def noop(ctx: StepContext) -> Outcome:
    """A step that does nothing: used by benchmarks and queue tests."""
    return Done("done")
