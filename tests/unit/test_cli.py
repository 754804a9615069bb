"""`multitask --help` is fast and true: every stage of dvc.yaml has a subcommand."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from multitask.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]


def sample_pipeline(folder: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The sample's params with ``sections``' keys changed, written to ``folder/params.yaml``
    beside a copy of its ``data/sources.yaml``; the params, for a test to change further."""
    params = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "data").mkdir(exist_ok=True)
    shutil.copy(ROOT / "sample" / "data" / "sources.yaml", folder / "data" / "sources.yaml")
    return params


def save_mobilenet_weights(path: Path) -> None:
    """A plain torchvision state_dict that fits model.backbone: mobilenet_v3_small (the
    smallest backbone): what check loads into the encoder before any stage runs."""
    import torchvision

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)


def test_help_lists_every_command_and_imports_nothing_heavy() -> None:
    code = ("import sys; from multitask.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'mlflow', 'great_expectations', 'optuna', 'pandas')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert name in out.stdout
    assert "HEAVY []" in out.stdout


def test_the_description_names_every_command() -> None:
    """`multitask --help`'s first lines name every subcommand, not only the stages."""
    words = set(build_parser().description.translate(str.maketrans(",()", "   ")).split())
    assert set(COMMANDS) - words == set()


def test_every_dvc_stage_is_a_subcommand() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        # tune runs --if-used: no study when train.weighting is not tuned
        assert stage["cmd"] == f"multitask {name}" + (" --if-used" if name == "tune" else "")
        assert name in COMMANDS
        build_parser().parse_args(stage["cmd"].split()[1:])  # its options exist


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())
                                           ["stages"]))
def test_each_stage_help_names_what_dvc_yaml_says_it_writes(stage: str) -> None:
    """Every output and metrics file of the stage in dvc.yaml, or the folder holding it below
    reports/, models/ or data/, is named in `multitask <stage> --help`."""
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    paths = [next(iter(out)) if isinstance(out, dict) else out
             for out in declared.get("outs", []) + declared.get("metrics", [])]
    text = " ".join(COMMANDS[stage].description.split())
    def folders(path: str) -> list[str]:
        parent = Path(path).parent
        return [path, *([str(parent)] if len(parent.parts) > 1 else [])]

    named = [path for path in paths
             if any(re.search(re.escape(name) + r"(?![\w-])", text) for name in folders(path))]
    assert named == paths, f"not in the help of {stage}: {set(paths) - set(named)}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    # --params only where the command reads a params file (predict and methods read none)
    assert ("--params" in capsys.readouterr().out) == COMMANDS[name].reads_params
    assert COMMANDS[name].reads_params == (name not in {"predict", "methods"})


@pytest.mark.parametrize("argv", [["predict", "--model", "models:/m@champion", "a.png"],
                                  ["methods"]])
