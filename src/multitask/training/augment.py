"""``train.augment``: random changes of each training batch that cannot change its labels.

Applied on the training device to the uint8 batch, before normalisation, with random numbers
drawn from the trainer's generator (:meth:`Augmenter.draw`, on the CPU): a CPU run is
reproducible, and since that generator is in every checkpoint a resumed run draws what the
uninterrupted one would have. With everything off no number is drawn, so the default run is
the run it was before augmentation existed.

- ``shift: k`` (two-item composites): each image moves by ``dy, dx`` pixels, each drawn
  uniformly from the moves of at most ``k`` that lose no foreground pixel: ``dy`` lies in
  ``[-min(k, top), min(k, bottom)]`` where ``top``/``bottom`` count the image's blank rows above
  and below its content (columns likewise). Both items move by the same vector, so the
  top-left item stays up and left of the bottom-right one by exactly the offset it had, and
  both stay whole on the canvas: which item is ``left`` and which class it shows cannot change.
  (A composite's items are placed 0..``data.max_shift`` pixels inward from their corners, so
  blank margins are where the shift has room.)
- ``flip`` (natural images): each image mirrored left-right with probability 1/2.
- ``crop: c`` (natural images): the image padded by ``c`` blank pixels and cut back to its size
  at a random offset, i.e. shifted by up to ``c`` pixels per axis, content at the border lost.

``flip`` and ``crop`` are refused at start-up for data sets that do not declare them safe
(:attr:`multitask.data.datasets.DatasetSpec.augmentations`): mirroring a composite swaps its
left and right items, and a crop may cut an item off.
"""

from __future__ import annotations

import torch
from torch import Tensor

from multitask.config import AugmentConfig

# Columns of the uniform draws, one row per image: shift (dy, dx), flip, crop (dy, dx).
_DRAWS = 5


class Augmenter:
    """The configured changes; :meth:`draw` the randomness, :meth:`apply` it to a batch."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def draw(self, count: int, generator: torch.Generator) -> Tensor:
        """Uniform numbers in [0, 1), ``(count, 5)``, for one global batch of ``count`` images
        (drawn whole on every process, so each takes its own rows of the same draws)."""
        return torch.rand(count, _DRAWS, generator=generator, dtype=torch.float64)

    def apply(self, images: Tensor, draws: Tensor) -> Tensor:
        """``images`` (B, H, W) or (B, H, W, C) uint8 changed by ``draws`` (B, 5) from
        :meth:`draw`; the channels of one image move together."""
        draws = draws.to(images.device)
        config = self.config
        if images.ndim == 4:  # each channel as an image of its own, with its image's draws
            count, height, width, channels = images.shape
            if config.shift:
                raise ValueError("train.augment.shift: composites only (1 channel); these "
                                 f"images have {channels}")
            planes = images.permute(0, 3, 1, 2).reshape(count * channels, height, width)
            moved = self.apply(planes, draws.repeat_interleave(channels, dim=0))
            return moved.view(count, channels, height, width).permute(0, 2, 3, 1)
        if config.shift:
            rows, cols = blank_margins(images)
            dy = uniform_int(draws[:, 0], -torch.clamp(rows[0], max=config.shift),
                             torch.clamp(rows[1], max=config.shift))
            dx = uniform_int(draws[:, 1], -torch.clamp(cols[0], max=config.shift),
                             torch.clamp(cols[1], max=config.shift))
            images = translate(images, dy, dx)
        if config.flip:
            mirrored = (draws[:, 2] < 0.5).view(-1, 1, 1)
            images = torch.where(mirrored, images.flip(-1), images)
        if config.crop:
            reach = torch.full((len(images),), config.crop, device=images.device)
            images = translate(images, uniform_int(draws[:, 3], -reach, reach),
                               uniform_int(draws[:, 4], -reach, reach))
        return images


def uniform_int(u: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """An integer uniform in ``[low, high]`` per element, from ``u`` uniform in [0, 1)."""
    span = (high - low + 1).to(u.dtype)
    return low + torch.clamp(torch.floor(u * span).long(), max=(high - low))


def blank_margins(images: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((top, bottom), (left, right))``: per image, how many all-zero rows lie above and below
    its content, and all-zero columns left and right of it (a blank image: its full size)."""

    def margins(filled: Tensor) -> tuple[Tensor, Tensor]:
        size = filled.shape[1]
        position = torch.arange(size, device=filled.device)
        first = torch.where(filled, position, size).amin(dim=1)
        last = torch.where(filled, position, -1).amax(dim=1)
        blank = ~filled.any(dim=1)
        return (torch.where(blank, size, first),
                torch.where(blank, size, size - 1 - last))

    content = images != 0
    return margins(content.any(dim=2)), margins(content.any(dim=1))


def translate(images: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Each image moved ``dy`` rows down and ``dx`` columns right, blank (0) where nothing
    moved in: ``out[b, i, j] = images[b, i - dy[b], j - dx[b]]``."""
    count, height, width = images.shape
    source_rows = torch.arange(height, device=images.device) - dy.view(-1, 1)
    source_cols = torch.arange(width, device=images.device) - dx.view(-1, 1)
    inside = (((source_rows >= 0) & (source_rows < height)).view(count, height, 1)
              & ((source_cols >= 0) & (source_cols < width)).view(count, 1, width))
    rows = source_rows.clamp(0, height - 1).view(count, height, 1).expand(count, height, width)
    moved = images.gather(1, rows)
    cols = source_cols.clamp(0, width - 1).view(count, 1, width).expand(count, height, width)
    moved = moved.gather(2, cols)
    return torch.where(inside, moved, torch.zeros((), dtype=images.dtype,
                                                  device=images.device))
