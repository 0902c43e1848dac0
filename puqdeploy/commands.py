"""Remote commands as data: an argv whose secret or file parts are kept apart.

A command is never a shell string built by hand. Each argument is either plain text or a
`TempFile` — content the transport writes into a 0600 file under /tmp/ on the node and replaces
by that file's path (HestiaCP reads passwords and package definitions from such files). Secret
temp files are masked as `***` whenever a command is shown or logged, so a password can never
reach an argv, a log line or the terminal.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class TempFile:
    """Content delivered as a file under /tmp/ on the node; the argument becomes its path."""

    content: str
    secret: bool = False
    label: str = "file"

    def __repr__(self) -> str:  # never leak secret content through repr() in a traceback
        return f"TempFile(label={self.label!r}, secret={self.secret})"


def secret_file(value: str, label: str = "password") -> TempFile:
    """A password as HestiaCP wants it: the first line of a file under /tmp/."""
    return TempFile(content=value + "\n", secret=True, label=label)


Arg = Union[str, TempFile]


@dataclass(frozen=True)
class Command:
    """One HestiaCP command: the program name (`v-add-user`) and its arguments."""

    program: str
    args: tuple[Arg, ...] = field(default_factory=tuple)

    def secrets(self) -> list[str]:
        """Every secret string the command carries, so transports can mask echoes of it."""
        out: list[str] = []
        for arg in self.args:
            if isinstance(arg, TempFile) and arg.secret:
                out.append(arg.content.rstrip("\n"))
        return [s for s in out if s]

    def argv(self, bin_dir: str, paths: dict[int, str]) -> list[str]:
        """The real argv, with each TempFile replaced by the path it was written to."""
        resolved: list[str] = [f"{bin_dir.rstrip('/')}/{self.program}"]
        for index, arg in enumerate(self.args):
            resolved.append(paths[index] if isinstance(arg, TempFile) else arg)
        return resolved

    def display(self) -> str:
        """The command as logged: shell-quoted once, secret files shown as ***."""
        shown = [self.program]
        for arg in self.args:
            if isinstance(arg, TempFile):
                shown.append("***" if arg.secret else f"<{arg.label}>")
            else:
                shown.append(arg)
        return shlex.join(shown)


def mask(text: str, secrets: list[str]) -> str:
    """Replace every occurrence of each secret in `text` by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
