"""`puqdeploy demo`: the whole product in one command, on a sandbox fleet.

Writes a sandbox in a temporary folder, accepts a Split order the way a billing hook would, runs
one tick of the queue in the background and shows the live status until the deploy settles.
"""

from __future__ import annotations

import shutil
import tempfile
import threading

from puqdeploy import orders, store
from puqdeploy.config import load_config
from puqdeploy.secretbox import SecretBox, create_key_file
from puqdeploy.sandbox.fleet import write_sandbox


def run_demo(keep: bool = False, delay_seconds: float = 0.4) -> None:
    from puqdeploy import render, views
    from puqdeploy.runner import Runner

    folder = tempfile.mkdtemp(prefix="puqdeploy-demo-")
    try:
        config = load_config(write_sandbox(folder, delay_seconds=delay_seconds))
        conn = store.connect(config.database, create=True)
        store.migrate(conn)
        create_key_file(config.key_file)
        result = orders.create_service(conn, config, SecretBox.from_file(config.key_file),
                                       service_id="demo-1", product="sandbox-split",
                                       domain="example.com")
        print(f"service {result.service_id} accepted: {result.tasks} tasks queued "
              f"(sandbox in {folder})")
        runner = Runner(config, workers=config.runner.workers, budget=config.runner.budget_seconds)
        tick = threading.Thread(target=runner.tick, daemon=True)
        tick.start()
        render.watch_status(lambda: views.status(conn, "demo-1"), interval=0.3,
                            until=lambda payload: not tick.is_alive())
        tick.join()
        print("\nThe tick ended: every blocking step is done and the service is active; Auto-SSL"
              "\nwaits until example.com points at web1 (nothing resolves it in the sandbox).")
        if keep:
            print(f"\nsandbox kept: puqdeploy --config {folder}/config.yaml status demo-1")
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
