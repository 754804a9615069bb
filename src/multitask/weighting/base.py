"""The one interface every task-weighting method implements, and the registry of methods.

A method turns the per-task losses of one step into gradients: heads always receive their
ordinary gradients; the shared encoder receives the method's combined update. Loss-based
methods only rescale the losses; gradient-based methods declare which per-task gradients they
need (``gradients = "representation"`` or ``"parameters"``) and get them from
:mod:`multitask.weighting.gradients`, computed once per step. The package imports nothing
above it: the trainer calls the method, never the other way round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from multitask.errors import ConfigError, describe, unknown_name
from multitask.weighting.gradients import Collective, TaskGradients, Wrt, per_task_gradients


class MethodParams(BaseModel):
    """Hyperparameters of a method (``train.method_params.<name>``); unknown keys are errors.

    Numbers must be finite: YAML's ``.inf`` passes every bound such as ``gt=0``, and an infinite
    temperature, tolerance, step size or radius silently turns a method into another (DWA into
    equal weights, MGDA into one task's gradient) or makes its weights NaN.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass
class StepContext:
    """What a method may use to compute one step's update.

    With several training processes, ``losses`` hold the global batch's values (each process
    differentiates its own share) and ``collective`` joins the per-task gradients; a method
    that takes its gradients from :meth:`per_task_gradients` needs nothing else to be exact.
    """

    losses: Tensor  # shape [T], each still attached to the graph
    features: Tensor | tuple[Tensor, ...]  # shared representation the heads consume
    shared_parameters: Sequence[nn.Parameter]
    step: int
    epoch: int
    collective: Collective | None = None

    def per_task_gradients(self, wrt: Wrt, scales: Tensor | None = None) -> TaskGradients:
        """This step's per-task gradients (see :func:`~.gradients.per_task_gradients`)."""
        return per_task_gradients(self.losses, self.features, self.shared_parameters, wrt,
                                  scales=scales, collective=self.collective)


class WeightingMethod(ABC):
    """Base class: subclasses set ``name``, ``description`` and, if any, ``Params``."""

    name: ClassVar[str]
    description: ClassVar[str]
    # What per-task gradients the method needs; a class default that a method whose params
    # choose (``gradients: representation``) overrides per instance.
    gradients: Literal["none", "representation", "parameters"] = "none"
    # True: after ``optimizer.step()`` the trainer recomputes this batch's losses without
    # gradients and passes them to :meth:`after_step` (FAMO; its params may turn it off).
    needs_losses_after_step: bool = False
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, num_tasks: int, params: MethodParams | None = None) -> None:
        self.num_tasks = num_tasks
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def backward(self, ctx: StepContext) -> Tensor:
        """Populate ``.grad`` for this step; return the task weights used (detached, [T])."""

    def end_epoch(self, epoch: int, mean_train_losses: Tensor) -> None:  # noqa: B027 (optional hook)
        """Hook for methods that adapt per epoch (DWA); default: nothing."""

    def after_step(self, losses_after_step: Tensor) -> None:  # noqa: B027 (optional hook)
        """This batch's losses after the optimiser step (if ``needs_losses_after_step``)."""

    def metrics(self) -> dict[str, float]:
        """Scalars worth logging each epoch (solver failures ...); default: none."""
        return {}

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters the optimiser must update too (Kendall's log-variances)."""
        return []

    def to(self, device: torch.device) -> WeightingMethod:
        for param in self.parameters():
            param.data = param.data.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {f"param{i}": p.detach().cpu() for i, p in enumerate(self.parameters())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, param in enumerate(self.parameters()):
            param.data.copy_(state[f"param{i}"])


class LossWeighting(WeightingMethod):
    """A method that only rescales the losses: ``sum_t w_t L_t`` backpropagated once."""

    @abstractmethod
    def weights(self, losses: Tensor) -> Tensor:
        """The weights ``w`` (shape [T]) for this step's losses."""

    def backward(self, ctx: StepContext) -> Tensor:
        weights = self.weights(ctx.losses)
        (weights * ctx.losses).sum().backward()
        return weights.detach()


METHODS: dict[str, type[WeightingMethod]] = {}


def register(cls: type[WeightingMethod]) -> type[WeightingMethod]:
    """Class decorator: make a method selectable by its ``name`` in ``params.yaml``."""
    if cls.name in METHODS:
        raise ValueError(f"weighting method '{cls.name}' registered twice")
    METHODS[cls.name] = cls
    return cls


# Not a class in the registry: ``train.weighting: tuned`` names what the tune stage chose
# (reports/tuning/weights.json: fixed loss weights, or a method when ``tune.methods`` lists
# several), which the training session turns into a method.
TUNED = "tuned"


class MethodParamsError(ConfigError):
    """A method name or its params are not valid; the message names the file and key."""


def unknown_method(name: str, key: str = "train.weighting", where: str | Path = "params.yaml"
                   ) -> MethodParamsError:
    """The error for a method name the registry does not hold, with the nearest name."""
    return MethodParamsError(f"{where}: {key}: {unknown_name('weighting method', name, METHODS)}"
                             "; see `multitask methods`")


def parse_method_params(name: str, raw: dict[str, Any], where: str | Path = "params.yaml"
                        ) -> MethodParams:
    """``train.method_params.<name>`` validated against the method's own params class."""
    if name not in METHODS:
        raise unknown_method(name, f"train.method_params.{name}", where)
    try:
        return METHODS[name].Params.model_validate(raw)
    except ValidationError as exc:
        raise MethodParamsError(describe(exc, METHODS[name].Params, where,
                                         f"train.method_params.{name}")) from None


def build_weighting(
    name: str, num_tasks: int, method_params: dict[str, dict[str, Any]] | None = None,
    where: str | Path = "params.yaml",
) -> WeightingMethod:
    """Instantiate method ``name`` for ``num_tasks`` tasks with its validated params.

    ``where`` names the file the name and params come from, for error messages.
    """
    if name not in METHODS:
        raise unknown_method(name, where=where)
    params = parse_method_params(name, (method_params or {}).get(name, {}), where)
    try:
        return METHODS[name](num_tasks, params)
    except ValueError as exc:  # params that do not fit the task count (static's weights ...)
        raise MethodParamsError(f"{where}: {exc}") from None
