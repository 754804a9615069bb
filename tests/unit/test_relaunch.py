"""`multitask train` with train.processes > 1 starts itself again under torchrun
(training/distributed.py's relaunch): what the launcher returns and says, with torchrun
replaced by a stand-in (the real launches: tests/integration/test_distributed.py)."""

from __future__ import annotations

import pytest


def test_torchrun_killed_outright_gives_the_shell_s_exit_status_and_says_so(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """torchrun SIGKILLed (its ranks then stop): `multitask train` exits 137 with one line,
    not sys.exit(-9), which the shell and DVC saw as 247 with nothing said."""
    from multitask.training import distributed

    class Killed:
        def __init__(self, *args: object, **options: object) -> None:
            pass

        def wait(self) -> int:
            return -9

    monkeypatch.setattr(distributed.subprocess, "Popen", Killed)
    assert distributed.relaunch(["train"], 2) == 137
    assert "multitask: torchrun was killed (SIGKILL)" in capsys.readouterr().err
