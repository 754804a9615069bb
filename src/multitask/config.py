"""``params.yaml`` parsed once into frozen, validated objects.

:func:`load_params` reads the file; each stage gets the result and reads its own section. A
misspelt key, a wrong type, an out-of-range value or an unknown name (data set, architecture,
weighting method and its params, tuned methods) is an error at start-up that names the file, the
key and, where it can, the nearest valid name -- never a silent default, and never after data
has been loaded. The loaded :class:`Params` remembers its file (:attr:`Params.source`) so later
errors name the real file, e.g. ``sample/params.yaml``.

One module, not several: the schema reads as one document, a class per section in the order
of ``params.yaml``, with the loader that checks it underneath; split, a reader would have to
stitch the file back together.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from multitask.data.datasets import CIFAR10, DATASETS, MANIFEST, SOURCES
from multitask.errors import ConfigError, unknown_name, validate
from multitask.redaction import redact
from multitask.tasks import KIND_LOSSES, task_columns

__all__ = ["ConfigError", "Params", "flatten", "load_params", "load_sources", "parse_params",
           "regularisation_keys"]

DEFAULT_PARAMS = Path("params.yaml")
# Keys that earlier versions accepted and what to do instead (paths are fixed by the layout).
_REMOVED = {
    ("data", "raw_dir"): "raw files are always under data/raw (multitask.layout)",
    ("data", "processed_dir"): "processed data is always under data/processed (multitask.layout)",
    ("validate", "report_dir"): "the validation report is always under reports/validation",
    ("train", "checkpoint_dir"): "checkpoints are always under models/checkpoints",
    ("data", "sources"): "the mirrors and digests moved to data/sources.yaml beside params.yaml "
                         "(under its key sources:), so that dvc exp show lists only what "
                         "experiments vary",
}

# Keys people reach for that the environment sets instead.
_ENVIRONMENT = {
    ("tracking", key): "the MLflow store is the environment's MLFLOW_TRACKING_URI (e.g. "
                       "sqlite:///mlflow.db), else mlflow.db at the repository root"
    for key in ("uri", "tracking_uri", "store")
}


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Section(BaseModel):
    # numbers must be finite: YAML's .inf passes every lower bound (an infinite learning rate,
    # epoch fraction or tolerance is never meant), and NaN compares as nothing
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------- data
class Source(_Section):
    """One raw data set: where to fetch it and what its files must hash to (an entry of
    ``data/sources.yaml``, which the download stage declares as a dependency).

    ``files`` maps each file name to the SHA-256 of its *decompressed payload*, so a copy that
    was recompressed (Debian's package recompresses the gzip files) verifies as well.
    ``archive_sha256`` maps a file name to the SHA-256 of the file exactly as its mirror serves
    it: only for files whose payload digest is published nowhere (a recompressed copy of such
    a file does not verify). Together they name every file of the source.
    """

    mirrors: list[str] = Field(min_length=1)
    files: dict[str, str] = Field(default_factory=dict)
    archive_sha256: dict[str, str] = Field(default_factory=dict)

    @field_validator("files", "archive_sha256")
    @classmethod
    def _hex_digests(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if not _PLAIN_NAME.fullmatch(name) or name in (".", ".."):
                raise ValueError(f"{name!r}: a file name, not a path (it lands in "
                                 "data/raw/<source>/); use letters, digits and . _ -")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{name}: expected a 64-character lowercase hex SHA-256")
        return files

    @field_validator("mirrors")
    @classmethod
    def _supported_mirrors(cls, mirrors: list[str]) -> list[str]:
        for mirror in mirrors:  # the download stage reads folders and HTTP(S) only
            scheme = mirror.split("://", 1)[0] if "://" in mirror else None
            if scheme not in (None, "file", "http", "https"):
                raise ValueError(f"{mirror}: unsupported mirror ({scheme}://); use a local "
                                 "folder or an http(s):// URL")
        return mirrors

    @model_validator(mode="after")
    def _each_file_once(self) -> Source:
        if not self.files and not self.archive_sha256:
            raise ValueError("no files: list them under files (payload SHA-256) or archive_sha256")
        if both := sorted(set(self.files) & set(self.archive_sha256)):
            raise ValueError(f"{', '.join(both)}: under both files and archive_sha256; keep one")
        return self


class ManifestTask(_Section):
    """One task of a manifest data set: ``data.tasks.<name>``, read from the manifest's column
    of the same name (``kind``: multiclass, binary or regression; ``loss``: one of the kind's,
    default its first; ``unit``: a regression target's unit, for reports; ``positive``: the
    binary value that is the positive class, default the second of the two in sorted order)."""

    kind: Literal["multiclass", "binary", "regression"]
    loss: str | None = None
    unit: str = ""
    # a bool when YAML read a bare yes/no/on/off/true/false (as `dvc exp run -S` writes a
    # quoted 'yes' back): matched to the value spelt so (multitask.data.manifest)
    positive: bool | str | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, raw: Any) -> Any:
        if not isinstance(raw, dict | ManifestTask):  # `species: multiclass`, or nothing
            raise ValueError("a task is a mapping: {kind: multiclass}, {kind: binary} or "
                             "{kind: regression} (see the README, Task kinds)")
        return raw

    @field_validator("positive", mode="before")
    @classmethod
    def _positive_as_text(cls, value: Any) -> Any:
        # The manifest's values are compared as the text the file holds.
        if isinstance(value, bool):
            return value
        return str(value) if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _fits_kind(self) -> ManifestTask:
        losses = KIND_LOSSES[self.kind]
        if self.loss is not None and self.loss not in losses:
            raise ValueError(f"loss: {self.loss!r} is not a loss of a {self.kind} task; "
                             f"use one of {', '.join(losses)}")
        if self.positive is not None and self.kind != "binary":
            raise ValueError(f"positive applies to binary tasks only; remove it for {self.kind}")
        if self.unit and self.kind != "regression":
            raise ValueError(f"unit applies to regression tasks only; remove it for {self.kind}")
        return self


# Manifest columns that are not tasks, and the auxiliary task's name.
RESERVED_COLUMNS = ("image", "split", "rotation")
_TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Keys that mean something for one family of data sets only (refused for the other when set).
COMPOSITE_KEYS = ("canvas_size", "max_shift", "train_size", "test_size")
MANIFEST_KEYS = ("manifest", "tasks", "channels", "image_size", "resize", "test_fraction")
COMPOSITE_DEFAULTS: dict[str, Any] = {"canvas_size": 36, "max_shift": 4, "train_size": 120_000,
                                      "test_size": 20_000}
MANIFEST_DEFAULTS: dict[str, Any] = {"channels": 3, "image_size": 64, "resize": "pad",
                                     "test_fraction": 0.1}


class DataConfig(_Section):
    """``data``: which data set and how it is built.

    Composite data sets (multifashion, ...): ``canvas_size``, ``max_shift``, ``train_size``,
    ``test_size``. ``dataset: manifest`` (:mod:`multitask.data.manifest`): ``manifest`` (a
    .csv or .parquet file; relative paths from the pipeline folder), ``tasks`` (in label
    column order), ``channels`` (3), ``image_size`` (64), ``resize`` (pad, the default:
    letterbox, the whole image kept, black bars; crop: the centre square), ``test_fraction``
    (0.1). ``dataset: cifar10`` (:func:`multitask.data.preprocess.build_cifar10`): neither
    family's keys, its images and test split are the archive's. Setting a key of another
    family is an error. ``val_fraction`` and ``seed`` serve all (a manifest with a ``split``
    column ignores the fractions).
    """

    dataset: str = "multifashion"  # a name of multitask.data.datasets.DATASETS
    # Each family's keys are None for the other (so that a run logs no value it does not
    # use); their defaults: COMPOSITE_DEFAULTS, MANIFEST_DEFAULTS.
    canvas_size: int | None = Field(None, ge=28, le=64)
    max_shift: int | None = Field(None, ge=0, le=8)
    train_size: int | None = Field(None, gt=0)
    test_size: int | None = Field(None, gt=0)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    seed: int = Field(0, ge=0)
    manifest: str | None = None
    tasks: dict[str, ManifestTask] = Field(default_factory=dict)
    channels: Literal[1, 3] | None = None
    image_size: int | None = Field(None, ge=8, le=1024)
    resize: Literal["pad", "crop"] | None = None
    test_fraction: float | None = Field(None, gt=0.0, lt=0.5)

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        return {**_family(raw.get("dataset", "multifashion"))[0], **raw}

    @model_validator(mode="after")
    def _canvas_fits_shift(self) -> DataConfig:
        if self.canvas_size is None or self.max_shift is None:
            return self
        if self.canvas_size - 28 < self.max_shift:
            raise ValueError(
                f"max_shift={self.max_shift} does not fit a {self.canvas_size}px canvas: "
                f"canvas_size - 28 must be at least max_shift"
            )
        return self

    @model_validator(mode="after")
    def _keys_fit_dataset(self) -> DataConfig:
        manifest = self.dataset == MANIFEST
        defaults, foreign = _family(self.dataset)
        # null (or no tasks) reads as not set: a dumped and reloaded config stays valid
        if given := [key for key in foreign
                     if key in self.model_fields_set and getattr(self, key) not in (None, {})]:
            if self.dataset == CIFAR10:
                raise ValueError(f"{', '.join(given)}: not read by data.dataset: cifar10 (its "
                                 "images and test split are the archive's; it reads only "
                                 "val_fraction and seed); remove or set null")
            family = "composite data sets" if manifest else "data.dataset: manifest"
            raise ValueError(f"{', '.join(given)}: apply to {family} only; remove "
                             f"{'it' if len(given) == 1 else 'them'} for {self.dataset}")
        if empty := [key for key, value in defaults.items() if getattr(self, key) is None]:
            raise ValueError(f"{', '.join(empty)}: null; give a value (default "
                             f"{', '.join(str(defaults[key]) for key in empty)})")
        if not manifest:
            return self
        if not self.manifest:
            raise ValueError("dataset: manifest needs manifest: <path to a .csv or .parquet "
                             "file> (relative to the pipeline folder)")
        if not self.manifest.endswith((".csv", ".parquet")):
            raise ValueError(f"manifest: {self.manifest}: expected a .csv or .parquet file")
        if not self.tasks:
            raise ValueError("dataset: manifest needs tasks: {<column>: {kind: multiclass | "
                             "binary | regression}, ...}, one per label column")
        for name in self.tasks:
            if not _TASK_NAME.fullmatch(name) or name in RESERVED_COLUMNS:
                raise ValueError(f"tasks.{name}: a task name is an ASCII letter (a-z, A-Z) "
                                 "then ASCII letters, digits or _, and not one of "
                                 f"{', '.join(RESERVED_COLUMNS)}; rename the task (and its "
                                 "manifest column)")
        served = {column: name for name, task in self.tasks.items()
                  for column in task_columns(name, task.kind)[1:]}
        if clash := next((name for name in self.tasks if name in served), None):
            owner = served[clash]
            columns = ", ".join(task_columns(owner, self.tasks[owner].kind))
            raise ValueError(f"tasks.{clash}: predict and the served model name a column of "
                             f"task {owner} so ({columns}); rename the task (and its "
                             "manifest column)")
        return self

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(unknown_name("data set", name, DATASETS))
        return name


def _family(dataset: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The defaults of a data set's own keys, and the keys of the other families (refused).

    CIFAR-10 is its own family: its images and splits are the archive's, so it has none of
    the composites' keys nor the manifest's (only val_fraction and seed).
    """
    if dataset == MANIFEST:
        return MANIFEST_DEFAULTS, COMPOSITE_KEYS
    if dataset == CIFAR10:
        return {}, COMPOSITE_KEYS + MANIFEST_KEYS
    return COMPOSITE_DEFAULTS, MANIFEST_KEYS


class SourcesFile(_Section):
    """``data/sources.yaml``: every raw source a data set may need, by name.

    Not a param: mirrors and digests are facts about the data, never varied by an experiment,
    and in ``params.yaml`` they filled ``dvc exp show`` with URLs and hashes.
    """

    # empty for a pipeline that downloads nothing (a manifest read where it lies)
    sources: dict[str, Source]


class PixelStats(_Section):
    """Expected range of a split's pixel mean and standard deviation (0..255 scale)."""

    mean: tuple[float, float]
    std: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self) -> PixelStats:
        for name, (low, high) in (("mean", self.mean), ("std", self.std)):
            if not 0 <= low < high <= 255:
                raise ValueError(f"{name}: expected 0 <= low < high <= 255, got [{low}, {high}]")
        return self


