"""The DVC pipeline definitions: the sample pipeline is the main one, stage for stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multitask.config import Params, load_params, load_sources

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_sample_pipeline_mirrors_the_main_one() -> None:
    main, sample = load(ROOT / "dvc.yaml"), load(ROOT / "sample" / "dvc.yaml")
    assert main["vars"] == [{"PKG": "src/multitask"}]
    assert sample["vars"] == [{"PKG": "../src/multitask"}]
    assert main["stages"] == sample["stages"]
    assert main["plots"] == sample["plots"]


def test_stages_run_in_pipeline_order() -> None:
    stages = list(load(ROOT / "dvc.yaml")["stages"])
    assert stages == ["check", "download", "validate", "preprocess", "pretrain", "baselines",
                      "tune", "train", "evaluate"]


@pytest.mark.parametrize("folder", [".", "sample"])
def test_every_params_key_a_stage_declares_exists(folder: str) -> None:
    """DVC refuses to run a stage that declares a param its params.yaml lacks."""
    params = load(ROOT / folder / "params.yaml")
    for name, stage in load(ROOT / folder / "dvc.yaml")["stages"].items():
        for dotted in stage.get("params", []):
            if dotted == {"params.yaml": None}:  # the whole file (the check stage)
                continue
            node = params
            for part in dotted.split("."):
                assert part in node, f"stage {name}: {folder}/params.yaml has no {dotted}"
                node = node[part]


def test_every_stage_after_check_depends_on_it() -> None:
    """A bad param stops the check stage before DVC removes any other stage's outputs."""
    stages = load(ROOT / "dvc.yaml")["stages"]
    assert stages["check"]["params"] == [{"params.yaml": None}]
    assert stages["check"]["outs"] == [
        {"reports/params_check.txt": {"cache": False, "persist": True}}]
    for name, stage in stages.items():
        if name != "check":
            assert "reports/params_check.txt" in stage["deps"], name


def test_sample_params_use_the_shipped_sample_only() -> None:
    sources = load_sources(ROOT / "sample" / "data" / "sources.yaml")
    mirrors = [m for source in sources.values() for m in source.mirrors]
    assert mirrors == ["../data/sample/fashion-mnist/"]
    assert (ROOT / "sample" / mirrors[0]).resolve() == (ROOT / "data/sample/fashion-mnist")


def test_baselines_ignore_the_architecture_and_declare_only_what_they_read() -> None:
    """Every architecture's Δm% has the same single-task reference: hard sharing, one head."""
    from multitask.training.stages import baseline_params

    params = load_params(ROOT / "params.yaml")
    variant = params.model_copy(update={"model": params.model.model_copy(update={
        "architecture": "mtan", "rotation_task": True, "num_experts": 8, "head_hidden": [32]})})
    model = baseline_params(variant).model
    assert (model.architecture, model.rotation_task) == ("hps", False)
    assert model.head_hidden == [32] and model.backbone == params.model.backbone
    declared = [p for p in load(ROOT / "dvc.yaml")["stages"]["baselines"]["params"]
                if p.startswith("model")]
    assert declared == ["model.backbone", "model.head_hidden", "model.pretrained",
                        "model.resize_to", "model.stem", "model.freeze_encoder_epochs",
                        "model.reuse_heads"]


def test_every_stage_that_resolves_the_start_depends_on_the_pretrain_stage() -> None:
    """baselines, tune and train load model.pretrained through multitask.pretraining: with
    self_supervised they read the pretrain stage's encoder, so they rerun when it changes."""
    stages = load(ROOT / "dvc.yaml")["stages"]
    for name in ("baselines", "tune", "train"):
        assert "models/pretrain" in stages[name]["deps"], name
        assert "${PKG}/pretraining.py" in stages[name]["deps"], name
    declared = {name: stages[name]["params"] for name in ("baselines", "tune", "train")}
    assert "train.encoder_lr_scale" in declared["baselines"]
    assert "train.encoder_lr_scale" in declared["tune"] and "model" in declared["tune"]
    assert {"model", "train"} <= set(declared["train"])


def changed(params: Params, section: str, **update: object) -> Params:
    """``params`` with ``update`` applied to one section (validated again)."""
    body = params.model_dump(by_alias=True)
    body[section] = {**body[section], **update}
    return Params.model_validate(body)


def test_the_pretrain_stage_reads_only_what_it_declares() -> None:
    """What the encoder is trained with (its network and its recipe) changes with the params
    the pretrain stage declares, and with nothing else: tuning the multi-task run never
    retrains the encoder, and no declared change goes unnoticed by DVC."""
    from multitask.pretraining import pretraining_params

    declared = load(ROOT / "dvc.yaml")["stages"]["pretrain"]["params"]
    assert declared == ["pretrain", "model.pretrained", "model.backbone", "model.resize_to",
                        "model.stem", "train.seed", "train.device"]
    params = load_params(ROOT / "params.yaml")

    def recipe(variant: Params) -> tuple[dict, dict]:
        pretraining = pretraining_params(variant)
        return pretraining.model.model_dump(), pretraining.train.model_dump()

    reference = recipe(params)
    undeclared = [("model", {"architecture": "mtan"}), ("model", {"head_hidden": [16]}),
                  ("model", {"rotation_task": True}), ("model", {"freeze_encoder_epochs": 1}),
                  ("train", {"epochs": 3}), ("train", {"batch_size": 7}),
                  ("train", {"optimizer": {"name": "sgd", "lr": 0.5}}),
                  ("train", {"schedule": {"name": "step"}}), ("train", {"weighting": "pcgrad"}),
                  ("train", {"data_fraction": 0.5}), ("train", {"encoder_lr_scale": 0.1})]
    for section, update in undeclared:
        assert recipe(changed(params, section, **update)) == reference, update
    declared_changes = [("pretrain", {"epochs": 9}), ("pretrain", {"lr": 0.02}),
                        ("pretrain", {"batch_size": 17}), ("pretrain", {"data_fraction": 0.3}),
                        ("model", {"backbone": "resnet18"}), ("train", {"seed": 5}),
                        ("train", {"device": "cpu"})]
    for section, update in declared_changes:
        assert recipe(changed(params, section, **update)) != reference, update
