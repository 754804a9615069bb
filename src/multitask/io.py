"""Atomic file output: a reader never sees a half-written file.

Every stage writes through these helpers: the bytes go to a temporary file in the destination's
folder, are flushed to disk, then renamed over the destination in one step, and the folder's
entry is flushed too (so the rename survives a power cut). Temporaries carry their writer's pid
(``.<name>.<pid>.<random>``): one that a killed process left behind is swept away by the next
write of the same path, while a live writer's is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from multitask.processes import HOST, alive


def current_umask() -> int:
    """The process umask (mkstemp/mkdtemp create private files; outputs should not be)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_stale(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` whose writer process is gone; return them."""
    swept = []
    for stale in path.parent.glob(f".{path.name}.*"):
        pid = stale.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not alive(int(pid), None):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            swept.append(stale)
    return swept


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``open`` that replaces ``path`` only once the block has finished without error."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``path``; swap it in place of ``path`` if the block succeeds.

    The old folder is renamed aside before the new one is renamed in, so at every moment
    ``path`` is either the complete old folder, absent for an instant, or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f"{_prefix(path)}old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_json(path: str | Path, required: Iterable[str] | None = None,
              remedy: str = "delete it and rerun its stage") -> Any:
    """Read JSON with an error that names the file and what to do (``remedy``). With
    ``required`` the content must be an object holding those keys (a report written by a
    stage), not merely valid JSON."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; run the stage that writes it first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); {remedy}") from None
    if required is not None:
        if not isinstance(content, dict):
            raise ValueError(f"{path}: expected a JSON object, found {type(content).__name__}; "
                             f"{remedy}")
        if missing := [key for key in required if key not in content]:
            raise ValueError(f"{path}: no {', '.join(missing)}; {remedy}")
    return content


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if missing) for the block: processes on this
    host take turns, and the kernel drops the lock when its holder dies, so a killed holder
    never blocks the next one."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def recorded_lock(path: str | Path, busy: Callable[[str], Exception], wait_s: float = 0.0,
                  poll_s: float = 0.05) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if missing) for the block, and write into the
    file who holds it (``pid N on HOST``). When another process still holds it after
    ``wait_s`` seconds, raise ``busy(holder)``: the caller words the error and its remedy.
    The kernel drops the lock when its holder dies, so a killed holder never blocks anyone."""
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    raise busy(handle.read().strip() or "an unknown process") from None
                time.sleep(poll_s)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {HOST}")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of the file's bytes, read in chunks (a weights file never sits in memory twice)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
