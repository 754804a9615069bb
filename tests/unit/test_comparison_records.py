"""A comparison's earlier measurements read from its comparison.json (`multitask compare` in a
fresh clone, where DVC's experiment refs are gone): read back exactly while git shows the
pipeline's inputs unchanged, run again as soon as one of them, the row or --set differs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from multitask.comparison.experiments import Experiment, Pipeline
from multitask.comparison.records import (
    changed_between,
    commits_alike,
    measures_commit,
    pipeline_inputs,
    recorded,
    resolve_commit,
    unchanged_since,
    uncommitted,
)
from multitask.comparison.report import Measured, markdown, summary
from multitask.comparison.rows import Row, Spec, expand_rows

DVC_YAML = """\
vars:
  - PKG: src/pkg
stages:
  prepare:
    cmd: python -c "print(0)"
    deps:
      - data/raw
    outs:
      - reports/prepared.json:
          cache: false
  train:
    cmd: python -c "print(1)"
    deps:
      - ${PKG}/train.py
      - reports/prepared.json
    params:
      - train.seed
    outs:
      - model.txt
"""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def _commit(root: Path, message: str) -> str:
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "--allow-empty", "-m", message)
    return _git(root, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src" / "pkg").mkdir(parents=True)
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "test@example.com")
    _git(root, "config", "user.name", "test")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("train:\n  seed: 0\n  epochs: 2\n")
    (root / "src" / "pkg" / "train.py").write_text("EPOCHS = 2\n")
    (root / "src" / "pkg" / "other.py").write_text("# read by no stage\n")
    (root / "requirements.lock").write_text("torch==2.14.1\n")
    (root / "README.md").write_text("# repo\n")
    (root / "reports").mkdir()
    (root / "reports" / "prepared.json").write_text('{"rows": 10}\n')  # committed, as metrics
    (root / ".gitignore").write_text("/data/raw\n/model.txt\n")
    _commit(root, "pipeline")
    return root


SPEC = Spec("demo", expand_rows([["train.weighting", "equal", "pcgrad"]]), seeds=(0, 1, 2))


def _measured(spec: Spec, commit: str) -> dict[str, list[Measured]]:
    """Three seeds of each row, with values that differ row by row and seed by seed."""
    measured: dict[str, list[Measured]] = {}
    for number, row in enumerate(spec.rows):
        measured[row.label] = []
        for seed in spec.seeds:
            left, right = 0.80 + 0.01 * number + 0.003 * seed, 0.79 + 0.002 * seed
            base = (0.795 + 0.001 * seed, 0.80)
            delta = ((left - base[0]) / base[0] + (right - base[1]) / base[1]) / 2 * 100
            measured[row.label].append(Measured(
                seed, row.experiment(spec.name, seed), f"run{number}{seed}",
                {"tasks": {"left": {"accuracy": left, "loss": 0.5},
                           "right": {"accuracy": right, "loss": 0.6}},
                 "mean_accuracy": (left + right) / 2, "delta_m_pct": delta},
                {"tasks": {"left": {"accuracy": base[0]}, "right": {"accuracy": base[1]}}},
                commit, {"train": 2, "baselines": 1 if seed == 2 else 2}))
    return measured


def _record(root: Path, spec: Spec, commit: str) -> dict:
    """comparison.json as `multitask compare` writes it after measuring on ``commit``."""
    result = summary(spec, _measured(spec, commit), pipeline="dvc.yaml",
                     params_file="params.yaml") | {"commit": commit}
    folder = root / "reports" / "comparisons" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.json").write_text(json.dumps(result))
    return result


def _names(spec: Spec) -> set[str]:
    return {name for *_, name in spec.experiments()}


def test_the_inputs_are_the_stage_deps_params_and_environment_not_outputs(repo: Path) -> None:
    assert pipeline_inputs(Pipeline(repo, Path("dvc.yaml"))) == [
        "data/raw", "dvc.yaml", "params.yaml", "pyproject.toml", "requirements.lock",
        "src/pkg/train.py"]


def test_a_record_is_read_back_exactly_while_only_other_files_change(repo: Path) -> None:
    measured_on = _git(repo, "rev-parse", "HEAD")
    first = _record(repo, SPEC, measured_on)
    (repo / "README.md").write_text("# repo\n\nresults\n")  # read by no stage
    (repo / "src" / "pkg" / "other.py").write_text("VALUE = 1\n")
    (repo / "reports" / "prepared.json").write_text('{"rows": 11}\n')  # a stage writes it
    later = _commit(repo, "docs")
    pipeline = Pipeline(repo, Path("dvc.yaml"))
    earlier = recorded(SPEC, pipeline, later, _names(SPEC))
    assert set(earlier) == _names(SPEC)
    assert {m.commit for m in earlier.values()} == {measured_on}
    by_row = {row.label: [earlier[name] for r, _, name in SPEC.experiments() if r == row]
              for row in SPEC.rows}
    again = summary(SPEC, by_row, pipeline="dvc.yaml", params_file="params.yaml")
    assert again == {k: v for k, v in first.items() if k != "commit"}  # thread counts too
    assert [m.threads for m in by_row["equal"]] == [
        {"train": 2, "baselines": 2}, {"train": 2, "baselines": 2}, {"train": 2, "baselines": 1}]
    # the caption says which measurements come from an earlier commit
    caption = markdown(again | {"commit": later}).splitlines()[0]
    assert (f"(measured on another commit with the same pipeline inputs: `pcgrad`, `equal` "
            f"(every seed) at `{measured_on[:7]}`)") in caption
    # rows read back in part are named with their seeds
    partly = again | {"commit": later, "rows": [
        row | {"commits": [measured_on, later, measured_on]} for row in again["rows"]]}
    assert (f"`pcgrad`, `equal` (seeds 0, 2) at `{measured_on[:7]}`)"
            in markdown(partly).splitlines()[0])


def test_only_the_wanted_experiments_are_read(repo: Path) -> None:
    _record(repo, SPEC, _git(repo, "rev-parse", "HEAD"))
    earlier = recorded(SPEC, Pipeline(repo, Path("dvc.yaml")), _git(repo, "rev-parse", "HEAD"),
                       {"demo-pcgrad-s1"})
    assert list(earlier) == ["demo-pcgrad-s1"]
    assert earlier["demo-pcgrad-s1"].metrics["tasks"]["left"] == {"accuracy": 0.80 + 0.01 + 0.003}


@pytest.mark.parametrize("change", [
    ("params.yaml", "train:\n  seed: 0\n  epochs: 3\n"),
    ("src/pkg/train.py", "EPOCHS = 3\n"),
    ("dvc.yaml", DVC_YAML.replace('print(1)', 'print(2)')),
    ("requirements.lock", "torch==2.15.0\n"),
])
def test_a_changed_input_runs_again(repo: Path, change: tuple[str, str]) -> None:
    measured_on = _git(repo, "rev-parse", "HEAD")
    _record(repo, SPEC, measured_on)
    (repo / change[0]).write_text(change[1])
    later = _commit(repo, f"change {change[0]}")
    pipeline = Pipeline(repo, Path("dvc.yaml"))
    assert not unchanged_since(repo, measured_on, later, pipeline_inputs(pipeline))
    assert recorded(SPEC, pipeline, later, _names(SPEC)) == {}


def test_another_row_set_or_unknown_commit_is_not_read(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    _record(repo, SPEC, head)
    pipeline = Pipeline(repo, Path("dvc.yaml"))
    relabelled = Spec("demo", (Row("equal", (("train.weighting", "dwa"),)),), seeds=(0,))
    assert recorded(relabelled, pipeline, head, _names(relabelled)) == {}
    with_set = Spec("demo", SPEC.rows, (("train.epochs", "1"),), SPEC.seeds)
    assert recorded(with_set, pipeline, head, _names(with_set)) == {}
    more_seeds = Spec("demo", SPEC.rows, seeds=(0, 1, 2, 3))
    assert set(recorded(more_seeds, pipeline, head, _names(more_seeds))) == _names(SPEC)
    _record(repo, SPEC, "0" * 40)  # a commit this clone does not have
    assert recorded(SPEC, pipeline, head, _names(SPEC)) == {}


def test_a_damaged_record_names_the_file_row_and_seed(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    result = _record(repo, SPEC, head)
    del result["rows"][1]["delta_m_pct"]["per_seed"]
    path = repo / "reports" / "comparisons" / "demo" / "comparison.json"
    path.write_text(json.dumps(result))
    label = result["rows"][1]["label"]
    with pytest.raises(ValueError, match=rf"comparison.json: row '{label}', seed 0: no "
                                         r"'per_seed' where .* restore the file from git"):
        recorded(SPEC, Pipeline(repo, Path("dvc.yaml")), head, _names(SPEC))


@pytest.mark.parametrize("change", ["edited", "untracked"])
def test_an_uncommitted_input_is_named(repo: Path, change: str) -> None:
    """compare refuses to queue on such a tree (queued experiments would run the edit while
    those already run did not); reading back compares commits only."""
    if change == "untracked":  # a stage's dependency the commit lacks, present in the tree
        _git(repo, "rm", "-q", "--cached", "src/pkg/train.py")
        _git(repo, "commit", "-q", "-m", "train.py not committed")
    head = _git(repo, "rev-parse", "HEAD")
    _record(repo, SPEC, head)
    if change == "edited":
        (repo / "params.yaml").write_text("train:\n  seed: 0\n  epochs: 3\n")
    pipeline = Pipeline(repo, Path("dvc.yaml"))
    inputs = pipeline_inputs(pipeline)
    assert uncommitted(repo, head, inputs) == [
        "params.yaml" if change == "edited" else "src/pkg/train.py"]
    assert unchanged_since(repo, head, head, inputs)
    assert set(recorded(SPEC, pipeline, head, _names(SPEC))) == _names(SPEC)


def test_uncommitted_files_outside_the_inputs_are_not_named(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("# repo\n\nnotes\n")
    (repo / "src" / "pkg" / "other.py").write_text("VALUE = 2\n")
    pipeline = Pipeline(repo, Path("dvc.yaml"))
    assert uncommitted(repo, head, pipeline_inputs(pipeline)) == []


def test_the_files_changed_between_commits_are_named(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "src" / "pkg" / "train.py").write_text("EPOCHS = 4\n")
    (repo / "README.md").write_text("# repo\n\nmore\n")
    later = _commit(repo, "train.py and README")
    inputs = pipeline_inputs(Pipeline(repo, Path("dvc.yaml")))
    assert changed_between(repo, head, later, inputs) == ["src/pkg/train.py"]
    assert changed_between(repo, "0" * 40, later, inputs) is None


def _experiment(repo: Path, name: str, changes: dict[str, str]) -> Experiment:
    """A finished experiment derived from HEAD whose commit holds ``changes`` (path ->
    text), as DVC commits one queued from a working tree with those edits; HEAD stays."""
    head = _git(repo, "rev-parse", "HEAD")
    for path, text in changes.items():
        (repo / path).write_text(text)
    rev = _commit(repo, name)
    _git(repo, "reset", "-q", "--hard", head)
    return Experiment(name, rev, "success", head, None, None, None)


def test_an_experiment_that_ran_uncommitted_code_is_refused_by_name(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    pipeline = Pipeline(repo, Path("dvc.yaml"))
    inputs = pipeline_inputs(pipeline)
    clean = _experiment(repo, "demo-equal-s0", {"params.yaml": "train:\n  seed: 1\n"
                                                "  epochs: 2\n", "README.md": "# notes\n"})
    edited = _experiment(repo, "demo-equal-s2", {"src/pkg/train.py": "EPOCHS = 9\n"})
    measures_commit(pipeline, head, [clean], inputs, queueing=True)  # overrides, docs: it stands
    with pytest.raises(ValueError, match=(
            r"experiment demo-equal-s2 ran with uncommitted changes to src/pkg/train.py "
            rf".*does not measure commit {head[:7]}: remove it \(dvc exp remove "
            r"demo-equal-s2\) and rerun")):
        measures_commit(pipeline, head, [clean, edited], inputs, queueing=False)


def test_nothing_is_queued_while_an_input_has_uncommitted_changes(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    pipeline = Pipeline(repo, Path("dvc.yaml"))
    inputs = pipeline_inputs(pipeline)
    (repo / "src" / "pkg" / "train.py").write_text("EPOCHS = 3\n")
    with pytest.raises(ValueError, match=(r"uncommitted changes to the pipeline's inputs "
                                          r"\(src/pkg/train.py\): a comparison measures one "
                                          rf"commit \({head[:7]}\).*\(git stash\)")):
        measures_commit(pipeline, head, [], inputs, queueing=True)
    measures_commit(pipeline, head, [], inputs, queueing=False)  # reading back runs nothing


def test_a_rev_is_resolved_to_its_full_hash(repo: Path) -> None:
    first = _git(repo, "rev-parse", "HEAD")
    later = _commit(repo, "later")
    assert resolve_commit(repo, "HEAD~1") == first
    assert resolve_commit(repo, later[:7]) == later
    assert resolve_commit(repo, "deadbeef") is None


def test_commits_alike_run_back_to_the_last_change_of_an_input(repo: Path) -> None:
    """A comparison reads back the experiments queued on earlier commits that run what its
    own would: the commits after the last change to an input, and that one."""
    (repo / "src" / "pkg" / "train.py").write_text("EPOCHS = 3\n")
    changed = _commit(repo, "an input")
    (repo / "README.md").write_text("# repo\n\nresults\n")
    docs = _commit(repo, "docs")
    (repo / "src" / "pkg" / "other.py").write_text("VALUE = 2\n")
    other = _commit(repo, "code no stage reads")
    inputs = pipeline_inputs(Pipeline(repo, Path("dvc.yaml")))
    assert commits_alike(repo, other, inputs) == [other, docs, changed]
    assert commits_alike(repo, docs, inputs) == [docs, changed]
    assert commits_alike(repo, other, inputs, limit=2) == [other, docs]
    (repo / "params.yaml").write_text("train:\n  seed: 0\n  epochs: 3\n")
    params = _commit(repo, "params")
    assert commits_alike(repo, params, inputs) == [params]
