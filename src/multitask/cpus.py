"""The CPUs a process may use and how its threads wait for each other, read without torch:
the ``multitask`` command chooses OpenMP's wait policy here before torch loads (OpenMP reads it
once), and :func:`multitask.device.limit_threads` sizes torch's threads from
:func:`available_cpus`."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

# OpenMP's waiting threads. Each of torch's threads that finishes a parallel kernel early waits
# for the others; GNU OpenMP spins about 300,000 iterations first. On an idle machine a short
# spin costs nothing against that (the late thread is a few microseconds away); where other
# processes hold cores, spinning threads burn the CPU time the descheduled one needs, and
# sleeping at once is fastest. Measured in benchmarks/bench_contention.py (README, Benchmarks).
IDLE_WAIT = {"GOMP_SPINCOUNT": "10000"}
BUSY_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def cgroup_cpu_limit(proc_cgroup: Path = Path("/proc/self/cgroup"),
                     root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``quota / period``), the tightest one
    on its path up to the root; None when there is none (or no cgroup file system).

    cgroup v2: ``cpu.max`` (``max 100000`` or ``150000 100000``); v1: ``cpu.cfs_quota_us``
    and ``cpu.cfs_period_us`` of the ``cpu`` controller's hierarchy (``-1``: no quota). A
    container with ``--cpus 1.5`` has two CPUs in its affinity mask and 1.5 CPUs of time.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            files = [("cpu.max", None)]
            base = root
        elif "cpu" in controllers.split(","):
            files = [("cpu.cfs_quota_us", "cpu.cfs_period_us")]
            base = next((root / name for name in (controllers, "cpu", "cpu,cpuacct")
                         if (root / name).is_dir()), root / controllers)
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            for quota_file, period_file in files:
                limit = _read_quota(folder, quota_file, period_file)
                if limit is not None:
                    limits.append(limit)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def _read_quota(folder: Path, quota_file: str, period_file: str | None) -> float | None:
    try:
        if period_file is None:
            quota, period = (folder / quota_file).read_text().split()[:2]
        else:
            quota = (folder / quota_file).read_text().strip()
            period = (folder / period_file).read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1") or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def available_cpus() -> int:
    """CPUs this process may use, at least 1: its affinity mask (``taskset``, a container's
    cpuset), capped by its cgroup CPU quota rounded down (1.5 CPUs of time: one thread that
    runs, not two that take turns)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, int(quota))
    return max(1, cpus)


def runnable_others(stat: Path = Path("/proc/stat"), samples: int = 5,
                    interval_s: float = 0.01) -> float:
    """Runnable threads on the machine besides the caller, now: the median of a few readings
    of ``procs_running`` less one (this process). 0 where ``/proc/stat`` is missing."""
    readings = []
    for index in range(samples):
        try:
            lines = stat.read_text().splitlines()
        except OSError:
            return 0.0
        running = [int(line.split()[1]) for line in lines if line.startswith("procs_running ")]
        if not running:
            return 0.0
        readings.append(running[0] - 1)
        if index + 1 < samples:
            time.sleep(interval_s)
    return max(0.0, float(statistics.median(readings)))


def wait_policy(others: float, cpus: int) -> dict[str, str]:
    """:data:`BUSY_WAIT` when other runnable threads would take half the CPUs or more, else
    :data:`IDLE_WAIT`."""
    return BUSY_WAIT if others >= max(1.0, cpus / 2) else IDLE_WAIT


def choose_wait_policy(environ: dict[str, str] | None = None,
                       loaded: bool | None = None) -> dict[str, str] | None:
    """Set OpenMP's wait policy in ``environ`` (``os.environ``) for this process and those it
    starts, from how busy the machine is now; return what was set. Nothing when one of
    :data:`WAIT_VARIABLES` is set already (yours wins) or torch is loaded (too late)."""
    environ = os.environ if environ is None else environ
    if loaded is None:
        loaded = "torch" in sys.modules
    if loaded or any(name in environ for name in WAIT_VARIABLES):
        return None
    policy = wait_policy(runnable_others(), available_cpus())
    environ.update(policy)
    return policy
