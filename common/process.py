"""Child processes that stop with their parent: a grid's runs and a server's workers never outlive the
process that started them, even when it is killed with SIGKILL (Linux's parent-death signal)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal

#: set by a parent in a child's environment (its own pid); the child's main.py calls die_with on it
PARENT_ENV = "POW_STOP_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """SIGTERM this process when `parent` dies (Linux); if it is already gone, stop now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def child_env(env: dict | None = None) -> dict:
    """`env` (default: this process's) for a `python main.py ...` child that stops when this process dies."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def adopt_parent() -> None:
    """In main.py: stop with the parent that asked for it (child_env), and keep the request from this
    process's own children, whose parent is this one."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is not None and parent.isdigit():
        die_with(int(parent))
