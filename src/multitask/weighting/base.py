"""The one interface every task-weighting method implements, and the registry of methods.

A method turns the per-task losses of one step into gradients: heads always receive their
ordinary gradients; the shared encoder receives the method's combined update. Loss-based
methods only rescale the losses; gradient-based methods declare which per-task gradients they
need (``gradients = "representation"`` or ``"parameters"``) and get them from
:mod:`multitask.training.gradients`, computed once per step.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn


class MethodParams(BaseModel):
    """Hyperparameters of a method (``train.method_params.<name>``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class StepContext:
    """What a method may use to compute one step's update."""

    losses: Tensor  # shape [T], each still attached to the graph
    features: Tensor | tuple[Tensor, ...]  # shared representation the heads consume
    shared_parameters: Sequence[nn.Parameter]
    step: int
    epoch: int


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


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ValueError(
        f"params.yaml: train.weighting: unknown method '{name}'{hint} "
        f"(available: {', '.join(sorted(METHODS))}; see `multitask methods`)"
    )


def validate_method_params(method_params: dict[str, dict[str, Any]]) -> None:
    """Check every ``train.method_params`` entry names a method and validates, before training."""
    for name, raw in method_params.items():
        if name not in METHODS:
            raise _unknown(name)
        _parse_params(name, raw)


def _parse_params(name: str, raw: dict[str, Any]) -> MethodParams:
    try:
        return METHODS[name].Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or name}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"params.yaml: train.method_params.{name}: {problems}") from None


def build_weighting(
    name: str, num_tasks: int, method_params: dict[str, dict[str, Any]] | None = None
) -> WeightingMethod:
    """Instantiate method ``name`` for ``num_tasks`` tasks with its validated params."""
    if name not in METHODS:
        raise _unknown(name)
    params = _parse_params(name, (method_params or {}).get(name, {}))
    return METHODS[name](num_tasks, params)
