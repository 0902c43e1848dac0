"""Shared pieces of the benchmarks: the interpreter, the environment, timing and statistics,
config files, and the result rows `run.py` prints.

Everything that is timed runs as a separate process with the *benchmark interpreter* (see
`ensure_venv`) and `benchmark_env()`: byte-code caching on (PYTHONDONTWRITEBYTECODE removed),
no PYTHONPATH or PUQDEPLOY_CONFIG leaking in from the caller's shell, and the repository made
importable through a one-line `.pth` file in the venv (as cheap as a real install's path entry).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV = BENCH / ".venv"
VENV_STAMP = VENV / "bench-requirements.txt"


# --------------------------------------------------------------------------- interpreter


def requirements() -> list[str]:
    """puqdeploy's runtime dependencies plus the `bench` extra, read from pyproject.toml."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("bench", []))


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(base_python: str, log: Callable[[str], None]) -> Path:
    """A clean venv in bench/.venv with puqdeploy's dependencies (+ huey, litequeue).

    Why a venv: it is what a real install looks like (`pipx install .`), and it keeps whatever
    the host interpreter's site-packages run at every start (this machine's base interpreter has
    a `.pth` that imports certifi, ~100 ms) out of both the floor and the measured commands.
    The repository itself is put on the path by `puqdeploy-repo.pth`, so the code measured is
    always the working tree's. Re-created only when the requirement list changes.
    """
    wanted = "\n".join(requirements()) + "\n"
    python = venv_python()
    if python.exists() and VENV_STAMP.exists() and VENV_STAMP.read_text() == wanted:
        _write_repo_pth(python)
        return python
    log(f"creating the benchmark venv {VENV} (once) ...")
    if VENV.exists():
        shutil.rmtree(VENV)
    subprocess.run([base_python, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *requirements()], check=True)
    _write_repo_pth(python)
    VENV_STAMP.write_text(wanted)
    return python


def _write_repo_pth(python: Path) -> None:
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pth = Path(site) / "puqdeploy-repo.pth"
    if not pth.exists() or pth.read_text().strip() != str(REPO):
        pth.write_text(f"{REPO}\n")


def benchmark_env(extra: Optional[dict] = None) -> dict:
    """The environment of every measured process (see the module docstring)."""
    env = dict(os.environ)
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTHONSTARTUP", "PUQDEPLOY_CONFIG",
                 "PYTHONPROFILEIMPORTTIME", "PYTHONMALLOC", "PYTHONDEVMODE", "PYTHONWARNINGS"):
        env.pop(name, None)
    if not _in_venv():
        # --python given: no .pth, so put the repository on the path explicitly
        env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def puqdeploy_script(workdir: Path) -> Path:
    """A console script exactly like the one pip writes for `puqdeploy = puqdeploy.cli:entry`."""
    path = workdir / "puqdeploy"
    path.write_text(
        f"#!{sys.executable}\n"
        "# -*- coding: utf-8 -*-\n"
        "import re\n"
        "import sys\n"
        "from puqdeploy.cli import entry\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        "    sys.exit(entry())\n")
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- statistics


@dataclass
class Sample:
    """Repeated measurements of one thing (seconds, or any unit)."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def ms(self) -> str:
        return f"{self.median * 1000:.0f} ms ({self.lo * 1000:.0f}–{self.hi * 1000:.0f})"

    def as_dict(self, scale: float = 1.0) -> dict:
        return {"median": self.median * scale, "min": self.lo * scale, "max": self.hi * scale,
                "n": len(self.values)}


def run_timed(argv: Sequence[str], *, env: dict, cwd: Optional[Path] = None,
              stdin: Optional[bytes] = None, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """Whole-process wall time of one command (fork to exit), its output captured."""
    started = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, cwd=cwd, input=stdin, capture_output=True)
    elapsed = time.perf_counter() - started
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed, proc


def interleaved(commands: dict[str, Callable[[int], Sequence[str]]], repeat: int, *, env: dict,
                cwd: Optional[Path] = None, warmup: int = 2) -> dict[str, Sample]:
    """Time each command `repeat` times, round-robin (A B C A B C ...), after `warmup` rounds.

    Round-robin spreads the machine's noise evenly over the commands compared, so a ratio of two
    medians measured this way is fair even on a shared, busy machine. `commands[name](i)` gives
    the argv of run i (lets `create` use a fresh service id each time).
    """
    samples = {name: Sample() for name in commands}
    for i in range(-warmup, repeat):
        for name, argv_of in commands.items():
            elapsed, _ = run_timed(argv_of(i), env=env, cwd=cwd)
            if i >= 0:
                samples[name].values.append(elapsed)
    return samples


# --------------------------------------------------------------------------- configs


def load_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def dump_yaml(path: Path, data: Any) -> None:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))


def write_sandbox(directory: Path, *, delay: float = 0.0, ssl: bool = False,
                  capacity: int = 1_000_000_000, workers: Optional[int] = None) -> Path:
    """puqdeploy's own sandbox fleet, with the benchmark's changes to its config.yaml:
    Auto-SSL off (nothing here answers DNS, the task would only wait), node capacity raised
    (the sandbox's 100 would stop placement long before 100,000 services)."""
    from puqdeploy.sandbox.fleet import write_sandbox as _write

    config_path = Path(_write(str(directory), delay_seconds=delay))
    data = load_yaml(config_path)
    data.setdefault("ssl", {})["enabled"] = ssl
    for node in data["nodes"].values():
        node["capacity"] = capacity
    if workers is not None:
        data.setdefault("runner", {})["workers"] = workers
    dump_yaml(config_path, data)
    return config_path


def config_variant(config_path: Path, name: str, **changes: Any) -> Path:
    """A copy of a config next to it (relative paths keep working) with top-level changes."""
    data = load_yaml(config_path)
    data.update(changes)
    path = config_path.with_name(name)
    dump_yaml(path, data)
    return path


def init_db(python: str, config_path: Path, env: dict) -> None:
    subprocess.run([python, "-m", "puqdeploy", "--config", str(config_path), "init"], env=env,
                   check=True, capture_output=True)


def copy_db(src: Path, dst: Path) -> None:
    """Copy a (checkpointed) SQLite database file; stale -wal/-shm of dst are removed."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    import sqlite3

    conn = sqlite3.connect(src)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o600)


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the results table."""

    figure: str
    measured: str
    goal: str
    holds: Optional[bool]  # None: informational, or could not be measured
    note: str = ""


@dataclass
class FigureResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    details: list[str] = field(default_factory=list)  # printed under the table (plans, profiles)
    seconds: float = 0.0


def verdict(holds: Optional[bool]) -> str:
    return {True: "yes", False: "NO", None: "—"}[holds]


def format_table(rows: Iterable[Row], markdown: bool = False) -> str:
    rows = list(rows)
    head = ("figure", "measured", "goal", "holds?")
    body = [(r.figure, r.measured, r.goal, verdict(r.holds)) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body]
    return "\n".join(out)


def machine_info() -> dict:
    import platform
    import sqlite3

    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
            "cpu": model, "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "kernel": platform.release(), "load_at_start": [round(x, 2) for x in load]}


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