class ValidateConfig(_Section):
    class_balance_tolerance: float = Field(0.25, gt=0.0, lt=1.0)
    # Per source: Fashion-MNIST's pixels average 72.9 (std 90.0), MNIST's 33.3 (std 78.6),
    # CIFAR-10's 120.7 (std 64.2; all three channels together).
    pixel_stats: dict[str, PixelStats] = Field(default_factory=lambda: {
        "fashion_mnist": PixelStats(mean=(60.0, 86.0), std=(80.0, 100.0)),
        "mnist": PixelStats(mean=(25.0, 42.0), std=(70.0, 88.0)),
        "cifar10": PixelStats(mean=(108.0, 134.0), std=(55.0, 74.0)),
    })


# -------------------------------------------------------------------------------------- model
# The shared encoders: the literature's LeNet and torchvision's classification models.
BACKBONES = ("lenet", "resnet18", "resnet34", "resnet50", "inception_v3", "efficientnet_b0",
             "mobilenet_v3_small", "convnext_tiny")
# model.pretrained: these words, a path to a state_dict file, or an MLflow model URI.
PRETRAINED_WORDS = ("none", "imagenet", "self_supervised")
MODEL_URI_SCHEMES = ("models:/", "runs:/")


class DropoutConfig(_Section):
    """Dropout probabilities (0: no dropout layer at all, so the network is the same as without
    this section). ``encoder``: on the features entering the encoder's last linear layer
    (LeNet: before ``fc``) or, for torchvision backbones, on their pooled output (where
    torchvision's own classifiers put it). ``heads``: before each task head's classifier."""

    encoder: float = Field(0.0, ge=0.0, lt=1.0)
    heads: float = Field(0.0, ge=0.0, lt=1.0)


