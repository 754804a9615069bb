"""`multitask ci-report` and ci/pr_report.sh: the pull-request report, its gate and its comment.

The fast tests compare hand-written pipeline results whose numbers are known; the slow ones run
the real sample pipeline twice (a base and heads at other params, one with a planted regression)
through the script the workflow calls, and push a base's outputs to a DVC remote that a fresh
clone pulls and CI restores the base from.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from multitask import ci_plots, ci_report, keys
from multitask.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "ci" / "pr_report.sh"
VENV_BIN = Path(sys.executable).parent
SAMPLE_PARAMS = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())


def write_result(folder: Path, accuracy: dict[str, float], epochs: int = 3,
                 params: dict[str, Any] | None = None, plots: bool = True,
                 extra_tasks: dict[str, dict[str, Any]] | None = None) -> Path:
    """A pipeline folder as the sample stages leave it, with the given test accuracies."""
    (folder / "reports").mkdir(parents=True)
    tasks = {t: {"accuracy": a, "loss": round(1.0 - a, 4)} for t, a in accuracy.items()}
    tasks.update(extra_tasks or {})
    metrics = {"tasks": tasks, "mean_accuracy": sum(accuracy.values()) / len(accuracy),
               "delta_m_pct": -1.2}
    (folder / "reports" / "metrics.json").write_text(json.dumps(metrics))
    (folder / "params.yaml").write_text(yaml.safe_dump(params or SAMPLE_PARAMS))
    if plots:
        (folder / "reports" / "plots").mkdir()
        header = ["epoch"] + [keys.task_metric(kind, t, metric) for t in accuracy
                              for kind, metric in (("train", "loss"), ("val", "loss"),
                                                   ("val", "accuracy"))]
        lines = [",".join(header)]
        for epoch in range(1, epochs + 1):
            values = [f"{v:.4f}" for a in accuracy.values()
                      for v in (1 / epoch, 1.1 / epoch, a * epoch / epochs)]
            lines.append(",".join([str(epoch), *values]))
        (folder / "reports" / "plots" / "history.csv").write_text("\n".join(lines) + "\n")
        (folder / "reports" / "confusion").mkdir()
        rng = random.Random(0)
        for task, acc in accuracy.items():
            rows = ["actual,predicted"]
            for index in range(200):
                label = index % 10
                rows.append(f"{label},{label if rng.random() < acc else (label + 1) % 10}")
            (folder / "reports" / "confusion" / f"{task}.csv").write_text("\n".join(rows) + "\n")
    return folder


def run_report(tmp_path: Path, base: Path, head: Path,
               params: Path | None = None) -> tuple[int, str]:
    output = tmp_path / "out" / "ci_report.md"
    status = cli_main(["ci-report", "--base", str(base), "--head", str(head),
                       "--output", str(output), "--params", str(params or base / "params.yaml")])
    return status, output.read_text() if output.exists() else ""


def table_row(report: str, task: str, metric: str) -> str:
    return next(line for line in report.splitlines()
                if line.startswith(f"| `{task}` | {metric} |"))


# ------------------------------------------------------------------------------ ci-report
def test_a_regression_beyond_tolerance_fails_the_gate_naming_the_task(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    head = write_result(tmp_path / "head", {"left": 0.82, "right": 0.70})
    status, report = run_report(tmp_path, base, head)
    assert status == 1
    assert report.startswith(ci_report.MARKER + "\n")
    assert "**Gate: failed.**" in report
    assert "task 'right': accuracy dropped by 8.00 pp (0.7800 -> 0.7000)" in report
    assert "regression" in table_row(report, "right", "accuracy")
    assert "regression" not in table_row(report, "left", "accuracy")
    assert "task 'right'" in caplog.text and "task 'left'" not in caplog.text


def test_a_drop_of_exactly_the_tolerance_passes(tmp_path: Path) -> None:
    # 0.81 - 0.79 is 0.020000000000000018 in floating point: still within 0.02.
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    head = write_result(tmp_path / "head", {"left": 0.79, "right": 0.78})
    status, report = run_report(tmp_path, base, head)
    assert status == 0
    assert "**Gate: passed.**" in report
    assert "within tolerance" in table_row(report, "left", "accuracy")


def test_the_tolerance_is_read_from_the_params_file(tmp_path: Path) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    head = write_result(tmp_path / "head", {"left": 0.81, "right": 0.70})
    loose = tmp_path / "loose.yaml"
    loose.write_text(yaml.safe_dump({"ci": {"regression_tolerance": 0.1}}))
    assert run_report(tmp_path, base, head, loose)[0] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"ci": {"regression_tolernce": 0.1}}))
    with pytest.raises(ci_report.ConfigError, match=r"bad.yaml: ci.regression_tolernce"):
        ci_report.regression_tolerance(bad)


def test_a_task_missing_from_head_fails_and_auxiliary_tasks_are_not_gated(
        tmp_path: Path) -> None:
    rotation = {"rotation": {"accuracy": 0.9, "loss": 0.2, "auxiliary": True}}
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78}, extra_tasks=rotation)
    rotation_worse = {"rotation": {"accuracy": 0.5, "loss": 0.9, "auxiliary": True}}
    head = write_result(tmp_path / "head", {"left": 0.81}, extra_tasks=rotation_worse)
    status, report = run_report(tmp_path, base, head)
    assert status == 1
    assert ("task 'right': not in the head results (base accuracy 0.7800): a removed or "
            "renamed task fails the gate") in report
    # no "(> 0.02)": the task is not some amount worse, it is gone
    assert table_row(report, "right", "accuracy").endswith(
        "| ❌ **regression**: missing from the head |")
    assert "rotation" not in report.split("### Metrics")[0]  # not among the gate's reasons
    assert "regression" not in table_row(report, "rotation", "accuracy")


def test_only_the_base_can_exempt_a_task_from_the_gate(tmp_path: Path) -> None:
    """A head that marks its own tasks auxiliary must not switch off its gate."""
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    head = write_result(tmp_path / "head", {"right": 0.78}, extra_tasks={
        "left": {"accuracy": 0.30, "loss": 0.7, "auxiliary": True}})
    status, report = run_report(tmp_path, base, head)
    assert status == 1
    assert "task 'left': accuracy dropped by 51.00 pp (0.8100 -> 0.3000)" in report
    assert "regression" in table_row(report, "left", "accuracy")


def test_a_metric_that_is_not_a_number_in_head_fails_the_gate(tmp_path: Path) -> None:
    age = {"mae": 3.0, "rmse": 4.0, "loss": 9.0}
    base = write_result(tmp_path / "base", {"left": 0.81}, extra_tasks={"age": age})
    head = write_result(tmp_path / "head", {"left": float("nan")},
                        extra_tasks={"age": {**age, "mae": float("nan")}})
    status, report = run_report(tmp_path, base, head)
    assert status == 1
    assert "task 'left': accuracy is nan in the head results (base 0.8100)" in report
    assert "task 'age': mae is nan in the head results (base 3.0000)" in report
    assert ("| 0.8100 | nan | — | ❌ **regression**: not a number |"
            in table_row(report, "left", "accuracy"))
    assert "better" not in table_row(report, "age", "mae")
    assert "❌ **regression**: not a number |" in table_row(report, "age", "mae")


def test_a_renamed_task_fails_naming_the_name_it_has_in_head(tmp_path: Path) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    head = write_result(tmp_path / "head", {"left": 0.81, "digit": 0.78})
    status, report = run_report(tmp_path, base, head)
    assert status == 1
    assert ("- task 'right': not in the head results (base accuracy 0.7800; new in the head: "
            "'digit'): a removed or renamed task fails the gate") in report
    assert "new" in table_row(report, "digit", "accuracy")


@pytest.mark.parametrize("side", ["base", "head"])
@pytest.mark.parametrize("value", ["0.78", None, True])
def test_a_primary_metric_that_is_not_a_number_is_an_error_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], side: str, value: Any) -> None:
    """Not read as absent: a base's would leave its task ungated (shown as new in head)."""
    folders = {name: write_result(tmp_path / name, {"left": 0.81, "right": 0.78})
               for name in ("base", "head")}
    path = folders[side] / "reports" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["tasks"]["right"]["accuracy"] = value
    path.write_text(json.dumps(metrics))
    status, report = run_report(tmp_path, folders["base"], folders["head"])
    assert status == 2 and report == ""
    assert (f"{path}: tasks.right.accuracy is {json.dumps(value)}, not a number; rerun the "
            "evaluate stage") in capsys.readouterr().err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_base_value_that_is_not_a_number_is_not_gated_and_the_report_says_so(
        tmp_path: Path, value: float) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": value})
    head = write_result(tmp_path / "head", {"left": 0.81, "right": 0.50})
    status, report = run_report(tmp_path, base, head)
    assert status == 0
    assert "base not a number: not gated" in table_row(report, "right", "accuracy")
    assert (f"Not gated, nothing to compare with: task 'right' (its base accuracy is {value})."
            in report)


