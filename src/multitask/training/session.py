"""The public way to train: load data, build the network and the method, fit, save and load.

Stages, tuning trials, benchmarks and tests all train through these functions; none wires a
:class:`~multitask.training.trainer.Trainer` by hand or seeds the RNG itself, so a run started
from any of them is the same run::

    data = load_data(params, layout)
    tasks = task_list(params, data)
    method = build_method(params, tasks, layout)
    fitted = fit(params, data, tasks, method)
    save_network(layout.model, fitted.model, params, data)

Seeding follows one order (data, then network, then trainer, each from ``train.seed``), which
keeps CPU runs bit-for-bit reproducible.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from multitask.config import ModelConfig, Params, TrainConfig
from multitask.data import processed
from multitask.device import describe, select_device
from multitask.io import atomic_path, read_json
from multitask.layout import Layout
from multitask.models import MultiTaskModel, build_model
from multitask.models.pretrained import (
    EncoderWeights,
    WeightsError,
    load_encoder,
    load_heads,
    matching_heads,
    read_payload,
)
from multitask.tasks import Task
from multitask.training.data import ProcessedData
from multitask.training.trainer import EpochCallback, Trainer
from multitask.weighting import TUNED, WeightingMethod, build_weighting

log = logging.getLogger(__name__)

ResumeCallback = Callable[[int, list[dict[str, float]]], None]


@dataclass(frozen=True)
class Fitted:
    """A trained network and its per-epoch history; with early stopping the network holds the
    best validation epoch's weights and ``selection`` says which epoch and why it stopped."""

    model: MultiTaskModel
    history: list[dict[str, float]]
    selection: dict[str, Any] | None = None

    @property
    def kept(self) -> dict[str, float]:
        """The history record of the epoch whose weights the network holds."""
        if self.selection is None:
            return self.history[-1]
        return self.history[int(self.selection["kept_epoch"]) - 1]


def load_data(params: Params, layout: Layout,
              splits: tuple[str, ...] = processed.SPLITS) -> ProcessedData:
    """The processed splits on the training device (chosen once, from ``train.device``)."""
    device = select_device(params.train.device, params.source)
    torch.manual_seed(params.train.seed)
    data = ProcessedData(layout.processed_dir, device, splits)
    log.info("device: %s; data: %s %s", describe(device), data.meta["dataset"],
             data.meta["splits"])
    return data


def task_list(params: Params, data: ProcessedData) -> list[Task]:
    """The data set's tasks, plus the rotation task when ``model.rotation_task``."""
    return processed.tasks(data.meta, rotation=params.model.rotation_task)


def build_network(model: ModelConfig, seed: int, tasks: list[Task], data: ProcessedData,
                  start: EncoderWeights | None = None) -> MultiTaskModel:
    """The configured architecture for ``tasks``, initialised from ``seed``.

    With ``start`` (what ``model.pretrained`` names, see
    :func:`multitask.pretraining.resolve_start`) every shared encoder the architecture builds
    starts from those weights, and with ``model.reuse_heads`` the heads of tasks that match
    by name and shape too; everything else keeps its seeded initialisation.
    """
    torch.manual_seed(seed)
    init = None if start is None else partial(load_encoder, weights=start,
                                              pixel_mean=data.mean, pixel_std=data.std)
    network = build_model(model, tasks, data.channels, data.image_size, encoder_init=init)
    if start is not None and model.reuse_heads:
        reused = load_heads(network, start)
        log.info("heads reused from %s: %s", start.origin, reused or "none matched")
    return network


def start_record(start: EncoderWeights | None, reused_heads: list[str] | None = None
                 ) -> dict[str, Any] | None:
    """Where a network's encoder started: ``{"origin": ..., "sha256": ...}`` or None (random);
    with ``reused_heads`` (see :func:`reused_heads`) also the heads that started there."""
    if start is None:
        return None
    record: dict[str, Any] = {"origin": start.origin, "sha256": start.sha256}
    if reused_heads is not None:
        record["reused_heads"] = reused_heads
    return record


def reused_heads(model: ModelConfig, network: MultiTaskModel, start: EncoderWeights | None
                 ) -> list[str] | None:
    """The tasks whose heads :func:`build_network` started from ``start`` (``model.reuse_heads``;
    possibly none match); None when heads were not to be reused."""
    if start is None or not model.reuse_heads:
        return None
    return matching_heads(network, start)


def weights_method(weights: Mapping[str, float], tasks: list[Task], where: str | Path
                   ) -> WeightingMethod:
    """Fixed loss weights, one per task by name (``static``): what tuning chooses."""
    missing = [t.name for t in tasks if t.name not in weights]
    if missing:
        raise ValueError(f"{where}: no weight for task(s) {missing}; rerun multitask tune")
    ordered = [float(weights[t.name]) for t in tasks]
    return build_weighting("static", len(tasks), {"static": {"weights": ordered}}, where=where)


def tuned_method(path: Path, tasks: list[Task], method_params: dict[str, dict[str, Any]]
                 ) -> WeightingMethod:
    """The method the tune stage chose (``weights.json``): static weights, or another method."""
    tuned = read_json(path)
    if not isinstance(tuned, dict):
        raise ValueError(f"{path}: expected a mapping with 'method' and 'weights'; rerun "
                         "multitask tune")
    if tuned.get("method", "static") != "static":  # tune.methods chose another method
        return build_weighting(tuned["method"], len(tasks), method_params, where=path)
    if tuned.get("tuned") is False:  # tune --if-used ran while train.weighting was another
        raise ValueError(f"{path}: holds no tuned weights: no study ran when tune wrote it "
                         f"(train.weighting was {tuned.get('train_weighting')!r}); rerun "
                         "multitask tune (dvc repro reruns it)")
    chosen = tuned.get("weights")
    if not isinstance(chosen, dict):
        raise ValueError(f"{path}: 'weights' is not a mapping of task -> weight; rerun "
                         "multitask tune")
    return weights_method(chosen, tasks, path)


