"""Task-weighting methods, selected by name (``train.weighting``); see ``multitask methods``."""

from multitask.weighting import loss_based  # noqa: F401  (registers the methods)
from multitask.weighting.base import (
    METHODS,
    LossWeighting,
    MethodParams,
    StepContext,
    WeightingMethod,
    build_weighting,
    register,
    validate_method_params,
)

__all__ = [
    "METHODS",
    "LossWeighting",
    "MethodParams",
    "StepContext",
    "WeightingMethod",
    "build_weighting",
    "register",
    "validate_method_params",
]
