"""The default pipeline (``dvc repro``) on a GPU, in a fresh copy of the repository (aim: under
2 minutes on an H200).

No rows without CUDA (``BENCH_GPU_REPRO_ANY_DEVICE=1`` runs it wherever it is, to check the
script on a CPU). The copy is a ``git clone`` of the last commit, as in ``bench_repro``; where
there is no Git (a bare GPU machine may lack it) a copy of the working tree without Git, its DVC
told so (``core.no_scm``). Every stage runs (``--force``) with an empty DVC cache; the stages call
``multitask`` and ``dvc`` from ``PATH`` (on a lent GPU machine ``benchmarks/gpu_repro.sh`` puts
both there). Rows: the whole ``dvc repro`` and each stage, as ``bench_repro`` times them, and
what the run reached on the test split (per-task accuracy, Δm%), since bf16 autocast on the GPU
computes other floats than the CPU. ``BENCH_GPU_REPRO_PIPELINE`` names another pipeline file
(``sample/dvc.yaml``: the same stages on the shipped sample, about a minute on a CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_repro import timed_repro
from benchmarks.common import ROOT, row, tool_env

GPU_REPRO_AIM_S = 120
# Never copied into a Git-less copy (names at any depth): Git, environments, carried wheels and
# data, DVC's cache, and the pipelines' outputs, so that every stage runs as in a fresh clone.
NOT_COPIED = (".git", ".venv", ".whl*", ".devdata", ".gl", "cache", "tmp", "__pycache__",
              "*.egg-info", "mlruns", "mlflow.db*", "raw", "processed", "baselines",
              "checkpoints", "model.pt")


def pipeline_copy(destination: Path, source: Path = ROOT) -> Path:
    """A copy of ``source`` in which every stage of its pipeline runs anew: a clone of its last
    commit where Git is there, else its working tree without Git and with ``core.no_scm``."""
    if shutil.which("git") and (source / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(source),
                        str(destination)], check=True, timeout=300)
        return destination
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(*NOT_COPIED),
                    symlinks=True)
    subprocess.run(["dvc", "config", "--local", "core.no_scm", "true"], cwd=destination,
                   env=tool_env(), check=True, capture_output=True)
    return destination


def outcome_rows(copy: Path, pipeline: str, prefix: str) -> list[dict[str, Any]]:
    """What the run reached: each task's test accuracy and Δm%, from its ``reports/``."""
    metrics_file = copy / Path(pipeline).parent / "reports" / "metrics.json"
    if not metrics_file.is_file():
        return [{"name": f"{prefix}_metrics", "value": None, "unit": "",
                 "error": f"{metrics_file.relative_to(copy)}: not written"}]
    metrics = json.loads(metrics_file.read_text())
    rows = [row(f"{prefix}_test_accuracy_{task}", values["accuracy"], "accuracy")
            for task, values in metrics["tasks"].items() if "accuracy" in values]
    if metrics.get("delta_m_pct") is not None:
        rows.append(row(f"{prefix}_delta_m_pct", metrics["delta_m_pct"], "%"))
    return rows


def measure(copy: Path, pipeline: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """``dvc repro --force`` of ``pipeline`` in ``copy`` (every stage runs, also one whose
    inputs a copy reproduces bit for bit), timed, then its outcome."""
    prefix = "gpu_repro" if pipeline == "dvc.yaml" else f"gpu_repro_{Path(pipeline).parent}"
    rows = timed_repro(copy, env, ["dvc", "repro", "--force", pipeline], prefix, GPU_REPRO_AIM_S)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    for measured in rows:
        measured["device"] = device
    if rows[0]["value"] is not None:
        rows += outcome_rows(copy, pipeline, prefix)
    return rows


def run() -> list[dict[str, Any]]:
    if not torch.cuda.is_available() and os.environ.get("BENCH_GPU_REPRO_ANY_DEVICE") != "1":
        return []
    pipeline = os.environ.get("BENCH_GPU_REPRO_PIPELINE", "dvc.yaml")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-repro-") as tmp:
        copy = pipeline_copy(Path(tmp) / "copy")
        return measure(copy, pipeline, tool_env())
