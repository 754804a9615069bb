"""params.yaml is validated once, with errors that name the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from multitask.config import ConfigError, flatten, load_params, load_sources, parse_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("path", ["params.yaml", "sample/params.yaml"])
def test_shipped_params_validate(path: str) -> None:
    params = load_params(ROOT / path)
    assert params.data.dataset == "multifashion"
    assert params.train.epochs >= 1


def test_misspelt_key_names_key_and_nearest_valid_name(raw: dict) -> None:
    raw["train"]["epoch"] = raw["train"].pop("epochs")
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key; did you mean 'epochs'\?"):
        parse_params(raw)


def test_misspelt_nested_key(raw: dict) -> None:
    raw["train"]["optimizer"]["lrate"] = 0.1
    expected = r"train\.optimizer\.lrate: unknown key; did you mean 'lr'"
    with pytest.raises(ConfigError, match=expected):
        parse_params(raw)


def test_unknown_section(raw: dict) -> None:
    raw["trian"] = {}
    with pytest.raises(ConfigError, match=r"trian: unknown key; did you mean 'train'"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "epochs", 0, r"train\.epochs: Input should be greater than or equal to 1"),
        ("train", "epochs", "ten", r"train\.epochs: Input should be a valid integer"),
        ("model", "backbone", "vgg", r"model\.backbone: .*unknown backbone 'vgg'.*resnet18"),
        ("data", "val_fraction", 0.9, r"data\.val_fraction: Input should be less than 0.5"),
        # YAML's .inf passes a lower bound; an infinite number is never meant
        ("pretrain", "lr", float("inf"), r"pretrain\.lr: Input should be a finite number"),
        ("pretrain", "data_fraction", float("nan"),
         r"pretrain\.data_fraction: Input should be a finite number"),
    ],
)
def test_wrong_type_or_range_names_key(raw: dict, section: str, key: str, value: object,
                                       message: str) -> None:
    bad = copy.deepcopy(raw)
    bad[section][key] = value
    with pytest.raises(ConfigError, match=message):
        parse_params(bad)


@pytest.fixture
def sources() -> dict:
    return yaml.safe_load((ROOT / "data" / "sources.yaml").read_text())


@pytest.mark.parametrize("folder", [".", "sample"])
def test_shipped_sources_validate(folder: str) -> None:
    assert "fashion_mnist" in load_sources(ROOT / folder / "data" / "sources.yaml")


def test_bad_checksum_is_rejected(sources: dict, tmp_path: Path) -> None:
    sources["sources"]["fashion_mnist"]["files"]["train-images-idx3-ubyte.gz"] = "abc"
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(sources))
    with pytest.raises(ConfigError, match=rf"{path}: sources\.fashion_mnist\.files: .*"
                                          "64-character lowercase hex SHA-256"):
        load_sources(path)


def test_a_misspelt_key_of_a_source_names_the_nearest_key(sources: dict,
                                                          tmp_path: Path) -> None:
    # sources is a mapping of Source entries: it said "it takes no keys"
    sources["sources"]["fashion_mnist"]["mirorrs"] = sources["sources"]["fashion_mnist"].pop(
        "mirrors")
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(sources))
    with pytest.raises(ConfigError, match=rf"{path}: sources\.fashion_mnist\.mirorrs: unknown "
                                          r"key; did you mean 'mirrors'\?"):
        load_sources(path)


@pytest.mark.parametrize("mirror", ["ftp://host/mnist/", "s3://bucket/mnist/", "HTTP://host/"])
def test_a_mirror_the_download_stage_cannot_read_is_rejected_by_check(
        sources: dict, tmp_path: Path, mirror: str) -> None:
    """download reads folders (file:// too) and http(s):// URLs only; any other mirror failed
    there as 'unsupported mirror', after check had called the file valid."""
    sources["sources"]["mnist"]["mirrors"].insert(0, mirror)
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(sources))
    with pytest.raises(ConfigError, match=rf"{path}: sources\.mnist\.mirrors: {mirror}: "
                                          "unsupported mirror"):
        load_sources(path)
    sources["sources"]["mnist"]["mirrors"][0] = "file:///srv/mnist/"
    path.write_text(yaml.safe_dump(sources))
    assert load_sources(path)["mnist"].mirrors[0] == "file:///srv/mnist/"


def test_a_sources_file_may_list_none_but_a_data_set_needing_one_says_so(
        tmp_path: Path) -> None:
    """A manifest read where it lies downloads nothing: ``sources: {}`` is its whole file."""
    from multitask.data.sources import required_sources

    path = tmp_path / "sources.yaml"
    path.write_text("sources: {}\n")
    assert load_sources(path) == {}
    assert required_sources({}, "manifest") == {}
    with pytest.raises(ConfigError, match=r"sources.fashion_mnist: not defined, but fashion_mnist "
                                          r"is needed by data.dataset=multifashion; .*\(defined: "
                                          r"none\)"):
        required_sources({}, "multifashion")
    with pytest.raises(ConfigError, match=r"in a new pipeline folder, write one \(sources: \{\}"):
        load_sources(tmp_path / "missing.yaml")


def test_sources_in_params_say_where_they_moved(raw: dict) -> None:
    raw["data"]["sources"] = {}
    with pytest.raises(ConfigError, match=r"data\.sources: no longer a param; the mirrors and "
                                          r"digests moved to data/sources\.yaml"):
        parse_params(raw)


def test_shift_must_fit_canvas(raw: dict) -> None:
    raw["data"]["canvas_size"] = 30
    raw["data"]["max_shift"] = 4
    with pytest.raises(ConfigError, match="max_shift=4 does not fit a 30px canvas"):
        parse_params(raw)


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_params_are_frozen(raw: dict) -> None:
    params = parse_params(raw)
    with pytest.raises(Exception, match="frozen"):
        params.train.epochs = 3  # type: ignore[misc]


def test_flatten_spells_keys_as_params_yaml(raw: dict) -> None:
    flat = flatten(parse_params(raw))
    assert flat["train.optimizer.lr"] == raw["train"]["optimizer"]["lr"]
    tolerance = raw["validate"]["class_balance_tolerance"]
    assert flat["validate.class_balance_tolerance"] == tolerance
    assert "validate_.class_balance_tolerance" not in flat


def write(tmp_path: Path, raw: dict, name: str = "params.yaml") -> Path:
    path = tmp_path / "sample" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("model", "architecture", "mmeo",
     r"model\.architecture: unknown architecture 'mmeo'; did you mean 'mmoe'\?"),
    ("train", "weighting", "pcgard",
     r"train\.weighting: unknown weighting method 'pcgard'; did you mean 'pcgrad'\?"),
    ("train", "method_params", {"cagrad": {"cc": 0.5}},
     r"train\.method_params\.cagrad\.cc: unknown key; did you mean 'c'\?"),
    ("train", "method_params", {"cagard": {}},
     r"train\.method_params\.cagard: unknown weighting method 'cagard'"),
    ("tune", "methods", ["static", "nope"], r"tune\.methods: unknown weighting method 'nope'"),
    ("data", "dataset", "multifashon", r"data\.dataset: .*did you mean 'multifashion'\?"),
])
def test_registry_names_fail_at_load_naming_the_real_file(
        raw: dict, tmp_path: Path, section: str, key: str, value: object, message: str) -> None:
    raw[section][key] = value
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError, match=message) as caught:
        load_params(path)
    assert str(caught.value).startswith(f"{path}: "), "the message names the file it read"


@pytest.mark.parametrize(("section", "key"), [("data", "processed_dir"), ("data", "raw_dir"),
                                              ("validate", "report_dir"),
                                              ("train", "checkpoint_dir")])
def test_path_params_are_gone_with_a_reason(raw: dict, section: str, key: str) -> None:
    raw[section][key] = "elsewhere"
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: no longer a param; .* remove"):
        parse_params(raw)


@pytest.mark.parametrize("key", ["uri", "tracking_uri"])
def test_a_tracking_store_in_params_points_to_the_environment(raw: dict, key: str) -> None:
    # "unknown key; valid keys: enabled, experiment, ..." left the store unexplained
    raw["tracking"][key] = "sqlite:///mlflow.db"
    with pytest.raises(ConfigError, match=rf"tracking\.{key}: not a param; the MLflow store is "
                                          r"the environment's MLFLOW_TRACKING_URI .*; remove "
                                          r"the key"):
        parse_params(raw)


def test_params_remember_their_file_through_copies(raw: dict, tmp_path: Path) -> None:
    path = write(tmp_path, raw, "other.yaml")
    params = load_params(path)
    assert params.source == path
    copied = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 2})})
    assert copied.source == path and copied.train.epochs == 2


@pytest.mark.parametrize("name", ["../../etc/passwd", "sub/dir.gz", "/abs.gz", ".hidden", ".."])
def test_a_source_file_must_be_a_plain_name(sources: dict, tmp_path: Path, name: str) -> None:
    files = sources["sources"]["fashion_mnist"]["files"]
    files[name] = files.pop(next(iter(files)))
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(sources))
    with pytest.raises(ConfigError, match=r"sources\.fashion_mnist\.files: .*a file name"):
        load_sources(path)


@pytest.mark.parametrize("storage", ["/tmp/study.journal", "../outside.journal",
                                     "reports/../../x.journal"])
def test_a_journal_outside_the_pipeline_folder_is_refused(raw: dict, storage: str) -> None:
    raw["tune"]["storage"] = storage
    with pytest.raises(ConfigError, match=r"tune\.storage: .*inside the pipeline folder"):
        parse_params(raw)
    raw["tune"]["storage"] = "postgresql://optuna@127.0.0.1/optuna"
    assert parse_params(raw).tune.storage.startswith("postgresql://")


@pytest.mark.parametrize(("model", "message"), [
    ({"pretrained": "imagenet"}, r"model: .*torchvision has no ImageNet weights for lenet"),
    ({"pretrained": "s3://bucket/encoder.pt"}, r"model\.pretrained: .*starts with models:/ or "
                                               r"runs:/"),
    ({"pretrained": " "}, r"model\.pretrained: .*empty"),
    ({"resize_to": 64}, r"model: .*resize_to and stem apply to torchvision backbones only"),
    ({"backbone": "convnext_tiny", "stem": "cifar"}, r"stem: cifar: only ResNets"),
    ({"backbone": "resnet18", "reuse_heads": True}, r"reuse_heads: the heads come from a "
                                                    r"multitask model"),
])
def test_pretrained_params_that_cannot_work_are_refused(raw: dict, model: dict,
                                                        message: str) -> None:
    raw["model"].update(model)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


@pytest.mark.parametrize("name", ["team/mf", "mf:2", "mf#2", "", "x" * 257])
def test_a_model_name_the_registry_cannot_take_is_refused_by_check(raw: dict, name: str) -> None:
    """MLflow refuses '/' and ':' in a registered model's name, and the registry's searches
    other characters: found at the end of the pipeline, by promote, it cost the whole run."""
    raw.setdefault("promote", {})["model_name"] = name
    with pytest.raises(ConfigError, match=r"promote\.model_name: .* cannot be a registered "
                                          r"model's name: use letters, digits, spaces"):
        parse_params(raw)
    raw["promote"]["model_name"] = "team-mf_2.0 @prod+"
    assert parse_params(raw).promote.model_name == "team-mf_2.0 @prod+"


def test_freezing_the_encoder_for_every_epoch_is_refused(raw: dict) -> None:
    raw["train"]["epochs"] = 12  # set here: the check must not hang on params.yaml's default
    raw["model"]["freeze_encoder_epochs"] = 12
    with pytest.raises(ConfigError, match=r"model\.freeze_encoder_epochs: 12 must be below "
                                          r"train\.epochs \(12\)"):
        parse_params(raw)
    raw["model"]["freeze_encoder_epochs"] = 11
    assert parse_params(raw).model.freeze_encoder_epochs == 11


def test_tuning_weights_through_frozen_trials_is_refused(raw: dict, tmp_path: Path) -> None:
    """Frozen epochs train each head on its own loss whatever the weights: a trial with no
    epoch after them scores the same for any weights, so the study would choose at random."""
    from multitask.layout import Layout
    from multitask.tuning import tune

    raw["train"].update(epochs=6, weighting="tuned")
    raw["tune"] = {**raw.get("tune", {}), "epochs": 2}
    raw["model"]["freeze_encoder_epochs"] = 2
    with pytest.raises(ConfigError, match=r"model\.freeze_encoder_epochs: 2 must be below "
                                          r"tune\.epochs \(2\) to tune the task weights"):
        parse_params(raw)
    raw["tune"]["epochs"] = 3
    assert parse_params(raw).tune.epochs == 3
    # Not tuned by the pipeline: the params load, and `multitask tune` by hand refuses.
    raw["tune"]["epochs"] = 2
    raw["train"]["weighting"] = "equal"
    params = parse_params(raw)
    with pytest.raises(ConfigError, match=r"must be below tune\.epochs \(2\)"):
        tune(params, Layout(tmp_path))


@pytest.mark.parametrize("given", [{"n_trials": 0}, {"workers": 0}])
def test_zero_trials_or_workers_are_refused_not_replaced_by_the_params(
        raw: dict, tmp_path: Path, given: dict) -> None:
    from multitask.layout import Layout
    from multitask.tuning import tune

    with pytest.raises(ValueError, match=r"--n-trials \(\d+\) and --workers \(\d+\) must "
                                         r"be at least 1"):
        tune(parse_params(raw), Layout(tmp_path), **given)


@pytest.mark.parametrize("section", ["data", "train", "tune"])
def test_a_negative_seed_is_refused_on_loading(raw: dict, section: str) -> None:
    raw.setdefault(section, {})["seed"] = -1
    with pytest.raises(ConfigError, match=rf"{section}\.seed: Input should be greater than or "
                                          r"equal to 0 \(got -1\)"):
        parse_params(raw)


@pytest.mark.parametrize(("model", "message"), [
    ({"architecture": "hps", "shared_stages": 1},
     r"model\.shared_stages: 1: applies to model\.architecture: branched only \(it is hps\)"),
    ({"architecture": "branched", "shared_stages": 3},
     r"model\.shared_stages: 3: backbone lenet has 2 stages; share 1 to 2"),
    ({"architecture": "branched", "backbone": "resnet18", "shared_stages": 5},
     r"model\.shared_stages: 5: backbone resnet18 has 4 stages"),
    ({"architecture": "branched", "shared_stages": 0}, r"model\.shared_stages"),
    ({"architecture": "cross_stitch", "stitch": "matrix"}, r"model\.stitch"),
])
def test_architecture_options_that_cannot_apply_are_refused(raw: dict, model: dict,
                                                            message: str) -> None:
    raw["model"].update(model)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_the_default_stitch_leaves_other_architectures_valid(raw: dict) -> None:
    """params.yaml names model.stitch for its cross-stitch default; `-S model.architecture=hps`
    must still be a valid experiment (stitch is ignored there, like num_experts)."""
    raw["model"].update({"architecture": "hps", "stitch": "linear"})
    assert parse_params(raw).model.architecture == "hps"


def test_branched_shares_any_stage_count_the_backbone_has(raw: dict) -> None:
    raw["model"].update({"architecture": "branched", "backbone": "resnet18", "shared_stages": 4})
    assert parse_params(raw).model.shared_stages == 4


@pytest.mark.parametrize(("source", "kind"), [
    ("none", "none"), ("imagenet", "imagenet"), ("self_supervised", "self_supervised"),
    ("models:/multitask@champion", "uri"), ("runs:/0123abcd/model", "uri"),
    ("encoders/resnet18.pt", "file")])
def test_what_pretrained_names(raw: dict, source: str, kind: str) -> None:
    raw["model"].update({"backbone": "resnet18", "pretrained": source})
    assert parse_params(raw).model.pretrained_kind == kind


def test_a_section_check_names_the_problem_without_repeating_the_section() -> None:
    data = {"dataset": "manifest", "manifest": "p/manifest.txt",
            "tasks": {"age": {"kind": "regression"}}}
    with pytest.raises(ConfigError) as caught:
        parse_params({"data": data}, "params.yaml")
    assert str(caught.value) == ("params.yaml: data: manifest: p/manifest.txt: expected a .csv "
                                 "or .parquet file")


def test_a_field_check_still_shows_the_value_given(raw: dict) -> None:
    raw["train"]["epochs"] = "ten"
    with pytest.raises(ConfigError) as caught:
        parse_params(raw, "params.yaml")
    assert str(caught.value) == ("params.yaml: train.epochs: Input should be a valid integer, "
                                 "unable to parse string as an integer (got 'ten')")


def test_a_data_set_whose_source_has_no_pixel_ranges_is_refused(raw: dict,
                                                                tmp_path: Path) -> None:
    """params.yaml lists pixel_stats per source, so the built-in cifar10 range does not apply:
    switching to CIFAR-10 without adding it must stop at check, not in validate."""
    raw["data"] = {"dataset": "cifar10", "val_fraction": 0.1, "seed": 0}
    assert "cifar10" not in raw["validate"]["pixel_stats"]
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == (
        f"{path}: validate.pixel_stats.cifar10: missing, but data.dataset cifar10 reads source "
        "cifar10 and validate checks its pixel mean and std against it; add cifar10: "
        "{mean: [108.0, 134.0], std: [55.0, 74.0]} under validate.pixel_stats")
    raw["validate"]["pixel_stats"]["cifar10"] = {"mean": [108.0, 134.0], "std": [55.0, 74.0]}
    assert load_params(write(tmp_path, raw)).data.dataset == "cifar10"


@pytest.mark.parametrize(("change", "message"), [
    ({"method_params": {"static": {"weights": [1.0]}}},
     r"train\.method_params\.static\.weights: 1 weights for 2 tasks \(left, right\); give one "
     r"per task, in that order"),
    ({"method_params": {}},
     r"train\.method_params\.static\.weights: required for train\.weighting: static, one "
     r"non-negative weight per task \(left, right\)"),
])
def test_static_weights_are_counted_against_the_tasks_on_loading(
        raw: dict, change: dict, message: str) -> None:
    raw["train"].update(weighting="static", **change)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_static_weights_count_the_rotation_task_by_name(raw: dict) -> None:
    raw["train"].update(weighting="static", method_params={"static": {"weights": [0.5, 0.5]}})
    assert parse_params(raw).train.weighting == "static"
    raw["model"]["rotation_task"] = True
    with pytest.raises(ConfigError, match=r"2 weights for 3 tasks \(left, right, rotation\)"):
        parse_params(raw)
    raw["train"]["method_params"]["static"]["weights"] = [0.4, 0.4, 0.2]
    assert parse_params(raw).model.rotation_task


@pytest.mark.parametrize("architecture", ["mtan", "mmoe"])
def test_reusing_heads_an_architecture_does_not_have_is_refused(
        raw: dict, architecture: str) -> None:
    raw["model"].update(architecture=architecture, reuse_heads=True,
                        pretrained="models:/multifashion@champion")
    with pytest.raises(ConfigError, match=rf"reuse_heads: architecture {architecture} has no "
                                          r"per-task heads to reuse; use hps, branched or "
                                          r"cross_stitch"):
        parse_params(raw)


@pytest.mark.parametrize(("train", "message"), [
    ({"processes": 4, "batch_size": 2},
     r"batch_size: 2 is below processes \(4\): each process needs a share"),
    ({"processes": 2, "ensemble": "batched"},
     r"ensemble: batched trains the baselines in one process; with processes: 2"),
])
def test_data_parallel_settings_that_cannot_run_are_refused_on_loading(
        raw: dict, train: dict, message: str) -> None:
    raw["train"].update(train)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_mmoe_lenet_experts_from_pretrained_weights_need_the_fc_width(raw: dict) -> None:
    """A LeNet expert's features are its fc layer, which the pretrained weights size."""
    raw["model"].update(architecture="mmoe", expert_dim=64, pretrained="self_supervised")
    with pytest.raises(ConfigError, match=r"expert_dim: 64: .* give 50 outputs; set "
                                          r"expert_dim: 50, or pretrained: none"):
        parse_params(raw)
    raw["model"]["width"] = 2
    raw["model"]["expert_dim"] = 100
    assert parse_params(raw).model.expert_dim == 100
    raw["model"].update(pretrained="none", expert_dim=64)  # from scratch: any width
    assert parse_params(raw).model.expert_dim == 64


def test_inception_below_its_smallest_input_is_refused_on_loading(raw: dict) -> None:
    """The 36 px canvas is below Inception v3's 75: said when the params load (the check
    stage), not when the baselines stage builds the network after DVC removed its outputs."""
    raw["model"]["backbone"] = "inception_v3"
    with pytest.raises(ConfigError, match=r"model.backbone: inception_v3 needs at least 75x75 "
                                          r"input \(data.dataset multifashion's images are "
                                          r"36x36\); set model.resize_to: 75 or more"):
        parse_params(raw)
    raw["model"]["resize_to"] = 64
    with pytest.raises(ConfigError, match=r"\(model.resize_to: 64\)"):
        parse_params(raw)
    raw["model"]["resize_to"] = 75
    assert parse_params(raw).model.resize_to == 75
    raw["model"]["backbone"] = "resnet18"  # no smallest input beyond 1
    raw["model"]["resize_to"] = None
    assert parse_params(raw).model.backbone == "resnet18"


def test_a_manifest_of_large_images_needs_no_resize_for_inception(raw: dict) -> None:
    for key in ("canvas_size", "max_shift", "train_size", "test_size"):
        raw["data"].pop(key, None)
    raw["data"].update(dataset="manifest", manifest="m.csv", image_size=96,
                       tasks={"kind": {"kind": "multiclass"}})
    raw["validate"] = {"pixel_stats": {}}
    raw["model"]["backbone"] = "inception_v3"
    raw["train"]["augment"] = {"shift": 0}
    assert parse_params(raw).data.image_size == 96
    raw["data"]["image_size"] = 64
    with pytest.raises(ConfigError, match="manifest's images are 64x64"):
        parse_params(raw)


@pytest.mark.parametrize(("given", "word"), [("self-supervised", "self_supervised"),
                                             ("ImageNet", "imagenet"), ("None", "none")])
def test_a_misspelt_pretrained_word_is_not_taken_for_a_file(raw: dict, given: str,
                                                            word: str) -> None:
    raw["model"].update(backbone="resnet18", pretrained=given)
    with pytest.raises(ConfigError, match=rf"model\.pretrained: .*did you mean {word}\?"):
        parse_params(raw)


def test_an_empty_params_file_is_refused_not_read_as_the_defaults(tmp_path: Path) -> None:
    for text in ("", "# only a comment\n", "{}\n"):
        path = tmp_path / "params.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"params.yaml: holds no sections; restore it"):
            load_params(path)


def test_a_section_given_twice_is_refused_naming_its_line(raw: dict, tmp_path: Path) -> None:
    """safe_load would keep the second ``train:`` and drop the first without a word."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw) + "train:\n  epochs: 4\n")
    first = yaml.safe_dump(raw).splitlines().index("train:") + 1
    with pytest.raises(ConfigError, match=rf"'train' given twice in one mapping \(first on line "
                                          rf"{first}\); keep one\n  in \".*params.yaml\""):
        load_params(path)
    path.write_text("defaults: &d {lr: 0.1}\nother:\n  <<: *d\n  lr: 0.2\n")  # a merge override
    with pytest.raises(ConfigError, match="defaults: unknown key"):  # parsed, then checked
        load_params(path)


def test_a_folder_or_non_utf8_params_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"folder.yaml: a folder, not a file"):
        load_params(tmp_path / "folder.yaml")
    (tmp_path / "latin.yaml").write_bytes("train:\n  weighting: \xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml: not UTF-8 text .*; save it as UTF-8"):
        load_params(tmp_path / "latin.yaml")


@pytest.mark.parametrize(("tune", "message"), [
    ({"selection": "preference", "preference": [1.0, 1.0, 1.0]},
     r"tune.preference: 3 values for 2 tasks \['left', 'right'\]; give one per task"),
    ({"weight_range": [0.6, 1.0]}, r"tune.weight_range: \[0.6, 1.0\] cannot hold 2 weights"),
])
def test_tuning_settings_that_miss_the_task_count_are_refused_on_loading(
        raw: dict, tune: dict, message: str) -> None:
    """Found by check, before DVC removes the tune stage's outputs, when the stage runs."""
    raw["tune"].update(tune)
    raw["train"]["weighting"] = "equal"  # tune --if-used skips: nothing to refuse
    assert parse_params(raw).tune.weight_range
    raw["train"]["weighting"] = "tuned"
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)
