"""Overlapping cron ticks: 4 `puqdeploy run` processes started together over 100 services.

Checks the queue's promises with real processes against one real SQLite file: nothing runs
twice, no node limited to one command ever runs two, nothing is lost.
"""

from __future__ import annotations

from collections import defaultdict

from puqdeploy import orders, store
from puqdeploy.config import load_config
from puqdeploy.sandbox.node import read_command_log, read_panel
from puqdeploy.secretbox import SecretBox

SERVICES = 100
RUNNERS = 4


def _no_overlap(intervals: list[tuple[float, float]]) -> bool:
    intervals.sort()
    return all(prev[1] <= nxt[0] for prev, nxt in zip(intervals, intervals[1:]))


def test_four_runners_over_a_hundred_services(sandbox):
    sandbox.edit_config(ssl={"enabled": False})  # DNS waits are not what this test is about
    config = load_config(str(sandbox.config_path))
    conn = store.open_store(config.database)
    box = SecretBox.from_file(config.key_file)
    for n in range(SERVICES):
        orders.create_service(conn, config, box, service_id=f"svc{n}", product="sandbox-split",
                              domain=f"site{n}.example.com")
    total_tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
    assert total_tasks == SERVICES * 6

    # one worker each, so no single runner can occupy every node and the four really compete
    runners = [sandbox.popen("run", "--budget", "600", "--workers", "1") for _ in range(RUNNERS)]
    results = [proc.communicate(timeout=900) for proc in runners]
    assert [proc.returncode for proc in runners] == [0] * RUNNERS, results
    leased = [int(err.split("leased ")[1].split(",")[0]) for _, err in results]
    assert sum(1 for n in leased if n > 0) >= 2, leased  # the work really was shared
    assert sum(leased) == total_tasks

    states = dict(conn.execute("SELECT state, count(*) FROM services GROUP BY state").fetchall())
    assert states == {"active": SERVICES}
    assert conn.execute("SELECT count(*) FROM tasks WHERE state != 'done'").fetchone()[0] == 0

    # every task: exactly one attempt, and it succeeded
    per_task = conn.execute("SELECT task_id, count(*), sum(outcome = 'done') FROM attempts "
                            "GROUP BY task_id").fetchall()
    assert len(per_task) == total_tasks
    assert all(count == 1 and done == 1 for _, count, done in per_task)

    # recorded start/end per node never overlap (max_concurrency 1 everywhere in the sandbox)
    by_node = defaultdict(list)
    for node, start, end in conn.execute(
            "SELECT t.node, a.started_at, a.ended_at FROM attempts a JOIN tasks t ON t.id = a.task_id"):
        by_node[node].append((start, end))
    assert set(by_node) == {"web1", "mail1", "ns1", "ns2"}
    assert all(_no_overlap(v) for v in by_node.values())

    # and the panels agree: no two simulated commands ran at once on any node
    for name in ("web1", "mail1", "ns1", "ns2"):
        log = read_command_log(sandbox.node(name))
        assert log and not any(entry["overlap"] for entry in log), name
        assert _no_overlap([(e["start"], e["end"]) for e in log]), name

    # nothing lost or doubled on the panels
    web = read_panel(sandbox.node("web1"))
    assert sum(len(domains) for domains in web["web"].values()) == SERVICES
    for ns in ("ns1", "ns2"):
        zones = read_panel(sandbox.node(ns))["dns"]
        zones.pop("provider")  # the sandbox's own Vanity parent zone
        assert sum(len(z) for z in zones.values()) == SERVICES
        for user_zones in zones.values():
            for records in user_zones.values():
                keys = [(r["record"], r["type"], r["value"]) for r in records]
                assert len(keys) == len(set(keys)) == 12