def test_missing_curves_and_confusion_name_the_side(tmp_path: Path) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    head = write_result(tmp_path / "head", {"left": 0.81, "right": 0.78}, plots=False)
    report = run_report(tmp_path, base, head)[1]
    assert (f"_No learning curves: reports/plots/history.csv is missing in head (`{head}`)._"
            in report)
    assert (f"_No confusion data for `left` in head (`{head}`): reports/confusion/left.csv is "
            "missing._" in report)


def test_report_has_aggregates_param_changes_curves_and_confusion(tmp_path: Path) -> None:
    changed = {**SAMPLE_PARAMS, "train": {**SAMPLE_PARAMS["train"], "epochs": 2,
                                           "optimizer": {"name": "adam", "lr": 1e-05}}}
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78}, epochs=3)
    head = write_result(tmp_path / "head", {"left": 0.83, "right": 0.79}, epochs=2,
                        params=changed)
    status, report = run_report(tmp_path, base, head)
    assert status == 0
    assert "| **all tasks** | mean accuracy | 0.7950 | 0.8100 | +0.0150 |" in report
    assert "| **all tasks** | Δm% | -1.20 | -1.20 | +0.00 |" in report
    params_section = report.split("### Params changed")[1].split("###")[0]
    assert "| `train.epochs` | `5` | `2` |" in params_section
    assert "| `train.optimizer.lr` | `0.002` | `1e-05` |" in params_section
    assert "train.optimizer.weight_decay" in params_section  # dropped from head: shown as —
    assert "train.batch_size" not in params_section  # unchanged params stay out
    assert "| 3 | 0.8100 | — | 0.7800 | — |" in report  # base ran one epoch more
    assert "Per-class accuracy (confusion diagonal), task `right`" in report
    png = tmp_path / "out" / "ci_report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "`ci_report.png`" in report


def test_without_plots_the_report_says_so_and_draws_nothing(tmp_path: Path) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78}, plots=False)
    head = write_result(tmp_path / "head", {"left": 0.81, "right": 0.78}, plots=False)
    status, report = run_report(tmp_path, base, head)
    assert status == 0
    assert "_No plots: history or confusion data is missing._" in report
    assert not (tmp_path / "out" / "ci_report.png").exists()


def test_missing_metrics_are_an_error_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    head = tmp_path / "head"
    head.mkdir()
    status, report = run_report(tmp_path, base, head)
    assert status == 2 and report == ""  # not 1, the gate's failure
    assert f"{head}/reports/metrics.json: not found" in capsys.readouterr().err


