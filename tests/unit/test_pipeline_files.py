"""The DVC pipeline definitions: the sample pipeline is the main one, stage for stage."""

from __future__ import annotations

from pathlib import Path

import yaml

from multitask.config import load_params, load_sources

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
    assert stages == ["check", "download", "validate", "preprocess", "baselines", "tune",
                      "train", "evaluate"]


def test_every_params_key_a_stage_declares_exists() -> None:
    params = load(ROOT / "params.yaml")
    for name, stage in load(ROOT / "dvc.yaml")["stages"].items():
        for dotted in stage.get("params", []):
            if dotted == {"params.yaml": None}:  # the whole file (the check stage)
                continue
            node = params
            for part in dotted.split("."):
                assert part in node, f"stage {name}: params.yaml has no {dotted}"
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
    assert declared == ["model.backbone", "model.head_hidden"]
