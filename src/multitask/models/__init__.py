"""Backbones, heads and multi-task architectures, selected by ``model.architecture``."""

from multitask.models import hps  # noqa: F401  (registers the architecture)
from multitask.models.base import ARCHITECTURES, MultiTaskModel, build_model, register_architecture

__all__ = ["ARCHITECTURES", "MultiTaskModel", "build_model", "register_architecture"]
