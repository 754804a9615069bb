"""A few training steps of every weighting method, alone or as one rank of torchrun's group.

Run by tests/integration/test_distributed.py: once as a plain process (the reference) and once
under ``torchrun --nproc-per-node 2``. Each variant trains one epoch of 41 images in global
batches of 16 (16, 16, 9: the last one splits 5/4 between two ranks) with plain SGD, so the
parameters afterwards are the initial ones minus the learning rate times the updates applied.
Writes ``<out>/<variant>-rank<r>.pt``: the flat parameters and the method's state.

Usage: python distributed_steps.py PROCESSED_DIR OUT_DIR [VARIANT ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from multitask.config import ModelConfig, TrainConfig
from multitask.data import processed
from multitask.training import distributed, session
from multitask.training.data import ProcessedData
from multitask.training.trainer import Trainer
from multitask.weighting import METHODS, build_weighting

IMAGES, BATCH = 41, 16


def variants() -> dict[str, tuple[str, dict[str, Any], bool]]:
    """name -> (method, its params, rotation task)."""
    found: dict[str, tuple[str, dict[str, Any], bool]] = {}
    for name, cls in METHODS.items():
        params: dict[str, Any] = {"weights": [0.3, 0.7]} if name == "static" else {}
        found[name] = (name, params, False)
        if "gradients" in cls.Params.model_fields and name != "dbmtl":
            found[f"{name}-representation"] = (name, {**params, "gradients": "representation"},
                                               False)
    found["equal-rotation"] = ("equal", {}, True)
    found["mgda-rotation"] = ("mgda", {}, True)
    found["graddrop-rotation"] = ("graddrop", {}, True)
    return found


def flat(tensors: Any) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors])


def run(data: ProcessedData, out: Path, variant: str) -> None:
    name, method_params, rotation = variants()[variant]
    tasks = processed.tasks(data.meta, rotation=rotation)
    model_config = ModelConfig(backbone="lenet", architecture="hps", rotation_task=rotation)
    train = TrainConfig(epochs=1, batch_size=BATCH, seed=3,
                        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.0})
    network = session.build_network(model_config, train.seed, tasks, data)
    initial = flat(network.parameters())
    method = build_weighting(name, len(tasks), {name: method_params})
    trainer = Trainer(network, tasks, method, data, train, progress=False,
                      data_fraction=(IMAGES + 0.5) / len(data.splits["train"]))
    trainer.train_epoch(0)
    group = distributed.active()
    rank = 0 if group is None else group.rank
    state = {k: v for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}
    torch.save({"initial": initial, "parameters": flat(network.parameters()),
                "method": flat(state.values()) if state else torch.zeros(0),
                "steps": trainer.step},
               out / f"{variant}-rank{rank}.pt")


def main(argv: list[str]) -> None:
    folder, out, *chosen = argv
    torch.use_deterministic_algorithms(True)
    with distributed.process_group(torch.device("cpu")):
        data = ProcessedData(folder, torch.device("cpu"), ("train",))
        for variant in chosen or variants():
            run(data, Path(out), variant)


if __name__ == "__main__":
    main(sys.argv[1:])
