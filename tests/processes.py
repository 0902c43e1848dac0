"""Helpers for the test fleets' server processes (sshd, named)."""

from __future__ import annotations

import ctypes
import signal


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()  # resolved here: the child between fork and exec must not dlopen
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: if pytest is killed outright, the servers it started go too (PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