def test_a_folder_that_does_not_exist_is_an_error_naming_its_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    status, report = run_report(tmp_path, base, tmp_path / "hed")
    assert status == 2 and report == ""
    assert capsys.readouterr().err == (
        f"multitask ci-report: error: --head {tmp_path / 'hed'}: no such folder; give the "
        "folder its pipeline ran in (its params.yaml and reports/, e.g. sample/ of a "
        "checkout)\n")


AGE = {"age": {"mae": 3.0, "rmse": 4.0, "loss": 9.0}}  # a regression task beside left, right


@pytest.mark.parametrize(("side", "relative", "text", "words"), [
    ("head", "params.yaml", "train: [epochs: 5\n", "not valid YAML (line 2, column 1: expected "
     "',' or ']', but got '<stream end>'); fix it and rerun the sample pipeline"),
    ("base", "params.yaml", "- train\n", "expected a mapping of params sections, got list"),
    ("head", "reports/metrics.json", '{"tasks": {"left": 0.8}}', "expected a 'tasks' mapping"),
    ("head", "reports/confusion/left.csv", "actual,pre", "expected the columns "
     "actual,predicted, found actual,pre; rerun the evaluate stage"),
    ("base", "reports/confusion/left.csv", "", "empty; rerun the evaluate stage"),
    ("head", "reports/confusion/left.csv", "actual,predicted\n1,1\n2",
     "line 3 lacks an actual or predicted value; rerun the evaluate stage"),
    ("head", "reports/confusion/age.csv", "actual,predicted\n31.5,abc\n",
     "a regression task's pairs must be numbers (could not convert string to float: 'abc')"),
    ("head", "reports/plots/history.csv", "", "empty; rerun the train stage"),
    ("head", "reports/plots/history.csv", "epo", "no 'epoch' column (found epo); rerun the "
     "train stage"),
    ("base", "reports/plots/history.csv", f"epoch,{keys.task_metric('val', 'left', 'accuracy')}"
     "\n1,0.5\n2,0.6x\n", "column 'val/accuracy/left' holds values that are not numbers"),
], ids=["params-yaml", "params-list", "metrics-task", "confusion-cut", "confusion-empty",
        "confusion-row-cut", "regression-pairs", "history-empty", "history-cut",
        "history-words"])
def test_a_malformed_file_of_either_side_is_an_error_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], side: str, relative: str,
        text: str, words: str) -> None:
    folders = {name: write_result(tmp_path / name, {"left": 0.81, "right": 0.78},
                                  extra_tasks=AGE) for name in ("base", "head")}
    (folders[side] / relative).write_text(text)
    tolerance = tmp_path / "tolerance.yaml"
    tolerance.write_text("ci: {regression_tolerance: 0.02}\n")
    status, report = run_report(tmp_path, folders["base"], folders["head"], tolerance)
    assert status == 2 and report == ""  # not 1, the gate's failure
    assert not (tmp_path / "out" / "ci_report.png").exists()
    err = capsys.readouterr().err
    assert f"multitask ci-report: error: {folders[side] / relative}: {words}" in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("text", "words"), [
    ("ci:\n  regression_tolerance: 0.02\n  loose\n",
     "not valid YAML (line 4, column 1: could not find expected ':')"),
    ("- ci\n", "expected a mapping of params sections, got list"),
], ids=["yaml", "list"])
def test_a_malformed_params_file_is_an_error_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    head = write_result(tmp_path / "head", {"left": 0.81, "right": 0.70})
    params = tmp_path / "ci.yaml"
    params.write_text(text)
    status, report = run_report(tmp_path, base, head, params)
    assert status == 2 and report == ""
    err = capsys.readouterr().err
    assert (f"{params}: {words}; pass the params file that holds ci.regression_tolerance with "
            "--params") in err
    assert len(err.strip().splitlines()) == 1, err


def test_an_output_that_cannot_be_written_is_an_error_leaving_no_png(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = write_result(tmp_path / "base", {"left": 0.81, "right": 0.78})
    head = write_result(tmp_path / "head", {"left": 0.81, "right": 0.78})
    folder = tmp_path / "out" / "ci_report.md"
    folder.mkdir(parents=True)
    png = tmp_path / "out" / "ci_report.png"
    arguments = ["ci-report", "--base", str(base), "--head", str(head), "--params",
                 str(base / "params.yaml")]
    assert cli_main([*arguments, "--output", str(folder)]) == 2
    assert (f"{folder}: is a folder; --output takes the report's file path"
            in capsys.readouterr().err)
    assert not png.exists()  # drawn before the report is written: not drawn at all

    output = tmp_path / "out" / "report.md"

    def refuse(path: Path, mode: str = "w") -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ci_report, "atomic_open", refuse)  # the report's write, not the PNG's
    assert cli_main([*arguments, "--output", str(output)]) == 2
    assert (f"{output}: cannot write the report or its PNG beside it ({output}: Permission "
            "denied)" in capsys.readouterr().err)
    assert not output.exists() and not output.with_suffix(".png").exists()


def test_the_default_output_is_where_the_script_writes_and_git_ignores(
        capsys: pytest.CaptureFixture[str]) -> None:
    default = ci_report.Layout().ci_report
    assert default == Path("reports/ci/ci_report.md")
    paths = [str(default), str(default.with_suffix(".png"))]
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", *paths],
                             capture_output=True, text=True, check=False)
    assert ignored.stdout.split() == paths, ignored.stderr
    with pytest.raises(SystemExit):
        cli_main(["ci-report", "--help"])
    assert "its PNG goes beside it" in " ".join(capsys.readouterr().out.split())


