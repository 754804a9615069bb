"""Atomic writes: a reader sees the old file or the new one; a killed writer leaves nothing
that the next write does not sweep away."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from multitask.io import atomic_dir, atomic_open, sweep_stale, write_json


def dead_pid() -> int:
    """The pid of a process that has already exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_temporaries_of_dead_writers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "processed"
    gone = dead_pid()
    stale_file = tmp_path / f".processed.{gone}.abc.tmp"
    stale_dir = tmp_path / f".processed.{gone}.xyz"
    live = tmp_path / f".processed.{os.getpid()}.live.tmp"
    stale_file.write_text("half")
    stale_dir.mkdir()
    (stale_dir / "train_images.npy").write_bytes(b"half")
    live.write_text("a writer still at work")
    with atomic_dir(target) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists(), "a live process's temporary is not touched"
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "processed"]
    assert sweep_stale(target) == []
