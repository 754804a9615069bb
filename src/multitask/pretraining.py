"""Where the shared encoder starts (``model.pretrained``), and the ``pretrain`` stage.

:func:`resolve_start` is the one place ``model.pretrained`` becomes weights: ``baselines``,
``tune`` and ``train`` all call it, so the single-task references of Δm% start from the same
encoder as the multi-task run. :func:`pretrain` is the stage that makes the
``self_supervised`` encoder: the network learns which multiple of 90° each training image was
turned by (Gidaris et al., ICLR 2018, "Unsupervised representation learning by predicting image
rotations"); no label is read, so it can use every training image even when the multi-task run
later trains on a fraction of them (``train.data_fraction``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from multitask import keys, tracking
from multitask.config import (
    ModelConfig,
    OptimizerConfig,
    Params,
    ScheduleConfig,
    TrainConfig,
    pretrained_file,
)
from multitask.device import autocast, describe, machine
from multitask.io import write_json
from multitask.layout import Layout
from multitask.models import MultiTaskModel, pretrained
from multitask.models.pretrained import EncoderWeights
from multitask.tasks import ROTATION_TASK
from multitask.training import session
from multitask.training.checkpoints import sole_run
from multitask.training.data import ProcessedData
from multitask.training.trainer import NonFiniteLossError, rotate_batch
from multitask.weighting import build_weighting

log = logging.getLogger(__name__)

SELF_SUPERVISED = "self_supervised"
# The alias of the newest registered encoder: models:/<pretrain.registered_name>@newest.
# ("latest" is reserved by MLflow, whose models:/<name>/latest means the highest version.)
NEWEST = "newest"
ROTATION_CLASS_NAMES = ["0°", "90°", "180°", "270°"]  # class k: turned by k x 90°
# Written when model.pretrained is not self_supervised. The same words every time, so the
# stage's outputs do not change and nothing downstream reruns.
NOT_TRAINED = {
    "trained": False,
    "reason": "model.pretrained is not self_supervised: no encoder trained, models/pretrain "
              "left empty",
}


# ------------------------------------------------------------------------------ the start
def resolve_start(params: Params, layout: Layout) -> EncoderWeights | None:
    """The weights ``model.pretrained`` names, or None for a randomly initialised encoder.

    ``imagenet``: torchvision's weights for ``model.backbone``; ``self_supervised``: the
    pretrain stage's encoder (``models/pretrain/encoder.pt``); a path: that state_dict file,
    relative to the pipeline folder; ``models:/...``/``runs:/...``: a network logged in MLflow.
    Weights made for another backbone than ``model.backbone`` are refused.
    """
    model = params.model
    kind = model.pretrained_kind
    if kind == "none":
        return None
    if kind == "imagenet":
        weights = pretrained.imagenet_weights(model.backbone)
    elif kind == SELF_SUPERVISED:
        weights = self_supervised_weights(params, layout)
    elif kind == "file":
        weights = pretrained.file_weights(pretrained_file(params, layout.root))
    else:  # a model URI: a network this repository logged to MLflow
        state = tracking.network_state(model.pretrained)
        if state.architecture not in (None, "hps"):
            raise ValueError(
                f"{params.source}: model.pretrained: {state.origin} is a {state.architecture} "
                "network; only a hard-parameter-sharing (hps) network has one shared encoder "
                "to start from (train one with model.architecture: hps)")
        weights = pretrained.network_weights(state.state_dict, origin=state.origin,
                                             sha256=state.sha256, backbone=state.backbone)
    if weights.backbone is not None and weights.backbone != model.backbone:
        raise ValueError(
            f"{params.source}: model.pretrained: {model.pretrained} holds a {weights.backbone} "
            f"encoder ({weights.origin}) but model.backbone is {model.backbone}; set "
            f"model.backbone: {weights.backbone}, or start from other weights")
    return weights


def self_supervised_weights(params: Params, layout: Layout) -> EncoderWeights:
    """The pretrain stage's encoder, with an error saying how to make it when it is absent."""
    path = layout.pretrained_encoder
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no self-supervised encoder (model.pretrained: self_supervised in "
            f"{params.source}); run `multitask pretrain --params {params.source}` or "
            f"`dvc repro {layout.root / 'dvc.yaml'}`, which runs the pretrain stage first")
    return pretrained.file_weights(path)


# ------------------------------------------------------------------------- the pretrain stage
def pretraining_params(params: Params) -> Params:
    """The params the encoder is pretrained with, and its MLflow run logs.

    Hard sharing with the rotation head alone, on ``model.backbone`` (and its ``width``,
    ``resize_to`` and ``stem``, so the encoder fits the network that will start from it), from
    random weights.
    The recipe comes from the ``pretrain`` section alone (Adam at ``pretrain.lr``, cosine
    schedule, equal weighting of the one task); only ``train.seed`` and ``train.device`` are
    shared, so tuning the multi-task run's optimiser never retrains the encoder.
    """
    model = ModelConfig(backbone=params.model.backbone, width=params.model.width,
                        architecture="hps", resize_to=params.model.resize_to,
                        stem=params.model.stem)
    recipe = params.pretrain
    train = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size,
                        optimizer=OptimizerConfig(name="adam", lr=recipe.lr),
                        schedule=ScheduleConfig(name="cosine"), weighting="equal",
                        device=params.train.device, seed=params.train.seed,
                        data_fraction=recipe.data_fraction)
    return params.model_copy(update={"model": model, "train": train})


