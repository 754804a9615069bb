"""How ``multitask tune --workers N`` holds Ctrl-C back while it spawns its workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from multitask.tuning.workers import ctrl_c_deferred


@pytest.fixture(autouse=True)
def python_ctrl_c() -> Iterator[None]:
    """Python's own Ctrl-C handler, as a command starts with (not whatever an earlier test in
    this process left), restored after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def other_thread() -> Iterator[None]:
    """A second thread that does not block SIGINT, as the progress bar's monitor: the kernel may
    hand it a Ctrl-C meant for the process, and Python then runs the handler in the main one."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


def test_ctrl_c_while_workers_spawn_is_raised_once_the_spawning_is_done(other_thread: None) -> None:
    finished_spawning = False
    with pytest.raises(KeyboardInterrupt), ctrl_c_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # a handler not held back has run by now
        finished_spawning = True
    assert finished_spawning
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_ignored_before_the_spawning_stays_ignored(other_thread: None) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        time.sleep(0.1)  # nothing is raised after the block either
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
