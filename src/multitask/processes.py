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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HOST = socket.gethostname()
log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # prctl(2)


def _stat(pid: int) -> tuple[str, list[str]] | None:
    """The command name and the fields after it of ``/proc/<pid>/stat`` (Linux); None if the
    process is gone or the file unreadable. The name may hold spaces and brackets."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 1:].split()


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot; None if gone or a zombie (Linux)."""
    if (stat := _stat(pid)) is None:
        return None
    fields = stat[1]
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


SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish"})


def launcher() -> int:
    """The process that started this one, past any shells in between (DVC runs a stage's
    command in ``$SHELL -c``, which may or may not exec it); on systems without /proc, the
    parent."""
    pid = os.getppid()
    while pid > 1 and (stat := _stat(pid)) is not None and stat[0] in SHELLS:
        pid = int(stat[1][1])
    return pid


def _stop_when(gone: Callable[[], bool], message: str, poll_s: float) -> None:
    """A watchdog thread: SIGTERM this process (so it ends as after Ctrl-C: runs marked
    failed) once ``gone()``."""
    def watch() -> None:
        while not gone():
            time.sleep(poll_s)
        log.error("%s; stopping", message)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def die_with_parent(parent: int, what: str, poll_s: float = 1.0) -> None:
    """Stop this process once ``parent`` is gone, even when the parent was SIGKILLed and
    could not stop it: the watchdog notices the process was handed to another parent (also
    when that happened while it was still starting, as ``parent`` is known from before)."""
    _stop_when(lambda: os.getppid() != parent,
               f"{what}: its parent process (pid {parent}) is gone", poll_s)


def die_with(pid: int, what: str, poll_s: float = 1.0) -> None:
    """Stop this process once process ``pid``, an ancestor, is gone (as :func:`die_with_parent`
    for a process started through a shell that outlives it)."""
    start = start_ticks(pid)  # None where there is no /proc: the pid alone is watched
    _stop_when(lambda: not alive(pid, start), f"{what} (pid {pid}) is gone", poll_s)


def terminate_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when the process that started it dies
    (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def sigterm_raises() -> Callable[[], None]:
    """Turn SIGTERM into ``SystemExit(143)``, so that ``finally`` blocks and context managers
    run as after Ctrl-C (runs end FAILED, temporary folders go, child processes are stopped);
    return the undo. Only the main thread may set a handler: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred(*signums: int) -> Iterator[None]:
    """For the block, the signals ``signums`` are only recorded; at its end the handlers that
    were there are restored and each signal received is delivered to its own, once, so what a
    handler raises (``KeyboardInterrupt``, SIGTERM's ``SystemExit``) comes out of the block's
    end, never from its middle. For steps that must not be cut in two, such as creating an
    MLflow run and guarding it. Only the main thread can set handlers: elsewhere nothing is
    deferred."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda got, frame: received.append(got))
                for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)
