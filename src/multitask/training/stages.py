"""The ``baselines``, ``train`` and ``evaluate`` stages: thin, typed functions over the session.

Each takes the loaded params and the pipeline folder's :class:`~multitask.layout.Layout`, so
tests call them directly; ``multitask <stage>`` only parses its arguments and calls them.
Under torchrun, ``baselines`` and ``train`` train in every process; rank 0 alone writes the
models and reports and logs to MLflow.

One module, not several: the three stages hand each other one chain of files (the baselines'
test and validation metrics per task kind are what train selects by and evaluate's Δm%
divides by); split, the shape of those files would be spelt in three places.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from multitask import keys, tracking
from multitask.config import Params
from multitask.data import processed
from multitask.device import cpu_threads, describe, machine, select_device
from multitask.io import atomic_open, read_json, write_json
from multitask.layout import Layout
from multitask.models.pretrained import EncoderWeights
from multitask.pretraining import resolve_start
from multitask.tasks import Task, main_tasks
from multitask.training import distributed, ensemble, session
from multitask.training.checkpoints import sole_run
from multitask.training.data import ProcessedData
from multitask.training.metrics import delta_m
from multitask.training.metrics import evaluate as evaluate_split
from multitask.training.plots import (
    confusion_figure,
    learning_curves,
    regression_figure,
    save_figure,
)
from multitask.training.trainer import NonFiniteLossError
from multitask.weighting import build_weighting

log = logging.getLogger(__name__)
VALIDATION = "validation"  # baselines_info.json: each baseline's kept epoch's val metrics
BATCHED_CHECKPOINT = "baselines"  # the baselines trained together (train.ensemble) checkpoint


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_open(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


# --------------------------------------------------------------------------------- baselines
def baseline_params(params: Params) -> Params:
    """The params a single-task baseline trains with: hard sharing with one head and no
    rotation task, whatever ``model.architecture`` says, so that the Δm% of every architecture
    is measured against the same reference (the backbone and head sizes carry over).

    Derived, not listed: everything else is the multi-task run's own, so every regularisation
    and selection key (:func:`multitask.config.regularisation_keys`: dropout, weight decay,
    label smoothing, augmentation, early stopping) is the same for both, as a fair Δm% needs.
    """
    model = params.model.model_copy(update={"architecture": "hps", "rotation_task": False})
    return params.model_copy(update={"model": model})


def validation_reference(params: Params, layout: Layout, tasks: list[Task]
                         ) -> dict[str, float] | None:
    """The baselines' primary validation metrics (``task.metric`` of their kept epochs), which
    early stopping by ``delta_m`` scores the multi-task run against; None when nothing selects
    by it."""
    stopping = params.train.early_stopping
    if stopping.patience is None or stopping.select != "delta_m":
        return None
    path = layout.baselines_info
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; train.early_stopping.select: delta_m "
                                "needs the baselines' validation metrics: run multitask "
                                "baselines first")
    validation = read_json(path).get(VALIDATION)
    if not isinstance(validation, dict):
        raise ValueError(f"{path}: no '{VALIDATION}' metrics (written by an older version); "
                         "rerun multitask baselines")
    reference = {}
    for task in main_tasks(tasks):
        value = validation.get(task.name, {}).get(task.metric)
        if value is None:
            raise ValueError(f"{path}: no validation {task.metric} of task '{task.name}' "
                             f"({VALIDATION}: {sorted(validation)}); rerun multitask baselines")
        reference[task.name] = float(value)
    return reference


def baselines(params: Params, layout: Layout) -> dict[str, dict[str, float]]:
    """One single-task model per task, same backbone and schedule: the Δm% reference.

    Writes the models, ``reports/baselines.json`` (per-task test metrics, a DVC metrics file)
    and ``reports/baselines_info.json`` (how they were made); returns ``{task: test metrics}``.
    """
    params = baseline_params(params)
    try:
        with distributed.process_group(select_device(params.train.device,
                                                     params.source)) as group:
            writes = group is None or group.main
            with sole_run(layout, "baselines", writes):
                return _baselines(params, layout, writes)
    except NonFiniteLossError as error:
        raise error.advising(
            "stopped before saving this epoch. A baseline trains its one task at weight 1 with "
            "the multi-task run's optimiser: lower train.optimizer.lr") from None


def _fitted_baselines(params: Params, layout: Layout, data: ProcessedData, tasks: list[Task],
                      start: EncoderWeights | None, together: bool
                      ) -> Iterator[tuple[Task, session.Fitted, Path | None]]:
    """Each task's trained baseline, and its checkpoint (None: the batched run's one). Every
    checkpoint is removed only when all baselines are saved: a run interrupted during a later
    task resumes the finished ones from their last epoch instead of training them again."""
    if together:
        fitted = ensemble.fit_members(params, data, tasks, start=start,
                                      checkpoint=layout.checkpoint(BATCHED_CHECKPOINT))
        yield from ((task, one, None) for task, one in zip(tasks, fitted, strict=True))
        return
    for task in tasks:
        log.info("baseline for task '%s'", task.name)
        checkpoint = layout.checkpoint(f"baseline-{task.name}")
        yield task, session.fit(params, data, [task], build_weighting("equal", 1),
                                checkpoint=checkpoint, start=start), checkpoint


def _baselines(params: Params, layout: Layout, writes: bool) -> dict[str, dict[str, float]]:
    data = session.load_data(params, layout)
    start = resolve_start(params, layout)  # the same start as the multi-task network's
    results: dict[str, dict[str, float]] = {}
    validation: dict[str, dict[str, float]] = {}
    selection: dict[str, object] = {}
    started = time.perf_counter()
    tasks = main_tasks(processed.tasks(data.meta))
    together = ensemble.trains_together(params, tasks, data.device)
    checkpoints = [layout.checkpoint(BATCHED_CHECKPOINT)]
    for task, fitted, checkpoint in _fitted_baselines(params, layout, data, tasks, start,
                                                      together):
        scored = evaluate_split(fitted.model, data, keys.TEST, [task])
        scored.warn_undefined(keys.TEST, str(layout.baselines_json))
        results[task.name] = scored.metrics[task.name]
        validation[task.name] = {metric: fitted.kept[keys.task_metric(keys.VAL, task.name, metric)]
                                 for metric in (*task.metrics, keys.LOSS)}
        selection[task.name] = fitted.selection
        if not writes:  # another rank: rank 0 saves the model
            continue
        session.save_network(layout.baseline_model(task.name), fitted.model, params, data,
                             start=start)
        if checkpoint is not None:
            checkpoints.append(checkpoint)
    if not writes:
        return results
    for checkpoint in checkpoints:
        checkpoint.unlink(missing_ok=True)
    # baselines.json is a DVC metrics file: metrics only, or dvc exp show lists the rest too.
    write_json(layout.baselines_json, {keys.TASKS: results})
    write_json(layout.baselines_info, {
        "machine": machine(),
        "backbone": params.model.backbone,
        "pretrained": session.start_record(start),
        "epochs": params.train.epochs,
        "ensemble": "batched" if together else "sequential",  # train.ensemble, resolved
        "threads": cpu_threads(data.device),  # CPU threads (None on a GPU)
        VALIDATION: validation,  # the reference of train.early_stopping.select: delta_m
        "selection": selection,  # per task: the epoch kept and why it stopped (None: the last)
        "data_sha256": data.meta["sha256"],
        "seconds": round(time.perf_counter() - started, 1),
    })
    log.info("baselines: %s", {t.name: f"{t.metric} {results[t.name][t.metric]:.4f}"
                               for t in tasks})
    return results


# ------------------------------------------------------------------------------------- train
PRETRAINED_ORIGIN_TAG = "multitask.pretrained.origin"
PRETRAINED_SHA256_TAG = "multitask.pretrained.sha256"
REUSED_HEADS_TAG = "multitask.pretrained.reused_heads"


def pretrained_tags(start: EncoderWeights | None) -> dict[str, str]:
    """Where the encoder started, as run tags: a column in the MLflow UI's run table, so two
    runs from different starting points are never confused there."""
    if start is None:
        return {PRETRAINED_ORIGIN_TAG: "none (random initialisation)",
                PRETRAINED_SHA256_TAG: "-"}
    return {PRETRAINED_ORIGIN_TAG: start.origin, PRETRAINED_SHA256_TAG: start.sha256}


def baselines_threads(layout: Layout) -> int | None:
    """The CPU threads the single-task baselines ran with (``reports/baselines_info.json``;
    None on a GPU, or where the file is absent or older than the field)."""
    path = layout.baselines_info
    return read_json(path, required=()).get("threads") if path.is_file() else None


def train(params: Params, layout: Layout) -> dict[str, float]:
    """Train the multi-task network; write the model, its history and curves.

    Returns the kept epoch's record (the last, or with early stopping the best validation
    epoch's). Resumes from ``models/checkpoints/train.pt`` when an
    earlier run of the same inputs was interrupted.
    """
    with distributed.process_group(select_device(params.train.device, params.source)) as group:
        writes = group is None or group.main
        with sole_run(layout, "train", writes):
            return _train(params, layout, 1 if group is None else group.world, writes=writes)


def _train(params: Params, layout: Layout, world: int, writes: bool) -> dict[str, float]:
    data = session.load_data(params, layout)
    tasks = session.task_list(params, data)
    method = session.build_method(params, tasks, layout)
    start = resolve_start(params, layout)
    reference = validation_reference(params, layout, tasks)
    checkpoint = layout.checkpoint("train")
    if not writes:  # another rank: trains its share, rank 0 reports
        return session.fit(params, data, tasks, method, checkpoint=checkpoint,
                           progress=False, start=start, reference=reference).kept
    started = time.perf_counter()
    tuned = session.tuned_choice(params, layout)
    with tracking.stage_run(params, "train") as run:
        run.log_dataset(data.meta, source=str(layout.processed_dir))
        # until an evaluate of this run completes: a pipeline stopped between the two stages
        # leaves a FINISHED run without test metrics, and this tag says so
        run.set_tags({**pretrained_tags(start), tracking.EVALUATED_TAG: "false"})
        if tuned is not None:  # what train.weighting: tuned stood for in this run
            log.info("train.weighting: tuned: %s from trial %s of %s", tuned["method"]
                     if tuned["method"] != "static" else f"static weights {tuned['weights']}",
                     tuned["trial"], tuned["study"])
            weights = tuned["weights"] if isinstance(tuned["weights"], dict) else {}
            run.log_params({**{f"tuned.{key}": value for key, value in tuned.items()
                               if key != "weights"},
                            **{f"tuned.weights.{task}": w for task, w in weights.items()}})
            run.log_artifact(layout.tuned_weights, "tuning")

        def resumed(epochs_done: int, history: list[dict[str, float]]) -> None:
            run.set_tags({"resumed_after_epoch": str(epochs_done)})
            for record in history:  # the new run gets the epochs done before the interruption
                run.log_epoch(int(record[keys.EPOCH]), record)

        fitted = session.fit(params, data, tasks, method, checkpoint=checkpoint,
                             on_epoch=run.log_epoch, on_resume=resumed, start=start,
                             reference=reference)
        seconds = time.perf_counter() - started
        session.save_network(layout.model, fitted.model, params, data, start=start)
        _write_history(layout.history_csv, fitted.history)
        names = [t.name for t in tasks]
        units = {t.name: t.unit for t in tasks if t.kind == "regression"}
        save_figure(learning_curves(fitted.history, names, units), layout.curves_png)
        run.log_artifact(layout.curves_png, "plots")
        run.log_artifact(layout.history_csv, "plots")
        # The logged model takes raw pixels (0..255) and normalises them itself; it answers per
        # task kind (models.serving.KindPredictions), for the deliverable tasks only (an
        # auxiliary head, the rotation task's, is trained on but never served).
        example = data.served_example(keys.TEST)
        served = main_tasks(tasks)
        run.log_model(fitted.model, example, [t.name for t in served], pixel_mean=data.mean,
                      pixel_std=data.std, tasks=served, resize=data.meta.get("resize"),
                      class_names={t.name: list(t.class_names) for t in served
                                   if t.class_names})
        reused = session.reused_heads(params.model, fitted.model, start)
        if reused is not None:  # model.reuse_heads: which heads the start held
            run.set_tags({REUSED_HEADS_TAG: ", ".join(reused) or "none"})
        final = fitted.kept  # with early stopping the best validation epoch, else the last
        if fitted.selection is not None:
            run.set_tags({f"early_stopping.{k}": str(v) for k, v in fitted.selection.items()})
        write_json(layout.train_json, {
            "run_id": run.run_id,
            "weighting": method.name,
            "requested_weighting": params.train.weighting,
            "tuned": tuned,  # with train.weighting: tuned, the tune stage's choice; else None
            "tasks": names,
            "epochs": len(fitted.history),
            "selection": fitted.selection,  # None: no early stopping, the last epoch kept
            "device": describe(data.device),
            "machine": machine(),  # another CPU gives other floats: diffs say which it was
            "threads": cpu_threads(data.device),  # so does another thread count (None: GPU)
            # the baselines' count: DVC's run cache may restore them from a run at another
            "baselines_threads": baselines_threads(layout),
            "processes": world,
            "pretrained": session.start_record(start, reused),  # None: random initialisation
            "seconds": round(seconds, 1),
            "train_images_per_s": round(float(np.median(
                [r[keys.TRAIN_IMAGES_PER_S] for r in fitted.history])), 1),
            "final": {k: v for k, v in final.items()
                      if keys.parse_task_metric(k) is not None or k.startswith("weight/")},
        })
    checkpoint.unlink(missing_ok=True)
    return final


# ---------------------------------------------------------------------------------- evaluate
def class_labels(task: Task) -> list[str]:
    """A classification task's class names, its class indices where it declares none."""
    return list(task.class_names) or [str(index) for index in range(task.num_classes)]


