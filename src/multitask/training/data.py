"""The processed data set, resident on the training device as uint8 (or memory-mapped when it is
too large for that), sliced into batches.

A data set that fits (MultiFashion: ~180 MB as uint8) is loaded whole onto the device, so
there is no DataLoader and no worker processes: a batch is an index into a device tensor,
converted to normalised float on the device.

A data set larger than memory (a manifest's images) is memory-mapped instead: its images stay
in their ``.npy`` files, opened as read-only maps (shape, dtype and where the rows start), and
each batch is read from the file with positioned reads (``os.preadv``): its rows in ascending
order (the page cache's read-ahead works forwards; consecutive rows are one read), put back in
the batch's order, copied to the device (through pinned memory on CUDA, so the copy is
asynchronous) and normalised there. Labels are small and always read whole. Both ways give the
same batches, in the same order, with the same values for the same seed.

Why reads rather than indexing the map: every page read through a map stays in the process's
resident set until the kernel reclaims it, and a read maps far more than the row (fault-around
maps cached neighbours, a whole large folio at once: 256 random 12 KiB rows of 64x64x3 mapped
244 MiB, measured on Linux 6.18), so a map's resident set grows to the file's size. A
positioned read copies from the page cache into the batch and maps nothing: the resident set
is the batch (measured: 140,000 such rows/s, one core, cached file). Without ``os.preadv``
(not POSIX) the rows are read through the map.

The environment variable ``MULTITASK_MEMMAP`` chooses: ``auto`` (the default) maps the
requested splits when their images files together exceed half of the memory available now
(``MemAvailable``), or on CUDA half of the device's free memory; ``1`` always maps, ``0``
never does.

Images are (N, H, W) for one channel and (N, H, W, C) for three; a batch comes out as
(B, C, H, W) in channels-last memory, standardised with the training split's ``pixel_mean`` and
``pixel_std`` (a float, or one per channel). Labels are int64 when every task is a
classification (class ids) and float32 when the data set has a regression task (class ids as
exact floats beside the raw targets); :func:`targets` gives a task's column in the dtype its
loss and metrics want.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from multitask.data import processed
from multitask.tasks import Task

log = logging.getLogger(__name__)

MEMMAP_ENV = "MULTITASK_MEMMAP"
MEMMAP_CHOICES = ("auto", "1", "0")
MEMMAP_SHARE = 0.5  # auto: map when the images exceed this share of the memory available


@dataclass
class Split:
    # (N, H, W) or (N, H, W, C) uint8: a tensor on the device, or a read-only memory map
    images: Tensor | np.ndarray
    labels: Tensor  # (N, T) int64 (float32 with a regression task); on the CPU when mapped

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def mapped(self) -> bool:
        """Whether the images are memory-mapped (read from their file batch by batch)."""
        return isinstance(self.images, np.ndarray)


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
        self.mapped = memory_mapped([self.folder / processed.images_file(s) for s in splits],
                                    device)
        if self.mapped:
            log.info("%s: images memory-mapped (%s=%s)", self.folder, MEMMAP_ENV,
                     os.environ.get(MEMMAP_ENV, "auto"))
        self.splits: dict[str, Split] = {}
        for split in splits:
            images, labels = processed.load_split(self.folder, split, self.meta,
                                                  mapped=self.mapped)
            if images.ndim != (3 if self.channels == 1 else 4):
                raise ValueError(f"{self.folder / processed.images_file(split)}: shape "
                                 f"{images.shape} does not hold {self.channels}-channel "
                                 f"images ({processed.META_FILE} channels); rerun multitask "
                                 "preprocess")
            labels_tensor = torch.from_numpy(labels.astype(np.float32 if regression else np.int64))
            self.splits[split] = (Split(images, labels_tensor) if self.mapped else Split(
                torch.from_numpy(images).to(device), labels_tensor.to(device)))

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
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.array(images))  # copied out of the map
        return (images if images.ndim == 3 else images.permute(0, 3, 1, 2)).cpu().numpy()

    def batch_rows(self, split: str, batch_size: int, *, generator: torch.Generator | None = None,
                   subset: Tensor | None = None) -> Iterator[Tensor | slice]:
        """The rows of each batch of ``split``; shuffled when a ``generator`` is given.

        ``subset`` restricts the split to those indices (the same subset every epoch). The rows
        are on the device, or on the CPU when the split is memory-mapped (they index the file).
        """
        mapped = self.splits[split].mapped
        index = subset.cpu() if mapped and subset is not None else subset
        count = len(index) if index is not None else len(self.splits[split])
        if generator is not None:
            order = torch.randperm(count, generator=generator)
            order = order if mapped else order.to(self.device)
            index = index[order] if index is not None else order
        for start in range(0, count, batch_size):
            yield slice(start, start + batch_size) if index is None else index[
                start:start + batch_size]

    def take(self, split: str, rows: Tensor | slice,
             augment: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Normalised images and labels of ``rows`` of ``split``; ``augment`` changes the uint8
        images first (:mod:`multitask.training.augment`)."""
        data = self.splits[split]
        if data.mapped:
            images, labels = self._gather(data, rows)
        else:
            images, labels = data.images[rows], data.labels[rows]
        return self.normalise(images if augment is None else augment(images)), labels

    def _gather(self, data: Split, rows: Tensor | slice) -> tuple[Tensor, Tensor]:
        """``rows`` of a memory-mapped split, read from its file and copied to the device.

        A slice is one contiguous read. Indices are read in ascending order (read-ahead works
        forwards) and put in the batch's positions, so the batch is the one the in-memory path
        would give. On CUDA the batch is read into pinned memory, whose copy to the device
        runs asynchronously.
        """
        mapped = data.images
        assert isinstance(mapped, np.ndarray)
        index = (np.arange(len(data))[rows] if isinstance(rows, slice)
                 else rows.cpu().numpy())
        pinned = self.device.type == "cuda"
        batch = torch.empty((len(index), *mapped.shape[1:]), dtype=torch.uint8,
                            pin_memory=pinned)
        if isinstance(rows, slice):
            read_rows(mapped, index, batch.numpy())
        else:
            ascending = np.argsort(index, kind="stable")
            in_order = np.empty(batch.shape, dtype=np.uint8)
            read_rows(mapped, index[ascending], in_order)
            batch.numpy()[ascending] = in_order
        labels = data.labels[torch.from_numpy(index)]
        return (batch.to(self.device, non_blocking=pinned),
                labels.to(self.device, non_blocking=pinned))

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


