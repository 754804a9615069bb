"""Provenance tags of a run: the commit, whether the tree was dirty, the DVC experiment, the
device (chosen by :func:`multitask.device.select_device`, as the trainer chooses it), torch and
CUDA versions."""

from __future__ import annotations

import os
import subprocess

from multitask.config import Params
from multitask.device import device_name, select_device


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def run_tags(params: Params, stage: str) -> dict[str, str]:
    """Provenance tags: git commit and dirty flag, DVC experiment, device, torch and CUDA."""
    import torch

    commit = (_git("rev-parse", "HEAD") or "").strip() or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    device = select_device(params.train.device, params.source)
    tags = {
        "git.commit": commit,
        "mlflow.source.git.commit": commit,
        "git.dirty": "unknown" if status is None else str(bool(status.strip())).lower(),
        "device": device.type,
        "device.name": device_name(device),
        "torch.version": torch.__version__,
        "cuda.version": torch.version.cuda or "none",
        "stage": stage,
        "dataset": params.data.dataset,
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags
