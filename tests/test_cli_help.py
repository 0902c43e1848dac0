"""Every command documents itself: `--help` works and says something for each of them."""

from __future__ import annotations

import click
from click.testing import CliRunner

from puqdeploy.cli import main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


def test_every_command_has_help_text():
    runner = CliRunner()
    seen = []
    for path, command in _commands(main):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert (command.help or "").strip(), path
        assert "Usage:" in result.output
        seen.append(" ".join(path))
    for expected in ("init", "create", "run", "status", "services", "tasks", "log", "retry",
                     "redeploy", "suspend", "unsuspend", "terminate", "change-package",
                     "change-password", "nodes", "nodes check", "nodes trust", "prune",
                     "sandbox", "demo"):
        assert expected in seen, expected
