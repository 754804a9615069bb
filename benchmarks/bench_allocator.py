"""Freed memory kept in the process (:mod:`multitask.allocator`) against glibc's defaults: one
training step of LeNet hard sharing and cross-stitch, batch 256, channels-last, 1 and N threads
(N: the CPUs available).

Each configuration runs in its own process, with and without
:func:`multitask.allocator.keep_freed_memory`, alternating over ``BENCH_ALLOCATOR_ROUNDS``
rounds (a shared machine drifts; alternating spreads the drift over both). Rows
(``allocator_*``): median over rounds of the median wall ms per step, CPU ms per step (all
threads) and minor page faults per step.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from benchmarks.common import row, tool_env, training_step
from multitask.cpus import available_cpus

ROUNDS = int(os.environ.get("BENCH_ALLOCATOR_ROUNDS", "3"))
STEPS = int(os.environ.get("BENCH_ALLOCATOR_STEPS", "60"))
SETTINGS = {"glibc_defaults": False, "kept": True}


def run() -> list[dict[str, Any]]:
    env = tool_env()
    rows = []
    for architecture in ("hps", "cross_stitch"):
        for threads in sorted({1, available_cpus()}):
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
            for _ in range(ROUNDS):
                for name, keep in SETTINGS.items():
                    runs[name].append(training_step(threads, env, STEPS, architecture, keep))
            for name, measured in runs.items():
                for key, unit in (("step_ms", "ms"), ("cpu_ms", "ms"),
                                  ("faults_per_step", "faults")):
                    value = statistics.median(m[key] for m in measured)
                    rows.append(row(f"allocator_{key}_{architecture}_{threads}t_{name}", value,
                                    unit, threads=threads, architecture=architecture,
                                    malloc=name, rounds=ROUNDS))
    return rows
