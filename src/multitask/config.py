"""``params.yaml`` parsed once into frozen, validated objects.

Every stage calls :func:`load_params` and reads its own section. A misspelt key, a wrong type
or an out-of-range value is an error at start-up that names the key and, for unknown keys, the
nearest valid name -- never a silent default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A problem in ``params.yaml``; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------- data
class Source(_Section):
    """One raw data set: where to fetch it and what its files must hash to.

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
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{name}: expected a 64-character lowercase hex SHA-256")
        return files

    @model_validator(mode="after")
    def _each_file_once(self) -> Source:
        if not self.files and not self.archive_sha256:
            raise ValueError("no files: list them under files (payload SHA-256) or archive_sha256")
        if both := sorted(set(self.files) & set(self.archive_sha256)):
            raise ValueError(f"{', '.join(both)}: under both files and archive_sha256; keep one")
        return self


DatasetName = Literal["multifashion", "multimnist", "multifashion_mnist"]


class DataConfig(_Section):
    dataset: DatasetName = "multifashion"
    raw_dir: str = "data/raw"
    processed_dir: str = "data/processed"
    sources: dict[str, Source]
    canvas_size: int = Field(36, ge=28, le=64)
    max_shift: int = Field(4, ge=0, le=8)
    train_size: int = Field(120_000, gt=0)
    test_size: int = Field(20_000, gt=0)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    seed: int = 0

    @model_validator(mode="after")
    def _canvas_fits_shift(self) -> DataConfig:
        if self.canvas_size - 28 < self.max_shift:
            raise ValueError(
                f"max_shift={self.max_shift} does not fit a {self.canvas_size}px canvas: "
                f"canvas_size - 28 must be at least max_shift"
            )
        return self


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
    report_dir: str = "reports/validation"
    class_balance_tolerance: float = Field(0.25, gt=0.0, lt=1.0)
    # Per source: Fashion-MNIST's pixels average 72.9 (std 90.0), MNIST's 33.3 (std 78.6).
    pixel_stats: dict[str, PixelStats] = Field(default_factory=lambda: {
        "fashion_mnist": PixelStats(mean=(60.0, 86.0), std=(80.0, 100.0)),
        "mnist": PixelStats(mean=(25.0, 42.0), std=(70.0, 88.0)),
    })


# -------------------------------------------------------------------------------------- model
class ModelConfig(_Section):
    backbone: Literal["lenet", "resnet18"] = "lenet"
    architecture: str = "hps"
    head_hidden: list[int] = Field(default_factory=list)
    rotation_task: bool = False
    num_experts: int = Field(4, ge=1, le=64)
    expert_dim: int = Field(50, ge=1)


# -------------------------------------------------------------------------------------- train
class OptimizerConfig(_Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)


class ScheduleConfig(_Section):
    name: Literal["none", "step", "cosine"] = "none"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: int = Field(0, ge=0)


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    weighting: str = "equal"
    method_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    data_fraction: float = Field(1.0, gt=0.0, le=1.0)
    diagnostics_every: int = Field(0, ge=0)
    checkpoint_dir: str = "models/checkpoints"


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
    seed: int = 0
    storage: str = "reports/tuning/study.journal"
    study_name: str = "task-weights"
    workers: int = Field(1, ge=1)

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


class PromoteConfig(_Section):
    model_name: str | None = None
    tolerance: float = Field(0.01, ge=0.0, lt=1.0)
    aggregate: Literal["delta_m", "mean_accuracy"] = "delta_m"


class CIConfig(_Section):
    regression_tolerance: float = Field(0.02, ge=0.0, lt=1.0)


class Params(_Section):
    data: DataConfig
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    tracking: TrackingConfig = TrackingConfig()
    promote: PromoteConfig = PromoteConfig()
    ci: CIConfig = CIConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ------------------------------------------------------------------------------------ loading
def _section_model(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at ``loc`` (for 'did you mean')."""
    model: type[BaseModel] | None = Params
    for part in loc[:-1]:
        if model is None or not isinstance(part, str):
            return None
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)),
            None,
        )
        annotation = getattr(field, "annotation", None)
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if is_section else None
    return model


def _describe(error: dict[str, Any], path: Path) -> str:
    loc = tuple(error["loc"])
    dotted = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        owner = _section_model(loc)
        names = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else (
            f"; valid keys: {', '.join(sorted(names))}" if names else "")
        return f"{path}: {dotted}: unknown key{hint}"
    given = error.get("input")
    return f"{path}: {dotted}: {error['msg']} (got {given!r})"


def parse_params(raw: dict[str, Any], path: Path = DEFAULT_PARAMS) -> Params:
    """Validate an already-loaded mapping; raise :class:`ConfigError` naming each bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, path) for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw or {}, path)


def flatten(params: Params) -> dict[str, Any]:
    """``{'train.optimizer.lr': 0.001, ...}`` spelt as in ``params.yaml`` (for MLflow)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = value

    walk("", params.model_dump(by_alias=True, mode="json"))
    return out
