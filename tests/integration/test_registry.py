"""``multitask promote`` / ``multitask registry`` on a real MLflow SQLite store.

The candidates are real runs (a LeNet HPS model logged with StageRun.log_model, test metrics
logged by an 'evaluate' stage_run) whose test metrics are chosen to land on each side of the gate.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from multitask import tracking
from multitask.cli import main as cli
from multitask.config import load_params
from multitask.models import build_model
from multitask.promotion import Scores, decide
from multitask.tasks import Task
from multitask.tracking import stage_run

ROOT = Path(__file__).resolve().parents[2]
NAME = "multifashion-sample"  # sample/params.yaml's tracking.experiment


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "sample" / "params.yaml", tmp_path / "params.yaml")
    text = (tmp_path / "params.yaml").read_text().replace("enabled: true",
                                                          "enabled: true\n  system_metrics: false")
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path


BASELINES = (0.78, 0.88)  # the single-task baselines' test accuracies of most runs here


def evaluated_run(left: float, right: float, delta_m: float, data: str | None = None,
                  baselines: tuple[float, float] | None = BASELINES) -> str:
    """A finished run with a logged model and what ``evaluate`` records: the test metrics and
    ``baselines.json`` (the baselines' test accuracies ``baselines``; None: no such file);
    ``data``: the sha256 of its processed data (the tag train sets), none when not given."""
    params = load_params("params.yaml")
    tasks = [Task("left", 10), Task("right", 10)]
    model = build_model(params.model, tasks, in_channels=1, image_size=36)
    with stage_run(params, "train") as run:
        run.log_model(model, np.zeros((2, 36, 36), dtype=np.uint8), ["left", "right"])
        if data is not None:
            run.set_tags({"data.sha256": data})
    with stage_run(params, "evaluate", run_id=run.run_id) as reopened:
        reopened.log_metrics({"test/accuracy/left": left, "test/accuracy/right": right,
                              "test/loss/left": 1 - left, "test/loss/right": 1 - right,
                              "test/delta_m_pct": delta_m,
                              "test/mean_accuracy": (left + right) / 2})
        if baselines is not None:
            report = Path(tempfile.mkdtemp()) / "baselines.json"
            report.write_text(json.dumps({"tasks": {
                task: {"accuracy": value, "loss": 1 - value}
                for task, value in zip(("left", "right"), baselines, strict=True)}}))
            reopened.log_artifact(report)
    assert run.run_id is not None
    return run.run_id


def promote(*extra: str) -> int:
    return cli(["promote", "--params", "params.yaml", *extra])


def aliases() -> dict[str, str]:
    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(NAME).aliases.items()}


def test_gate_decisions_on_hand_made_scores() -> None:
    champion = Scores({"left": 0.80, "right": 0.90}, aggregate=1.0)
    assert decide(Scores({"left": 0.81, "right": 0.91}, 2.0), champion, 0.01, "delta_m").promote
    within = decide(Scores({"left": 0.795, "right": 0.93}, 2.0), champion, 0.01, "delta_m")
    assert within.promote and "within tolerance" in within.reasons[0]
    beyond = decide(Scores({"left": 0.85, "right": 0.87}, 3.0), champion, 0.01, "delta_m")
    assert not beyond.promote
    assert beyond.reasons[1].startswith("right:") and "worse by 0.0300 > tolerance" in \
        beyond.reasons[1]
    flat = decide(Scores({"left": 0.80, "right": 0.90}, 1.0), champion, 0.01, "delta_m")
    assert not flat.promote and "does not improve" in flat.reasons[-1]
    assert decide(Scores({"left": 0.1}, -5.0), None, 0.01, "delta_m").promote


def test_promotion_first_better_worse_dry_run_and_status(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    first = evaluated_run(0.80, 0.90, 1.0)
    assert promote("--run-id", first) == 0
    assert "becomes champion" in capsys.readouterr().out
    client = mlflow.MlflowClient()
    assert aliases() == {"champion": "1"}
    tags = client.get_model_version(NAME, "1").tags
    assert float(tags["test/accuracy/left"]) == pytest.approx(0.80)
    assert float(tags["test/delta_m_pct"]) == pytest.approx(1.0)
    assert tags["gate.decision"] == "champion"

    better = evaluated_run(0.82, 0.91, 2.0)
    assert promote("--run-id", better) == 0
    assert aliases() == {"champion": "2"}

    # better on average (Δm% and mean accuracy up) but 'right' drops beyond the tolerance
    lopsided = evaluated_run(0.90, 0.88, 4.0)
    (workdir / "reports").mkdir()
    (workdir / "reports" / "train.json").write_text(f'{{"run_id": "{lopsided}"}}')
    assert promote("--dry-run") == 3  # the decision, nothing changed
    out = capsys.readouterr().out
    assert "dry run: would become challenger" in out
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2
    assert aliases() == {"champion": "2"}

    assert promote() == 3  # default: the run in reports/train.json
    out = capsys.readouterr().out
    assert "right: accuracy 0.8800 vs champion 0.9100 (-0.0300): worse by 0.0300 > " \
           "tolerance 0.0100" in out
    assert "left: accuracy 0.9000 vs champion 0.8200 (+0.0800): not worse" in out
    assert "delta_m: 4.0000 vs champion 2.0000 (+2.0000): improves" in out
    assert aliases() == {"champion": "2", "challenger": "3"}
    assert client.get_model_version(NAME, "3").tags["gate.decision"] == "challenger"

    assert cli(["registry", "--params", "params.yaml"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "champion v2" in table[1] and "challenger v3" in table[1]
    right_row = next(line for line in table if line.startswith("right accuracy"))
    assert right_row.split()[2:] == ["0.9100", "0.8800", "-0.0300"]
    assert promote("--status") == 0
    assert "champion v2" in capsys.readouterr().out


def test_missing_corrupt_or_unfinished_runs_are_clear_errors(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert promote("--run-id", "0" * 32) == 1  # no store yet: none is created to look in
    assert ("mlflow.db: no such file (MLFLOW_TRACKING_URI names it)"
            in capsys.readouterr().err)
    assert not (workdir / "mlflow.db").exists()
    tracking.client()  # the store, empty
    assert promote("--run-id", "0" * 32) == 1
    assert f"run {'0' * 32} not found in the MLflow store sqlite:///" in capsys.readouterr().err
    assert promote("--run-id", "../../etc") == 1
    assert "'../../etc' is not an MLflow run id" in capsys.readouterr().err
    assert promote() == 1
    assert "reports/train.json: not found" in capsys.readouterr().err
    (workdir / "reports").mkdir()
    (workdir / "reports" / "train.json").write_text('{"run_id": ')
    assert promote() == 1
    assert "reports/train.json: not valid JSON" in capsys.readouterr().err

    params = load_params("params.yaml")
    with pytest.raises(RuntimeError), stage_run(params, "train") as crashed:
        raise RuntimeError("diverged")
    assert promote("--run-id", str(crashed.run_id)) == 1
    assert f"run {crashed.run_id} is FAILED" in capsys.readouterr().err
    with stage_run(params, "train") as unevaluated:
        pass
    assert promote("--run-id", str(unevaluated.run_id)) == 1
    assert "no test metrics" in capsys.readouterr().err
    assert cli(["registry", "--params", "params.yaml"]) == 1
    assert (f"no registered model '{NAME}' (named by params.yaml) in sqlite:///"
            in capsys.readouterr().err)


def test_a_pickled_model_is_never_registered_or_loaded(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow.pytorch

    params = load_params("params.yaml")
    model = build_model(params.model, [Task("left", 10), Task("right", 10)], in_channels=1,
                        image_size=36)
    with stage_run(params, "train") as run:
        logged = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle")
        run.set_tags({tracking.MODEL_URI_TAG: logged.model_uri})
    with stage_run(params, "evaluate", run_id=run.run_id) as reopened:
        reopened.log_metrics({"test/accuracy/left": 0.9, "test/accuracy/right": 0.9,
                              "test/delta_m_pct": 5.0, "test/mean_accuracy": 0.9})
    assert promote("--run-id", str(run.run_id)) == 1
    error = capsys.readouterr().err
    assert (f"{logged.model_uri}: refused to load: flavours ['python_function', 'pytorch'], "
            "expected exactly multitask with its pyfunc loader") in error
    assert "a pickled model runs code when loaded" in error
    with pytest.raises(ValueError, match="refused to load"):
        tracking.load_model(logged.model_uri)
    assert mlflow.MlflowClient().search_registered_models() == []


def test_a_promoted_version_records_the_format_predict_expects(workdir: Path) -> None:
    assert promote("--run-id", evaluated_run(0.8, 0.8, 1.0)) == 0
    version = mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion")
    assert version.tags[tracking.MODEL_FORMAT_TAG] == tracking.MODEL_FORMAT


def test_an_unknown_alias_is_one_message_listing_the_aliases(workdir: Path) -> None:
    assert promote("--run-id", evaluated_run(0.8, 0.8, 1.0)) == 0
    with pytest.raises(ValueError) as caught:
        tracking.load_model(f"models:/{NAME}@nosuch")
    message = str(caught.value)
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    assert message == (f"cannot load model models:/{NAME}@nosuch from the MLflow store {store}: "
                       f"Registered model alias nosuch not found ({NAME} has aliases champion);"
                       " check the name and alias (the MLflow UI's Models page lists both), or set "
                       "MLFLOW_TRACKING_URI to the store that holds it")
    assert message.count(store) == 1 and "tracking server" not in message
    with pytest.raises(ValueError) as caught:  # a version, not an alias
        tracking.load_model(f"models:/{NAME}/7")
    assert "; check the name and version (the MLflow UI's Models page lists both)" in \
        str(caught.value)
    with pytest.raises(ValueError) as caught:  # the registered model's bare name
        tracking.load_model(NAME)
    assert str(caught.value).endswith(
        f"check the URI: a folder, runs:/<run id>/model, or a registered model as models:/{NAME}"
        "@champion (or @challenger, /<version>), or set MLFLOW_TRACKING_URI to the store that "
        "holds it")


def test_a_local_file_or_folder_that_is_no_logged_model_says_what_a_model_uri_is(
        workdir: Path) -> None:
    # the pipeline's own models/model.pt was refused as if it were a pickled model
    (workdir / "models").mkdir()
    torch.save({"state": 1}, workdir / "models" / "model.pt")
    hint = ("not a logged model (no MLmodel file); give a model URI: models:/<name>@champion, "
            "models:/<name>/<version> or runs:/<run id>/model (a pipeline's run id is in its "
            "reports/train.json)")
    for given in ("models/model.pt", "models"):
        with pytest.raises(ValueError) as caught:
            tracking.load_model(given)
        assert str(caught.value) == f"{given}: {hint}"


def test_read_only_commands_outside_a_repository_create_no_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # no .dvc or .git above a pytest temporary folder
    assert not any((folder / marker).exists() for folder in (tmp_path, *tmp_path.parents)
                   for marker in (".dvc", ".git"))
    shutil.copy(ROOT / "sample" / "params.yaml", tmp_path / "params.yaml")
    Image.fromarray(np.zeros((36, 36), dtype=np.uint8)).save(tmp_path / "x.png")
    expected = (f"MLflow store sqlite:///{tmp_path.resolve() / 'mlflow.db'}: no such file "
                f"(outside any repository (no .dvc or .git above {tmp_path.resolve()}), the "
                "store looked for is the current folder's); run from the repository whose "
                "pipeline logged the model, or set MLFLOW_TRACKING_URI to the store that holds "
                "it (nothing was created)")
    assert cli(["predict", "--model", f"models:/{NAME}@champion", "x.png"]) == 1
    assert expected in capsys.readouterr().err
    assert cli(["registry", "--params", "params.yaml"]) == 1
    assert expected in capsys.readouterr().err
    for dry_run in (("--dry-run",), ()):  # the run to promote cannot be in a store not there
        assert cli(["promote", "--params", "params.yaml", "--run-id", "a" * 32, *dry_run]) == 1
        assert expected in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "x.png"]


def test_a_task_the_champion_lacks_is_named_in_the_decision_not_gated() -> None:
    champion = Scores({"left": 0.80}, aggregate=1.0)
    candidate = Scores({"left": 0.81, "age": 3.5}, 2.0, metrics={"age": "mae"})
    decision = decide(candidate, champion, 0.01, "delta_m")
    assert decision.promote
    assert decision.reasons == [
        "left: accuracy 0.8100 vs champion 0.8000 (+0.0100): not worse",
        "age: new task, mae 3.5000: not gated, the champion has no value for it",
        "delta_m: 2.0000 vs champion 1.0000 (+1.0000), each against its own single-task "
        "baselines (not recorded for the candidate and the champion: the two may differ): "
        "improves"]


def test_delta_m_is_taken_against_one_reference_where_the_baselines_differ() -> None:
    """Trained longer, the candidate beats the champion on both tasks, but its own baselines
    (same schedule, so also longer) are stronger: its own Δm% is lower. Against the champion's
    baselines it is higher, and it is promoted."""
    champion = Scores({"left": 0.686, "right": 0.6625}, aggregate=-0.7667,
                      baselines={"left": 0.6775, "right": 0.6815})
    candidate = Scores({"left": 0.690, "right": 0.673}, aggregate=-1.6277,
                       baselines={"left": 0.6965, "right": 0.689})
    decision = decide(candidate, champion, 0.01, "delta_m")
    assert decision.promote
    # ((0.690 - 0.6775) / 0.6775 + (0.673 - 0.6815) / 0.6815) / 2 x 100 = +0.2989; the
    # champion's against its own: ((0.686 - 0.6775) / 0.6775 + (0.6625 - 0.6815) / 0.6815) / 2
    # x 100 = -0.7667
    assert decision.reasons[-1] == (
        "delta_m: 0.2989 vs champion -0.7667 (+1.0656), both against the champion's "
        "single-task baselines (the candidate's own baselines differ; against them its Δm% is "
        "-1.6277): improves")
    # the same baselines: each run's own Δm%, as recorded
    same = decide(Scores(candidate.tasks, -1.6277, baselines=champion.baselines), champion,
                  0.01, "delta_m")
    assert not same.promote
    assert same.reasons[-1] == "delta_m: -1.6277 vs champion -0.7667 (-0.8610): does not improve"
    # mean accuracy has no reference to share
    assert decide(Scores(candidate.tasks, 0.6815, baselines=candidate.baselines),
                  Scores(champion.tasks, 0.6743, baselines=champion.baselines), 0.01,
                  "mean_accuracy").reasons[-1] == \
        "mean_accuracy: 0.6815 vs champion 0.6743 (+0.0072): improves"


def test_a_value_that_is_not_a_number_never_wins() -> None:
    nan = float("nan")
    # first registered: a broken candidate is not made champion
    first = decide(Scores({"left": nan, "right": 0.5}, 1.0), None, 0.01, "delta_m")
    assert not first.promote
    assert first.reasons == ["no champion yet, but the candidate's left is not a number: it is "
                             "kept as challenger, not made champion"]
    assert not decide(Scores({"left": 0.5}, nan), None, 0.01, "delta_m").promote
    # the champion's task: not gated; its aggregate: beaten by any number
    champion = Scores({"left": 0.80, "right": nan}, aggregate=nan)
    decision = decide(Scores({"left": 0.81, "right": 0.10}, -50.0), champion, 0.01, "delta_m")
    assert decision.promote
    assert decision.reasons[1] == ("right: the champion's accuracy is not a number (nan): not "
                                   "gated (the candidate's: 0.1000)")
    assert decision.reasons[-1].endswith(": improves (the champion's is not a number)")
    # the candidate's: its task fails, its aggregate does not improve
    worse = decide(Scores({"left": nan, "right": 0.9}, nan),
                   Scores({"left": 0.8, "right": 0.8}, 1.0), 0.01, "delta_m")
    assert not worse.promote and worse.reasons[-1].endswith("does not improve")


def test_the_gate_reads_each_runs_baselines_and_records_them_on_the_version(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The candidate's baselines come from its run's baselines.json, the champion's from its
    version's tags: the helper's case of a longer schedule, end to end."""
    assert promote("--run-id", evaluated_run(0.686, 0.6625, -0.7667,
                                             baselines=(0.6775, 0.6815))) == 0
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    assert float(tags["baselines/test/accuracy/left"]) == pytest.approx(0.6775)
    assert float(tags["baselines/test/loss/right"]) == pytest.approx(1 - 0.6815)
    capsys.readouterr()
    assert promote("--run-id", evaluated_run(0.690, 0.673, -1.6277,
                                             baselines=(0.6965, 0.689))) == 0
    assert ("delta_m: 0.2989 vs champion -0.7667 (+1.0656), both against the champion's "
            "single-task baselines") in capsys.readouterr().out
    assert aliases() == {"champion": "2"}
    # a run without baselines.json: each against its own, and the decision says whose is missing
    assert promote("--run-id", evaluated_run(0.70, 0.68, -1.0, baselines=None), "--dry-run") == 0
    assert "(not recorded for the candidate: the two may differ): improves" in \
        capsys.readouterr().out


def test_a_candidate_tested_on_other_data_is_not_compared_as_if_the_same(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Test metrics on other test images say nothing about which model is better: such a
    candidate stays challenger, however much better its numbers look."""
    same, other = "a" * 64, "b" * 64
    assert promote("--run-id", evaluated_run(0.80, 0.80, 1.0, data=same)) == 0
    client = mlflow.MlflowClient()
    assert client.get_model_version(NAME, "1").tags["data.sha256"] == same
    capsys.readouterr()
    assert promote("--run-id", evaluated_run(0.95, 0.95, 9.0, data=other)) == 3
    out = capsys.readouterr().out
    assert ("data: the candidate was trained and tested on other data (sha256 bbbbbbbbbbbb) "
            "than the champion (aaaaaaaaaaaa): their metrics are not comparable") in out
    assert aliases() == {"champion": "1", "challenger": "2"}
    assert cli(["registry", "--params", "params.yaml"]) == 0
    assert ("note: challenger v2 was trained and tested on other data (sha256 bbbbbbbbbbbb) "
            "than champion v1 (aaaaaaaaaaaa): its deltas compare other test images"
            ) in capsys.readouterr().out
    # the same data: judged on its metrics as before
    assert promote("--run-id", evaluated_run(0.81, 0.81, 2.0, data=same)) == 0
    assert "data:" not in capsys.readouterr().out
    assert aliases()["champion"] == "3"


def test_a_champion_without_recorded_data_is_compared_and_says_so() -> None:
    champion = Scores({"left": 0.80}, aggregate=1.0)
    candidate = Scores({"left": 0.81}, 2.0, data="c" * 64)
    decision = decide(candidate, champion, 0.01, "delta_m")
    assert decision.promote
    assert decision.reasons[0] == "data: not recorded for the champion: compared as if the same"


def test_a_champion_tagged_in_the_earlier_key_layout_still_gates(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Versions registered before the metric moved ahead of the task carry
    ``test/<task>/<metric>`` tags; the gate reads them as today's keys, task by task."""
    assert promote("--run-id", evaluated_run(0.80, 0.90, 1.0)) == 0
    client = mlflow.MlflowClient()
    for task in ("left", "right"):
        for metric in ("accuracy", "loss"):
            value = client.get_model_version(NAME, "1").tags[f"test/{metric}/{task}"]
            client.delete_model_version_tag(NAME, "1", f"test/{metric}/{task}")
            client.set_model_version_tag(NAME, "1", f"test/{task}/{metric}", value)
    capsys.readouterr()
    assert promote("--run-id", evaluated_run(0.85, 0.70, 2.0)) == 3
    out = capsys.readouterr().out
    assert "right: accuracy 0.7000 vs champion 0.9000 (-0.2000): worse by 0.2000" in out
    assert "left: accuracy 0.8500 vs champion 0.8000 (+0.0500): not worse" in out
    assert cli(["registry", "--params", "params.yaml"]) == 0
    right_row = next(line for line in capsys.readouterr().out.splitlines()
                     if line.startswith("right accuracy"))
    assert right_row.split()[2:] == ["0.9000", "0.7000", "-0.2000"]


def test_an_experiment_name_that_cannot_name_the_model_asks_for_promote_model_name(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With no promote.model_name the experiment names the registered model; an experiment
    name MLflow's registry refuses is caught before anything is read or registered."""
    text = (workdir / "params.yaml").read_text()
    (workdir / "params.yaml").write_text(text.replace(f"experiment: {NAME}", "experiment: team/mf"))
    assert promote("--run-id", "a" * 32, "--dry-run") == 1
    assert ("params.yaml: the registered model's name 'team/mf' (promote.model_name, else "
            "tracking.experiment, else data.dataset) cannot be registered: use letters, digits, "
            "spaces and . _ @ + - only (at most 256); set promote.model_name"
            ) in capsys.readouterr().err


def test_a_tuning_trial_is_refused_and_another_experiments_run_is_pointed_out(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = load_params("params.yaml")
    with stage_run(params, "tune") as trial:
        trial.set_tags({"optuna.trial": "3", "optuna.study": "weights"})
    assert promote("--run-id", str(trial.run_id)) == 1
    assert (f"run {trial.run_id} is trial 3 of the tuning study weights: trials are scored on "
            "the validation split and never tested") in capsys.readouterr().err
    # the run of this params file's experiment, promoted with another pipeline's params
    other = workdir / "other.yaml"
    other.write_text((workdir / "params.yaml").read_text().replace(
        f"experiment: {NAME}", "experiment: other"))
    assert cli(["promote", "--params", str(other), "--run-id", evaluated_run(0.8, 0.8, 1.0),
                "--dry-run"]) == 0
    assert (f"note: the run was logged in experiment '{NAME}', not 'other' ({other}'s); check "
            "--run-id and --params") in capsys.readouterr().out


def test_ctrl_c_while_a_challenger_takes_the_champion_alias_leaves_one_alias_after_a_rerun(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert promote("--run-id", evaluated_run(0.80, 0.90, 1.0)) == 0
    lopsided = evaluated_run(0.90, 0.88, 4.0)  # 'right' drops by 0.02: challenger at 0.01
    assert promote("--run-id", lopsided) == 3
    assert aliases() == {"champion": "1", "challenger": "2"}
    text = (workdir / "params.yaml").read_text()
    (workdir / "params.yaml").write_text(text.replace("tolerance: 0.01", "tolerance: 0.05"))

    def interrupted(name: str, alias: str) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # Ctrl-C at the alias move that ends a promotion
        patch.setattr(tracking, "delete_alias", interrupted)
        assert promote("--run-id", lopsided) == 130
    assert promote("--run-id", lopsided) == 0  # the rerun finishes it
    assert aliases() == {"champion": "2"}  # v2 is not also the challenger


def test_registry_of_a_model_not_in_the_store_names_those_it_holds(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert promote("--run-id", evaluated_run(0.8, 0.8, 1.0)) == 0
    other = workdir / "other.yaml"  # the params of another pipeline, e.g. the root's
    other.write_text((workdir / "params.yaml").read_text().replace(
        f"experiment: {NAME}", "experiment: multifashion"))
    capsys.readouterr()
    assert cli(["registry", "--params", str(other)]) == 1
    assert capsys.readouterr().err == (
        f"multitask registry: error: no registered model 'multifashion' (named by {other}) in "
        f"sqlite:///{workdir / 'mlflow.db'} (it holds {NAME}); run `multitask promote` in the "
        "pipeline's folder first, or give that pipeline's --params\n")
