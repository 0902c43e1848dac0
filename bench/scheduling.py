"""Scheduling efficiency: N Split services on the sandbox fleet, every simulated HestiaCP command
taking `delay` seconds, deployed by ONE `puqdeploy run` tick.

With `max_concurrency: 1` per node, no schedule can beat the busiest node's serial work, so
wall time ÷ that work says how much the runner loses to ordering, claiming and bookkeeping.

The simulated commands: `delay_seconds` is a command's whole duration counted from its bash
wrapper's start (hestia_sim.launched_at), and the simulator's fork server (sandbox/simd.py)
runs them, so a command costs a fork instead of a Python interpreter start (15–40 ms of CPU
each, which on a 2-core machine made five simulated nodes compete for the cores: every
command took longer the more nodes were busy, which separate HestiaCP machines do not).

Denominators, from the busiest node's NODE/commands.log:

- nominal (the issue's definition): its command count × delay.
- measured: Σ(end − start) of its commands (the delay, or the simulator's own work when that
  takes longer).
- serial floor: measured + commands × the start cost of one simulated command outside its
  logged start..end (bash starting, before it reads the clock: a bare serial loop's wall time
  per command minus its logged duration, on the same node, with the fork server): the time the
  busiest node's commands take back to back with no scheduler at all.

Also reported: the busiest node's busy span (first start .. last end), the idle gaps between its
consecutive commands (what the runner costs there), and whether any two commands ever
overlapped on a node (they must not: max_concurrency 1).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import builders
from bench.common import init_db, run_timed, write_sandbox


def measure(python: str, script: Path, workdir: Path, env: dict, services: int, delay: float) -> dict:
    from puqdeploy.sandbox.node import read_command_log, start_fork_server, stop_fork_server

    config_path = write_sandbox(workdir / "fleet-sched", delay=delay)
    builders.remove_db(config_path.parent / "puqdeploy.db")
    init_db(python, config_path, env)
    builders.create_services(config_path, [f"sched{i:03d}" for i in range(services)])
    # the simulator's fork server: a command costs a fork instead of an interpreter start, so
    # five simulated machines do not compete for this machine's cores (see sandbox/simd.py)
    server = start_fork_server(sorted((config_path.parent / "nodes").iterdir()), python)
    try:
        started = time.time()
        wall, proc = run_timed([str(script), "--config", str(config_path), "run", "--budget",
                                "3600"], env=env)
        nodes = _node_figures(config_path, started, read_command_log)
        busiest = max(nodes, key=lambda n: nodes[n]["commands"])
        startup = _start_cost(config_path.parent / "nodes" / busiest)
    finally:
        stop_fork_server(server)
    summary = proc.stderr.decode().strip().splitlines()[-1]
    b = nodes[busiest]
    nominal = b["commands"] * delay
    floor = b["busy_s"] + b["commands"] * startup
    import sqlite3

    conn = sqlite3.connect(config_path.parent / "puqdeploy.db")
    states = dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
    conn.close()
    return {"services": services, "delay_s": delay, "wall_s": wall, "summary": summary,
            "busiest": busiest, "nodes": nodes, "nominal_serial_s": nominal,
            "measured_serial_s": b["busy_s"], "ratio_nominal": wall / nominal,
            "ratio_measured": wall / b["busy_s"], "start_cost_s": startup, "serial_floor_s": floor,
            "ratio_floor": wall / floor, "task_states": states, "fork_server": True}


def _node_figures(config_path: Path, started: float, read_command_log) -> dict:
    """Per node: commands, busy time, span, lead-in, idle gaps and overlaps since `started`."""
    nodes = {}
    for node_dir in sorted((config_path.parent / "nodes").iterdir()):
        entries = [e for e in read_command_log(node_dir) if e["start"] >= started]
        if not entries:
            continue
        entries.sort(key=lambda e: e["start"])
        busy = sum(e["end"] - e["start"] for e in entries)
        gaps = [b["start"] - a["end"] for a, b in zip(entries, entries[1:])]
        nodes[node_dir.name] = {
            "commands": len(entries), "busy_s": busy,
            "span_s": entries[-1]["end"] - entries[0]["start"],
            "lead_in_s": entries[0]["start"] - started,
            "gap_median_ms": (sorted(gaps)[len(gaps) // 2] * 1000) if gaps else 0.0,
            "gaps_s": sum(gaps), "overlaps": sum(1 for e in entries if e.get("overlap")),
        }
    return nodes


def _start_cost(node_dir: Path, runs: int = 20) -> float:
    """What one simulated command costs outside its logged start..end (exec of the wrapper,
    interpreter start, imports): median wall time of a bare serial invocation minus its logged
    duration, on the same node with the same delay."""
    import json
    import statistics
    import subprocess

    extra = []
    program = node_dir / "bin" / "v-list-user"
    log = node_dir / "commands.log"
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([str(program), "admin", "json"], capture_output=True)
        wall = time.perf_counter() - t
        entry = json.loads(log.read_text().splitlines()[-1])
        extra.append(wall - (entry["end"] - entry["start"]))
    return statistics.median(extra)