class ModelConfig(_Section):
    backbone: str = "lenet"  # a name of BACKBONES
    # LeNet's channels and features multiplied, each rounded to the nearest whole number
    # (2: conv 20/40, fc 100; 1.5: conv 15/30, fc 75); 1 for other backbones. A whole number
    # stays an int, so the params that hash it (tune's study name) read as they always did.
    width: int | float = Field(1, ge=0.1, le=16)
    architecture: str = "hps"
    head_hidden: list[int] = Field(default_factory=list)
    rotation_task: bool = False
    # cross_stitch only (other architectures ignore it, so the default can name it): scalar
    # (the paper's unit: one weight per pair of columns) or linear (a channels x channels
    # matrix per pair of columns, starting as the scalar unit)
    stitch: Literal["scalar", "linear"] = "scalar"
    # branched only: the backbone stages the tasks share (null: all of them, LeNet's two);
    # the later stages and the readout are one copy per task.
    shared_stages: int | None = Field(None, ge=1)
    num_experts: int = Field(4, ge=1, le=64)
    expert_dim: int = Field(50, ge=1)
    # Where the shared encoder starts: none (random), imagenet (torchvision's weights),
    # self_supervised (the pretrain stage's encoder), a state_dict file, or a model URI
    # (models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model).
    pretrained: str = "none"
    # Torchvision backbones only: the input is resized to this many pixels inside the network
    # (None: the data's own size); ResNets' first layers: cifar (3x3 stride 1, no max-pool;
    # that convolution starts fresh) or imagenet (7x7 stride 2 and max-pool, all pretrained);
    # auto: cifar below 64 pixels.
    resize_to: int | None = Field(None, ge=16, le=512)
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    # Epochs at the start during which the encoder is frozen (no gradient, batch-norm
    # statistics fixed) and only the task-specific parameters train.
    freeze_encoder_epochs: int = Field(0, ge=0)
    # With a multitask model as model.pretrained: also start the heads of tasks that match by
    # name and shape from it.
    reuse_heads: bool = False
    # Regularisation: the single-task baselines use the same (see regularisation_keys).
    dropout: DropoutConfig = Field(DropoutConfig(), json_schema_extra={"regularises": True})

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        if name not in BACKBONES:
            raise ValueError(unknown_name("backbone", name, BACKBONES))
        return name

    @field_validator("pretrained")
    @classmethod
    def _pretrained_source(cls, source: str) -> str:
        if not source.strip():
            raise ValueError("empty: use none, imagenet, self_supervised, a path to a "
                             "state_dict file or models:/<name>@<alias>")
        if ":/" in source and not source.startswith(MODEL_URI_SCHEMES):
            raise ValueError(f"{source!r}: a model URI starts with models:/ or runs:/ "
                             "(models:/<name>@<alias>, runs:/<run id>/model); a file is a "
                             "plain path")
        spelt = source.strip().lower().replace("-", "_").replace(" ", "_")
        if source not in PRETRAINED_WORDS and spelt in PRETRAINED_WORDS:
            # read as a file name otherwise, and refused only when a training stage looks
            raise ValueError(f"did you mean {spelt}? (the words: "
                             f"{', '.join(PRETRAINED_WORDS)}; anything else is a file path or "
                             "a model URI)")
        return source

    @model_validator(mode="after")
    def _pretrained_fits_backbone(self) -> ModelConfig:
        if self.pretrained == "imagenet" and self.backbone == "lenet":
            raise ValueError("pretrained: imagenet: torchvision has no ImageNet weights for "
                             f"lenet; pick one of {', '.join(BACKBONES[1:])}")
        if self.backbone == "lenet" and (self.resize_to is not None or self.stem != "auto"):
            raise ValueError("resize_to and stem apply to torchvision backbones only; remove "
                             "them for lenet")
        if self.width != 1 and self.backbone != "lenet":
            raise ValueError(f"width: {self.width}: only lenet has a width multiplier; remove "
                             f"it for {self.backbone} (or pick a larger backbone)")
        if self.stem != "auto" and not self.backbone.startswith("resnet"):
            raise ValueError(f"stem: {self.stem}: only ResNets have a choice of first layers; "
                             f"remove it for {self.backbone}")
        if self.reuse_heads and (self.pretrained in PRETRAINED_WORDS):
            raise ValueError("reuse_heads: the heads come from a multitask model: set "
                             "pretrained to its file or models:/<name>@<alias>")
        if self.reuse_heads and self.architecture in ("mtan", "mmoe"):
            raise ValueError(f"reuse_heads: architecture {self.architecture} has no per-task "
                             "heads to reuse; use hps, branched or cross_stitch, or set "
                             "reuse_heads: false")
        return self

    @property
    def pretrained_kind(self) -> Literal["none", "imagenet", "self_supervised", "uri", "file"]:
        """What ``pretrained`` names: one of its words, a model URI or a file."""
        if self.pretrained in PRETRAINED_WORDS:
            return self.pretrained  # type: ignore[return-value]
        return "uri" if self.pretrained.startswith(MODEL_URI_SCHEMES) else "file"