def test_confusion_matrix_is_row_normalised_in_class_order(tmp_path: Path) -> None:
    result = ci_report.load_result(write_result(tmp_path / "run", {"left": 0.7}))
    pairs = result.confusion["left"]
    matrix = ci_plots.confusion_matrix(pairs)
    assert list(matrix.index) == list(matrix.columns) == [str(i) for i in range(10)]
    assert matrix.sum(axis=1).round(9).eq(1.0).all()
    hits = (pairs["actual"] == pairs["predicted"]).groupby(pairs["actual"]).mean()
    assert [matrix.loc[c, c] for c in matrix.index] == [hits[c] for c in matrix.index]


def test_a_one_epoch_run_still_shows_its_curves(tmp_path: Path) -> None:
    """A one-point line draws nothing: each epoch is a marker (base hollow, head filled), and
    the epoch axis has whole epochs only."""
    base = ci_report.load_result(write_result(tmp_path / "base", {"left": 0.7}, epochs=1))
    head = ci_report.load_result(write_result(tmp_path / "head", {"left": 0.6}, epochs=1))
    figure = ci_plots.draw(base, head)
    assert figure is not None
    loss_ax, accuracy_ax = figure.axes[:2]
    for ax in (loss_ax, accuracy_ax):
        figure.canvas.draw()
        lines = {line.get_label(): line for line in ax.lines}
        assert lines and all(line.get_marker() not in ("None", "", None)
                             for line in lines.values())
        assert {line.get_fillstyle() for name, line in lines.items()
                if name.startswith("base")} == {"none"}
        assert {line.get_fillstyle() for name, line in lines.items()
                if name.startswith("head")} == {"full"}
        low, high = ax.get_xlim()
        assert [tick for tick in ax.get_xticks() if low <= tick <= high] == [1.0]


# ---------------------------------------------------------------------- ci/pr_report.sh
def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.org",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.org"}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "VENV_BIN": str(VENV_BIN), "GITHUB_STEP_SUMMARY": str(tmp_path /
            "summary.md"), "GITHUB_OUTPUT": str(tmp_path / "output"), **extra}


def script_report(tmp_path: Path, head: dict[str, float] | None,
                  **env: str) -> subprocess.CompletedProcess[str]:
    """`ci/pr_report.sh report HEAD` in a one-commit repository whose sample pipeline left the
    ``head`` accuracies (None: no reports at all), against a base of 0.80 / 0.78."""
    repo = tmp_path / "repo"
    if head is None:
        (repo / "sample").mkdir(parents=True)
    else:
        write_result(repo / "sample", head)
    shutil.copytree(ROOT / "ci", repo / "ci")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "head")
    base_tree = tmp_path / "base"
    write_result(base_tree / "sample", {"left": 0.80, "right": 0.78})
    return subprocess.run([str(repo / "ci" / "pr_report.sh"), "report", "HEAD"], cwd=repo,
                          env=script_env(tmp_path, SKIP_REPRO="1", BASE_WORKTREE=str(base_tree),
                                         **env),
                          capture_output=True, text=True, timeout=300)


def test_script_report_gates_and_writes_the_job_summary(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = script_report(tmp_path, {"left": 0.80, "right": 0.60}, GITHUB_RUN_ID="77",
                           GITHUB_REPOSITORY="team/multitask")
    assert result.returncode == 1, result.stderr
    assert "task 'right': accuracy dropped by 18.00 pp" in result.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith(ci_report.MARKER)
    assert "https://github.com/team/multitask/actions/runs/77" in summary
    assert (tmp_path / "output").read_text() == "gate=failed\n"
    assert (repo / "reports" / "ci" / "ci_report.png").is_file()


def test_script_report_names_the_commits_it_compares(tmp_path: Path) -> None:
    """The comment each push updates must say which push it shows: on GitHub the checkout
    merges the pull request's commit (HEAD^2) into its base (HEAD^1)."""
    repo = tmp_path / "repo"
    write_result(repo / "sample", {"left": 0.80, "right": 0.78})
    shutil.copytree(ROOT / "ci", repo / "ci")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    git(repo, "checkout", "-qb", "change")
    (repo / "sample" / "reports" / "metrics.json").write_text(json.dumps(
        {"tasks": {"left": {"accuracy": 0.80}, "right": {"accuracy": 0.70}}}))
    git(repo, "commit", "-qam", "the pull request")
    git(repo, "checkout", "-q", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "main moved on")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "change")
    base, pull, merge = (git(repo, "rev-parse", rev) for rev in ("HEAD^1", "HEAD^2", "HEAD"))
    base_tree = tmp_path / "base"
    write_result(base_tree / "sample", {"left": 0.80, "right": 0.78})
    result = subprocess.run([str(SCRIPT), "report", "HEAD^1"], cwd=repo, capture_output=True,
                            text=True, timeout=300, env=script_env(
                                tmp_path, SKIP_REPRO="1", BASE_WORKTREE=str(base_tree)))
    assert result.returncode == 1, result.stderr
    lines = (repo / "reports" / "ci" / "ci_report.md").read_text().splitlines()
    assert lines[0] == ci_report.MARKER
    assert lines[3] == (f"Pull request `{pull[:12]}` merged into base `{base[:12]}` "
                        f"(merge commit `{merge[:12]}`).")
    assert lines[5].startswith("**Gate: failed.**")


