"""Panel: how command output becomes facts and errors, with real processes (LocalTransport).

A node's shell may write to stderr around any command — a login script's warnings; on the
machine these tests were written on, root's `~/.bashrc` runs `pyenv init`, whose background
rehash complains on stderr when many SSH commands start at once. That once broke a JSON fact
(`Extra data`), because stderr was parsed along with stdout.
"""

from __future__ import annotations

import os

import pytest

from puqdeploy.hestia import HestiaError, Panel
from puqdeploy.remote import LocalTransport

NOISE = "pyenv: cannot rehash: /root/.pyenv/shims isn't writable"


def _panel(tmp_path, name: str, body: str) -> Panel:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text("#!/bin/sh\n" + body)
    os.chmod(script, 0o755)
    lines: list[tuple[str, str]] = []
    panel = Panel(LocalTransport(str(bin_dir)), 10, lambda stream, line: lines.append((stream, line)))
    panel.lines = lines  # what the attempt log got
    return panel


def test_json_facts_are_read_from_stdout_only(tmp_path):
    panel = _panel(tmp_path, "v-list-user",
                   f'echo "{NOISE}" >&2\nprintf \'{{\\n  "admin": {{"NAME": "Admin"}}\\n}}\\n\'\n'
                   'echo "rm: cannot remove /root/.pyenv/shims/tmp.x" >&2\n')
    assert panel.list_user("admin") == {"NAME": "Admin"}
    assert ("stderr", NOISE) in panel.lines  # still in the attempt log


def test_errors_still_quote_stderr(tmp_path):
    panel = _panel(tmp_path, "v-list-user", 'echo "Error: connection refused" >&2\nexit 15\n')
    with pytest.raises(HestiaError) as info:
        panel.list_user("admin")
    assert info.value.code == 15 and "connection refused" in str(info.value)
    assert info.value.transient


def test_invalid_json_on_stdout_is_a_parsing_error(tmp_path):
    panel = _panel(tmp_path, "v-list-user", 'echo "{ not json"\n')
    with pytest.raises(HestiaError) as info:
        panel.list_user("admin")
    assert info.value.code == 12 and "unparsable JSON" in str(info.value)