# -------------------------------------------------------------------------------------- train
class OptimizerConfig(_Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, json_schema_extra={"regularises": True})


class ScheduleConfig(_Section):
    name: Literal["none", "step", "cosine"] = "none"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: int = Field(0, ge=0)


class AugmentConfig(_Section):
    """Random changes of each training image that cannot change its labels (0/false: off).

    ``shift``: two-item composites; each image moves by up to this many pixels per axis, and
    only as far as its blank margin allows, so both items move together, stay whole and keep
    their corners (:mod:`multitask.training.augment`). ``flip`` (horizontal) and ``crop``
    (pad by this many pixels, cut back at random): natural images only, refused unless the data
    set declares them safe (a flipped composite would swap its left and right items).
    """

    shift: int = Field(0, ge=0, le=8)
    flip: bool = False
    crop: int = Field(0, ge=0, le=8)

    @property
    def active(self) -> bool:
        return bool(self.shift or self.flip or self.crop)


class EarlyStoppingConfig(_Section):
    """``patience``: stop after this many epochs without a better validation ``select`` score
    and keep (save, evaluate) the best epoch's weights; None: train all epochs, keep the last.
    ``select``: mean validation accuracy of the main tasks, or validation Δm% against the
    single-task baselines' validation accuracies (``reports/baselines_info.json``)."""

    patience: int | None = Field(None, ge=1)
    select: Literal["mean_accuracy", "delta_m"] = "mean_accuracy"


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    weighting: str = "equal"
    method_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(0, ge=0)
    data_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # The shared encoder's learning rate is lr x encoder_lr_scale (discriminative fine-tuning:
    # e.g. 0.1 with a pretrained encoder); the task-specific parameters keep lr.
    encoder_lr_scale: float = Field(1.0, gt=0.0, le=10.0)
    diagnostics_every: int = Field(0, ge=0)
    # Regularisation and model selection, marked so that the single-task baselines derive
    # theirs from the same keys (regularisation_keys; training.stages.baseline_params).
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, json_schema_extra={"regularises": True})
    augment: AugmentConfig = Field(AugmentConfig(), json_schema_extra={"regularises": True})
    early_stopping: EarlyStoppingConfig = Field(EarlyStoppingConfig(),
                                                json_schema_extra={"regularises": True})
    # Data-parallel processes (torchrun) for train and baselines; batch_size stays the global
    # batch. Under a launcher started by hand, its WORLD_SIZE decides instead.
    processes: int = Field(1, ge=1)
    # The baselines stage's single-task networks: trained together as one grouped LeNet
    # (batched), one after another (sequential), or auto: batched where that is measured
    # faster (LeNet on the CPU, one process), else sequential (training.ensemble).
    ensemble: Literal["auto", "batched", "sequential"] = "auto"

    @model_validator(mode="after")
    def _processes_share_the_batch(self) -> TrainConfig:
        if self.batch_size < self.processes:
            raise ValueError(f"batch_size: {self.batch_size} is below processes "
                             f"({self.processes}): each process needs a share of the global "
                             "batch; raise batch_size or lower processes")
        if self.processes > 1 and self.ensemble == "batched":
            raise ValueError(f"ensemble: batched trains the baselines in one process; with "
                             f"processes: {self.processes} set it to sequential or auto")
        return self