def test_script_annotates_each_regressed_task_for_the_checks_page(tmp_path: Path) -> None:
    """A failed gate is one error annotation per task, with its numbers (a % escaped as
    GitHub's workflow commands read it), not only the step's exit code 1."""
    repo = tmp_path / "repo"
    write_result(repo / "sample", {"left": 0.70, "right": 0.78},
                 extra_tasks={"age": {"mae": 6.0}})
    shutil.copytree(ROOT / "ci", repo / "ci")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "head")
    base_tree = tmp_path / "base"
    write_result(base_tree / "sample", {"left": 0.80, "right": 0.78},
                 extra_tasks={"age": {"mae": 5.0}})
    result = subprocess.run([str(SCRIPT), "report", "HEAD"], cwd=repo, capture_output=True,
                            text=True, timeout=300, env=script_env(
                                tmp_path, SKIP_REPRO="1", BASE_WORKTREE=str(base_tree)))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert errors == [
        "::error title=ci-report gate::task 'left': accuracy dropped by 10.00 pp "
        "(0.8000 -> 0.7000), more than the 2.00 pp tolerance (ci.regression_tolerance = 0.02)",
        "::error title=ci-report gate::task 'age': mae rose by 20.00%25 (5.0000 -> 6.0000), "
        "more than the 2.00%25 tolerance (ci.regression_tolerance = 0.02, relative for mae)"]


def test_script_tells_a_failed_comparison_from_a_failed_gate(tmp_path: Path) -> None:
    result = script_report(tmp_path, None)  # a head whose pipeline left no reports
    assert result.returncode == 2, result.stderr
    assert "reports/metrics.json: not found" in result.stderr
    assert "ci-report could not compare (exit 2)" in result.stderr
    assert not (tmp_path / "output").exists()  # no gate=passed/failed for the comment job


@pytest.mark.parametrize(("command", "verdict", "output"), [
    ("not-run", "**Gate: not evaluated.** This push's job failed", "gate=not-run\n"),
    ("pending", "**Gate: pending.** CI is running for this push", None),
])
def test_script_notes_replace_the_report_of_an_earlier_push(
        tmp_path: Path, command: str, verdict: str, output: str | None) -> None:
    """The comment must stop showing an earlier push's verdict: `pending` (posted before the
    job runs, for a job cancelled or timed out) and `not-run` (a job that failed before the
    report) write a report, marker first, about this push; `not-run` also gives the gate
    output the comment job waits for."""
    repo = tmp_path / "repo"
    (repo / "reports" / "ci").mkdir(parents=True)
    stale = repo / "reports" / "ci" / "ci_report.md"
    stale.write_text(f"{ci_report.MARKER}\n**Gate: passed.**\n")
    (repo / "reports" / "ci" / "ci_report.png").write_bytes(b"an earlier push's plots")
    git(repo, "init", "-q")
    git(repo, "commit", "-q", "--allow-empty", "-m", "head")
    result = subprocess.run([str(SCRIPT), command], cwd=repo, capture_output=True, text=True,
                            env=script_env(tmp_path, GITHUB_RUN_ID="78",
                                           GITHUB_REPOSITORY="team/multitask"), timeout=60)
    assert result.returncode == 0, result.stderr
    report = stale.read_text()
    assert report.startswith(ci_report.MARKER + "\n")
    assert verdict in report and "passed" not in report
    assert f"Head `{git(repo, 'rev-parse', 'HEAD')[:12]}`." in report  # the push it is about
    assert "https://github.com/team/multitask/actions/runs/78)\n" in report  # no plots named
    assert not (repo / "reports" / "ci" / "ci_report.png").exists()
    assert (tmp_path / "summary.md").read_text() == report
    if output is None:
        assert not (tmp_path / "output").exists()
    else:
        assert (tmp_path / "output").read_text() == output


def committed_result(repo: Path, message: str) -> None:
    """A repository at ``repo`` of one commit: ci/ and a sample result (left 0.80, right
    0.78)."""
    write_result(repo / "sample", {"left": 0.80, "right": 0.78})
    shutil.copytree(ROOT / "ci", repo / "ci")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


def test_script_skip_repro_without_a_base_says_what_to_run(tmp_path: Path) -> None:
    """Not the comparison's error about a params file in a folder the user never made."""
    repo = tmp_path / "repo"
    committed_result(repo, "head")
    result = subprocess.run([str(SCRIPT), "report", "HEAD"], cwd=repo, capture_output=True,
                            text=True, timeout=300, env=script_env(
                                tmp_path, SKIP_REPRO="1",
                                BASE_WORKTREE=str(tmp_path / "nothing-here")))
    assert result.returncode == 2, result.stderr
    assert (f"ci/pr_report.sh: SKIP_REPRO=1: {tmp_path / 'nothing-here'} holds no base "
            "pipeline (no sample/); run without SKIP_REPRO=1") in result.stderr
    assert "params.yaml: not found" not in result.stderr
    assert not (tmp_path / "output").exists()


