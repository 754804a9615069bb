"""The processed data set, resident on the training device as uint8, sliced into batches there.

The whole data set fits comfortably (MultiFashion: ~180 MB as uint8), so there is no DataLoader
and no worker processes: a batch is an index into a device tensor, converted to normalised
float on the device.
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


@dataclass
class Split:
    images: Tensor  # (N, H, W) uint8 on the device
    labels: Tensor  # (N, T) int64 on the device

    def __len__(self) -> int:
        return len(self.labels)


class ProcessedData:
    """``meta.json`` plus the splits the caller asks for, moved to ``device``."""

    def __init__(self, folder: str | Path, device: torch.device,
                 splits: tuple[str, ...] = processed.SPLITS) -> None:
        self.folder = Path(folder)
        self.meta: dict[str, Any] = processed.read_meta(self.folder)
        self.device = device
        self.mean = float(self.meta["pixel_mean"])
        self.std = float(self.meta["pixel_std"])
        self.splits: dict[str, Split] = {}
        for split in splits:
            images, labels = processed.load_split(self.folder, split, self.meta)
            self.splits[split] = Split(
                torch.from_numpy(images).to(device),
                torch.from_numpy(labels.astype(np.int64)).to(device),
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
        """uint8 (B, H, W) -> float (B, 1, H, W), standardised with the training statistics.

        Channels-last: on the CPU, oneDNN's convolutions and max-pooling run ~20% faster so.
        """
        x = ((images.float() / 255.0 - self.mean) / self.std).unsqueeze(1)
        return x.contiguous(memory_format=torch.channels_last)

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
