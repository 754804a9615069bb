"""The ``baselines``, ``train`` and ``evaluate`` stages: thin wrappers over the trainer.

Paths are relative to the working directory, as DVC runs each stage in its ``wdir``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multitask import tracking
from multitask.config import Params, load_params
from multitask.io import atomic_open, atomic_path, read_json, write_json
from multitask.models import MultiTaskModel, build_model
from multitask.tasks import Task, main_tasks, tasks_from_meta
from multitask.training.data import ProcessedData
from multitask.training.device import describe, select_device
from multitask.training.metrics import delta_m
from multitask.training.metrics import evaluate as evaluate_split
from multitask.training.plots import confusion_figure, learning_curves, save_figure
from multitask.training.trainer import Trainer
from multitask.weighting import WeightingMethod, build_weighting, validate_method_params

log = logging.getLogger(__name__)

BASELINES_JSON = Path("reports/baselines.json")
BASELINE_DIR = Path("models/baselines")
MODEL_PATH = Path("models/model.pt")
TRAIN_JSON = Path("reports/train.json")
HISTORY_CSV = Path("reports/plots/history.csv")
CURVES_PNG = Path("reports/plots/curves.png")
METRICS_JSON = Path("reports/metrics.json")
CONFUSION_DIR = Path("reports/confusion")
TUNED_WEIGHTS = Path("reports/tuning/weights.json")


def _fingerprint(*parts: Any) -> str:
    """Identifies a training run's inputs; a checkpoint of another run is never resumed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _load(params: Params, splits: tuple[str, ...] = ("train", "val", "test")) -> ProcessedData:
    device = select_device(params.train.device)
    torch.manual_seed(params.train.seed)
    data = ProcessedData(params.data.processed_dir, device, splits)
    log.info("device: %s; data: %s %s", describe(device), data.meta["dataset"],
             data.meta["splits"])
    return data


def _model(params: Params, tasks: list[Task], data: ProcessedData) -> MultiTaskModel:
    torch.manual_seed(params.train.seed)
    return build_model(params.model, tasks, data.channels, data.image_size)


