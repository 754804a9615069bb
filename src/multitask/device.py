"""The device, chosen once: CUDA when present (bf16 autocast), else the CPU."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from pathlib import Path
from typing import Literal

import torch

from multitask.cpus import available_cpus

log = logging.getLogger(__name__)

# The CPU threads a stage may use (torch's intra-op pool); unset: the CPUs this process may use
# (affinity and cgroup quota). `multitask compare --jobs N` sets it so that N queued
# experiments share the cores.
THREADS_ENV = "MULTITASK_THREADS"
# set by torchrun: the processes on this host, which share its budget (WORLD_SIZE counts those
# of every host; a launcher that sets only WORLD_SIZE runs them all here)
LOCAL_WORLD_ENV = "LOCAL_WORLD_SIZE"
WORLD_ENV = "WORLD_SIZE"


def threads_per_process(processes: int = 1) -> int:
    """Torch's CPU threads for each of a stage's ``processes``: ``$MULTITASK_THREADS`` when set,
    else :func:`available_cpus` (torch's own default counts the affinity mask but not a cgroup
    quota, so in a container limited to one CPU two threads would take turns on it), divided
    equally between them (at least one thread each). ``OMP_NUM_THREADS`` plays no part.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if value and (not value.isdigit() or int(value) < 1):
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a whole number of CPU threads "
                         "of at least 1; unset it to use the CPUs this process may use")
    budget = int(value) if value else available_cpus()
    return max(1, budget // max(1, processes))


def limit_threads() -> int:
    """Size torch's CPU threads (``torch.set_num_threads``) by :func:`threads_per_process` and
    return them. Under torchrun (``train.processes > 1``, or ``--nnodes``) the budget is this
    host's, so each of the processes torchrun started on this host (``$LOCAL_WORLD_SIZE``, else
    ``$WORLD_SIZE``) takes an equal part of it.
    """
    local = os.environ.get(LOCAL_WORLD_ENV) or os.environ.get(WORLD_ENV, "1")
    threads = threads_per_process(int(local) if local.isdigit() and int(local) > 0 else 1)
    torch.set_num_threads(threads)
    log.debug("%s=%s, %s processes on this host: %d torch threads", THREADS_ENV,
              os.environ.get(THREADS_ENV) or "(unset)", local, threads)
    return threads


def select_device(requested: Literal["auto", "cpu", "cuda"] = "auto",
                  where: str | Path = "params.yaml") -> torch.device:
    """``auto``: the first CUDA device if there is one, else the CPU.

    The one place the device is chosen: the trainer and the MLflow run's tags both ask here.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{where}: train.device: 'cuda' requested but no CUDA device is visible; "
            "use 'auto' or 'cpu'"
        )
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def check_processes(device: torch.device, processes: int,
                    where: str | Path = "params.yaml") -> None:
    """``train.processes`` ranks on CUDA take one GPU each (``cuda:LOCAL_RANK``): refuse more
    ranks than this host's visible GPUs, which NCCL would fail on after the launch."""
    if device.type != "cuda" or processes <= (count := torch.cuda.device_count()):
        return
    raise RuntimeError(
        f"{where}: train.processes: {processes} starts one process per GPU on this host, but "
        f"{count} CUDA device{'' if count == 1 else 's'} {'is' if count == 1 else 'are'} "
        f"visible; set train.processes to at most {count}, or train.device: cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA; on the CPU, plain float32 (bf16 there is slower, not faster)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_name(device: torch.device) -> str:
    """The accelerator's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def cpu_threads(device: torch.device) -> int | None:
    """torch's CPU threads where ``device`` is the CPU (None on a GPU): on the CPU the thread
    count changes the order of float sums, so the same params and seed repeat exactly only at
    the same count; reports record it beside what they measured."""
    return None if device.type == "cuda" else torch.get_num_threads()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``): CPUs of one platform string differ several-fold."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown"


def machine() -> str:
    """This machine's CPU and the instruction set torch dispatches to, e.g. ``Intel(R) Xeon(R)
    Processor, AVX512``: another machine gives other floats, and reports say which it was."""
    return f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}"
