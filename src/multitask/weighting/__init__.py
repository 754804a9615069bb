"""Task-weighting methods, selected by name (``train.weighting``); see ``multitask methods``.

A leaf package: it imports nothing of training, tracking or the stages. The trainer hands each
method a :class:`StepContext`; gradient methods get per-task gradients from
:mod:`multitask.weighting.gradients`, which lives here beside its only callers.
"""

from multitask.weighting import (  # noqa: F401  (importing registers the methods)
    loss_based,
    magnitude,
    multi_objective,
    surgery,
)
from multitask.weighting.base import (
    METHODS,
    TUNED,
    LossWeighting,
    MethodParams,
    MethodParamsError,
    StepContext,
    WeightingMethod,
    build_weighting,
    parse_method_params,
    register,
    unknown_method,
)
from multitask.weighting.gradients import Collective
from multitask.weighting.solvers import SolverError

__all__ = [
    "METHODS",
    "TUNED",
    "Collective",
    "LossWeighting",
    "MethodParams",
    "MethodParamsError",
    "SolverError",
    "StepContext",
    "WeightingMethod",
    "build_weighting",
    "parse_method_params",
    "register",
    "unknown_method",
]
