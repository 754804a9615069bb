"""Whether a process that left a mark (a RUNNING MLflow run, a RUNNING Optuna trial) still runs.

A pid alone is not enough: pids are reused. On Linux the process's start time (clock ticks since
boot, ``/proc/<pid>/stat``) pins it; elsewhere a signal 0 tells whether the pid exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

HOST = socket.gethostname()
log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # prctl(2)


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


def die_with_parent(parent: int, what: str, poll_s: float = 1.0) -> None:
    """SIGTERM this process (so it ends as after Ctrl-C: runs marked failed) once ``parent``
    is gone, even when the parent was SIGKILLed and could not stop it: a watchdog thread
    notices the process was handed to another parent (also when that happened while it was
    still starting, as ``parent`` is known from before)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.error("%s: its parent process (pid %d) is gone; stopping", what, parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def terminate_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when the process that started it dies
    (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
