"""Wall time of one 3-seed comparison row on the full data, seeds one after another against
seeds side by side.

``multitask compare`` runs each (row, seed) as a DVC experiment; ``--jobs N`` runs N at a time,
each with CPUs // N torch threads. On a 2-core CPU the choice is one experiment at a time with
two threads or two at a time with one thread each; this measures both on the default pipeline
(full MultiFashion, the default model) with ``train.epochs`` set to :data:`EPOCHS`, so a row
takes minutes, not an hour: baselines, tune (no study with equal weights), train and evaluate
per seed, each row with seeds of its own so that no stage is restored from DVC's run cache.

The repository is a fresh clone of the last commit with its own DVC cache; its data stages run
once before the timing. A row's wall time holds the training (per seed, the single-task
baselines and the multi-task network, :data:`EPOCHS` epochs each) and everything around it:
DVC's queue and workspace copies, process starts, evaluation, MLflow. Seeds trained together
in one process as a batched network are not an option for the default cross-stitch model; what
grouping LeNets buys on this CPU is ``bench_ensemble``'s measurement.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.bench_ci import timed_step
from benchmarks.common import fresh_clone, tool_env
from multitask.comparison import threads_per_experiment

EPOCHS = 2
SEEDS = 3
# label, --jobs, first seed (each run its own seeds: nothing restored from the run cache)
LAYOUTS = (("one_at_a_time", 1, 100), ("side_by_side", 2, 200))


def _prepare(clone: Path, env: dict[str, str]) -> None:
    fresh_clone(clone)
    for command in (["dvc", "cache", "dir", "--local", str(clone.parent / "cache")],
                    ["dvc", "repro", "pretrain"]):
        subprocess.run(command, cwd=clone, env=env, check=True, capture_output=True,
                       timeout=1800)


def run() -> list[dict[str, Any]]:
    env = {k: v for k, v in tool_env().items() if k != "MULTITASK_THREADS"}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        clone = Path(tmp) / "clone"
        _prepare(clone, env)  # MLflow: the clone's own store (mlflow.db beside its dvc.yaml)
        for label, jobs, first in LAYOUTS:
            seeds = [str(first + i) for i in range(SEEDS)]
            command = ["multitask", "compare", f"bench-{label}", "--row", "equal",
                       "train.weighting=equal", "--set", f"train.epochs={EPOCHS}",
                       "--seeds", *seeds, "--jobs", str(jobs)]
            step = timed_step(f"compare/{SEEDS}seeds/{label}/wall_s", command, clone, env, 3600)
            step.update(jobs=jobs, threads_each=threads_per_experiment(jobs), epochs=EPOCHS,
                        seeds=SEEDS)
            rows.append(step)
    timed = [r for r in rows if r["value"] is not None]
    if len(timed) == len(LAYOUTS):
        rows.append({"name": f"compare/{SEEDS}seeds/side_by_side_over_one_at_a_time",
                     "value": round(timed[1]["value"] / timed[0]["value"], 3),
                     "unit": "x one at a time (wall)"})
    return rows

