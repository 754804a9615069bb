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
    said = capsys.readouterr().err
    assert "multitask: torchrun was killed by SIGKILL; its processes stopped" in said


@pytest.mark.parametrize(("exitcode", "said", "status"), [
    (-9, "process 1 failed (killed by SIGKILL)", 1),
    (2, "process 1 failed (exit code 2)", 2),
])
def test_a_failed_process_is_named_with_how_it_ended(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exitcode: int,
        said: str, status: int) -> None:
    """A rank killed by a signal is said to be killed by it, not to have 'exit code -9'."""
    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from multitask.training import distributed

    def failing(arguments: list[str]) -> None:
        failure = ProcessFailure(local_rank=1, pid=123, exitcode=exitcode, error_file="")
        raise ChildFailedError("multitask", {1: failure})

    monkeypatch.setattr(torch.distributed.run, "main", failing)
    assert distributed.torchrun(["-m", "multitask", "train"]) == status
    assert f"multitask: {said}; torchrun stopped the others" in capsys.readouterr().err
