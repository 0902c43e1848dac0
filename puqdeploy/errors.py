"""Exceptions that carry the contract's exit codes.

The CLI maps each to one `Error: ...` line on stderr and its exit code, so library code never
needs to know about click or print anything itself.
"""

from __future__ import annotations


class PuqError(Exception):
    """Base of every error a user may see; `exit_code` follows CONTRACT.md."""

    exit_code = 1


class OperationalError(PuqError):
    """Database unreachable, unexpected internal failure (exit 1)."""

    exit_code = 1


class UsageError(PuqError):
    """Bad usage, bad input or bad config; nothing was written (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A config problem, always naming the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class ConflictError(PuqError):
    """`create` with an existing service id but different parameters (exit 3)."""

    exit_code = 3


class NotFoundError(PuqError):
    """Unknown service, task or node (exit 4)."""

    exit_code = 4