def test_two_clones_never_share_the_default_base_worktree(tmp_path: Path) -> None:
    """A run replaces whatever folder at its worktree path is not its base (rm -rf when it
    is no worktree of its own repository), so one default path for every clone on a machine
    let a second clone's run delete the first's base while that pipeline ran in it."""
    env = {k: v for k, v in script_env(tmp_path, SKIP_REPRO="1").items()
           if k not in ("BASE_WORKTREE", "RUNNER_TEMP")}
    env["TMPDIR"] = str(tmp_path / "tmp")
    bases = []
    for name in ("first", "second"):
        repo = tmp_path / name
        committed_result(repo, "head")
        result = subprocess.run([str(SCRIPT), "report", "HEAD"], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr  # no base ran there (SKIP_REPRO=1)
        # the error names the worktree the run would use
        bases.append(re.search(r"SKIP_REPRO=1: (\S+) holds no base pipeline", result.stderr)[1])
    assert all(Path(base).parent == tmp_path / "tmp" for base in bases), bases
    assert bases[0] != bases[1]


BLOCKING_DVC = """#!/bin/sh
# stands in for dvc: says it started, then waits until the test lets it go
echo started >> "$RELEASE.log"
while [ ! -e "$RELEASE" ]; do sleep 0.05; done
exit 1
"""


def test_a_second_report_while_one_runs_stops_naming_the_first(tmp_path: Path) -> None:
    """Two reports at once would check out, run and compare in one worktree and one
    checkout: the second stops at once, naming the first's pid, whether it comes from the
    same clone or from another clone given the same BASE_WORKTREE."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "dvc").write_text(BLOCKING_DVC)
    (fake_bin / "dvc").chmod(0o755)
    (fake_bin / "multitask").symlink_to(VENV_BIN / "multitask")
    release = tmp_path / "release"
    repo, other = tmp_path / "repo", tmp_path / "other"
    committed_result(repo, "head")
    committed_result(other, "head")
    env = script_env(tmp_path, VENV_BIN=str(fake_bin), RELEASE=str(release),
                     BASE_WORKTREE=str(tmp_path / "base"))
    first = subprocess.Popen([str(SCRIPT), "report", "HEAD"], cwd=repo, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{release}.log").exists() and first.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first report should be running its base"
        holder = f"(pid {first.pid} on {os.uname().nodename})"
        for clone, what in ((repo, "this checkout"),
                            (other, f"the base worktree {tmp_path / 'base'}")):
            second = subprocess.run([str(clone / "ci" / "pr_report.sh"), "report", "HEAD"],
                                    cwd=clone, env=env, capture_output=True, text=True,
                                    timeout=60)
            assert second.returncode == 2, second.stderr
            assert (f"ci/pr_report.sh: another ci/pr_report.sh report runs for {what} "
                    f"{holder}; wait for it to end or stop it, then rerun") in second.stderr
        assert Path(f"{release}.log").read_text() == "started\n", "a second one ran dvc"
    finally:
        release.touch()
        first.communicate(timeout=60)
    assert first.returncode != 0  # its stand-in dvc failed: nothing more is asserted of it
    again = subprocess.run([str(SCRIPT), "report", "HEAD"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=60)
    assert "another ci/pr_report.sh report runs" not in again.stderr, "the lock outlived it"


def test_script_refuses_a_reused_base_worktree_of_another_commit(tmp_path: Path) -> None:
    """SKIP_REPRO=1 must not compare against whatever base an earlier run left there."""
    repo = tmp_path / "repo"
    committed_result(repo, "old base")
    worktree = tmp_path / "base"
    git(repo, "worktree", "add", "--detach", "-q", str(worktree), "HEAD")
    git(repo, "commit", "-q", "--allow-empty", "-m", "new base")
    git(repo, "commit", "-q", "--allow-empty", "-m", "head")
    old, new = git(repo, "rev-parse", "HEAD~2"), git(repo, "rev-parse", "HEAD~1")
    env = script_env(tmp_path, SKIP_REPRO="1", BASE_WORKTREE=str(worktree))
    run = [str(repo / "ci" / "pr_report.sh"), "report", "HEAD^1"]
    result = subprocess.run(run, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert (f"SKIP_REPRO=1: {worktree} holds {old[:12]}, not HEAD^1 ({new[:12]}); run without "
            "SKIP_REPRO=1") in result.stderr
    assert not (tmp_path / "output").exists()
    git(worktree, "checkout", "-q", "--detach", new)  # the base asked for: compared
    result = subprocess.run(run, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "output").read_text() == "gate=passed\n"


FAKE_GH = """#!{python}
import json, os, sys
args = sys.argv[1:]
entry = {{"args": args}}
if "--input" in args:
    entry["input"] = json.load(open(args[args.index("--input") + 1]))
with open(os.environ["FAKE_GH_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
if "--method" not in args:
    sys.stdout.write(open(os.environ["FAKE_GH_COMMENTS"]).read())
"""


def run_comment(tmp_path: Path, pages: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run `ci/pr_report.sh comment` against a fake `gh`; return the calls it made."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "gh").write_text(FAKE_GH.format(python=sys.executable))
    (fake_bin / "gh").chmod(0o755)
    comments = tmp_path / "comments.json"
    comments.write_text("\n".join(json.dumps(page) for page in pages))  # as --paginate prints
    report = tmp_path / "ci_report.md"
    report.write_text(f"{ci_report.MARKER}\n## new report\n")
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "FAKE_GH_COMMENTS":
           str(comments), "FAKE_GH_LOG": str(tmp_path / "gh.log"),
           "GITHUB_REPOSITORY": "team/multitask", "PR_NUMBER": "12", "GH_TOKEN": "x"}
    subprocess.run([str(SCRIPT), "comment", str(report)], cwd=ROOT, env=env, check=True,
                   capture_output=True, text=True, timeout=60)
    return [json.loads(line) for line in (tmp_path / "gh.log").read_text().splitlines()]


def test_script_comment_updates_the_previous_report_instead_of_adding_one(
        tmp_path: Path) -> None:
    marker = ci_report.MARKER
    pages = [[{"id": 1, "user": {"login": "alice"}, "body": f"{marker} quoted by a person"}],
             [{"id": 5, "user": {"login": "github-actions[bot]"}, "body": "another bot note"},
              {"id": 42, "user": {"login": "github-actions[bot]"}, "body": f"{marker}\nold"}]]
    calls = run_comment(tmp_path, pages)
    assert calls[0]["args"] == ["api", "--paginate", "repos/team/multitask/issues/12/comments"]
    assert [c["args"][:4] for c in calls[1:]] == [
        ["api", "--method", "PATCH", "repos/team/multitask/issues/comments/42"]]
    assert calls[1]["input"] == {"body": f"{marker}\n## new report\n"}


def test_script_comment_creates_the_report_on_a_first_push(tmp_path: Path) -> None:
    pages = [[{"id": 5, "user": {"login": "github-actions[bot]"}, "body": "another bot note"}]]
    calls = run_comment(tmp_path, pages)
    assert [c["args"][:4] for c in calls[1:]] == [
        ["api", "--method", "POST", "repos/team/multitask/issues/12/comments"]]


def test_script_and_report_share_the_comment_marker() -> None:
    assert f"MARKER='{ci_report.MARKER}'" in SCRIPT.read_text()


# ------------------------------------------------------- end to end: real sample pipelines
# Small enough for three sample pipelines in a few minutes on 2 cores, real enough that a task
# trained with zero loss weight comes out at chance level.
TINY = {"data.train_size": 2000, "data.test_size": 600, "train.epochs": 2,
        "train.batch_size": 64, "train.diagnostics_every": 0, "tune.n_trials": 1,
        "tune.epochs": 1, "tracking.enabled": False}
PROJECT = ["src", "ci", "data/sample", "data/sources.yaml", "sample/data/sources.yaml",
           "sample/dvc.yaml", "sample/params.yaml", ".dvc/config",
           "sample/.gitignore", ".dvcignore", ".gitignore"]


def write_params(repo: Path, changes: dict[str, Any]) -> None:
    params = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for name in parents:
            section = section.setdefault(name, {})
        section[key] = value
    (repo / "sample" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def use_remote(repo: Path, remote: Path) -> None:
    """``remote`` (a folder) as the default DVC remote of ``repo``, set as CI sets it."""
    subprocess.run([str(ROOT / "ci" / "dvc_remote.sh"), str(remote)], cwd=repo, check=True,
                   env={**os.environ, "VENV_BIN": str(VENV_BIN)}, capture_output=True)


def project_repo(repo: Path, remote: Path) -> str:
    """The project's files at TINY params as a new git repository whose DVC remote is
    ``remote`` (never the user cache's); returns the commit."""
    for relative in PROJECT:
        source, target = ROOT / relative, repo / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    write_params(repo, TINY)
    git(repo, "init", "-q")
    use_remote(repo, remote)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    return git(repo, "rev-parse", "HEAD")


def run_pr_report(repo: Path, base_sha: str, work: Path, name: str) -> dict[str, Any]:
    """``ci/pr_report.sh report <base>`` as the workflow calls it; what it left behind (its
    output and errors in one log, in the order they came)."""
    env = script_env(work / name, BASE_WORKTREE=str(work / "base"),
                     REPORT_DIR=f"reports/{name}")
    (work / name).mkdir()
    result = subprocess.run([str(repo / "ci" / "pr_report.sh"), "report", base_sha], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=1200)
    report = repo / "reports" / name / "ci_report.md"
    return {"status": result.returncode, "log": result.stdout,
            "report": report.read_text() if report.exists() else "",
            "png": (repo / "reports" / name / "ci_report.png").is_file(),
            "head": json.loads((repo / "sample" / "reports" / "metrics.json").read_text())}


@pytest.fixture(scope="module")
def sample_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A base commit and two heads (other params; a planted regression), each reported."""
    work = tmp_path_factory.mktemp("ci_e2e")
    repo = work / "repo"
    base_sha = project_repo(repo, work / "empty-remote")  # every stage runs

    write_params(repo, {**TINY, "train.epochs": 3, "train.optimizer.lr": 0.004})
    git(repo, "commit", "-qam", "head: other params")
    other = run_pr_report(repo, base_sha, work, "other-params")

    # The planted regression: task 'right' gets zero loss weight, so it is never trained.
    write_params(repo, {**TINY, "train.weighting": "static",
                        "train.method_params": {"static": {"weights": [1.0, 0.0]}}})
    git(repo, "commit", "-qam", "head: right untrained")
    regression = run_pr_report(repo, base_sha, work, "regression")

    # The same regression from a head that also rewrites the gate to pass everything.
    gate = repo / "src" / "multitask" / "gate.py"
    gate.write_text(gate.read_text().replace(
        "    def regressed(self, tolerance: float) -> bool:",
        "    def regressed(self, tolerance: float) -> bool:\n        return False"))
    git(repo, "commit", "-qam", "head: right untrained, and a gate that always passes")
    rewritten = run_pr_report(repo, base_sha, work, "rewritten-gate")
    base = json.loads((work / "base" / "sample" / "reports" / "metrics.json").read_text())
    return {"base": base, "other": other, "regression": regression, "rewritten": rewritten}


@pytest.mark.slow
@pytest.mark.xdist_group("ci_report")
def test_two_real_pipelines_give_the_per_task_report(sample_runs: dict[str, Any]) -> None:
    base, other = sample_runs["base"], sample_runs["other"]
    assert other["report"], other["log"]
    report = other["report"]
    for task in ("left", "right"):
        row = table_row(report, task, "accuracy")
        assert f"| {base['tasks'][task]['accuracy']:.4f} | " in row
        assert f"| {other['head']['tasks'][task]['accuracy']:.4f} | " in row
    params_section = report.split("### Params changed")[1].split("###")[0]
    changed = {line.split("`")[1] for line in params_section.splitlines()
               if line.startswith("| `")}
    assert changed == {"train.epochs", "train.optimizer.lr"}
    assert "| 3 |" in report  # the head's third epoch in the per-epoch table
    assert other["png"]
    assert (other["status"] == 0) == ("**Gate: passed.**" in report)


@pytest.mark.slow
@pytest.mark.xdist_group("ci_report")
def test_a_planted_regression_fails_the_gate_naming_its_task(
        sample_runs: dict[str, Any]) -> None:
    base, regression = sample_runs["base"], sample_runs["regression"]
    assert regression["report"], regression["log"]
    right_before = base["tasks"]["right"]["accuracy"]
    right_after = regression["head"]["tasks"]["right"]["accuracy"]
    assert right_after < right_before - 0.1  # the plant took: 'right' is near chance
    assert regression["status"] == 1
    assert "gate: task 'right': accuracy dropped by" in regression["log"]
    assert f"({right_before:.4f} -> {right_after:.4f})" in regression["report"]
    assert "regression" in table_row(regression["report"], "right", "accuracy")


@pytest.mark.slow
@pytest.mark.xdist_group("ci_report")
def test_a_head_that_rewrites_the_gate_is_still_judged_by_the_base(
        sample_runs: dict[str, Any]) -> None:
    rewritten = sample_runs["rewritten"]
    assert rewritten["report"], rewritten["log"]
    assert rewritten["status"] == 1, "the base's gate, not the head's, decides"
    assert "gate: task 'right': accuracy dropped by" in rewritten["log"]
    assert "**Gate: failed.**" in rewritten["report"]


# ------------------------------------------------------------------------ the DVC remote
STAGES = ("download", "validate", "preprocess", "baselines", "tune", "train", "evaluate")
CACHED = ["data/raw/fashion_mnist", "data/processed/meta.json", "reports/validation/data_docs",
          "models/baselines", "reports/tuning/study.journal", "models/model.pt"]


def dvc(repo: Path, *args: str) -> str:
    """``dvc <args>`` in ``repo`` with ``repo``'s code, as ci/pr_report.sh runs it."""
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
           "PYTHONPATH": str(repo / "src")}
    result = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=1200)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout[-3000:]}"
    return result.stdout


def test_dvc_remote_script_sets_the_default_remote_or_refuses_a_scheme(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    subprocess.run([str(VENV_BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    env = {**os.environ, "VENV_BIN": str(VENV_BIN)}
    script = str(ROOT / "ci" / "dvc_remote.sh")
    unset = subprocess.run([script, ""], cwd=repo, env=env, capture_output=True, text=True)
    assert unset.returncode == 0 and not (repo / ".dvc/config.local").exists()
    bad = subprocess.run([script, "ftp://host/x"], cwd=repo, env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "ftp://host/x: not a URL" in bad.stderr
    use_remote(repo, tmp_path / "remote")
    default = subprocess.run([str(VENV_BIN / "dvc"), "remote", "list"], cwd=repo,
                             capture_output=True, text=True, check=True).stdout
    assert default.split() == ["team", str(tmp_path / "remote"), "(default)"]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A base commit whose sample pipeline ran and whose outputs (data, models, the tuning
    journal) and run cache were pushed to a folder remote, as CI does on main."""
    work = tmp_path_factory.mktemp("dvc_remote")
    repo, remote = work / "repo", work / "remote"
    project_repo(repo, remote)
    dvc(repo, "repro", "sample/dvc.yaml")
    git(repo, "add", "-A")  # dvc.lock and the reports DVC leaves to git (cache: false)
    git(repo, "commit", "-qm", "base: reproduced")
    dvc(repo, "push", "--run-cache", "sample/dvc.yaml")
    return {"work": work, "repo": repo, "remote": remote, "sha": git(repo, "rev-parse", "HEAD")}


@pytest.mark.slow
@pytest.mark.xdist_group("dvc_remote")
def test_a_fresh_clone_pulls_data_models_and_the_tuning_journal(pushed: dict[str, Any]
                                                                ) -> None:
    clone = pushed["work"] / "clone"
    git(pushed["work"], "clone", "-q", str(pushed["repo"]), str(clone))
    assert not (clone / "sample/models/model.pt").exists()
    use_remote(clone, pushed["remote"])
    dvc(clone, "pull", "sample/dvc.yaml")
    for path in CACHED:
        pulled, pushed_from = clone / "sample" / path, pushed["repo"] / "sample" / path
        assert pulled.exists(), path
        if pulled.is_file():
            assert pulled.read_bytes() == pushed_from.read_bytes(), path
    assert "Data and pipelines are up to date." in dvc(clone, "status", "sample/dvc.yaml")


@pytest.mark.slow
@pytest.mark.xdist_group("dvc_remote")
def test_ci_pulls_the_base_from_the_remote_instead_of_rerunning_it(pushed: dict[str, Any]
                                                                   ) -> None:
    work = pushed["work"] / "ci"
    head = work / "head"  # a fresh clone: an empty DVC cache, as on a new CI runner
    git(pushed["work"], "clone", "-q", str(pushed["repo"]), str(head))
    use_remote(head, pushed["remote"])
    write_params(head, {**TINY, "train.epochs": 3})
    git(head, "commit", "-qam", "head: one more epoch")
    result = run_pr_report(head, pushed["sha"], work, "pulled")
    assert result["report"], result["log"][-3000:]
    base_log, head_log = result["log"].split("ci/pr_report.sh: sample pipeline of this checkout")
    assert "Running stage" not in base_log, base_log[-3000:]
    # check and evaluate write only files git holds (cache: false): nothing to pull
    for stage in (*STAGES[:-1], "pretrain"):
        assert f"Pulling data for stage: 'sample/dvc.yaml:{stage}'" in base_log, stage
    assert "Stage 'sample/dvc.yaml:evaluate' didn't change, skipping" in base_log
    base_model = work / "base" / "sample" / "models" / "model.pt"
    assert base_model.read_bytes() == (pushed["repo"] / "sample/models/model.pt").read_bytes()
    # The head pulls what it shares with the base and runs what its params changed.
    ran = {stage for stage in ("check", "pretrain", *STAGES)
           if f"Running stage 'sample/dvc.yaml:{stage}'" in head_log}
    # check reads all of params.yaml, but writes the same text: no stage reruns for it
    assert ran == {"check", "baselines", "train", "evaluate"}, head_log[-3000:]