def fit_encoder(params: Params, data: ProcessedData, **options: Any) -> session.Fitted:
    """The network of :func:`pretraining_params` trained on the rotation task alone.

    ``options`` go to :func:`~multitask.training.session.fit` (``checkpoint``, ``on_epoch``,
    ``on_resume``, ``progress``). The trainer feeds a rotation-only task list the rotated
    copies alone, so no label is read.
    """
    try:
        return session.fit(pretraining_params(params), data, [ROTATION_TASK],
                           build_weighting("equal", 1), **options)
    except NonFiniteLossError as error:
        raise error.advising("stopped before saving this epoch. The encoder trains at "
                             "pretrain.lr (not train.optimizer.lr): lower it") from None


@torch.inference_mode()
def rotation_accuracy(model: MultiTaskModel, data: ProcessedData, split: str,
                      batch_size: int = 1024) -> float:
    """The share of ``split``'s images whose turn the rotation head names, each image scored
    at all four turns (so chance is 0.25 and no draw of turns makes it vary)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.device)
    for x, _ in data.batches(split, batch_size):
        for turn in range(4):
            turns = torch.full((len(x),), turn, dtype=torch.int64, device=data.device)
            with autocast(data.device):
                logits = model(rotate_batch(x, turns))[ROTATION_TASK.name]
            correct += (logits.argmax(dim=1) == turn).sum()
    model.train()
    return int(correct) / (4 * len(data.splits[split]))


def pretrain(params: Params, layout: Layout) -> dict[str, Any]:
    """Train the shared encoder on the rotation task alone when ``model.pretrained`` is
    ``self_supervised``; otherwise write only the record saying so.

    Writes ``models/pretrain/encoder.pt`` (a network file of
    :func:`~multitask.training.session.save_network`: hard sharing, the rotation head) and
    ``reports/pretrain.json``; logs an MLflow run and registers the logged model as
    ``pretrain.registered_name`` with alias ``newest`` (so ``model.pretrained:
    models:/<registered_name>@newest`` starts another pipeline from it). Resumes from
    ``models/checkpoints/pretrain.pt`` after an interruption. Returns the record written.
    """
    if params.model.pretrained_kind != SELF_SUPERVISED:
        # DVC removed the folder before running the stage; by hand, an encoder left from an
        # earlier self-supervised run would otherwise make the output differ.
        layout.pretrained_encoder.unlink(missing_ok=True)
        layout.pretrain_dir.mkdir(parents=True, exist_ok=True)
        write_json(layout.pretrain_json, NOT_TRAINED)
        log.info("model.pretrained is %s: nothing to pretrain", params.model.pretrained)
        return NOT_TRAINED
    with sole_run(layout, "pretrain"):
        return _pretrain(params, layout)


def _pretrain(params: Params, layout: Layout) -> dict[str, Any]:
    encoder = layout.pretrained_encoder
    requested, params = params, pretraining_params(params)
    data = session.load_data(params, layout, splits=(keys.TRAIN, keys.VAL))
    checkpoint = layout.checkpoint("pretrain")
    started = time.perf_counter()
    with tracking.stage_run(params, "pretrain") as run:
        run.log_dataset(data.meta, source=str(layout.processed_dir))

        def resumed(epochs_done: int, history: list[dict[str, float]]) -> None:
            run.set_tags({"resumed_after_epoch": str(epochs_done)})
            for record in history:
                run.log_epoch(int(record[keys.EPOCH]), record)

        fitted = fit_encoder(requested, data, checkpoint=checkpoint, on_epoch=run.log_epoch,
                             on_resume=resumed)
        seconds = time.perf_counter() - started
        accuracy_key = keys.task_metric(keys.VAL, ROTATION_TASK.name, keys.ACCURACY)
        accuracy = rotation_accuracy(fitted.model, data, keys.VAL)
        run.log_metrics({accuracy_key: accuracy}, step=len(fitted.history))
        session.save_network(encoder, fitted.model, params, data)
        start = self_supervised_weights(requested, layout)  # what the next stages load
        run.set_tags({"encoder.sha256": start.sha256, "encoder.file": str(encoder)})
        example = data.served_example(keys.VAL)
        model_uri = run.log_model(fitted.model, example, [ROTATION_TASK.name],
                                  class_names={ROTATION_TASK.name: ROTATION_CLASS_NAMES},
                                  pixel_mean=data.mean, pixel_std=data.std)
        registered = None
        if model_uri is not None:
            name = params.pretrain.registered_name
            version = tracking.register_version(model_uri, name, {
                tracking.MODEL_FORMAT_TAG: tracking.MODEL_FORMAT,
                "encoder.sha256": start.sha256,
                "backbone": params.model.backbone,
                tracking.DATA_TAG: str(data.meta["sha256"]),
                accuracy_key: str(accuracy),
            })
            tracking.set_alias(name, NEWEST, version.version)
            registered = {"name": name, "version": version.version, "alias": NEWEST}
            log.info("registered %s v%s (alias %s)", name, version.version, NEWEST)
        record = {
            "trained": True,
            "encoder": Layout().pretrained_encoder.as_posix(),
            "origin": start.origin,
            "sha256": start.sha256,
            "backbone": params.model.backbone,
            "run_id": run.run_id,
            "registered": registered,
            "epochs": len(fitted.history),
            "data_fraction": params.train.data_fraction,
            "device": describe(data.device),
            "machine": machine(),
            "seconds": round(seconds, 1),
            "final": {accuracy_key: accuracy,
                      **{k: v for k, v in fitted.history[-1].items()
                         if keys.parse_task_metric(k) is not None}},
        }
        write_json(layout.pretrain_json, record)
    checkpoint.unlink(missing_ok=True)
    log.info("pretrained encoder: %s, rotation accuracy on %s %.4f", encoder, keys.VAL, accuracy)
    return record

