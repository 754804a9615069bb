"""torch.compile against eager mode for the training step (LeNet hard sharing and cross-stitch,
batch 256, channels-last, Adam, the CPUs available), and whether compiling pays back within
the train stage.

Each mode runs in its own process with an empty inductor cache (so every compilation is a
first one, as in a fresh clone; inductor compiles on the first steps), alternating over
``BENCH_COMPILE_ROUNDS`` rounds. Rows (``compile_*``): median step ms per mode, the first five
steps' seconds (compilation included), and the steps after which the compiled step has paid
its compilation back, against the default train stage's steps (``train.epochs`` x batches per
epoch). Where no C++ compiler is present, inductor fails and the row says so; the trainer runs
eager.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import tempfile
from typing import Any

from benchmarks.common import ROOT, row, tool_env, training_step
from multitask.config import load_params
from multitask.cpus import available_cpus

ROUNDS = int(os.environ.get("BENCH_COMPILE_ROUNDS", "2"))
STEPS = int(os.environ.get("BENCH_COMPILE_STEPS", "60"))


def stage_steps() -> int:
    """The default train stage's optimiser steps: epochs x ceil(training composites / batch)."""
    params = load_params(ROOT / "params.yaml")
    train = round(params.data.train_size * (1 - params.data.val_fraction))
    return params.train.epochs * math.ceil(train / params.train.batch_size)


def run() -> list[dict[str, Any]]:
    env, threads, total = tool_env(), available_cpus(), stage_steps()
    rows = []
    for architecture in ("hps", "cross_stitch"):
        runs: dict[str, list[dict[str, float]]] = {"eager": [], "compiled": []}
        try:
            for _ in range(ROUNDS):
                for mode in runs:
                    with tempfile.TemporaryDirectory(prefix="bench-compile-") as cache:
                        runs[mode].append(training_step(
                            threads, {**env, "TORCHINDUCTOR_CACHE_DIR": cache}, STEPS,
                            architecture, keep_freed=True, compiled=mode == "compiled"))
        except subprocess.CalledProcessError as failed:
            rows.append({"name": f"compile_{architecture}", "value": None, "unit": "",
                         "error": (failed.stderr or "")[-600:]})
            continue
        step = {mode: statistics.median(r["step_ms"] for r in m) for mode, m in runs.items()}
        warmup = {mode: statistics.median(r["warmup_s"] for r in m) for mode, m in runs.items()}
        for mode in runs:
            rows.append(row(f"compile_step_ms_{architecture}_{mode}", step[mode], "ms",
                            threads=threads, rounds=ROUNDS))
            rows.append(row(f"compile_first_5_steps_s_{architecture}_{mode}", warmup[mode], "s",
                            threads=threads))
        saved_ms = step["eager"] - step["compiled"]
        extra_s = warmup["compiled"] - warmup["eager"]
        name = f"compile_payback_steps_{architecture}"
        if saved_ms <= 0:
            rows.append({"name": name, "value": None, "unit": "steps", "stage_steps": total,
                         "pays_back_in_train_stage": False,
                         "note": "the compiled step is not faster: compiling never pays back"})
            continue
        payback = extra_s * 1000 / saved_ms
        rows.append(row(name, payback, "steps", stage_steps=total,
                        pays_back_in_train_stage=payback < total,
                        note="steps until the compiled step's saving repays compilation"))
    return rows
