"""What a data set is, declared once: the raw sources, the tasks, their classes and shapes.

Config validation, download, validate, preprocess, predict and the README renderer all read
:data:`DATASETS` and :data:`SOURCES`; adding a composite data set is one entry here (plus, if it
needs a new raw source, that source's entry and its mirrors and digests in ``data/sources.yaml``).

A composite data set places one item of each task's source on a square canvas: task ``left``'s
item in the top-left corner, task ``right``'s in the bottom-right (Sener & Koltun, NeurIPS
2018, MultiMNIST; Lin et al., NeurIPS 2019, MultiFashion and Multi-(Fashion+MNIST)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))
# The data set read from a user's manifest file (multitask.data.manifest): its tasks, classes,
# channels and image size come from params (data.tasks, ...) and the file, not from here.
MANIFEST = "manifest"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# data.dataset: cifar10 (multitask.data.preprocess): the archive's own images, no canvas. Task
# object is the 10 classes; task vehicle the top level of the classes' hierarchy, binary: the
# four machines against the six animals. Binary rather than a 4-way coarse group because that
# split is the hierarchy's natural one (no grouping of animals to argue over) and because it
# puts a second task kind (BCE, AUROC) beside the multiclass one.
CIFAR10 = "cifar10"
CIFAR10_VEHICLES = ("airplane", "automobile", "ship", "truck")
VEHICLE_CLASSES = ("animal", "vehicle")  # binary: (negative, positive)


@dataclass(frozen=True)
class SourceSpec:
    """One raw source: its file format, the shape of one item and its class names.

    Mirrors and digests are deployment facts and live in ``params.yaml`` (``data.sources``).
    """

    reader: str  # "idx" (MNIST-style files) or "cifar" (the CIFAR-10 python archive)
    item_shape: tuple[int, ...]  # (H, W) for grey images, (H, W, C) for colour ones
    class_names: tuple[str, ...]
    hint: str = ""  # what to do when no mirror answers, beyond the generic advice
    hint_folder: str = ""  # the folder the hint's remedy fills: no advice once it exists

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class TaskSpec:
    """One task of a data set: which source its label comes from (a composite's: which source
    its item comes from) and its kind."""

    name: str
    source: str
    kind: str = "multiclass"  # a kind of multitask.tasks.KINDS


@dataclass(frozen=True)
class DatasetSpec:
    """A data set built from raw sources: a composite (one task per corner of the canvas, in
    canvas order) or CIFAR-10 (the source's own images, its tasks in label-column order)."""

    title: str  # how people write the name (README, plots)
    tasks: tuple[TaskSpec, ...]
    channels: int = 1
    # train.augment's changes that keep every label valid: a composite's items may move
    # together (shift) but not be mirrored (a flip swaps left and right) or cut (crop).
    augmentations: tuple[str, ...] = ("shift",)

    @property
    def sources(self) -> tuple[str, ...]:
        """The raw sources the data set is built from (sorted, each once)."""
        return tuple(sorted({task.source for task in self.tasks}))


SOURCES: Mapping[str, SourceSpec] = MappingProxyType({
    "fashion_mnist": SourceSpec(
        "idx", (28, 28), FASHION_CLASSES,
        hint="install Debian's dataset-fashion-mnist package (`make system-deps` as root), "
        "which puts the four files in /usr/share/datasets/fashion-mnist/",
        hint_folder="/usr/share/datasets/fashion-mnist/"),
    "mnist": SourceSpec("idx", (28, 28), DIGIT_CLASSES),
    "cifar10": SourceSpec("cifar", (32, 32, 3), CIFAR10_CLASSES),
})

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({
    "multifashion": DatasetSpec("MultiFashion", (TaskSpec("left", "fashion_mnist"),
                                                 TaskSpec("right", "fashion_mnist"))),
    "multimnist": DatasetSpec("MultiMNIST", (TaskSpec("left", "mnist"),
                                             TaskSpec("right", "mnist"))),
    # a digit top-left, a garment bottom-right
    "multifashion_mnist": DatasetSpec("Multi-(Fashion+MNIST)", (TaskSpec("left", "mnist"),
                                                                TaskSpec("right",
                                                                         "fashion_mnist"))),
    # No raw source to download: the manifest's images are read where they lie. A user's
    # photos may be mirrored or cropped (train.augment: flip, crop) when their labels allow.
    MANIFEST: DatasetSpec("Manifest", (), channels=3, augmentations=("flip", "crop")),
    # Natural photographs: a mirrored or cropped airplane is still an airplane (and a vehicle).
    CIFAR10: DatasetSpec("CIFAR-10", (TaskSpec("object", "cifar10"),
                                      TaskSpec("vehicle", "cifar10", kind="binary")),
                         channels=3, augmentations=("flip", "crop")),
})
