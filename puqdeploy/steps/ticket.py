"""The support-ticket step: tell staff about a terminal failure (tickets.py does the talking).

One ticket per service and operation: the first failure opens it, later failures of the same
operation reply to it (the reference is kept on the operation). A transient delivery problem
(endpoint down, 5xx, timeout) is a Retry like any other step; a configuration problem (bad
credentials, unknown department) is a Fail that says what to fix.
"""

from __future__ import annotations

from puqdeploy.outcomes import Done, Fail, Outcome, Retry
from puqdeploy.steps.base import StepContext, step


@step("ticket.open")
def ticket_open(ctx: StepContext) -> Outcome:
    from puqdeploy import tickets

    config = ctx.config.tickets
    if not config.enabled:
        return Done("disabled", None)
    facts = tickets.FailureFacts.from_json(ctx.args["facts"])
    existing = ctx.extra["get_ticket"]()
    try:
        reference = tickets.deliver(config, facts, existing)
    except tickets.TicketError as exc:
        if exc.ticket and not existing:
            ctx.extra["set_ticket"](exc.ticket)  # opened, then the hook failed: never open twice
        ctx.log("error", str(exc))
        return Retry(str(exc)) if exc.transient else Fail(str(exc))
    ctx.extra["set_ticket"](reference)
    verb = "updated" if existing else "opened"
    ctx.log("info", f"ticket {reference} {verb}")
    return Done(f"ticket {reference} {verb}", "Our staff have been notified")
