"""Cost of the tune stage on full MultiFashion at the default ``tune`` params: seconds per trial
and for the whole stage (multi-objective, the default), and the share of trial-epochs the median
pruner saves in single-objective mode (epochs run against ``n_trials * tune.epochs``).

Each study runs in a temporary folder (own journal, MLflow off): the repository's
``reports/tuning/`` is left alone.

With ``BENCH_TUNING_COMPARE=1`` (several full trainings: tens of minutes on 2 CPU cores) it also
trains the multi-task model at the ``train`` params with the tuned weights, with ``equal`` and
with each method in ``BENCH_TUNING_METHODS`` (comma-separated, default ``uncertainty``), plus one
single-task model per task, and reports test accuracy per task and Δm% -- the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import ROOT, ensure_raw_data, row
from multitask import tuning
from multitask.config import Params, load_params
from multitask.data.preprocess import build_dataset, write_dataset
from multitask.tasks import main_tasks, tasks_from_meta
from multitask.training.data import ProcessedData
from multitask.training.device import select_device
from multitask.training.metrics import delta_m
from multitask.training.metrics import evaluate as evaluate_split
from multitask.training.stages import _train
from multitask.weighting import build_weighting

STAGE_TARGET_S = 300.0  # "a few minutes on 2 cores" for the default study


def study(folder: Path, processed: Path, **tune: Any) -> tuple[dict[str, Any], float]:
    """Run ``multitask tune`` in ``folder`` with the repository's params plus ``tune``."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["processed_dir"] = str(processed)
    raw["tune"] = {**raw.get("tune", {}), "storage": "study.journal", **tune}
    raw["tracking"] = {"enabled": False}
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    here = Path.cwd()
    os.chdir(folder)
    try:
        started = time.perf_counter()
        tuning.main(argparse.Namespace(params="params.yaml", workers=None, n_trials=None))
        seconds = time.perf_counter() - started
        return json.loads(Path("reports/tuning/summary.json").read_text()), seconds
    finally:
        os.chdir(here)


def compare(processed: Path, weights: dict[str, float], methods: Sequence[str],
            folder: Path) -> list[dict[str, Any]]:
    """Test accuracy per task and Δm% of full trainings: tuned weights, equal, ``methods``."""
    params = load_params(ROOT / "params.yaml")
    params = params.model_copy(update={
        "data": params.data.model_copy(update={"processed_dir": str(processed)}),
        "train": params.train.model_copy(update={"diagnostics_every": 0})})
    data = ProcessedData(processed, select_device(params.train.device))
    tasks = tasks_from_meta(data.meta)
    names = [t.name for t in main_tasks(tasks)]

    def test_accuracy(params: Params, task_list: list[Any], method: Any, tag: str
                      ) -> dict[str, float]:
        model, _ = _train(params, data, task_list, method, folder / f"{tag}.pt")
        result = evaluate_split(model, data, "test", task_list)
        return {name: values["accuracy"] for name, values in result.metrics.items()}

    baselines = {}
    for task in main_tasks(tasks):
        baselines.update(test_accuracy(params, [task], build_weighting("equal", 1),
                                       f"single-{task.name}"))
    candidates = {
        "tuned": build_weighting("static", len(tasks),
                                 {"static": {"weights": [weights[t.name] for t in tasks]}}),
        "equal": build_weighting("equal", len(tasks)),
        **{name: build_weighting(name, len(tasks), params.train.method_params)
           for name in methods},
    }
    rows = []
    for name, method in candidates.items():
        accuracy = test_accuracy(params, tasks, method, name)
        rows.append(row(f"full training, weighting {name}: test Δm%",
                        delta_m(accuracy, baselines, dict.fromkeys(names, True)), "%",
                        test_accuracy=accuracy, single_task=baselines,
                        extra_note=f"{params.train.epochs} epochs, seed {params.train.seed}"))
    return rows


def run() -> list[dict[str, Any]]:
    ensure_raw_data()
    params = load_params(ROOT / "params.yaml")
    data = params.data.model_copy(update={"raw_dir": str(ROOT / params.data.raw_dir)})
    tune = params.tune
    budget = (f"{tune.n_trials} trials x {tune.epochs} epochs on {tune.data_fraction:.0%} of "
              f"the training split, sampler {tune.sampler}")
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "data") as tmp:
        processed = Path(tmp) / "processed"
        write_dataset(processed, *build_dataset(data))
        multi, seconds = study(Path(tmp) / "multi", processed)
        per_trial = multi["seconds_per_trial"]
        rows.append(row("tune (multi-objective): seconds per trial, median",
                        per_trial["median"], "s", extra_note=budget))
        rows.append(row("tune (multi-objective): seconds per trial, fastest", per_trial["min"],
                        "s", extra_note="the least disturbed by other load on the machine"))
        rows.append(row("tune (multi-objective): stage wall time", seconds, "s",
                        target=STAGE_TARGET_S, extra_note=budget + ", incl. data loading"))
        single, seconds = study(Path(tmp) / "single", processed, mode="single",
                                pruner="median")
        epochs = single["trial_epochs"]
        rows.append(row("tune (single-objective, median pruner): trial-epochs saved",
                        100 * epochs["saved_share"], "%",
                        extra_note=f"{epochs['run']} of {epochs['budget']} trial-epochs run; "
                                   f"{single['trials']}; {budget}"))
        rows.append(row("tune (single-objective, median pruner): stage wall time", seconds, "s",
                        extra_note=budget))
        if os.environ.get("BENCH_TUNING_COMPARE") == "1":
            chosen = json.loads((Path(tmp) / "multi/reports/tuning/weights.json").read_text())
            methods = os.environ.get("BENCH_TUNING_METHODS", "uncertainty").split(",")
            rows += compare(processed, chosen["weights"], [m for m in methods if m],
                            Path(tmp) / "checkpoints")
    return rows
