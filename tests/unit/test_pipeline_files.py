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
    assert declared == ["model.backbone", "model.width", "model.head_hidden", "model.pretrained",
                        "model.resize_to", "model.stem", "model.freeze_encoder_epochs",
                        "model.reuse_heads", "model.dropout"]


def _set(params: Params, dotted: str, value: object) -> Params:
    """``params`` with the one key ``dotted`` (``train.augment.shift``) set, validated again."""
    body = params.model_dump(by_alias=True)
    *parents, last = dotted.split(".")
    node = body
    for part in parents:
        node = node[part]
    node[last] = value
    return Params.model_validate(body)


def _get(params: Params, dotted: str) -> object:
    node: object = params
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# Per regularisation leaf key: a value other than the default (every leaf must be listed, so a
# new regularisation key fails here until it is given one and the baselines share it).
REGULARISING_CHANGES = {
    "model.dropout.encoder": 0.3, "model.dropout.heads": 0.2,
    "train.optimizer.weight_decay": 1e-4, "train.label_smoothing": 0.1,
    "train.augment.shift": 2, "train.augment.flip": True, "train.augment.crop": 3,
    "train.early_stopping.patience": 3, "train.early_stopping.select": "delta_m",
}


def test_baselines_derive_every_regularisation_key_and_declare_it() -> None:
    """Δm% is fair only if the baselines are regularised and selected like the multi-task run:
    every key the schema marks as regularising (found there, not listed by the code) reaches
    the baselines' params unchanged, whatever the architecture, and the baselines stage
    declares it, so DVC retrains them when it changes."""
    from multitask.config import regularisation_keys
    from multitask.training.stages import baseline_params

    marked = regularisation_keys()
    assert {"model.dropout", "train.optimizer.weight_decay", "train.label_smoothing",
            "train.augment", "train.early_stopping"} <= set(marked)
    leaves = {key for key in REGULARISING_CHANGES if any(
        key == m or key.startswith(m + ".") for m in marked)}
    assert leaves == set(REGULARISING_CHANGES), "give each new regularisation key a change"
    for key in marked:
        assert any(leaf == key or leaf.startswith(key + ".") for leaf in leaves), key
    params = load_params(ROOT / "params.yaml")
    params = _set(params, "model.architecture", "mtan")
    reference = baseline_params(params)
    declared = load(ROOT / "dvc.yaml")["stages"]["baselines"]["params"]
    for key, value in REGULARISING_CHANGES.items():
        if key == "train.augment.flip" or key == "train.augment.crop":
            # refused for composites; the derivation is checked on the schema object instead
            variant = params.model_copy(update={"train": params.train.model_copy(update={
                "augment": params.train.augment.model_copy(update={key.rsplit(".")[-1]: value})
            })})
        else:
            variant = _set(params, key, value)
        derived = baseline_params(variant)
        assert _get(derived, key) == value, key
        assert derived != reference, key
        assert any(key == d or key.startswith(d + ".") for d in declared), key


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
    assert declared == ["pretrain", "model.pretrained", "model.backbone", "model.width",
                        "model.resize_to",
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
                        ("model", {"backbone": "resnet18"}), ("model", {"width": 2}),
                        ("train", {"seed": 5}),
                        ("train", {"device": "cpu"})]
    for section, update in declared_changes:
        assert recipe(changed(params, section, **update)) != reference, update


def test_the_tuning_study_is_identified_by_every_train_key_its_stage_declares() -> None:
    """The tune stage reruns when a declared ``train`` key changes; the study it opens must
    then be another one, or it would hand back the old trials' choice (label smoothing and
    augmentation were once declared but left out of the study's identity)."""
    from multitask.tuning.space import TRIAL_TRAIN_KEYS

    declared = load(ROOT / "dvc.yaml")["stages"]["tune"]["params"]
    train_keys = {key.removeprefix("train.") for key in declared if key.startswith("train.")}
    # train.weighting only decides whether the stage tunes (--if-used); the searched methods
    # are tune.methods, part of the search space
    assert train_keys - {"weighting"} == set(TRIAL_TRAIN_KEYS)
