"""The processed data set, resident on the training device as uint8, sliced into batches there.

The whole data set fits comfortably (MultiFashion: ~180 MB as uint8), so there is no DataLoader
and no worker processes: a batch is an index into a device tensor, converted to normalised
float on the device.

Images are (N, H, W) for one channel and (N, H, W, C) for three; a batch comes out as
(B, C, H, W) in channels-last memory, standardised with the training split's ``pixel_mean`` and
``pixel_std`` (a float, or one per channel). Labels are int64 when every task is a
classification (class ids) and float32 when the data set has a regression task (class ids as
exact floats beside the raw targets); :func:`targets` gives a task's column in the dtype its
loss and metrics want.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from multitask.data import processed
from multitask.tasks import Task


@dataclass
class Split:
    images: Tensor  # (N, H, W) or (N, H, W, C) uint8 on the device
    labels: Tensor  # (N, T) int64 on the device (float32 with a regression task)

    def __len__(self) -> int:
        return len(self.labels)


class ProcessedData:
    """``meta.json`` plus the splits the caller asks for, moved to ``device``."""

    def __init__(self, folder: str | Path, device: torch.device,
                 splits: tuple[str, ...] = processed.SPLITS) -> None:
        self.folder = Path(folder)
        self.meta: dict[str, Any] = processed.read_meta(self.folder)
        self.device = device
        self.mean: float | list[float] = _statistic(self.meta, "pixel_mean", self.folder)
        self.std: float | list[float] = _statistic(self.meta, "pixel_std", self.folder)
        # per channel, shaped to broadcast over (B, H, W, C) images
        self._channel_mean = torch.tensor(self.mean, device=device)
        self._channel_std = torch.tensor(self.std, device=device)
        regression = any(not task.classification for task in processed.tasks(self.meta))
        self.splits: dict[str, Split] = {}
        for split in splits:
            images, labels = processed.load_split(self.folder, split, self.meta)
            if images.ndim != (3 if self.channels == 1 else 4):
                raise ValueError(f"{self.folder / processed.images_file(split)}: shape "
                                 f"{images.shape} does not hold {self.channels}-channel "
                                 f"images ({processed.META_FILE} channels); rerun multitask "
                                 "preprocess")
            self.splits[split] = Split(
                torch.from_numpy(images).to(device),
                torch.from_numpy(labels.astype(np.float32 if regression else np.int64)
                                 ).to(device),
            )

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def channels(self) -> int:
        return int(self.meta.get("channels", 1))

    def label_column(self, task: str) -> int:
        """Column of ``task`` in the label arrays (the order of ``meta.json``'s tasks)."""
        names = processed.task_names(self.meta)
        if task not in names:
            raise ValueError(
                f"{self.folder / processed.META_FILE}: no task '{task}' (tasks: {names})")
        return names.index(task)

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 (B, H, W) -> float (B, 1, H, W), or (B, H, W, C) -> (B, C, H, W), standardised
        with the training statistics (per channel when ``pixel_mean`` is a list).

        Channels-last: on the CPU, oneDNN's convolutions and max-pooling run ~20% faster so.
        (B, H, W, C) permuted to (B, C, H, W) is channels-last already.
        """
        if images.ndim == 3:
            x = ((images.float() / 255.0 - self.mean) / self.std).unsqueeze(1)
        else:
            x = ((images.float() / 255.0 - self._channel_mean) / self._channel_std
                 ).permute(0, 3, 1, 2)
        return x.contiguous(memory_format=torch.channels_last)

    def served_example(self, split: str, count: int = 4) -> np.ndarray:
        """The first ``count`` images of ``split`` as a served model takes them: raw uint8
        pixels, (N, H, W) for one channel and (N, C, H, W) for more."""
        images = self.splits[split].images[:count]
        return (images if images.ndim == 3 else images.permute(0, 3, 1, 2)).cpu().numpy()

    def batch_rows(self, split: str, batch_size: int, *, generator: torch.Generator | None = None,
                   subset: Tensor | None = None) -> Iterator[Tensor | slice]:
        """The rows of each batch of ``split``; shuffled when a ``generator`` is given.

        ``subset`` restricts the split to those indices (the same subset every epoch).
        """
        index = subset
        count = len(index) if index is not None else len(self.splits[split])
        if generator is not None:
            order = torch.randperm(count, generator=generator).to(self.device)
            index = index[order] if index is not None else order
        for start in range(0, count, batch_size):
            yield slice(start, start + batch_size) if index is None else index[
                start:start + batch_size]

    def take(self, split: str, rows: Tensor | slice,
             augment: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Normalised images and labels of ``rows`` of ``split``; ``augment`` changes the uint8
        images first (:mod:`multitask.training.augment`)."""
        data = self.splits[split]
        images = data.images[rows]
        return self.normalise(images if augment is None else augment(images)), data.labels[rows]

    def batches(self, split: str, batch_size: int, *, generator: torch.Generator | None = None,
                subset: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised batches of ``split`` (see :meth:`batch_rows`)."""
        for rows in self.batch_rows(split, batch_size, generator=generator, subset=subset):
            yield self.take(split, rows)


def targets(y: Tensor, column: int, task: Task) -> Tensor:
    """Task ``task``'s targets, column ``column`` of the labels ``y``, in its loss's dtype:
    int64 class ids (multiclass), float 0/1 (binary), float values in the target's units
    (regression; the loss standardises them)."""
    values = y[:, column]
    if task.kind == "multiclass":
        return values if values.dtype == torch.int64 else values.long()
    return values.float()


def _statistic(meta: dict[str, Any], name: str, folder: Path) -> float | list[float]:
    """``pixel_mean``/``pixel_std`` of ``meta.json``: a float (1 channel) or one per channel."""
    value = meta[name]
    channels = int(meta.get("channels", 1))
    if isinstance(value, list):
        if len(value) != channels:
            raise ValueError(f"{folder / processed.META_FILE}: {name} has {len(value)} values "
                             f"for {channels} channel(s); rerun multitask preprocess")
        return [float(v) for v in value] if channels > 1 else float(value[0])
    return float(value)