# ----------------------------------------------------------------------------------- pretrain
class PretrainConfig(_Section):
    """The self-supervised encoder of ``model.pretrained: self_supervised``: trained on the
    rotation task alone (which multiple of 90 degrees each training image was turned by; no
    labels read), then registered in MLflow as ``<registered_name>``."""

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    data_fraction: float = Field(1.0, gt=0.0, le=1.0)
    registered_name: str = "multitask-encoder"


# --------------------------------------------------------------------------------------- tune
class TuneConfig(_Section):
    mode: Literal["multi", "single"] = "multi"
    n_trials: int = Field(8, ge=1)
    epochs: int = Field(2, ge=1)
    data_fraction: float = Field(0.25, gt=0.0, le=1.0)
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    pruner: Literal["none", "median", "hyperband"] = "median"
    objective: Literal["mean_accuracy", "delta_m"] = "mean_accuracy"
    selection: Literal["best_mean", "best_worst", "preference"] = "best_mean"
    preference: list[float] | None = None
    weight_range: tuple[float, float] = (0.05, 1.0)
    tune_lr: bool = False
    lr_range: tuple[float, float] = (1e-4, 1e-2)
    methods: list[str] | None = None
    seed: int = Field(0, ge=0)
    storage: str | None = None  # None: the journal file of the layout; or postgresql://...
    study_name: str = "task-weights"
    workers: int = Field(1, ge=1)
    # A running trial's worker records a heartbeat this often; a trial silent for longer than
    # grace_period_s counts as lost (its worker died or lost its host): it is failed and its
    # parameters run again. PostgreSQL: Optuna's RDB heartbeat; journal file: other hosts only.
    heartbeat_interval_s: int = Field(30, ge=1)
    grace_period_s: int = Field(120, ge=1)

    # Search-space errors must stop the stage before its first trial, not in the middle of it.
    @field_validator("weight_range")
    @classmethod
    def _weight_bounds(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        low, high = bounds
        if not 0.0 <= low < high <= 1.0:
            raise ValueError("each task's normalised weight lies in [low, high]: need "
                             "0 <= low < high <= 1, e.g. [0.05, 1.0]")
        return bounds

    @field_validator("lr_range")
    @classmethod
    def _lr_bounds(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < bounds[0] < bounds[1]:
            raise ValueError("the learning rate is searched on a log scale: need "
                             "0 < low < high, e.g. [0.0001, 0.01]")
        return bounds

    @field_validator("methods")
    @classmethod
    def _method_list(cls, methods: list[str] | None) -> list[str] | None:
        if methods is not None and not methods:
            raise ValueError("empty list: name at least one weighting method (static searches "
                             "the weights), or leave tune.methods out to search static weights")
        if methods is not None and len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice; list each once")
        return methods

    @field_validator("preference")
    @classmethod
    def _preference_vector(cls, preference: list[float] | None) -> list[float] | None:
        if preference is not None and (any(p < 0 for p in preference) or sum(preference) <= 0):
            raise ValueError("one non-negative importance per task, not all zero")
        return preference

    @field_validator("storage")
    @classmethod
    def _storage_inside(cls, storage: str | None) -> str | None:
        if storage is None or "://" in storage:
            return storage
        if Path(storage).is_absolute() or ".." in Path(storage).parts:
            raise ValueError("a journal file lives inside the pipeline folder: give a relative "
                             "path without '..' (default reports/tuning/study.journal), or a "
                             "postgresql:// URL for a study shared across machines")
        return storage

    @model_validator(mode="after")
    def _grace_after_heartbeats(self) -> TuneConfig:
        if self.grace_period_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"grace_period_s ({self.grace_period_s}) must exceed heartbeat_interval_s "
                f"({self.heartbeat_interval_s}), or every live trial counts as lost between two "
                "heartbeats; e.g. heartbeat_interval_s: 30, grace_period_s: 120")
        return self

    @model_validator(mode="after")
    def _preference_given(self) -> TuneConfig:
        if self.selection == "preference" and self.preference is None:
            raise ValueError("selection: preference needs tune.preference (one non-negative "
                             "importance per task, in the order of the tasks)")
        return self


# ---------------------------------------------------------------------- tracking and promotion
class TrackingConfig(_Section):
    enabled: bool = True
    experiment: str | None = None
    log_model: bool = True
    system_metrics: bool = True


# MLflow refuses '/' and ':' in a registered model's name, and the registry searches take a
# name only as a literal of these characters (tracking.store.filter_literal).
_MODEL_NAME = re.compile(r"[A-Za-z0-9._@+ -]{1,256}")
MODEL_NAME_RULE = "use letters, digits, spaces and . _ @ + - only (at most 256)"


def registrable(name: str) -> bool:
    """Whether ``name`` can be a registered model's name here."""
    return _MODEL_NAME.fullmatch(name) is not None


class PromoteConfig(_Section):
    model_name: str | None = None
    tolerance: float = Field(0.01, ge=0.0, lt=1.0)
    aggregate: Literal["delta_m", "mean_accuracy"] = "delta_m"

    @field_validator("model_name")
    @classmethod
    def _registrable(cls, name: str | None) -> str | None:
        if name is not None and not registrable(name):
            raise ValueError(f"{name!r} cannot be a registered model's name: {MODEL_NAME_RULE}")
        return name


class CIConfig(_Section):
    regression_tolerance: float = Field(0.02, ge=0.0, lt=1.0)


class Params(_Section):
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    tracking: TrackingConfig = TrackingConfig()
    promote: PromoteConfig = PromoteConfig()
    ci: CIConfig = CIConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _source: Path = PrivateAttr(default=DEFAULT_PARAMS)

    @property
    def source(self) -> Path:
        """The file these params were read from (for messages that name it)."""
        return self._source


def regularisation_keys(section: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """The dotted keys marked ``regularises`` (dropout, weight decay, label smoothing,
    augmentation, early stopping): what the single-task baselines must share with the
    multi-task run for Δm% to be fair, found in the schema rather than listed by hand."""
    found: list[str] = []
    for name, info in section.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("regularises"):
            found.append(key)
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += regularisation_keys(info.annotation, key + ".")
    return found


# ------------------------------------------------------------------------------------ loading
def _removed_keys(raw: dict[str, Any], path: Path) -> list[str]:
    return [f"{path}: {section}.{key}: {what}; {why}; remove the key"
            for keys, what in ((_REMOVED, "no longer a param"), (_ENVIRONMENT, "not a param"))
            for (section, key), why in keys.items()
            if isinstance(raw.get(section), dict) and key in raw[section]]


def _unknown_name(path: Path, key: str, kind: str, name: str, known: list[str]) -> str:
    return f"{path}: {key}: {unknown_name(kind, name, known)}; see `multitask methods`"


def frozen_trials_problem(params: Params, path: Path) -> str | None:
    """Why tuning trials could not tell task weights apart, or None.

    A trial trains ``tune.epochs`` epochs, the first ``model.freeze_encoder_epochs`` of them
    with the encoder frozen, where each head learns from its own loss and the weighting
    method is not consulted; with no epoch left after those, every trial trains the same."""
    frozen, epochs = params.model.freeze_encoder_epochs, params.tune.epochs
    if frozen < epochs:
        return None
    return (f"{path}: model.freeze_encoder_epochs: {frozen} must be below tune.epochs "
            f"({epochs}) to tune the task weights: a trial's frozen epochs train each head on "
            "its own loss, whatever the weights, so every trial would score the same; raise "
            f"tune.epochs above {frozen} or freeze fewer epochs")


def _registry_problems(params: Params, path: Path) -> list[str]:
    """Names that only the registries know (architecture, weighting methods and their
    params), and the rules across sections (the frozen epochs lie within training; every
    source the data set reads has its pixel ranges, which validate needs).

    The registries are imported here, not at module level: they import torch, which the
    schema itself does not need.
    """
    from multitask.models import ARCHITECTURES
    from multitask.weighting import METHODS, TUNED, MethodParamsError, parse_method_params

    problems = []
    if params.model.freeze_encoder_epochs >= params.train.epochs:
        problems.append(
            f"{path}: model.freeze_encoder_epochs: {params.model.freeze_encoder_epochs} must be "
            f"below train.epochs ({params.train.epochs}), or the encoder never trains")
    if params.train.weighting == TUNED:  # the tune stage runs (with --if-used: only then)
        problems += [problem] if (problem := frozen_trials_problem(params, path)) else []
        problems += _tune_problems(params, path)
    for source in DATASETS[params.data.dataset].sources:
        if source not in params.validate_.pixel_stats:
            known = ValidateConfig().pixel_stats.get(source)
            example = (f"{{mean: {list(known.mean)}, std: {list(known.std)}}}" if known
                       else "{mean: [low, high], std: [low, high]} (0..255)")
            problems.append(
                f"{path}: validate.pixel_stats.{source}: missing, but data.dataset "
                f"{params.data.dataset} reads source {source} and validate checks its pixel "
                f"mean and std against it; add {source}: {example} under "
                "validate.pixel_stats")
    safe = DATASETS[params.data.dataset].augmentations
    augment = params.train.augment
    for name, value in (("shift", augment.shift), ("flip", augment.flip), ("crop", augment.crop)):
        if value and name not in safe:
            problems.append(
                f"{path}: train.augment.{name}: {value}: would change labels of data set "
                f"{params.data.dataset} (safe for it: {', '.join(safe) or 'none'}, declared in "
                f"multitask.data.datasets); set it to {'false' if name == 'flip' else 0}")
    model = params.model
    problems += _backbone_problems(params, path)
    if model.shared_stages is not None:
        from multitask.models.backbones import stage_count

        stages = stage_count(model.backbone)
        if model.architecture != "branched":
            problems.append(f"{path}: model.shared_stages: {model.shared_stages}: applies to "
                            f"model.architecture: branched only (it is {model.architecture}); "
                            "remove it or set it to null")
        elif model.shared_stages > stages:
            problems.append(f"{path}: model.shared_stages: {model.shared_stages}: backbone "
                            f"{model.backbone} has {stages} stages; share 1 to {stages} of "
                            "them (null: all)")
    if params.model.architecture not in ARCHITECTURES:
        problems.append(_unknown_name(path, "model.architecture", "architecture",
                                      params.model.architecture, list(ARCHITECTURES)))
    if params.train.weighting not in METHODS and params.train.weighting != TUNED:
        problems.append(_unknown_name(path, "train.weighting", "weighting method",
                                      params.train.weighting, [*METHODS, TUNED]))
    for name in params.tune.methods or []:
        if name not in METHODS:
            problems.append(_unknown_name(path, "tune.methods", "weighting method", name,
                                          list(METHODS)))
    for name, raw in params.train.method_params.items():
        if name not in METHODS:
            problems.append(_unknown_name(path, f"train.method_params.{name}",
                                          "weighting method", name, list(METHODS)))
            continue
        try:
            parse_method_params(name, raw, where=path)
        except MethodParamsError as exc:
            problems.append(str(exc))
    if params.train.weighting == "static" and (problem := _static_weights_problem(params, path)):
        problems.append(problem)
    return problems


def input_size(data: DataConfig) -> int:
    """The side of the data set's square images: a composite's canvas, a manifest's
    ``image_size``, else its source's items (CIFAR-10's 32)."""
    if data.canvas_size is not None:
        return data.canvas_size
    if data.image_size is not None:
        return data.image_size
    return SOURCES[DATASETS[data.dataset].sources[0]].item_shape[0]


def input_channels(data: DataConfig) -> int:
    """The channels of the data set's images: a manifest's ``data.channels``, else its data
    set's own (the composites' 1, CIFAR-10's 3)."""
    return data.channels if data.channels is not None else DATASETS[data.dataset].channels


def _backbone_problems(params: Params, path: Path) -> list[str]:
    """What the backbone would refuse when built: a torchvision encoder's smallest input, and
    an mmoe LeNet expert's width where pretrained weights fix it."""
    from multitask.models.backbones import lenet_fc_width
    from multitask.models.zoo import SPECS

    model = params.model
    problems = []
    if (spec := SPECS.get(model.backbone)) is not None:
        size = model.resize_to or input_size(params.data)
        if size < spec.min_size:
            given = (f"model.resize_to: {model.resize_to}" if model.resize_to else
                     f"data.dataset {params.data.dataset}'s images are {size}x{size}")
            problems.append(f"{path}: model.backbone: {model.backbone} needs at least "
                            f"{spec.min_size}x{spec.min_size} input ({given}); set "
                            f"model.resize_to: {spec.min_size} or more (299 is its ImageNet "
                            "size)")
    fc_width = lenet_fc_width(model.width)  # a LeNet expert's features
    if (model.architecture == "mmoe" and model.backbone == "lenet"
            and model.pretrained != "none" and model.expert_dim != fc_width):
        problems.append(f"{path}: model.expert_dim: {model.expert_dim}: a LeNet expert's "
                        f"features are its fc layer, which pretrained weights of width "
                        f"{model.width} give {fc_width} outputs; set expert_dim: {fc_width}, "
                        "or pretrained: none")
    return problems


def lenet_input_problem(params: Params) -> str | None:
    """LeNet's smallest input against a manifest's ``data.image_size`` (the only size that
    goes below it): the check stage's, as data-only uses of a small size stay valid."""
    from multitask.models.backbones import LeNetEncoder

    minimum, size = LeNetEncoder.min_size, input_size(params.data)
    if params.model.backbone != "lenet" or size >= minimum:
        return None
    return (f"{params.source}: model.backbone: lenet needs at least {minimum}x{minimum} input "
            f"(data.image_size: {size}); set data.image_size: {minimum} or more (images are "
            "fitted to it), or a torchvision backbone with model.resize_to")


def pretrained_file(params: Params, root: Path) -> Path:
    """The state_dict file ``model.pretrained`` names, a relative path read from the pipeline
    folder ``root``; FileNotFoundError saying so when there is none (the check stage asks
    too, before any stage that would load it)."""
    path = Path(params.model.pretrained)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        close = difflib.get_close_matches(params.model.pretrained.lower(), PRETRAINED_WORDS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise FileNotFoundError(
            f"{params.source}: model.pretrained: {path} is not a file (a relative path is "
            f"read from the pipeline folder {root}){hint}; give a state_dict file, or one of "
            "none, imagenet, self_supervised, models:/<name>@<alias>")
    return path


def declared_tasks(params: Params) -> dict[str, str]:
    """The data set's tasks as params declare them, name to kind, in order: a built-in data
    set's own, or a manifest's ``data.tasks``."""
    spec = DATASETS[params.data.dataset]
    return ({task.name: task.kind for task in spec.tasks}
            or {name: task.kind for name, task in params.data.tasks.items()})


def trained_task_names(params: Params) -> list[str]:
    """The tasks the network trains, in the order of its weights: the data set's
    (:func:`declared_tasks`), then ``rotation`` with ``model.rotation_task``."""
    from multitask.tasks import ROTATION_TASK

    return list(declared_tasks(params)) + ([ROTATION_TASK.name] if params.model.rotation_task
                                           else [])


def tune_task_problems(tune: TuneConfig, count: int, objectives: Sequence[str],
                       regression: Sequence[str], source: str | Path) -> list[str]:
    """What ``tune`` asks that the tasks cannot give: ``count`` trained tasks, the main ones
    (``objectives``, each judged) and which of them are regression tasks. Asked when the
    params load (the tasks as params declare them) and by the tune stage (the data's)."""
    problems = []
    low, high = tune.weight_range
    if "static" in (tune.methods or ["static"]) and not low * count <= 1.0 <= high * count:
        problems.append(f"{source}: tune.weight_range: [{low}, {high}] cannot hold {count} "
                        f"weights that sum to one; need low <= 1/{count} <= high")
    if tune.mode == "single" and tune.objective == "mean_accuracy" and regression:
        problems.append(
            f"{source}: tune.objective: mean_accuracy averages accuracies, and task(s) "
            f"{list(regression)} are regression tasks judged on their MAE; set tune.mode: multi "
            "(one objective per task, each in its direction) or tune.objective: delta_m")
    if tune.selection == "preference" and len(tune.preference or []) != len(objectives):
        problems.append(
            f"{source}: tune.preference: {len(tune.preference or [])} values for "
            f"{len(objectives)} tasks {list(objectives)}; give one per task, in that order")
    return problems


def _tune_problems(params: Params, path: Path) -> list[str]:
    """:func:`tune_task_problems` for the tasks params declare (rotation trained but not
    judged)."""
    kinds = declared_tasks(params)
    regression = [name for name, kind in kinds.items() if kind == "regression"]
    return tune_task_problems(params.tune, len(trained_task_names(params)), list(kinds),
                              regression, path)


def _static_weights_problem(params: Params, path: Path) -> str | None:
    """``weighting: static`` needs one weight per trained task; said at load, not in train."""
    names = trained_task_names(params)
    raw = params.train.method_params.get("static")
    weights = raw.get("weights") if isinstance(raw, dict) else None
    if not isinstance(weights, list):
        return (f"{path}: train.method_params.static.weights: required for train.weighting: "
                f"static, one non-negative weight per task ({', '.join(names)})")
    if len(weights) != len(names):
        return (f"{path}: train.method_params.static.weights: {len(weights)} weights for "
                f"{len(names)} tasks ({', '.join(names)}); give one per task, in that order")
    return None


def parse_params(raw: dict[str, Any], path: str | Path = DEFAULT_PARAMS) -> Params:
    """Validate an already-loaded mapping; raise :class:`ConfigError` naming each bad key."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    if removed := _removed_keys(raw, path):
        raise ConfigError("\n".join(removed))
    params: Params = validate(Params, raw, path)
    if problems := _registry_problems(params, path):
        raise ConfigError("\n".join(problems))
    params._source = path
    return params


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: ``safe_load`` keeps the
    last silently, so a second ``train:`` section would drop the first without a word."""


def _unique_keys(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # << merges may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            continue  # the base loader says why
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} given twice in one mapping (first on line {seen[key]}); "
                "keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def read_yaml(path: str | Path, missing: str) -> Any:
    """A YAML file's content; ConfigError naming the file when it is missing, a folder, not
    UTF-8, not YAML or repeats a key in one mapping (``missing``: what to do when absent)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a file; pass the YAML file itself")
    if not path.is_file():
        raise ConfigError(f"{path}: not found; {missing}")
    try:
        with open(path, encoding="utf-8") as handle:  # its name goes into YAML's messages
            return yaml.load(handle, Loader=_StrictLoader)  # a SafeLoader
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
                          "as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate a params file (``params.yaml``, ``sample/params.yaml`` ...).

    An empty file (or comments only) is refused, not read as every default: a truncated or
    wrongly saved file would otherwise train the defaults without a word."""
    path = Path(path)
    raw = read_yaml(path, "run from the repository root or pass --params")
    if raw is None or raw == {}:
        raise ConfigError(f"{path}: holds no sections; restore it (git checkout -- "
                          f"{path.as_posix()}), or start from the repository's params.yaml")
    return parse_params(raw, path)


def load_sources(path: str | Path) -> dict[str, Source]:
    """Read and validate a sources file (``data/sources.yaml`` beside ``params.yaml``)."""
    path = Path(path)
    raw = read_yaml(path, "it lists each raw source's mirrors and file digests; restore it "
                    "with git checkout -- " + path.as_posix() + ", or, in a new pipeline "
                    "folder, write one (sources: {} when the data set downloads nothing, as a "
                    "manifest read where it lies)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with the key sources, "
                          f"got {type(raw).__name__}")
    return dict(validate(SourcesFile, raw, path).sources)


def flatten(params: Params) -> dict[str, Any]:
    """``{'train.optimizer.lr': 0.001, ...}`` spelt as in ``params.yaml`` (for MLflow); the
    credentials of any URL (``tune.storage: postgresql://user:password@...``) are masked."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = redact(value) if isinstance(value, str) else value

    walk("", params.model_dump(by_alias=True, mode="json"))
    return out
