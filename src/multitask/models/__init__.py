"""Backbones, heads and multi-task architectures, selected by ``model.architecture``."""

from multitask.models import (  # noqa: F401  (importing registers the architectures)
    branched,
    cross_stitch,
    hps,
    mmoe,
    mtan,
)
from multitask.models.base import ARCHITECTURES, MultiTaskModel, build_model, register_architecture

__all__ = ["ARCHITECTURES", "MultiTaskModel", "build_model", "register_architecture"]
