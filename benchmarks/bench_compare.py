"""Wall time of one 3-seed comparison row on the full data, seeds one after another against
seeds side by side, and of a second row that finds each seed's baselines in DVC's run cache.

``multitask compare`` runs each (row, seed) as a DVC experiment; ``--jobs N`` runs N at a time,
each with CPUs // N torch threads. On a 2-core CPU the choice is one experiment at a time with
two threads or two at a time with one thread each; this measures both on the default pipeline
(full MultiFashion, the default model) with ``train.epochs`` set to :data:`EPOCHS`, so a row
takes minutes, not an hour: baselines, tune (no study with equal weights), train and evaluate
per seed, each row with seeds of its own so that no stage is restored from DVC's run cache.
Then a second row (another weighting method) on the side-by-side row's seeds: its baselines are
restored, not trained, which is what every row after the first of a comparison gets.

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
SECOND_ROW = ("second_row_baselines_restored", 2, 200, "dwa")  # the side-by-side row's seeds


def _prepare(clone: Path, env: dict[str, str]) -> None:
    fresh_clone(clone)
    for command in (["dvc", "cache", "dir", "--local", str(clone.parent / "cache")],
                    ["dvc", "repro", "pretrain"]):
        subprocess.run(command, cwd=clone, env=env, check=True, capture_output=True,
                       timeout=1800)


def _restored(clone: Path, env: dict[str, str], experiment: str) -> bool:
    """Whether the experiment's baselines stage came from DVC's run cache (its queue log)."""
    logs = subprocess.run(["dvc", "queue", "logs", experiment], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=120).stdout
    return ":baselines' is cached - skipping run" in logs or \
        "'baselines' is cached - skipping run" in logs


def run() -> list[dict[str, Any]]:
    env = {k: v for k, v in tool_env().items() if k != "MULTITASK_THREADS"}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        clone = Path(tmp) / "clone"
        _prepare(clone, env)  # MLflow: the clone's own store (mlflow.db beside its dvc.yaml)
        for label, jobs, first, method in (*((*layout, "equal") for layout in LAYOUTS),
                                           SECOND_ROW):
            seeds = [str(first + i) for i in range(SEEDS)]
            command = ["multitask", "compare", f"bench-{label}", "--row", method,
                       f"train.weighting={method}", "--set", f"train.epochs={EPOCHS}",
                       "--seeds", *seeds, "--jobs", str(jobs)]
            step = timed_step(f"compare/{SEEDS}seeds/{label}/wall_s", command, clone, env, 3600)
            step.update(jobs=jobs, threads_each=threads_per_experiment(jobs), epochs=EPOCHS,
                        seeds=SEEDS)
            if label == SECOND_ROW[0]:
                step["baselines_restored"] = sum(_restored(clone, env, f"bench-{label}-{method}"
                                                           f"-s{seed}") for seed in seeds)
            rows.append(step)
    wall = {row["name"].split("/")[2]: row["value"] for row in rows}
    if wall["one_at_a_time"] and wall["side_by_side"]:
        rows.append({"name": f"compare/{SEEDS}seeds/side_by_side_over_one_at_a_time",
                     "value": round(wall["side_by_side"] / wall["one_at_a_time"], 3),
                     "unit": "x one at a time (wall)"})
    if wall["side_by_side"] and wall[SECOND_ROW[0]]:
        rows.append({"name": f"compare/{SEEDS}seeds/{SECOND_ROW[0]}_over_first_row",
                     "value": round(wall[SECOND_ROW[0]] / wall["side_by_side"], 3),
                     "unit": "x the first row (wall, both side by side)"})
    return rows

