"""``data.dataset: cifar10``: its declaration, its params, its vehicle labels and the networks
that read its 3-channel 32x32 images."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from multitask.config import ConfigError, ModelConfig, Source, load_params, parse_params
from multitask.data.cifar import vehicle_labels
from multitask.data.datasets import DATASETS
from multitask.data.sources import required_sources
from multitask.models.backbones import LeNetEncoder, TorchvisionEncoder
from multitask.models.base import build_model
from multitask.tasks import ROTATION_TASK, Task

ROOT = Path(__file__).resolve().parents[2]
CIFAR = {"dataset": "cifar10", "val_fraction": 0.1, "seed": 0}
TASKS = [Task("object", 10), Task("vehicle", 2, kind="binary")]


def test_vehicle_is_one_for_airplane_automobile_ship_and_truck() -> None:
    # classes: airplane automobile bird cat deer dog frog horse ship truck
    labels = np.arange(10, dtype=np.uint8)
    assert vehicle_labels(labels).tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert vehicle_labels(np.array([[9, 3], [5, 8]], dtype=np.uint8)).tolist() == [[1, 0],
                                                                                 [0, 1]]


def test_the_data_set_declares_two_tasks_three_channels_and_its_source() -> None:
    spec = DATASETS["cifar10"]
    assert [(t.name, t.kind) for t in spec.tasks] == [("object", "multiclass"),
                                                      ("vehicle", "binary")]
    assert spec.channels == 3 and spec.sources == ("cifar10",)
    sources = {"cifar10": Source(mirrors=["https://example.org/"],
                                 archive_sha256={"cifar-10-python.tar.gz": "0" * 64}),
               "mnist": Source(mirrors=["m/"], files={"a.gz": "1" * 64})}
    assert list(required_sources(sources, "cifar10")) == ["cifar10"]


def test_params_take_only_val_fraction_and_seed() -> None:
    data = parse_params({"data": CIFAR}).data
    assert (data.dataset, data.val_fraction, data.seed) == ("cifar10", 0.1, 0)
    assert (data.canvas_size, data.train_size, data.image_size, data.channels) == \
        (None, None, None, None)
    # a dumped config (every key, nulls included) reads back
    assert parse_params({"data": data.model_dump()}).data == data


@pytest.mark.parametrize("key, value", [("canvas_size", 36), ("train_size", 1000),
                                        ("channels", 3), ("image_size", 32)])
def test_params_refuse_another_familys_key(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"data: .*{key}: not read by data\.dataset: "
                                          r"cifar10 .*remove or set null"):
        parse_params({"data": {**CIFAR, key: value}})


def test_augmentation_flip_and_crop_allowed_shift_refused() -> None:
    params = parse_params({"data": CIFAR, "train": {"augment": {"flip": True, "crop": 4}}})
    assert params.train.augment.flip and params.train.augment.crop == 4
    with pytest.raises(ConfigError, match=r"train\.augment\.shift: 2: would change labels of "
                                          r"data set cifar10 \(safe for it: flip, crop"):
        parse_params({"data": CIFAR, "train": {"augment": {"shift": 2}}})


def test_lenet_reads_three_channel_32_pixel_images() -> None:
    encoder = LeNetEncoder(in_channels=3, image_size=32)
    # 32 -conv9-> 24 -pool-> 12 -conv5-> 8 -pool-> 4: 20 x 4 x 4 = 320 features into fc
    assert encoder.features[0].weight.shape == (10, 3, 9, 9)
    assert encoder.fc[0].in_features == 320
    model = build_model(ModelConfig(architecture="hps"), [*TASKS, ROTATION_TASK], 3, 32)
    out = model(torch.zeros(2, 3, 32, 32))
    assert {name: tuple(v.shape) for name, v in out.items()} == \
        {"object": (2, 10), "vehicle": (2, 1), "rotation": (2, 4)}


def test_resnet18_with_the_cifar_stem_reads_three_channel_32_pixel_images() -> None:
    model = build_model(ModelConfig(backbone="resnet18", stem="cifar", architecture="hps"),
                        TASKS, 3, 32)
    (encoder,) = [m for m in model.modules() if isinstance(m, TorchvisionEncoder)]
    assert encoder.stem_kind == "cifar"
    net = encoder.net
    assert net.conv1.weight.shape == (64, 3, 3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    out = model(torch.zeros(2, 3, 32, 32))
    assert {name: tuple(v.shape) for name, v in out.items()} == \
        {"object": (2, 10), "vehicle": (2, 1)}


def test_the_readmes_dvc_exp_run_overrides_give_valid_cifar10_params(tmp_path: Path) -> None:
    """The ``-S`` overrides of README's CIFAR-10 command, applied to ``params.yaml`` the way
    ``dvc exp run`` applies them (DVC's Hydra override parser)."""
    from dvc.utils.hydra import apply_overrides

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## CIFAR-10, multi-task"):]
    command = section[section.index("```bash\n") + 8:section.index("```", section.index(
        "```bash\n") + 8)]
    words = shlex.split(command.split("\n#")[0].replace("\\\n", " "))
    assert words[:3] == ["dvc", "exp", "run"]
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(str(params), overrides)
    loaded = load_params(params)
    assert (loaded.data.dataset, loaded.data.val_fraction, loaded.data.canvas_size) == \
        ("cifar10", 0.1, None)
    assert loaded.validate_.pixel_stats["cifar10"].mean == (108.0, 134.0)
    assert loaded.train.augment.flip and loaded.train.augment.crop == 4
