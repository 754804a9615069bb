"""Cost of the tune stage on full MultiFashion at the default ``tune`` params: seconds per trial
and for the whole stage (multi-objective, the default), and the share of trial-epochs the median
pruner saves in single-objective mode (epochs run against ``n_trials * tune.epochs``).

Each study runs in a temporary folder (own journal, MLflow off): the repository's
``reports/tuning/`` is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import ROOT, ensure_raw_data, row
from multitask import tuning
from multitask.config import load_params
from multitask.data.preprocess import build_dataset, write_dataset

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
        rows.append(row("tune (multi-objective): seconds per trial",
                        multi["seconds_per_trial"]["median"], "s", extra_note=budget))
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
    return rows