def tuned_choice(params: Params, layout: Layout) -> dict[str, Any] | None:
    """With ``train.weighting: tuned``, what the tune stage chose and where from (the method,
    its weights, the study and trial of ``weights.json``) as the training run records it;
    None otherwise."""
    if params.train.weighting != TUNED:
        return None
    tuned = read_json(layout.tuned_weights)
    if not isinstance(tuned, dict):
        return None  # build_method says what is wrong with it
    return {key: tuned.get(key) for key in ("method", "weights", "lr", "study", "trial")}


def build_method(params: Params, tasks: list[Task], layout: Layout) -> WeightingMethod:
    """The one home of "weights -> method": ``train.weighting`` with its params; ``tuned``
    means what the tune stage chose."""
    name = params.train.weighting
    if name == TUNED:
        return tuned_method(layout.tuned_weights, tasks, params.train.method_params)
    return build_weighting(name, len(tasks), params.train.method_params, where=params.source)


def fingerprint(*parts: Any) -> str:
    """Identifies a training run's inputs; a checkpoint of another run is never resumed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def fit(params: Params, data: ProcessedData, tasks: list[Task], method: WeightingMethod, *,
        model: ModelConfig | None = None, train: TrainConfig | None = None,
        epochs: int | None = None, data_fraction: float | None = None,
        checkpoint: Path | None = None, on_epoch: EpochCallback | None = None,
        on_resume: ResumeCallback | None = None, progress: bool = True,
        start: EncoderWeights | None = None,
        reference: Mapping[str, float] | None = None) -> Fitted:
    """Build the network (its encoder from ``start`` if given) and train it on ``data`` with
    ``method``.

    ``reference``: the single-task baselines' primary validation metrics, which early stopping by
    ``delta_m`` scores against (see :mod:`multitask.training.selection`).

    ``model``/``train`` override ``params.model``/``params.train`` (a baseline's hard sharing, a
    trial's learning rate); ``epochs``/``data_fraction`` override the train config's. With a
    ``checkpoint`` path the run saves every epoch there and first resumes from it when it
    belongs to the same inputs; ``on_resume(epochs_done, history)`` then hears of it.
    """
    model_config = model or params.model
    train_config = train or params.train
    network = build_network(model_config, train_config.seed, tasks, data, start)
    trainer = Trainer(
        network, tasks, method, data, train_config, epochs=epochs, data_fraction=data_fraction,
        checkpoint_path=checkpoint,
        fingerprint=fingerprint(model_config.model_dump(), train_config.model_dump(),
                                data.meta["sha256"], [t.name for t in tasks],
                                method.name, method.params.model_dump(), start_record(start),
                                *([] if reference is None else [dict(reference)])),
        on_epoch=on_epoch, progress=progress,
        freeze_encoder_epochs=model_config.freeze_encoder_epochs, reference=reference,
    )
    if trainer.try_resume() and on_resume is not None:
        on_resume(trainer.start_epoch, trainer.history)
    trainer.fit()
    selection = trainer.selection
    return Fitted(network, trainer.history,
                  None if selection is None else selection.summary(len(trainer.history)))


def save_network(path: Path, model: MultiTaskModel, params: Params, data: ProcessedData,
                 model_config: ModelConfig | None = None,
                 start: EncoderWeights | None = None) -> None:
    """Weights plus what rebuilding the network needs, and where its encoder started;
    loadable with ``weights_only=True``."""
    payload = {
        "pretrained": start_record(start),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tasks": [t.to_dict() for t in model.tasks],
        "model": (model_config or params.model).model_dump(mode="json"),
        "input": {"channels": data.channels, "image_size": data.image_size,
                  "pixel_mean": data.mean, "pixel_std": data.std},
        "dataset": data.meta["dataset"],
        "data_sha256": data.meta["sha256"],
    }
    # Through a handle: torch.save names the archive's records after a path's stem, and the
    # temporary name holds the pid, so the same weights would give other bytes (and sha256).
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


# what save_network writes and load_network needs
NETWORK_KEYS = frozenset({"state_dict", "tasks", "model", "input"})


def load_network(path: Path) -> tuple[MultiTaskModel, dict[str, Any]]:
    """Rebuild the network saved by :func:`save_network`; also return its payload."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run multitask train first")
    try:
        payload = read_payload(path)
    except WeightsError as exc:  # truncated, empty, not a torch file
        raise WeightsError(f"{exc}; rerun multitask train to write it again") from exc
    if not isinstance(payload, dict) or (missing := NETWORK_KEYS - set(payload)):
        raise WeightsError(f"{path}: not a network file of multitask train (no "
                           f"{', '.join(sorted(missing)) if isinstance(payload, dict) else 'keys'}"
                           "); rerun multitask train to write it again")
    tasks = [Task.from_dict(t) for t in payload["tasks"]]
    model = build_model(ModelConfig(**payload["model"]), tasks, payload["input"]["channels"],
                        payload["input"]["image_size"])
    model.load_state_dict(payload["state_dict"])
    return model, payload
