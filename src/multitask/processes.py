"""Whether a process that left a mark (a RUNNING MLflow run, a RUNNING Optuna trial) still runs.

A pid alone is not enough: pids are reused. On Linux the process's start time (clock ticks since
boot, ``/proc/<pid>/stat``) pins it; elsewhere a signal 0 tells whether the pid exists.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOST = socket.gethostname()


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot; None if gone or a zombie (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and brackets
    return None if fields[0] in ("Z", "X") else fields[19]


def this_process() -> tuple[int, str | None]:
    """``(pid, start ticks)`` of the running process, to be checked later by :func:`alive`."""
    pid = os.getpid()
    return pid, start_ticks(pid)


def alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` of this host, started at ``start``, still runs."""
    if start is not None:
        return start_ticks(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
