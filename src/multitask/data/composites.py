"""Two-item composites: MultiMNIST, MultiFashion and Multi-(Fashion+MNIST).

As described for Pareto MTL (Lin et al., NeurIPS 2019) after Sener & Koltun (NeurIPS 2018): two
28x28 items of *different* classes on one ``canvas x canvas`` image, one in the top-left and one
in the bottom-right corner, each moved inward by 0..``max_shift`` pixels along each axis,
overlapping pixels combined by their maximum. Task ``left`` names the top-left item, task
``right`` the bottom-right one.

Everything is vectorised: the only Python loops run over the ``(max_shift + 1)^2`` possible
offsets, each placing every item with that offset at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ITEM = 28


@dataclass(frozen=True)
class Composites:
    """``images`` (N, canvas, canvas) uint8; ``labels`` (N, 2) uint8: (left, right)."""

    images: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray  # (N, 4): top-left row, col, bottom-right row, col (for tests/audits)


def sample_pairs(
    left_labels: np.ndarray, right_labels: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)`` into the two pools with ``left_labels[i] != right_labels[j]``.

    Draws uniformly, then redraws only the clashing right items until none clash (each round
    keeps ~90% of the clashes resolved for 10 balanced classes).
    """
    if len(np.unique(np.concatenate([left_labels, right_labels]))) < 2:
        raise ValueError("composites need items of at least two different classes")
    left = rng.integers(0, len(left_labels), size=count)
    right = rng.integers(0, len(right_labels), size=count)
    clash = np.flatnonzero(left_labels[left] == right_labels[right])
    while clash.size:
        right[clash] = rng.integers(0, len(right_labels), size=clash.size)
        clash = clash[left_labels[left[clash]] == right_labels[right[clash]]]
    return left, right


def _paste_max(canvas: np.ndarray, items: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """``canvas[n, r:r+28, c:c+28] = max(canvas[...], items[n])`` for all n, grouped by offset."""
    for row in np.unique(rows):
        for col in np.unique(cols[rows == row]):
            idx = np.flatnonzero((rows == row) & (cols == col))
            window = canvas[idx, row:row + ITEM, col:col + ITEM]
            canvas[idx, row:row + ITEM, col:col + ITEM] = np.maximum(window, items[idx])


def build_composites(
    left_images: np.ndarray,
    left_labels: np.ndarray,
    right_images: np.ndarray,
    right_labels: np.ndarray,
    count: int,
    canvas_size: int,
    max_shift: int,
    rng: np.random.Generator,
) -> Composites:
    """``count`` composites: a left-pool item top-left, a right-pool item bottom-right."""
    if canvas_size - ITEM < max_shift:
        raise ValueError(f"a {canvas_size}px canvas cannot shift 28px items by {max_shift}px")
    i, j = sample_pairs(left_labels, right_labels, count, rng)
    shifts = rng.integers(0, max_shift + 1, size=(count, 4))
    far = canvas_size - ITEM
    offsets = np.column_stack(
        [shifts[:, 0], shifts[:, 1], far - shifts[:, 2], far - shifts[:, 3]]
    ).astype(np.int16)
    canvas = np.zeros((count, canvas_size, canvas_size), dtype=np.uint8)
    _paste_max(canvas, left_images[i], offsets[:, 0], offsets[:, 1])
    _paste_max(canvas, right_images[j], offsets[:, 2], offsets[:, 3])
    labels = np.column_stack([left_labels[i], right_labels[j]]).astype(np.uint8)
    return Composites(canvas, labels, offsets)
