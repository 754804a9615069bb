"""Task-weighting methods, selected by name (``train.weighting``); see ``multitask methods``."""

from multitask.weighting import (  # noqa: F401  (importing registers the methods)
    loss_based,
    magnitude,
    multi_objective,
    surgery,
)
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
from multitask.weighting.solvers import SolverError

__all__ = [
    "METHODS",
    "LossWeighting",
    "MethodParams",
    "SolverError",
    "StepContext",
    "WeightingMethod",
    "build_weighting",
    "register",
    "validate_method_params",
]