def _write_regression(layout: Layout, task: Task, pairs: np.ndarray) -> None:
    """Row-level ``actual,predicted`` values (the target's units) for a ``dvc plots`` scatter,
    and a PNG of predicted against true beside the residuals, where classification tasks'
    confusion data go."""
    with atomic_open(layout.confusion_csv(task.name), "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows([[repr(float(true)), repr(float(value))] for value, true in pairs])
    save_figure(regression_figure(pairs[:, 0], pairs[:, 1], f"task {task.name}: test",
                                  task.unit), layout.confusion_png(task.name))


def _write_confusion(layout: Layout, task: Task, matrix: np.ndarray,
                     class_names: list[str]) -> None:
    """Row-level ``actual,predicted`` pairs for ``dvc plots`` and a PNG for people."""
    with atomic_open(layout.confusion_csv(task.name), "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        for (actual, predicted), count in np.ndenumerate(matrix):
            writer.writerows([[class_names[actual], class_names[predicted]]] * int(count))
    save_figure(confusion_figure(matrix, class_names, f"task {task.name}: test confusion"),
                layout.confusion_png(task.name))


def evaluate(params: Params, layout: Layout) -> dict[str, object]:
    """Test metrics per task (each kind's, :mod:`multitask.tasks`) and Δm% of the primary
    metrics against the baselines; completes the MLflow run.

    Writes ``reports/metrics.json`` (``mean_accuracy`` over the classification tasks, absent
    when there are none), the confusion data of each classification task and the
    predicted-vs-true data of each regression task; returns the metrics written.
    """
    # The run is reopened first: whatever fails below (no model, the test pass) ends it FAILED.
    run_id = read_json(layout.train_json, required=(), remedy="rerun multitask train").get(
        "run_id")
    with tracking.stage_run(params, "evaluate", run_id=run_id) as run:
        run.set_tags({tracking.EVALUATED_TAG: "false"})  # "true" once this pass completes
        # before the test pass: a bad baselines file should not cost it
        baseline = read_json(layout.baselines_json, required=[keys.TASKS],
                             remedy="rerun multitask baselines")[keys.TASKS]
        model, payload = session.load_network(layout.model)
        data = session.load_data(params, layout, splits=(keys.TEST,))
        if payload["data_sha256"] != data.meta["sha256"]:
            raise ValueError(f"{layout.model} was trained on other data than "
                             f"{layout.processed_dir}; rerun multitask train")
        model.to(data.device, memory_format=torch.channels_last)
        tasks = main_tasks(model.tasks)
        result = evaluate_split(model, data, keys.TEST, tasks)
        result.warn_undefined(keys.TEST, str(layout.metrics_json))
        primary = {t.name: result.metrics[t.name][t.metric] for t in tasks}
        base_primary = {}
        for name, values in baseline.items():
            metric = next((t.metric for t in tasks if t.name == name), keys.ACCURACY)
            if metric not in values:
                raise ValueError(f"{layout.baselines_json}: task '{name}' has no {metric} "
                                 f"(has {sorted(values)}); rerun multitask baselines")
            base_primary[name] = float(values[metric])
        accuracy = [result.metrics[t.name][keys.ACCURACY] for t in tasks if t.classification]
        metrics: dict[str, object] = {keys.TASKS: result.metrics}
        if accuracy:
            metrics[keys.MEAN_ACCURACY] = float(np.mean(accuracy))
        metrics[keys.DELTA_M] = delta_m(primary, base_primary,
                                        {t.name: t.higher_is_better for t in tasks})
        for task in tasks:
            if task.classification:
                _write_confusion(layout, task, result.confusion[task.name].numpy(),
                                 class_labels(task))
            else:
                _write_regression(layout, task, result.predictions[task.name].numpy())
        write_json(layout.metrics_json, metrics)
        run.log_model_metrics(keys.flat_test_metrics(metrics), data.meta)
        for task in tasks:
            run.log_artifact(layout.confusion_png(task.name), "confusion")
        run.log_artifact(layout.metrics_json)
        run.log_artifact(layout.baselines_json)
        run.log_artifact(params.source)
        if layout.validation_summary.is_file():
            run.log_artifact(layout.validation_summary, "validation")
        run.flush()  # the test metrics are in the store before the tag says they are
        run.set_tags({tracking.EVALUATED_TAG: "true"})
    log.info("test: %s  Δm%% = %+.2f", {t.name: f"{t.metric} {primary[t.name]:.4f}"
                                         for t in tasks}, metrics[keys.DELTA_M])
    return metrics
