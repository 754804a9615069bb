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

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import ROOT, ensure_raw_data, row
from multitask import keys, tuning
from multitask.config import Params, load_params
from multitask.data import processed as processed_format
from multitask.data.preprocess import build_dataset
from multitask.layout import Layout
from multitask.tasks import main_tasks
from multitask.training import session
from multitask.training.metrics import delta_m
from multitask.training.metrics import evaluate as evaluate_split
from multitask.weighting import build_weighting

STAGE_TARGET_S = 300.0  # "a few minutes on 2 cores" for the default study


def pipeline_folder(folder: Path, processed: Path) -> Layout:
    """The layout of ``folder``, its data/processed a link to the shared ``processed``."""
    layout = Layout(folder)
    layout.processed_dir.parent.mkdir(parents=True)
    layout.processed_dir.symlink_to(processed)
    return layout


def study(folder: Path, processed: Path, **tune: Any) -> tuple[dict[str, Any], float]:
    """Run the tune stage in pipeline folder ``folder`` (its data/processed a link to
    ``processed``) with the repository's params plus ``tune``."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tune"] = {**raw.get("tune", {}), **tune}
    raw["tracking"] = {"enabled": False}
    layout = pipeline_folder(folder, processed)
    layout.params.write_text(yaml.safe_dump(raw))
    started = time.perf_counter()
    tuning.tune(load_params(layout.params), layout)
    seconds = time.perf_counter() - started
    return json.loads(layout.tuning_summary.read_text()), seconds


def compare(processed: Path, weights: dict[str, float], methods: Sequence[str],
            folder: Path) -> list[dict[str, Any]]:
    """Test accuracy per task and Δm% of full trainings: tuned weights, equal, ``methods``."""
    params = load_params(ROOT / "params.yaml")
    params = params.model_copy(update={
        "train": params.train.model_copy(update={"diagnostics_every": 0})})
    layout = pipeline_folder(folder, processed)
    data = session.load_data(params, layout)
    tasks = processed_format.tasks(data.meta)
    names = [t.name for t in main_tasks(tasks)]

    def test_accuracy(params: Params, task_list: list[Any], method: Any, tag: str
                      ) -> dict[str, float]:
        fitted = session.fit(params, data, task_list, method, checkpoint=layout.checkpoint(tag))
        result = evaluate_split(fitted.model, data, keys.TEST, task_list)
        return {name: values[keys.ACCURACY] for name, values in result.metrics.items()}

    baselines = {}
    for task in main_tasks(tasks):
        baselines.update(test_accuracy(params, [task], build_weighting("equal", 1),
                                       f"single-{task.name}"))
    candidates = {
        "tuned": session.weights_method(weights, tasks, "tuned weights"),
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
    tune = params.tune
    budget = (f"{tune.n_trials} trials x {tune.epochs} epochs on {tune.data_fraction:.0%} of "
              f"the training split, sampler {tune.sampler}")
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "data") as tmp:
        processed = Path(tmp) / "processed"
        processed_format.write(processed, *build_dataset(params.data, Layout(ROOT)))
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
            chosen = json.loads(Layout(Path(tmp) / "multi").tuned_weights.read_text())
            methods = os.environ.get("BENCH_TUNING_METHODS", "uncertainty").split(",")
            rows += compare(processed, chosen["weights"], [m for m in methods if m],
                            Path(tmp) / "compare")
    return rows