def memory_mapped(files: list[Path], device: torch.device) -> bool:
    """Whether to memory-map images ``files`` rather than load them onto ``device``: what
    ``MULTITASK_MEMMAP`` says (see the module docstring)."""
    choice = os.environ.get(MEMMAP_ENV, "auto").strip().lower() or "auto"
    if choice not in MEMMAP_CHOICES:
        raise ValueError(f"environment variable {MEMMAP_ENV}={choice!r}: expected one of "
                         f"{', '.join(MEMMAP_CHOICES)} (auto: map when the images do not fit "
                         "comfortably in memory)")
    if choice != "auto":
        return choice == "1"
    size = sum(f.stat().st_size for f in files if f.is_file())
    if size > MEMMAP_SHARE * available_memory():
        return True
    return device.type == "cuda" and size > MEMMAP_SHARE * torch.cuda.mem_get_info(device)[0]


def available_memory() -> int:
    """Bytes of memory available to a new allocation without swapping (Linux's
    ``MemAvailable``; elsewhere the free physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def read_rows(mapped: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """Rows ``rows`` (ascending) of the memory map ``mapped`` into ``out`` (C-contiguous), read
    from its file with positioned reads, one per run of consecutive rows, mapping no page of it
    (see the module docstring); through the map where there is no ``os.preadv`` or no file."""
    if not (isinstance(mapped, np.memmap) and mapped.filename and hasattr(os, "preadv")):
        out[:] = mapped[rows]
        return
    if not len(rows):
        return
    if not out.flags.c_contiguous:
        raise ValueError("read_rows: out must be C-contiguous (rows are read into its bytes)")
    row_bytes = out[0].nbytes
    target = memoryview(out.reshape(-1))
    breaks = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()
    with open(mapped.filename, "rb", buffering=0) as file:
        for start, stop in zip([0, *breaks], [*breaks, len(rows)], strict=True):
            offset = mapped.offset + int(rows[start]) * row_bytes
            done, wanted = 0, (stop - start) * row_bytes
            while done < wanted:  # a read may return less than asked (a signal, 2 GiB)
                chunk = os.preadv(file.fileno(), [target[start * row_bytes + done:
                                                         stop * row_bytes]], offset + done)
                if chunk == 0:
                    raise OSError(f"{mapped.filename}: read {done} of {wanted} bytes at row "
                                  f"{int(rows[start])}; the file is shorter than its header "
                                  "says, rerun multitask preprocess")
                done += chunk


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