def test_commands_that_read_no_params_refuse_params(argv: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--params", "params.yaml"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --params params.yaml" in capsys.readouterr().err


def test_bad_params_exit_1_with_the_key(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["epoch"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-m", "multitask", "train", "--params", str(path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert "train.epoch: unknown key; did you mean 'epochs'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_error_in_a_stage_dvc_runs_below_the_root_names_its_folder(tmp_path: Path) -> None:
    """`dvc repro sample/dvc.yaml` runs the stage in sample/: its "params.yaml: ..." is
    sample/params.yaml, which the error says, not the root's (which a user would open)."""
    (tmp_path / "sample").mkdir()
    sample_pipeline(tmp_path / "sample", train={"epoch": 3})
    (tmp_path / "sample" / "dvc.yaml").write_text(
        f"stages:\n  check:\n    cmd: {sys.executable} -m multitask check\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    result = subprocess.run([str(bin_dir / "dvc"), "repro", "sample/dvc.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert ("multitask check (in sample/): error: params.yaml: train.epoch: unknown key; did "
            "you mean 'epochs'?") in result.stdout + result.stderr
    # run by hand in that folder, no DVC: no folder to name
    by_hand = subprocess.run([sys.executable, "-m", "multitask", "check"],
                             cwd=tmp_path / "sample", capture_output=True, text=True)
    assert by_hand.stderr.startswith("multitask check: error: params.yaml: train.epoch")


def test_check_suggests_the_word_a_misspelt_pretrained_value_was_meant_to_be(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'imagenett' is read as a file name (anything not a word is one): the error says which
    word it is close to, not only that no such file exists."""
    from multitask.cli import main

    sample_pipeline(tmp_path, model={"backbone": "resnet18", "pretrained": "imagenett"})
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 1
    assert (f"model.pretrained: {tmp_path / 'imagenett'} is not a file (a relative path is read "
            f"from the pipeline folder {tmp_path}); did you mean imagenet?"
            in capsys.readouterr().err)


def test_check_finds_a_missing_or_unreadable_pretrained_file_before_any_stage_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing or unreadable state_dict file would otherwise stop the baselines stage, after
    DVC removed their outputs."""
    from multitask.cli import main

    params = sample_pipeline(tmp_path, model={"pretrained": "weights/encoder.pt"})
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 1
    assert (f"model.pretrained: {tmp_path / 'weights' / 'encoder.pt'} is not a file (a "
            f"relative path is read from the pipeline folder {tmp_path})"
            in capsys.readouterr().err)
    assert not (tmp_path / "reports" / "params_check.txt").exists()
    (tmp_path / "weights").mkdir()
    weights = tmp_path / "weights" / "encoder.pt"
    weights.write_bytes(b"encoder weights, written by hand")
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"{weights}: not a PyTorch weights file (torch.load: " in err
    assert "give a file written by torch.save(state_dict) or multitask train" in err
    torch.save(torch.nn.Linear(2, 2), weights)  # the whole module, pickled
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert (f"{weights}: holds pickled Python objects (a whole model or module), not only "
            "tensors; it is not unpickled here, since unpickling runs code: save the weights "
            "with torch.save(model.state_dict(), path)") in err
    assert "\x1b[" not in err  # torch's terminal colours are not passed on
    assert not (tmp_path / "reports" / "params_check.txt").exists()
    save_mobilenet_weights(weights)
    params["model"]["backbone"] = "mobilenet_v3_small"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 0
    assert (tmp_path / "reports" / "params_check.txt").is_file()


def test_check_finds_pretrained_weights_that_do_not_fit_the_backbone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ResNet-18 weights under model.backbone: resnet34 would stop the baselines stage, after
    DVC removed their outputs: check loads them into the encoder first and names the keys."""
    import torchvision

    from multitask.cli import main

    params = sample_pipeline(tmp_path, model={"backbone": "resnet34", "pretrained": "resnet18.pth"})
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert (f"file: {tmp_path / 'resnet18.pth'}: does not fit the resnet34 encoder (missing "
            "net.layer1.2.bn1.bias, ") in err
    assert "check model.backbone, model.width, model.stem and the data's channels" in err
    assert not (tmp_path / "reports" / "params_check.txt").exists()
    params["model"]["backbone"] = "resnet18"  # fits, 3-channel filters summed for grey input
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 0
    assert (tmp_path / "reports" / "params_check.txt").is_file()


@pytest.mark.parametrize(("watching", "unwatched"), [
    ((), "baselines, tune and train"),
    (("baselines", "train"), "tune"),
    (("baselines", "tune", "train"), None),
])
def test_check_warns_when_dvc_would_not_rerun_on_changed_pretrained_weights(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, watching: tuple[str, ...],
        unwatched: str | None) -> None:
    """DVC tracks model.pretrained's path, not the file: the stages that start from it rerun
    when its weights change in place only if they list it (or a folder above it) as a dep."""
    from multitask.cli import main

    sample_pipeline(tmp_path, model={"backbone": "mobilenet_v3_small",
                                                     "pretrained": "weights/encoder.pt"})
    save_mobilenet_weights(tmp_path / "weights" / "encoder.pt")
    pipeline = yaml.safe_load((ROOT / "sample" / "dvc.yaml").read_text())
    for stage in watching:  # the file itself, or the folder holding it
        pipeline["stages"][stage]["deps"].append(
            "weights/encoder.pt" if stage == "tune" else "${WEIGHTS}")
    pipeline["vars"].append({"WEIGHTS": "weights"})
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    with caplog.at_level(logging.WARNING, logger="multitask.data.sources"):
        assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ([] if unwatched is None else [
        f"model.pretrained: {tmp_path / 'weights' / 'encoder.pt'} is no dependency of "
        f"{unwatched} in {tmp_path / 'dvc.yaml'}: DVC tracks its path (a param), not its "
        "contents, and will not rerun them when the file changes in place. Add it to the deps "
        "of each, or give changed weights a new file name"])


def test_check_refuses_more_processes_than_visible_gpus(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One rank per GPU: NCCL would fail on the third rank of two GPUs, after the launch."""
    import torch

    from multitask.cli import main

    params = sample_pipeline(tmp_path, train={"device": "cuda", "processes": 3})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a host with two GPUs
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 1
    assert ("train.processes: 3 starts one process per GPU on this host, but 2 CUDA devices "
            "are visible; set train.processes to at most 2" in capsys.readouterr().err)
    assert not (tmp_path / "reports" / "params_check.txt").exists()
    params["train"]["processes"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 0
    params["train"].update(device="cpu", processes=3)  # gloo ranks on the CPU: any number
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 0


def test_what_the_file_system_refuses_is_one_line_naming_the_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An OSError (here: reports/ is a file, so check cannot write into it) is an expected
    failure: its message names the path; a traceback would bury it."""
    from multitask.cli import main

    shutil.copy(ROOT / "sample" / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "sample" / "data" / "sources.yaml", tmp_path / "data" / "sources.yaml")
    (tmp_path / "reports").write_text("a file where the reports folder belongs")
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("multitask check: error: ") and str(tmp_path / "reports") in err
    assert "Traceback" not in err


def test_check_warns_when_imagenet_weights_would_need_a_download(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, the download fails in baselines, after DVC removed its outputs: check says
    beforehand which file is missing, where it goes and where it comes from."""
    from multitask.cli import main
    from multitask.models import pretrained
    from multitask.models.pretrained import hub_path, imagenet_source

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    sample_pipeline(tmp_path, model={"backbone": "resnet18", "pretrained": "imagenet"})
    member, url = imagenet_source("resnet18")
    cached = hub_path(url)
    assert cached.parent == tmp_path / "torch" / "hub" / "checkpoints"

    def check_warnings() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="multitask.data.sources"):
            assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 0
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert check_warnings() == [
        f"model.pretrained: imagenet: {cached.name} ({member}) is not in {cached.parent} yet; "
        f"baselines will download it from {url}. Offline, download it where there is internet "
        "and put it there under that name (the folder follows TORCH_HOME)"]
    cached.parent.mkdir(parents=True)
    published = b"the published weights"
    monkeypatch.setattr(pretrained, "file_sha256",
                        lambda path: "f37072fd" if Path(path).read_bytes() == published else "0")
    cached.write_bytes(published)  # there and verified: no warning
    assert check_warnings() == []


def test_check_stops_at_a_cached_imagenet_file_that_is_not_the_published_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A truncated copy (or another file under torchvision's name) would stop baselines after
    DVC removed their outputs: check refuses it, naming the file and what to do."""
    from multitask.cli import main
    from multitask.models.pretrained import hub_path, imagenet_source

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    sample_pipeline(tmp_path, model={"backbone": "resnet18", "pretrained": "imagenet"})
    member, url = imagenet_source("resnet18")
    cached = hub_path(url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"the first megabyte of the weights")
    assert main(["check", "--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert (f"model.pretrained: imagenet ({member}): {cached}: sha256 does not start with "
            f"f37072fd (the prefix in its name): corrupt or not the published file; delete it "
            f"and rerun, which downloads it again from {url}") in err
    assert not (tmp_path / "reports" / "params_check.txt").exists()


def test_training_before_preprocess_names_the_stage_to_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user who runs multitask train (or baselines) by hand before preprocess is told which
    stage writes the processed data, not 'the stage that writes it'."""
    from multitask.cli import main

    params = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["train", "--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert (f"{tmp_path / 'data' / 'processed' / 'meta.json'}: not found; run multitask "
            "preprocess (after download and validate), or dvc repro") in err
    assert "Traceback" not in err
