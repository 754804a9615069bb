"""processes.signals_deferred: a signal during a step that must not be cut in two is handled
once, by the handler that was there, when the step ends."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from multitask.processes import signals_deferred


@pytest.fixture
def calls() -> Iterator[list[str]]:
    """SIGTERM's handler for the test: it records each call and raises, as SIGTERM's handler
    of a stage run does."""
    seen: list[str] = []

    def terminate(signum: int, frame: object) -> None:
        seen.append(signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_in_the_block_is_handled_once_at_its_end(calls: list[str]) -> None:
    steps = []
    ctrl_c = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped, signals_deferred(signal.SIGTERM, signal.SIGINT):
        signal.raise_signal(signal.SIGTERM)
        steps.append("after the signal")  # the block is not cut at the signal
        signal.raise_signal(signal.SIGTERM)
        steps.append("after the second")
    assert stopped.value.code == 143
    assert steps == ["after the signal", "after the second"]
    assert calls == ["SIGTERM"]  # once, by the handler that was there
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # restored, though it never came


def test_without_a_signal_nothing_is_raised_and_the_handlers_are_back(calls: list[str]) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    with signals_deferred(signal.SIGTERM):
        assert signal.getsignal(signal.SIGTERM) is not handler
    assert signal.getsignal(signal.SIGTERM) is handler
    assert calls == []
