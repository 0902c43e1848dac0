#!/usr/bin/env python3
"""puqdeploy benchmarks: one entry point, one table. See bench/README.md.

    python bench/run.py            # full run (about 15-20 minutes on 2 cores)
    python bench/run.py --quick    # small sizes, < 2 minutes: proves the benchmark works

Every figure is a ratio of two things measured in the same run on the same machine; repeated
measurements are quoted as median (min–max). The exit code is 0 whether goals hold or not
(CI runs --quick to prove the benchmark works; it never fails on a figure); 1 only when a
benchmark itself broke.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import common  # noqa: E402
from bench.common import FigureResult, Row, Sample  # noqa: E402

FULL = dict(template=20, small_copies=5, big_copies=5000, rounds=20, drain=10_000, drain_rounds=3,
            sched_services=50, sched_delay=0.05, ssh_runs=50, ssh_tasks=100)
QUICK = dict(template=4, small_copies=25, big_copies=2500, rounds=5, drain=1_000, drain_rounds=1,
             sched_services=5, sched_delay=0.05, ssh_runs=15, ssh_tasks=20)
FIGURES = ("startup", "scale", "throughput", "scheduling", "ssh")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI): < 2 minutes")
    ap.add_argument("--only", action="append", choices=FIGURES,
                    help="run only these figure groups (repeatable)")
    ap.add_argument("--python", help="measure with this interpreter instead of the bench venv "
                    "(it needs puqdeploy's dependencies, and huey/litequeue for the comparison)")
    ap.add_argument("--workdir", help="where databases and fleets go (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    ap.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    ap.add_argument("--profile", action="store_true",
                    help="also profile the drain's main thread with pyinstrument (a second drain; "
                    "report written to the workdir)")
    ap.add_argument("--drain-tasks", type=int, help="override the number of no-op tasks")
    return ap.parse_args(argv)


def reexec_in_venv(args: argparse.Namespace) -> None:
    """Run the whole benchmark with the bench interpreter (see common.ensure_venv)."""
    if os.environ.get("PUQDEPLOY_BENCH_CHILD"):
        return
    env = dict(os.environ, PUQDEPLOY_BENCH_CHILD="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.python:
        python = args.python
        env["PYTHONPATH"] = str(HERE.parent)
    else:
        try:
            python = str(common.ensure_venv(sys.executable, log))
        except Exception as exc:  # offline: fall back to this interpreter, say so
            log(f"cannot prepare the bench venv ({exc}); measuring with {sys.executable}")
            python = sys.executable
            env["PYTHONPATH"] = str(HERE.parent)
    os.execve(python, [python, str(HERE / "run.py"), *sys.argv[1:]], env)


# --------------------------------------------------------------------------- the shared world


class World:
    """Sandbox fleet, the deployed template, small/big databases and their configs."""

    def __init__(self, workdir: Path, sizes: dict) -> None:
        self.workdir = workdir
        self.sizes = sizes
        self.env = common.benchmark_env()
        self.python = sys.executable
        self.script = common.puqdeploy_script(workdir)
        self.built = False

    def build(self) -> None:
        if self.built:
            return
        from bench import builders

        s = self.sizes
        fleet = self.workdir / "fleet"
        self.config = common.write_sandbox(fleet)
        log(f"deploying {s['template']} template services for real on the sandbox ...")
        self.template_info = builders.template_db(self.python, self.script, self.config, self.env,
                                                  s["template"], log)
        template = fleet / "puqdeploy.db"
        self.small_db = fleet / "small.db"
        self.big_db = fleet / "big.db"
        self.create_db = fleet / "create.db"
        self.small_info = builders.multiply_db(template, self.small_db, s["small_copies"], log, with_logs=False)
        log(f"building the big database (x{s['big_copies']}) ...")
        self.big_info = builders.multiply_db(template, self.big_db, s["big_copies"], log, with_logs=False)
        for db in (self.small_db, self.big_db):
            builders.add_future_services(self.config, db, 5)
        common.copy_db(self.small_db, self.create_db)
        self.small_cfg = common.config_variant(self.config, "small.yaml", database="small.db")
        self.big_cfg = common.config_variant(self.config, "big.yaml", database="big.db")
        self.create_cfg = common.config_variant(self.config, "create.yaml", database="create.db")
        # the same template service (index 10 of the template, redeployed once) in the middle
        pick = min(10, s["template"] - 1)
        self.small_sid = f"sb{pick:05d}-c{s['small_copies'] // 2}"
        self.big_sid = f"sb{pick:05d}-c{s['big_copies'] // 2}"
        self.built = True


def cmd(world: World, cfg: Path, *args: str) -> list[str]:
    return [str(world.script), "--config", str(cfg), *args]


# --------------------------------------------------------------------------- figures


def fig_startup_and_scale(world: World, want: set[str]) -> list[FigureResult]:
    from bench import startup

    world.build()
    rounds = world.sizes["rounds"]
    floor = [world.python, "-c", "import click, yaml, sqlite3"]
    commands = {"floor": lambda i: floor}
    if "startup" in want:
        commands.update({
            "create": lambda i: cmd(world, world.create_cfg, "create", "--service-id", f"new{i + 10:04d}",
                                    "--product", "sandbox-split", "--domain", f"new{i + 10:04d}.test", "--json"),
            "idle": lambda i: cmd(world, world.small_cfg, "run"),
            "status": lambda i: cmd(world, world.small_cfg, "status", world.small_sid, "--json"),
        })
    if "scale" in want:
        commands.update({
            "idle small": lambda i: cmd(world, world.small_cfg, "run"),
            "idle big": lambda i: cmd(world, world.big_cfg, "run"),
            "status small": lambda i: cmd(world, world.small_cfg, "status", world.small_sid, "--json"),
            "status big": lambda i: cmd(world, world.big_cfg, "status", world.big_sid, "--json"),
        })
    log(f"timing {', '.join(commands)} round-robin x{rounds} ...")
    t0 = time.monotonic()
    samples = common.interleaved(commands, rounds, env=world.env)
    out = []
    f = samples["floor"]
    n_small = world.small_info["counts"]["services"] + 5
    n_big = world.big_info["counts"]["services"] + 5
    if "startup" in want:
        res = FigureResult("startup", seconds=time.monotonic() - t0)
        for key, figure, what in (("create", "order latency", "`create`"),
                                  ("idle", "idle tick", "`run`, nothing due"),
                                  ("status", "poll cost", "`status ID --json`")):
            s = samples[key]
            ratio = s.median / f.median
            res.rows.append(Row(figure, f"{ratio:.2f} ({s.ms()} ÷ floor {f.ms()})", "≤ 1.5", ratio <= 1.5,
                                what))
            res.raw[key] = {"ratio": ratio, "ratio_of_minima": s.lo / f.lo, "sample_ms": s.as_dict(1000)}
        res.raw["floor"] = f.as_dict(1000)
        res.details.append(f"startup: {rounds} runs each, round-robin; database of {n_small} services "
                           f"(create adds one per run). Ratio of minima: "
                           + ", ".join(f"{k} {res.raw[k]['ratio_of_minima']:.2f}" for k in ("create", "idle", "status")))
        floor_mods = startup.imports(floor[1:], world.env)
        for key, argv in (("create", commands["create"](9999)), ("idle", commands["idle"](0)),
                          ("status", commands["status"](0))):
            lines, raw = startup.import_report(key, list(argv), floor_mods, world.env)
            res.details += lines
            res.raw[key]["imports"] = raw
        for kind, cfg, sid in (("create", world.create_cfg, "phase"), ("idle", world.small_cfg, "-"),
                               ("status", world.small_cfg, world.small_sid)):
            ph = startup.phases(kind, cfg, sid, world.env)
            res.raw[kind]["phases_ms"] = ph
            res.details.append(f"{kind} phases (median ms of 5 in-process): "
                               + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()))
        out.append(res)
    if "scale" in want:
        res = FigureResult("scale", seconds=time.monotonic() - t0)
        counts = world.big_info["counts"]
        label = f"{n_big:,} vs {n_small:,} services"
        for key, figure in (("idle", "scale: idle tick"), ("status", "scale: status --json")):
            small, big = samples[f"{key} small"], samples[f"{key} big"]
            ratio = big.median / small.median
            res.rows.append(Row(figure, f"{ratio:.2f} ({big.ms()} ÷ {small.ms()})", "≤ 1.3", ratio <= 1.3, label))
            res.raw[key] = {"ratio": ratio, "big_ms": big.as_dict(1000), "small_ms": small.as_dict(1000)}
        res.raw["big_db"] = world.big_info
        res.raw["small_db"] = world.small_info
        res.raw["template"] = world.template_info
        res.details.append(
            f"scale: big database {n_big:,} services, {counts['tasks']:,} tasks, {counts['attempts']:,} attempts, "
            f"{counts['events']:,} events, {world.big_info['bytes'] / 2**20:.0f} MiB (attempt log lines: the "
            f"template's only); small {n_small:,} services, {world.small_info['counts']['tasks']:,} tasks. "
            f"Status of {world.big_sid} vs {world.small_sid} (same shape: 2 operations, 12 tasks).")
        from puqdeploy.config import load_config

        limits = {n: c.max_concurrency for n, c in load_config(str(world.config)).nodes.items()}
        lines, raw = startup.query_plans(world.small_db, world.big_db, world.small_sid, world.big_sid, limits)
        res.details.append("query plans (big database) and per-query time, small vs big:")
        res.details += lines
        res.raw["queries"] = raw
        out.append(res)
    return out


def _x(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def fig_throughput(world: World, args) -> list[FigureResult]:
    """The drain and its contenders, `drain_rounds` times in turn (puqdeploy, huey, litequeue,
    raw, rawbatch, puqdeploy, ...), so that the machine's noise hits them all alike; rates are
    medians with min–max, the ratio is of the medians."""
    from bench import builders, throughput

    n = args.drain_tasks or world.sizes["drain"]
    rounds = world.sizes["drain_rounds"]
    res = FigureResult("throughput")
    t0 = time.monotonic()
    wd = world.workdir / "throughput"
    wd.mkdir(exist_ok=True)
    cfg = common.write_sandbox(wd / "fleet")
    drain_cfg = common.config_variant(cfg, "drain.yaml", database="drain.db")
    kinds = ("huey", "litequeue", "raw", "rawbatch")
    rates: dict[str, Sample] = {kind: Sample() for kind in ("puqdeploy", *kinds)}
    raw: dict = {"tasks": n, "rounds": rounds, "puqdeploy": [], **{kind: [] for kind in kinds}}
    for number in range(1, rounds + 1):
        builders.noop_db(world.python, drain_cfg, world.env, n, 1)
        log(f"round {number}/{rounds}: puqdeploy draining {n:,} no-op tasks with one `puqdeploy run` ...")
        puq = throughput.drain_puqdeploy(world.script, drain_cfg, world.env,
                                         wd / "fleet" / "drain.db", n)
        rates["puqdeploy"].values.append(puq["done"] / puq["wall_s"])
        raw["puqdeploy"].append(puq)
        log(f"puqdeploy: {puq['summary']} ({rates['puqdeploy'].values[-1]:.0f} tasks/s, "
            f"wall {puq['wall_s']:.1f} s, exit {puq['exit']})")
        for kind in kinds:
            try:
                r = throughput.run_child(kind, wd / f"{kind}.db", n, world.env)
            except Exception as exc:
                log(f"{kind} failed: {exc}")
                raw[kind].append({"error": str(exc)})
                continue
            raw[kind].append(r)
            rates[kind].values.append(r["tasks"] / r["drain_s"])
            log(f"{kind}: {rates[kind].values[-1]:.0f} tasks/s"
                + (f" (enqueue {n / r['enqueue_s']:.0f}/s)" if "enqueue_s" in r else ""))
    if args.profile:
        import subprocess as _sp

        if _sp.run([sys.executable, "-c", "import pyinstrument"], capture_output=True).returncode:
            _sp.run([sys.executable, "-m", "pip", "install", "--quiet", "pyinstrument"], check=True)
        profile = str(wd / "drain-profile.txt")
        builders.noop_db(world.python, drain_cfg, world.env, n, 1)
        throughput.drain_puqdeploy(world.script, drain_cfg, world.env, wd / "fleet" / "drain.db", n,
                                   profile=profile)
        res.details.append(f"pyinstrument profile of the drain: {profile}")
    drains = raw["puqdeploy"]
    kept = all(p["attempt_rows"] == n and set(p["lease_tokens"]) == {1} and p["journal_mode"] == "wal"
               for p in drains)
    puq_rate = rates["puqdeploy"]

    def rate(sample: Sample) -> str:
        return (f"{sample.median:.0f} tasks/s ({sample.lo:.0f}–{sample.hi:.0f})" if len(sample.values) > 1
                else f"{sample.median:.0f} tasks/s")

    note = f"{n:,} tasks × {rounds} rounds; puqdeploy {rate(puq_rate)}, whole process"
    broken = [p for p in drains if p["exit"] != 0 or p["done"] != n]
    if broken:
        note += f"; A DRAIN EXITED {broken[0]['exit']} after {broken[0]['done']:,} done: {broken[0]['summary']}"
    if rates["huey"].values:
        ratio = puq_rate.median / rates["huey"].median
        res.rows.append(Row("queue throughput vs Huey",
                            f"{_x(ratio)} ({rate(puq_rate)} vs {rate(rates['huey'])})",
                            "≥ 1.5×", ratio >= 1.5, note))
    else:
        res.rows.append(Row("queue throughput vs Huey", "n/a (huey missing)", "≥ 1.5×", None, note))
    for kind, label in (("litequeue", "… vs litequeue (put/pop/done)"),
                        ("raw", "… vs raw SQL claim+ack, 1/tx (ceiling)"),
                        ("rawbatch", "… vs raw SQL claim+ack, 100/tx")):
        if rates[kind].values:
            res.rows.append(Row(label, f"{_x(puq_rate.median / rates[kind].median)} ({rate(rates[kind])})",
                                "info", None))
    peak = max(p["max_rss_mib"] for p in drains)
    res.rows.append(Row("memory: peak RSS of the drain", f"{peak:.0f} MiB", "≤ 100 MiB", peak <= 100,
                        f"{n:,} tasks, one process, highest of {rounds} ({drains[0]['rss_source']})"))
    from puqdeploy import store
    import inspect

    sync_default = inspect.signature(store.connect).parameters["synchronous"].default
    last = drains[-1]
    res.details.append(
        f"throughput: every drain kept {n:,} attempt rows, lease token 1 on every task, "
        f"{last['log_lines']:,} log lines, journal {last['journal_mode']}, store.connect synchronous default "
        f"{sync_default!r} ({'ok' if kept and sync_default == 'FULL' else 'CHECK'}); last drain: tick "
        f"{last['tick_s']} s of {last['wall_s']:.1f} s wall; {last['summary']}")
    for kind in kinds:
        runs = [r for r in raw[kind] if "drain_s" in r]
        if runs:
            r = runs[-1]
            drains_s = ", ".join(f"{x['drain_s']:.2f}" for x in runs)
            res.details.append(f"  {kind}: drains {drains_s} s"
                               + (f", enqueue {r['enqueue_s']:.2f} s ({n / r['enqueue_s']:.0f}/s)"
                                  if "enqueue_s" in r else "")
                               + f", synchronous={r['synchronous']} (2 = FULL), journal {r['journal_mode']}")
    res.raw = raw
    res.seconds = time.monotonic() - t0
    return [res]


def fig_scheduling(world: World) -> list[FigureResult]:
    from bench import scheduling

    s = world.sizes
    log(f"scheduling: {s['sched_services']} Split services, {s['sched_delay'] * 1000:.0f} ms per command, one tick ...")
    t0 = time.monotonic()
    r = scheduling.measure(world.python, world.script, world.workdir, world.env, s["sched_services"],
                           s["sched_delay"])
    b = r["nodes"][r["busiest"]]
    res = FigureResult("scheduling", raw=r, seconds=time.monotonic() - t0)
    res.rows.append(Row("scheduling efficiency", f"{r['ratio_nominal']:.2f} ({r['wall_s']:.1f} s ÷ {b['commands']} × "
                        f"{s['sched_delay'] * 1000:.0f} ms on {r['busiest']})", "≤ 1.3", r["ratio_nominal"] <= 1.3,
                        "the issue's denominator"))
    res.rows.append(Row("… ÷ measured serial work", f"{r['ratio_measured']:.2f} ({r['wall_s']:.1f} s ÷ "
                        f"Σ command time {r['measured_serial_s']:.1f} s)", "info", None))
    res.rows.append(Row("… ÷ serial floor (+ start cost)", f"{r['ratio_floor']:.2f} ({r['wall_s']:.1f} s ÷ "
                        f"{r['serial_floor_s']:.1f} s; {r['start_cost_s'] * 1000:.0f} ms start per command)",
                        "info", None))
    res.details.append(f"scheduling: {r['summary']}; task states {r['task_states']}")
    for name, n in r["nodes"].items():
        res.details.append(f"  {name}: {n['commands']} commands, busy {n['busy_s']:.1f} s, span {n['span_s']:.1f} s, "
                           f"first command after {n['lead_in_s']:.2f} s, idle gaps {n['gaps_s']:.1f} s "
                           f"(median {n['gap_median_ms']:.0f} ms), overlaps {n['overlaps']}")
    return [res]


def fig_ssh(world: World) -> list[FigureResult]:
    from bench import ssh_overhead

    s = world.sizes
    t0 = time.monotonic()
    res = FigureResult("ssh")
    try:
        log("ssh: own sshd on 127.0.77.9 (bashrc skipped) ...")
        light = ssh_overhead.measure(world.workdir / "ssh", s["ssh_runs"], s["ssh_tasks"], True, log)
        log("ssh: same with root's ~/.bashrc sourced ...")
        heavy = ssh_overhead.measure(world.workdir / "ssh", max(10, s["ssh_runs"] // 3), 0, False, log)
    except Exception as exc:
        log(f"ssh figure failed: {exc}")
        res.rows.append(Row("SSH overhead", f"n/a ({exc})", "≤ 1.3", None))
        return [res]
    ratio = light["puqdeploy"].median / light["bare"].median
    res.rows.append(Row("SSH overhead", f"{ratio:.2f} ({light['puqdeploy'].ms()} ÷ bare {light['bare'].ms()})",
                        "≤ 1.3", ratio <= 1.3, f"median of {s['ssh_runs']}, alternating"))
    t = light["task"]
    res.rows.append(Row("… whole queued task over SSH ÷ bare", f"{t['per_task_s'] / light['bare'].median:.2f} "
                        f"({t['per_task_s'] * 1000:.1f} ms/task)", "info", None,
                        f"{t['tasks']} tasks, one node, one tick"))
    hr = heavy["puqdeploy"].median / heavy["bare"].median
    res.rows.append(Row("… with ~/.bashrc (pyenv) sourced", f"{hr:.2f} ({heavy['puqdeploy'].ms()} ÷ "
                        f"{heavy['bare'].ms()})", "info", None))
    res.raw = {"light": {k: (v.as_dict(1000) if hasattr(v, "as_dict") else v) for k, v in light.items()},
               "bashrc": {k: (v.as_dict(1000) if hasattr(v, "as_dict") else v) for k, v in heavy.items()}}
    res.details.append(f"ssh: absolute overhead per command {1000 * (light['puqdeploy'].median - light['bare'].median):.2f} ms "
                       f"(light shell); task level: {t['summary']}")
    res.seconds = time.monotonic() - t0
    return [res]


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    reexec_in_venv(args)
    sizes = QUICK if args.quick else FULL
    want = set(args.only or FIGURES)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="puqdeploy-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    info = common.machine_info()
    log(f"puqdeploy bench ({'quick' if args.quick else 'full'}) in {workdir} with {sys.executable}; "
        f"{info['cores']} cores, {info['memory_gib']} GiB, load {info['load_at_start']}")
    world = World(workdir, sizes)
    results: list[FigureResult] = []
    broken = []
    started = time.monotonic()
    steps = []
    if want & {"startup", "scale"}:
        steps.append(("startup/scale", lambda: fig_startup_and_scale(world, want)))
    if "throughput" in want:
        steps.append(("throughput", lambda: fig_throughput(world, args)))
    if "scheduling" in want:
        steps.append(("scheduling", lambda: fig_scheduling(world)))
    if "ssh" in want:
        steps.append(("ssh", lambda: fig_ssh(world)))
    for name, step in steps:
        try:
            results += step()
        except Exception:
            broken.append(name)
            log(f"{name} broke:\n{traceback.format_exc()}")
    rows = [row for r in results for row in r.rows]
    info["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(f"puqdeploy benchmarks — {info['date']}, {info['cores']} cores, {info['memory_gib']} GiB, "
          f"{info['cpu']}, Python {info['python']}, SQLite {info['sqlite']}, "
          f"{'quick' if args.quick else 'full'} run in {time.monotonic() - started:.0f} s, "
          f"load {info['load_at_start']} -> {info['load_at_end']}")
    print()
    print(common.format_table(rows))
    for r in results:
        if r.details:
            print()
            print("\n".join(r.details))
    if args.markdown:
        print()
        print(common.format_table(rows, markdown=True))
    raw_path = workdir / "results.json"
    raw_path.write_text(common.dumps({"machine": info, "sizes": sizes,
                                      "figures": {r.name: {"raw": r.raw, "rows": [vars(x) for x in r.rows]}
                                                  for r in results}}))
    print(f"\nraw numbers: {raw_path}")
    if broken:
        print(f"broken: {', '.join(broken)}", file=sys.stderr)
    if not args.keep and not args.workdir:
        # keep the raw numbers next to nothing else: copy them out before removing the workdir
        keep = Path(tempfile.gettempdir()) / f"puqdeploy-bench-results-{int(time.time())}.json"
        shutil.copyfile(raw_path, keep)
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"(workdir removed; raw numbers copied to {keep})")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
