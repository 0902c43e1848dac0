"""Rich views for people: the status panel (header, progress, timeline, activity) and listings.

Drawn from the same dicts `--json` prints (views.py). rich decides about colour itself: no
colour with NO_COLOR, and no control codes at all when stdout is not a terminal (a pipe).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

STATE_STYLE = {
    "done": "green", "active": "green", "running": "cyan", "deploying": "cyan", "queued": "blue",
    "pending": "dim", "waiting": "yellow", "failed": "bold red", "error": "bold red",
    "cancelled": "dim", "suspended": "yellow", "terminated": "dim",
}
SETTLED = ("active", "error", "suspended", "terminated")


def _console() -> Console:
    """A console that is 120 columns wide when writing to a pipe or file (rich would use 80),
    so timelines piped into `less` or a ticket stay on one line per task."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=120)
    return console


def _hms(iso: str | None) -> str:
    return iso[11:19] if iso else "-"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 100 else f"{seconds / 60:.1f}m"


def status_view(payload: dict):
    """The whole status screen as one renderable."""
    placement = payload["placement"]
    dns = ", ".join(placement.get("dns") or []) or "-"
    header = Text.assemble(
        (f"{payload['service_id']}", "bold"), "  ", payload["domain"], "  ",
        f"{payload['product']} ({payload['mode']})", "  ",
        (payload["state"], STATE_STYLE.get(payload["state"], "")),
        f"  operation: {payload['operation']}\n",
        f"web: {placement.get('web') or '-'}   mail: {placement.get('mail') or '-'}   dns: {dns}")
    progress = payload["progress"]
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(progress["total"], 1), completed=progress["done"], width=40),
                f"{progress['percent']}%  ({progress['done']}/{progress['total']} steps)")
    timeline = Table(title="Timeline", expand=False, title_justify="left")
    for column in ("step", "node", "state", "tries", "started", "took"):
        timeline.add_column(column, no_wrap=column != "step")
    timeline.add_column("result / last error", overflow="fold")
    for task in payload["tasks"]:
        outcome = task["result"] if task["state"] == "done" else (task["last_error"] or task["result"] or "")
        label = task["label"] + ("" if task["blocking"] else " (optional)")
        timeline.add_row(label, task["node"] or "-",
                         Text(task["state"], STATE_STYLE.get(task["state"], "")),
                         f"{task['attempts']}/{task['max_attempts']}", _hms(task["started_at"]),
                         _dur(task["duration_s"]), outcome)
    activity = Table.grid(padding=(0, 1))
    for item in payload["activity"][-8:]:
        activity.add_row(Text(_hms(item["at"]), "dim"), item["message"])
    parts = [Panel(header, title="Service", title_align="left"), bar]
    if payload["error"]:
        parts.append(Panel(Text(payload["error"], "bold red"), title="Deploy error", title_align="left"))
    parts += [timeline, Panel(activity, title="Recent activity", title_align="left")]
    return Group(*parts)


def history_view(operations: list[dict]):
    """Earlier operations (superseded plans, finished lifecycle operations), newest first."""
    table = Table(title="Earlier operations", title_justify="left", expand=False)
    for column in ("operation", "step", "node", "state", "tries", "started", "took"):
        table.add_column(column, no_wrap=column != "step", style="dim")
    table.add_column("result / last error", overflow="fold", style="dim")
    for op in operations:
        title = f"#{op['operation_id']} {op['kind']} ({op['state']})"
        for index, task in enumerate(op["tasks"]):
            outcome = task["result"] if task["state"] == "done" else (task["last_error"] or task["result"] or "")
            table.add_row(title if index == 0 else "", task["label"], task["node"] or "-", task["state"],
                          f"{task['attempts']}/{task['max_attempts']}", _hms(task["started_at"]),
                          _dur(task["duration_s"]), outcome)
    return table


def print_status(payload: dict, earlier: list[dict] | None = None) -> None:
    console = _console()
    console.print(status_view(payload))
    if earlier:
        console.print(history_view(earlier))


def watch_status(fetch: Callable[[], dict], interval: float = 1.0,
                 until: Optional[Callable[[dict], bool]] = None) -> None:
    """Redraw in place (rich Live) until the service settles (or `until` says so) or the user
    presses Ctrl-C. In a pipe rich draws only the final frame, so the output stays clean."""
    console = _console()
    payload = fetch()
    done = until or _settled
    try:
        with Live(status_view(payload), console=console, refresh_per_second=4,
                  auto_refresh=False) as live:
            while not done(payload):
                time.sleep(interval)
                payload = fetch()
                live.update(status_view(payload), refresh=True)
    except KeyboardInterrupt:
        pass


def _settled(payload: dict) -> bool:
    if payload["state"] not in SETTLED:
        return False
    return not any(t["state"] in ("running",) for t in payload["tasks"] if t["blocking"])


def print_services(payload: dict) -> None:
    console = _console()
    counts = "  ".join(f"{state}: {n}" for state, n in sorted(payload["counts"].items())) or "no services"
    console.print(counts)
    table = Table()
    for column in ("service", "domain", "product", "mode", "state", "created", "error"):
        table.add_column(column)
    for svc in payload["services"]:
        table.add_row(svc["service_id"], svc["domain"], svc["product"], svc["mode"],
                      Text(svc["state"], STATE_STYLE.get(svc["state"], "")),
                      svc["created_at"] or "-", svc["error"] or "")
    console.print(table)


def print_tasks(rows: list[dict]) -> None:
    table = Table()
    for column in ("id", "service", "action", "node", "state", "tries", "run after", "started",
                   "finished", "result / last error"):
        table.add_column(column)
    for task in rows:
        outcome = task["result"] if task["state"] == "done" else (task["last_error"] or task["result"] or "")
        state = task["state"] + (" (superseded)" if task.get("superseded") else "")
        table.add_row(str(task["id"]), task["service_id"], task["action"], task["node"] or "-",
                      Text(state, STATE_STYLE.get(task["state"], "")),
                      f"{task['attempts']}/{task['max_attempts']}", task["run_after"] or "-",
                      task["started_at"] or "-", task["finished_at"] or "-", outcome)
    _console().print(table)
