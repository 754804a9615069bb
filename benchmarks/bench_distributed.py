"""Data-parallel training throughput: ``multitask train`` with ``train.processes`` 1 and 2 on
this machine's CPUs (each process gets its share of the cores), and one process per GPU where
there are several. LeNet hard sharing on half of MultiFashion's training split, 3 epochs, global
batch 256; equal weighting and MGDA (a per-task gradient method: its gradients are all-reduced
each step). On two CPU cores this measures what the synchronisation costs, not a speed-up."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import BIN, ROOT, ensure_raw_data, row, tool_env
from multitask.config import load_params
from multitask.data import processed
from multitask.data.preprocess import build_dataset
from multitask.layout import Layout


def images_per_s(folder: Path, processes: int, weighting: str, device: str) -> float:
    """The median per-epoch training images/s that ``multitask train`` reports."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update({"epochs": 3, "batch_size": 256, "data_fraction": 0.5,
                            "weighting": weighting, "processes": processes,
                            "diagnostics_every": 0, "device": device})
    params["tracking"]["enabled"] = False
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([str(BIN / "multitask"), "train"], cwd=folder, env=tool_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return float(json.loads((folder / "reports" / "train.json").read_text())
                 ["train_images_per_s"])


def run() -> list[dict[str, Any]]:
    ensure_raw_data()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        layout = Layout(folder)
        processed.write(layout.processed_dir,
                        *build_dataset(load_params(ROOT / "params.yaml").data, Layout(ROOT)))
        counts = [1, 2]
        device = "cpu"
        if torch.cuda.device_count() > 1:
            counts, device = [1, torch.cuda.device_count()], "cuda"
        for weighting in ("equal", "mgda"):
            single = None
            for count in counts:
                rate = images_per_s(folder, count, weighting, device)
                single = single or rate
                where = "GPU" if device == "cuda" else "CPU"
                rows.append(row(f"train images/s, {count} process(es), {where}, {weighting}",
                                rate, "images/s", higher_is_better=True,
                                extra_note=f"{rate / single:.2f}x one process"))
    return rows
