"""Busy machines: a training step and ``dvc repro`` of the sample pipeline, idle and with other
processes competing for the cores, under each thread and OpenMP wait policy.

Torch's intra-op threads meet at a barrier after every parallel kernel. When another process
holds one of the cores, the thread that was descheduled arrives late and the others wait for it;
with OpenMP's spinning wait (GNU OpenMP spins about 300,000 iterations before it sleeps) the
waiting threads also burn the cores the late one needs. Each configuration runs in its own
process, since OpenMP reads its wait policy once, when torch is loaded.

Rows (``contention_*``):

- ``step_ms``: median wall time of one training step (LeNet cross-stitch, two tasks, batch 256,
  channels-last, equal weighting), for torch threads 1 and N (the CPUs available), wait policy
  GNU OpenMP's default (``GOMP_SPINCOUNT=300000``), a short spin (``GOMP_SPINCOUNT=10000``) and
  ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once), idle and
  with ``BENCH_CONTENTION_LOAD`` spinning processes (default: one per available CPU).
- ``repro_sample_s``: ``dvc repro --force sample/dvc.yaml`` in a clone, idle with the project's
  defaults (threads from :func:`multitask.cpus.available_cpus`, the wait policy from
  :func:`multitask.cpus.choose_wait_policy`: a short spin when idle, sleeping at once when other
  processes run), and loaded with the defaults and with the old behaviour (every core, GNU
  OpenMP's long spin).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, ROOT, row, tool_env, training_step
from multitask.cpus import BUSY_WAIT, IDLE_WAIT, WAIT_VARIABLES, available_cpus
from multitask.device import THREADS_ENV

LOAD = int(os.environ.get("BENCH_CONTENTION_LOAD", "0")) or available_cpus()
STEPS = int(os.environ.get("BENCH_CONTENTION_STEPS", "40"))
SPINNING = {"GOMP_SPINCOUNT": "300000"}  # GNU OpenMP's default when no policy is set
# The two policies the multitask command chooses between (multitask.cpus), beside GOMP's default
POLICIES = {"spinning": SPINNING, "short_spin": IDLE_WAIT, "passive": BUSY_WAIT}
POLICY_VARIABLES = (*WAIT_VARIABLES, THREADS_ENV, "OMP_NUM_THREADS")



def policy_free_env(**overrides: str) -> dict[str, str]:
    """The tools' environment without any thread or wait-policy setting, then ``overrides``."""
    return {**{k: v for k, v in tool_env().items() if k not in POLICY_VARIABLES}, **overrides}


@contextlib.contextmanager
def competing_load(processes: int) -> Iterator[None]:
    """``processes`` Python processes spinning on the CPU until the block ends."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(processes)]
    try:
        time.sleep(1.0)  # let the scheduler spread them
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def step_rows() -> list[dict[str, Any]]:
    cpus = available_cpus()
    rows = []
    for load in (0, LOAD):
        with competing_load(load) if load else contextlib.nullcontext():
            for threads in sorted({1, cpus}):
                for policy, env in POLICIES.items():
                    value = training_step(threads, policy_free_env(**env), STEPS)["step_ms"]
                    state = f"load{load}" if load else "idle"
                    rows.append(row(f"contention_step_ms_{state}_{threads}t_{policy}", value,
                                    "ms", threads=threads, competing_processes=load,
                                    wait_policy=policy))
    return rows


def repro_sample_s(clone: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN / "dvc"), "repro", "--force", "sample/dvc.yaml"], cwd=clone,
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                   timeout=7200)
    return time.perf_counter() - start


def repro_rows() -> list[dict[str, Any]]:
    """The sample pipeline in a clone of HEAD (its data is in git), three ways."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True,
                       timeout=300)
        shutil.rmtree(clone / "sample" / "reports", ignore_errors=True)
        defaults = policy_free_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        old = {**defaults, **SPINNING, "MULTITASK_THREADS": str(os.cpu_count() or 1)}
        repro_sample_s(clone, defaults)  # warms the DVC cache and the file cache
        rows.append(row("contention_repro_sample_s_idle_defaults",
                        repro_sample_s(clone, defaults), "s", competing_processes=0))
        with competing_load(LOAD):
            rows.append(row("contention_repro_sample_s_loaded_defaults",
                            repro_sample_s(clone, defaults), "s", competing_processes=LOAD))
            rows.append(row("contention_repro_sample_s_loaded_all_cores_spinning",
                            repro_sample_s(clone, old), "s", competing_processes=LOAD,
                            note="the behaviour before: every core, GNU OpenMP's spinning "
                            "wait"))
    return rows


def run() -> list[dict[str, Any]]:
    return step_rows() + repro_rows()
