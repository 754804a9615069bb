"""Keep freed tensor memory in the process (glibc's malloc), read without torch: the
``multitask`` command sets it before the command's module loads torch.

A LeNet training step allocates and frees tensors of 1-8 MB dozens of times. glibc serves
those above its mmap threshold (128 kB at start, raised as such blocks are freed) with fresh
``mmap`` pages and returns freed heap tops above its trim threshold to the OS, so the next step
touches new pages again: 1,300 to 4,000 page faults per LeNet step, the zero-fill of a
max-pool gradient taking 7.6 ms instead of 2.5 ms. With the thresholds fixed, freed blocks are
reused and a step takes under 50 page faults (measured in benchmarks/bench_allocator.py,
README, Benchmarks). Other allocators (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import os

# mallopt's parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to 32 MiB (glibc's ceiling for the mmap threshold on 64-bit) come from the heap;
# up to 256 MiB of free heap top stays mapped (64 MiB already took a cross-stitch LeNet step's
# faults from about 4,000 to under 20).
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": 32 * 2**20, "MALLOC_TRIM_THRESHOLD_": 256 * 2**20}
MALLOPT = {"MALLOC_MMAP_THRESHOLD_": M_MMAP_THRESHOLD, "MALLOC_TRIM_THRESHOLD_": M_TRIM_THRESHOLD}
TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def user_setting(environ: dict[str, str]) -> bool:
    """Whether the user already chose malloc's thresholds (environment or GLIBC_TUNABLES)."""
    return (any(name in environ for name in KEEP_FREED)
            or any(tunable in environ.get("GLIBC_TUNABLES", "") for tunable in TUNABLES))


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the one whose ``mallopt`` takes these parameters)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL(None)
    except (ValueError, OSError, AttributeError):
        return None


def keep_freed_memory(environ: dict[str, str] | None = None,
                      libc: ctypes.CDLL | None = None) -> dict[str, int]:
    """Fix glibc's mmap and trim thresholds for this process (``mallopt``) and, through
    ``environ`` (``os.environ``), for the processes it starts; returns what it set, ``{}`` when
    the user set either threshold (theirs wins) or the C library is not glibc."""
    environ = os.environ if environ is None else environ
    if user_setting(environ):
        return {}
    libc = glibc() if libc is None else libc
    if libc is None:
        return {}
    for name, value in KEEP_FREED.items():
        if libc.mallopt(MALLOPT[name], value) != 1:
            return {}
    environ.update({name: str(value) for name, value in KEEP_FREED.items()})
    return dict(KEEP_FREED)
