"""Wall time of README's first command, ``make repro``, in a fresh clone (target: 15 minutes).

A fresh clone of the last commit has an empty DVC cache and run cache, so every stage of the
main pipeline runs on the full data: download (from the Debian mirror), validate, preprocess,
baselines, tune, train, evaluate. ``make setup`` runs first in the clone with the machine's
pip cache (its time is its own row; the CI benchmark measures a cold cache), then ``make repro``
is timed and each stage's share is taken from the moment DVC announces it. Run it on a quiet
machine: other work on the two cores slows training several-fold.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_ci import clean_env, timed_step
from benchmarks.common import fresh_clone, row

REPRO_TARGET_S = 15 * 60
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def timed_repro(clone: Path, env: dict[str, str], command: Sequence[str] = ("make", "repro"),
                prefix: str = "make_repro", target_s: float = REPRO_TARGET_S
                ) -> list[dict[str, Any]]:
    """``command`` (``make repro``) in ``clone``: the total and one row per stage DVC ran, named
    ``<prefix>_s`` and ``<prefix>_stage_<stage>_s`` (a stage of another pipeline file by its
    name alone: ``sample/dvc.yaml:train`` -> ``train``)."""
    starts: list[tuple[str, float]] = []
    start = time.perf_counter()
    with subprocess.Popen(list(command), cwd=clone, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            tail = [*tail[-40:], line]
            if match := STAGE_LINE.search(line):
                starts.append((match.group(1).rsplit(":", 1)[-1], time.perf_counter()))
        code = process.wait()
    end = time.perf_counter()
    if code != 0:
        return [{"name": f"{prefix}_s", "value": None, "unit": "s",
                 "error": f"exit {code}: {''.join(tail)[-800:]}"}]
    rows = [row(f"{prefix}_s", end - start, "s", target_s,
                stages=[name for name, _ in starts])]
    bounds = [t for _, t in starts[1:]] + [end]
    rows += [row(f"{prefix}_stage_{name}_s", stop - begun, "s")
             for (name, begun), stop in zip(starts, bounds, strict=True)]
    return rows


def machine_row() -> dict[str, Any]:
    """The machine's speed beside its ``make repro`` time, measured before the clone on the idle
    machine: the CPU time of one LeNet training step with one thread, exactly as the weighting
    benchmark's ``weighting/T2/equal/step_cpu_ms`` measures it (interleaved with the other
    methods' steps), so that figures from two machines scale by the two rows."""
    from benchmarks.bench_weighting import measure_one_thread

    step = next(r for r in measure_one_thread(2) if r["name"] == "weighting/T2/equal/step_cpu_ms")
    return row("make_repro_machine_lenet_step_cpu_ms", step["value"], "ms",
               measured_as="weighting/T2/equal/step_cpu_ms")


def run() -> list[dict[str, Any]]:
    yardstick = machine_row()
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as tmp:
        clone = fresh_clone(Path(tmp) / "clone")
        env = clean_env(Path.home() / ".cache" / "pip")
        rows = [timed_step("make_repro_setup_warm_pip_cache_s", ["make", "setup"], clone, env,
                           3600)]
        if rows[0]["value"] is not None:
            rows += timed_repro(clone, env)
        return [*rows, yardstick]
