"""Helpers shared by the benchmarks: timing and getting the full raw data in place."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from multitask.allocator import KEEP_FREED

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def median_seconds(function: Callable[[], Any], repeat: int = 3) -> float:
    """Median wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fresh_clone(clone: Path) -> Path:
    """``clone``: a clone of this repository's last commit with files of its own (no hard
    links into this checkout), as a new user's ``git clone`` gives."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
                   check=True, timeout=300)
    return clone


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's scripts (multitask, dvc) first on PATH."""
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}


def ensure_raw_data() -> None:
    """Run ``multitask download`` in the repository root (a no-op when files are verified)."""
    subprocess.run([sys.executable, "-m", "multitask", "download"], cwd=ROOT, env=tool_env(),
                   check=True, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def default_processed() -> Iterator[Path]:
    """params.yaml's processed data set (the full raw data downloaded first), in a temporary
    folder for the block."""
    from multitask.config import load_params
    from multitask.data import processed
    from multitask.data.preprocess import build_dataset
    from multitask.layout import Layout

    ensure_raw_data()
    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "processed"
        processed.write(folder, *build_dataset(params.data, Layout(ROOT)))
        yield folder


def row(name: str, value: float, unit: str, target: float | None = None,
        higher_is_better: bool = False, **extra: Any) -> dict[str, Any]:
    """A result row; with a target, ``ok`` says whether it was met."""
    out: dict[str, Any] = {"name": name, "value": round(value, 3), "unit": unit, **extra}
    if target is not None:
        out["target"] = f"{'>=' if higher_is_better else '<='} {target} {unit}"
        out["ok"] = value >= target if higher_is_better else value <= target
    return out


# One training step of the default model in a process of its own (thread count and OpenMP wait
# are read once, when torch loads): LeNet cross-stitch, two tasks, batch 256, channels-last,
# Adam. argv: threads, steps, architecture, keep (1: multitask.allocator.keep_freed_memory),
# compile (1: the model through torch.compile; the first 5 steps, timed as warmup_s, compile it).
STEP_CHILD = r"""
import json, resource, statistics, sys, time
threads, steps, architecture, keep, compiled = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                                sys.argv[4] == "1", sys.argv[5] == "1")
if keep:
    from multitask.allocator import keep_freed_memory
    keep_freed_memory()
import torch
import torch.nn.functional as F
from multitask.config import ModelConfig
from multitask.models import build_model
from multitask.tasks import Task

torch.set_num_threads(threads)
torch.manual_seed(0)
tasks = [Task(name="left", num_classes=10), Task(name="right", num_classes=10)]
model = build_model(ModelConfig(architecture=architecture), tasks, 1, 36)
model = model.to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
if compiled:
    model = torch.compile(model)
x = torch.rand(256, 1, 36, 36).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (256, 2))
times = []
began = time.perf_counter()
for step in range(steps + 5):
    if step == 5:
        warmup = time.perf_counter() - began
        cpu, faults = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    outputs = model(x)
    loss = sum(F.cross_entropy(outputs[t.name], y[:, i]) for i, t in enumerate(tasks))
    loss.backward()
    optimizer.step()
    if step >= 5:
        times.append(time.perf_counter() - start)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"step_ms": 1000 * statistics.median(times),
                  "cpu_ms": 1000 * (time.process_time() - cpu) / steps,
                  "faults_per_step": faults / steps, "warmup_s": warmup}))
"""


def training_step(threads: int, env: dict[str, str], steps: int,
                  architecture: str = "cross_stitch", keep_freed: bool = False,
                  compiled: bool = False) -> dict[str, float]:
    """:data:`STEP_CHILD` in a new process: median wall ms per step, CPU ms per step (all
    threads), minor page faults per step and the first 5 steps' seconds (with ``compiled``,
    torch.compile's compilation). Without ``keep_freed`` the child runs on glibc's
    own thresholds (the variables :mod:`multitask.allocator` sets are removed from ``env``)."""
    env = {k: v for k, v in env.items() if k not in KEEP_FREED}
    done = subprocess.run(
        [sys.executable, "-c", STEP_CHILD, str(threads), str(steps), architecture,
         "1" if keep_freed else "0", "1" if compiled else "0"],
        env=env, capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
