"""Reading a training checkpoint back, and the only reason to throw one away.

The trainer writes everything needed to continue bit for bit (see
:class:`~multitask.training.trainer.Trainer`); a checkpoint is discarded only when it is
provably not one: an unreadable torch archive, one whose records fail their zip CRC-32 (bytes
changed inside a tensor, which ``torch.load`` does not check), or one missing the trainer's keys.
A stage's checkpoints are its one run's: :func:`sole_run` refuses a second run of the stage in
the same pipeline folder while the first still runs.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from multitask.io import recorded_lock
from multitask.layout import Layout

log = logging.getLogger(__name__)

_CHECKPOINT_KEYS = frozenset({"fingerprint", "epoch", "step", "model", "optimizer", "scheduler",
                              "method", "torch_rng", "cuda_rng", "generator", "history"})


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint at ``path``; None (and a warning saying why) only when it is provably
    corrupt: not a readable torch archive, or not a checkpoint of this trainer. Any other
    failure (a permission, the disk, memory) is raised: the file is never discarded for it."""
    try:
        damaged = _damaged_record(path)
        if damaged is not None:
            raise zipfile.BadZipFile(f"record {damaged!r} fails its CRC-32 check")
        state = torch.load(path, map_location=device, weights_only=True)
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    except RuntimeError as exc:
        if "PytorchStreamReader" not in str(exc) and "zip archive" not in str(exc):
            raise
        reason = str(exc)
    except OSError as exc:
        raise RuntimeError(f"{path}: cannot read the checkpoint ({exc}); fix that, or delete "
                           "the file to train from scratch") from exc
    else:
        missing = _CHECKPOINT_KEYS - set(state) if isinstance(state, dict) else _CHECKPOINT_KEYS
        if not missing:
            return state
        reason = f"not a training checkpoint (missing {sorted(missing)})"
    log.warning("%s: corrupt checkpoint (%s); starting from scratch", path, reason)
    return None


def _damaged_record(path: Path) -> str | None:
    """The first record of the torch archive at ``path`` whose bytes do not match the CRC-32
    the archive holds for it; None when all match or the file is no zip archive at all (then
    ``torch.load`` says what it is). One sequential read of the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except zipfile.BadZipFile:
        return None  # truncated, empty, legacy format: torch.load names the problem


def tensors_to(state: Any, device: torch.device) -> Any:
    """``state`` (nested dicts, lists and tuples) with every tensor moved to ``device``, as
    ``torch.load``'s ``map_location`` would have put it."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {key: tensors_to(value, device) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(tensors_to(value, device) for value in state)
    return state


@contextlib.contextmanager
def sole_run(layout: Layout, stage: str, writes: bool = True) -> Iterator[None]:
    """Run the block as the only ``multitask <stage>`` of the pipeline folder ``layout``.

    Two runs of one stage in one folder would resume from and overwrite each other's
    checkpoint (``models/checkpoints/<stage>...``) and outputs; the second is refused at once,
    with the first one's pid. DVC serialises its own stages; this guards runs by hand. A
    data-parallel run's other ranks (``writes`` False: rank 0 writes for them) take no lock.
    """
    if not writes:
        yield
        return
    lock = layout.checkpoints_dir / f"{stage}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)

    def busy(holder: str) -> RuntimeError:
        return RuntimeError(
            f"{lock}: another multitask {stage} runs in this folder ({holder}); two runs would "
            "share its checkpoint and outputs: wait for it to end or stop it, then rerun")

    with recorded_lock(lock, busy):
        yield
