"""Freed memory stays in the process: the ``multitask`` command fixes glibc's mmap and trim
thresholds (mallopt, and the environment for its children) unless the user chose them, so
reallocating a freed block touches no new pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from multitask.allocator import (
    KEEP_FREED,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    glibc,
    keep_freed_memory,
)

# Allocate 20 MiB, touch it, free it, allocate it again and count the page faults of touching
# the second block: glibc's defaults serve it with fresh mmap pages (one fault per 4 KiB page),
# kept memory serves it from the freed block.
REALLOCATE = """
import ctypes, json, os, resource, sys
sys.path.insert(0, {src!r})
from multitask.allocator import keep_freed_memory
setting = keep_freed_memory() if {keep!r} else {{}}
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 20 * 2**20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    return block
libc.free(touch())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(block)
print(json.dumps({{"faults": faults, "setting": setting,
                   "env": os.environ.get("MALLOC_MMAP_THRESHOLD_")}}))
"""

needs_glibc = pytest.mark.skipif(glibc() is None, reason="the C library is not glibc")


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


def test_both_thresholds_are_set_in_the_process_and_for_its_children() -> None:
    environ: dict[str, str] = {}
    libc = FakeLibc()
    assert keep_freed_memory(environ, libc) == KEEP_FREED  # type: ignore[arg-type]
    assert sorted(libc.calls) == sorted([(M_MMAP_THRESHOLD, KEEP_FREED["MALLOC_MMAP_THRESHOLD_"]),
                                         (M_TRIM_THRESHOLD, KEEP_FREED["MALLOC_TRIM_THRESHOLD_"])])
    assert environ == {name: str(value) for name, value in KEEP_FREED.items()}


@pytest.mark.parametrize("environ", [
    {"MALLOC_MMAP_THRESHOLD_": "131072"},
    {"MALLOC_TRIM_THRESHOLD_": "0"},
    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
])
def test_a_threshold_you_set_wins(environ: dict[str, str]) -> None:
    libc = FakeLibc()
    before = dict(environ)
    assert keep_freed_memory(environ, libc) == {}  # type: ignore[arg-type]
    assert libc.calls == [] and environ == before


def test_other_glibc_tunables_do_not_count_as_a_choice() -> None:
    environ = {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}
    assert keep_freed_memory(environ, FakeLibc()) == KEEP_FREED  # type: ignore[arg-type]


def test_a_refused_mallopt_leaves_the_environment_alone() -> None:
    environ: dict[str, str] = {}
    assert keep_freed_memory(environ, FakeLibc(answer=0)) == {}  # type: ignore[arg-type]
    assert environ == {}


def test_no_glibc_means_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("multitask.allocator.glibc", lambda: None)
    environ: dict[str, str] = {}
    assert keep_freed_memory(environ) == {} and environ == {}


def reallocate(keep: bool) -> dict:
    import json
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env = {k: v for k, v in os.environ.items() if k not in KEEP_FREED and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", REALLOCATE.format(src=src, keep=keep)],
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    return json.loads(done.stdout)


@needs_glibc
def test_a_freed_block_is_reused_without_new_pages() -> None:
    kept, default = reallocate(keep=True), reallocate(keep=False)
    pages = 20 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert kept["setting"] == KEEP_FREED and kept["env"] == str(KEEP_FREED[
        "MALLOC_MMAP_THRESHOLD_"])
    assert default["faults"] >= pages // 2  # glibc's defaults: fresh pages again
    assert kept["faults"] < pages // 20  # the freed block, already mapped


@needs_glibc
def test_the_multitask_command_keeps_freed_memory() -> None:
    code = ("import os, sys; import multitask.cli as cli; cli.main(['methods', '--json']); "
            "print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), "
            "os.environ.get('MALLOC_TRIM_THRESHOLD_'))")
    env = {k: v for k, v in os.environ.items() if k not in KEEP_FREED}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=True)
    assert done.stdout.split()[-2:] == [str(KEEP_FREED["MALLOC_MMAP_THRESHOLD_"]),
                                        str(KEEP_FREED["MALLOC_TRIM_THRESHOLD_"])]