def save_model(path: Path, model: MultiTaskModel, params: Params, data: ProcessedData) -> None:
    """Weights plus what rebuilding the network needs; loadable with ``weights_only=True``."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tasks": [t.to_dict() for t in model.tasks],
        "model": params.model.model_dump(mode="json"),
        "input": {"channels": data.channels, "image_size": data.image_size,
                  "pixel_mean": data.mean, "pixel_std": data.std},
        "dataset": data.meta["dataset"],
        "data_sha256": data.meta["sha256"],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: Path) -> tuple[MultiTaskModel, dict[str, Any]]:
    """Rebuild the network saved by :func:`save_model`."""
    from multitask.config import ModelConfig

    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run multitask train first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    tasks = [Task(**t) for t in payload["tasks"]]
    model = build_model(ModelConfig(**payload["model"]), tasks, payload["input"]["channels"],
                        payload["input"]["image_size"])
    model.load_state_dict(payload["state_dict"])
    return model, payload


def _weighting(params: Params, tasks: list[Task]) -> WeightingMethod:
    """The configured method; ``tuned`` means static weights chosen by the tune stage."""
    validate_method_params(params.train.method_params)
    name = params.train.weighting
    if name != "tuned":
        return build_weighting(name, len(tasks), params.train.method_params)
    tuned = read_json(TUNED_WEIGHTS)
    if tuned.get("method", "static") != "static":  # tune.methods chose another method
        return build_weighting(tuned["method"], len(tasks), params.train.method_params)
    chosen = tuned["weights"]
    missing = [t.name for t in tasks if t.name not in chosen]
    if missing:
        raise ValueError(f"{TUNED_WEIGHTS}: no weight for task(s) {missing}; rerun multitask tune")
    weights = [float(chosen[t.name]) for t in tasks]
    return build_weighting("static", len(tasks), {"static": {"weights": weights}})


def _write_history(history: list[dict[str, float]]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_open(HISTORY_CSV, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def _train(params: Params, data: ProcessedData, tasks: list[Task], method: WeightingMethod,
           checkpoint: Path, run: tracking.StageRun | None = None
           ) -> tuple[MultiTaskModel, Trainer]:
    model = _model(params, tasks, data)
    trainer = Trainer(
        model, tasks, method, data, params.train, checkpoint_path=checkpoint,
        fingerprint=_fingerprint(params.model.model_dump(), params.train.model_dump(),
                                 data.meta["sha256"], [t.name for t in tasks],
                                 method.name, method.params.model_dump()),
        on_epoch=run.log_epoch if run is not None else None,
    )
    if trainer.try_resume() and run is not None:
        run.set_tags({"resumed_after_epoch": str(trainer.start_epoch)})
        for record in trainer.history:  # the new run gets the epochs done before the interruption
            run.log_epoch(int(record["epoch"]), record)
    trainer.fit()
    return model, trainer


# --------------------------------------------------------------------------------- baselines
def baseline_params(params: Params) -> Params:
    """The params a single-task baseline trains with: hard sharing with one head and no
    rotation task, whatever ``model.architecture`` says, so that the Δm% of every architecture
    is measured against the same reference (only the backbone and head sizes carry over)."""
    model = params.model.model_copy(update={"architecture": "hps", "rotation_task": False})
    return params.model_copy(update={"model": model})


def baselines(args: argparse.Namespace) -> int:
    """One single-task model per task, same backbone and schedule: the Δm% reference."""
    params = baseline_params(load_params(args.params))
    data = _load(params)
    results: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for task in main_tasks(tasks_from_meta(data.meta)):
        log.info("baseline for task '%s'", task.name)
        checkpoint = Path(params.train.checkpoint_dir) / f"baseline-{task.name}.pt"
        model, _ = _train(params, data, [task], build_weighting("equal", 1), checkpoint)
        results[task.name] = evaluate_split(model, data, "test", [task]).metrics[task.name]
        save_model(BASELINE_DIR / f"{task.name}.pt", model, params, data)
        checkpoint.unlink(missing_ok=True)
    write_json(BASELINES_JSON, {
        "tasks": results,
        "backbone": params.model.backbone,
        "epochs": params.train.epochs,
        "data_sha256": data.meta["sha256"],
        "seconds": round(time.perf_counter() - started, 1),
    })
    log.info("baselines: %s", {k: round(v["accuracy"], 4) for k, v in results.items()})
    return 0


# ------------------------------------------------------------------------------------- train
def train(args: argparse.Namespace) -> int:
    """Train the multi-task network; write the model, its history and curves."""
    params = load_params(args.params)
    data = _load(params)
    tasks = tasks_from_meta(data.meta, rotation=params.model.rotation_task)
    method = _weighting(params, tasks)
    checkpoint = Path(params.train.checkpoint_dir) / "train.pt"
    started = time.perf_counter()
    with tracking.stage_run(params, "train") as run:
        run.log_dataset(data.meta, source=str(params.data.processed_dir))
        model, trainer = _train(params, data, tasks, method, checkpoint, run)
        seconds = time.perf_counter() - started
        save_model(MODEL_PATH, model, params, data)
        _write_history(trainer.history)
        names = [t.name for t in tasks]
        save_figure(learning_curves(trainer.history, names), CURVES_PNG)
        run.log_artifact(CURVES_PNG, "plots")
        run.log_artifact(HISTORY_CSV, "plots")
        # The logged model takes raw pixels (0..255) and normalises them itself (TaskLabels).
        example = data.splits["test"].images[:4].cpu().numpy()
        run.log_model(model, example, names, pixel_mean=data.mean, pixel_std=data.std,
                      class_names={t["name"]: t["class_names"] for t in data.meta["tasks"]})
        final = trainer.history[-1]
        write_json(TRAIN_JSON, {
            "run_id": run.run_id,
            "weighting": method.name,
            "requested_weighting": params.train.weighting,
            "tasks": names,
            "epochs": len(trainer.history),
            "device": describe(data.device),
            "seconds": round(seconds, 1),
            "train_images_per_s": round(float(np.median(
                [r["time/train_images_per_s"] for r in trainer.history])), 1),
            "final": {k: v for k, v in final.items()
                      if k.startswith(("val/", "train/", "weight/"))},
        })
    checkpoint.unlink(missing_ok=True)
    return 0


# ---------------------------------------------------------------------------------- evaluate
def _write_confusion(task: Task, matrix: np.ndarray, class_names: list[str]) -> None:
    """Row-level ``actual,predicted`` pairs for ``dvc plots`` and a PNG for people."""
    with atomic_open(CONFUSION_DIR / f"{task.name}.csv", "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        for (actual, predicted), count in np.ndenumerate(matrix):
            writer.writerows([[class_names[actual], class_names[predicted]]] * int(count))
    save_figure(confusion_figure(matrix, class_names, f"task {task.name}: test confusion"),
                CONFUSION_DIR / f"{task.name}.png")


def evaluate(args: argparse.Namespace) -> int:
    """Test metrics per task and Δm% against the baselines; completes the MLflow run."""
    params = load_params(args.params)
    model, payload = load_model(MODEL_PATH)
    data = _load(params, splits=("test",))
    if payload["data_sha256"] != data.meta["sha256"]:
        raise ValueError(f"{MODEL_PATH} was trained on other data than {params.data.processed_dir}"
                         "; rerun multitask train")
    model.to(data.device, memory_format=torch.channels_last)
    tasks = main_tasks(model.tasks)
    result = evaluate_split(model, data, "test", tasks)
    baseline = read_json(BASELINES_JSON)["tasks"]
    accuracy = {t.name: result.metrics[t.name]["accuracy"] for t in tasks}
    base_accuracy = {name: float(values["accuracy"]) for name, values in baseline.items()}
    metrics = {
        "tasks": result.metrics,
        "mean_accuracy": float(np.mean(list(accuracy.values()))),
        "delta_m_pct": delta_m(accuracy, base_accuracy,
                               {t.name: t.higher_is_better for t in tasks}),
    }
    class_names = {t["name"]: t["class_names"] for t in data.meta["tasks"]}
    for task in tasks:
        _write_confusion(task, result.confusion[task.name].numpy(), class_names[task.name])
    write_json(METRICS_JSON, metrics)
    run_id = read_json(TRAIN_JSON).get("run_id")
    with tracking.stage_run(params, "evaluate", run_id=run_id) as run:
        flat = {f"test/{task}/{key}": value
                for task, values in result.metrics.items() for key, value in values.items()}
        flat.update({"test/mean_accuracy": metrics["mean_accuracy"],
                     "test/delta_m_pct": metrics["delta_m_pct"]})
        run.log_metrics(flat)
        for task in tasks:
            run.log_artifact(CONFUSION_DIR / f"{task.name}.png", "confusion")
        run.log_artifact(METRICS_JSON)
        run.log_artifact(BASELINES_JSON)
        run.log_artifact(Path(args.params))
        summary = Path(params.validate_.report_dir) / "summary.json"
        if summary.is_file():
            run.log_artifact(summary, "validation")
    log.info("test: %s  Δm%% = %+.2f", {k: round(v, 4) for k, v in accuracy.items()},
             metrics["delta_m_pct"])
    return 0
