"""The public training session and the typed stages, called directly (no argparse, no chdir)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from multitask import keys
from multitask.config import Params, load_params
from multitask.layout import Layout
from multitask.training import session, stages
from multitask.weighting import build_weighting

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def processed(sample_composites: Callable[..., Path]) -> Path:
    return sample_composites(800, 100)


@pytest.fixture
def pipeline(tmp_path: Path, processed: Path,
             pipeline_folder: Callable[[Path, Path], Layout]) -> tuple[Params, Layout]:
    """The sample params (1 epoch, no MLflow) in a pipeline folder on the shared composites;
    the working directory stays where it is."""
    layout = pipeline_folder(tmp_path / "pipeline", processed)
    raw = yaml.safe_load((ROOT / "sample" / "params.yaml").read_text())
    raw["train"].update({"epochs": 1, "weighting": "equal", "diagnostics_every": 0})
    raw["tracking"] = {"enabled": False}
    layout.params.write_text(yaml.safe_dump(raw))
    return load_params(layout.params), layout


def test_fit_twice_gives_the_same_network(pipeline: tuple[Params, Layout]) -> None:
    params, layout = pipeline
    data = session.load_data(params, layout)
    tasks = session.task_list(params, data)
    first = session.fit(params, data, tasks, session.build_method(params, tasks, layout),
                        progress=False)
    second = session.fit(params, data, tasks, session.build_method(params, tasks, layout),
                         progress=False)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert len(first.history) == 1


def test_saved_network_loads_back(pipeline: tuple[Params, Layout]) -> None:
    params, layout = pipeline
    data = session.load_data(params, layout)
    tasks = session.task_list(params, data)
    fitted = session.fit(params, data, tasks, build_weighting("equal", len(tasks)),
                         progress=False)
    session.save_network(layout.model, fitted.model, params, data)
    loaded, payload = session.load_network(layout.model)
    assert payload["data_sha256"] == data.meta["sha256"]
    saved = fitted.model.state_dict()
    assert all(torch.equal(saved[k].cpu(), v) for k, v in loaded.state_dict().items())
    x, _ = next(data.batches("test", 8))
    fitted.model.eval()
    loaded.eval()
    with torch.no_grad():  # the trained copy is channels-last: the same maths, other rounding
        torch.testing.assert_close(fitted.model(x)["left"], loaded(x)["left"])


@pytest.mark.parametrize(("weights", "message"), [
    ({"method": "static", "weights": {"left": 0.3}}, r"no weight for task\(s\) \['right'\]"),
    ({"method": "static", "weights": [0.3, 0.7]}, "'weights' is not a mapping"),
    ({"tuned": False, "weights": None, "train_weighting": "dwa", "reason": "no study ran"},
     r"no study ran when tune wrote it \(train.weighting was 'dwa'\).*rerun multitask tune"),
    (["left", "right"], "expected a mapping"),
    ({"method": "pcgard"}, "unknown weighting method 'pcgard'"),
    ({"method": "static", "weights": {"left": -0.5, "right": 1.0}}, "must be non-negative"),
    ({"method": "static", "weights": {"left": float("nan"), "right": 1.0}},
     r"weights\.0: Input should be a finite number \(got nan\)"),
])
def test_a_bad_weights_file_is_named(pipeline: tuple[Params, Layout], weights: object,
                                     message: str) -> None:
    params, layout = pipeline
    params = params.model_copy(update={"train": params.train.model_copy(
        update={"weighting": "tuned"})})
    layout.tuned_weights.parent.mkdir(parents=True)
    layout.tuned_weights.write_text(json.dumps(weights))
    data = session.load_data(params, layout, splits=("val",))
    with pytest.raises(ValueError, match=message) as caught:
        session.build_method(params, session.task_list(params, data), layout)
    assert str(layout.tuned_weights) in str(caught.value)


@pytest.mark.slow
def test_typed_stages_run_in_their_folder(pipeline: tuple[Params, Layout]) -> None:
    params, layout = pipeline
    results = stages.baselines(params, layout)
    assert set(results) == {"left", "right"} and layout.baselines_json.is_file()
    final = stages.train(params, layout)
    assert keys.task_metric(keys.VAL, "left", keys.ACCURACY) in final
    metrics = stages.evaluate(params, layout)
    assert json.loads(layout.metrics_json.read_text()) == metrics
    assert layout.confusion_csv("left").is_file() and layout.curves_png.is_file()
    assert not layout.checkpoint("train").exists()


@pytest.mark.parametrize(("content", "cause"), [
    (b"", "not a PyTorch weights file"), (b"not a torch file", "not a PyTorch weights file"),
    ("{'weights': 1}", "not a network file of multitask train")])
def test_evaluate_names_a_broken_model_file_and_what_to_do(
        pipeline: tuple[Params, Layout], content: bytes | str, cause: str) -> None:
    params, layout = pipeline
    (layout.root / "reports").mkdir(exist_ok=True)
    layout.train_json.write_text("{}")
    layout.baselines_json.write_text(json.dumps({keys.TASKS: {}}))
    layout.model.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        torch.save(eval(content), layout.model)  # a torch file, but not a network's
    else:
        layout.model.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{layout.model}: {cause}.*; rerun multitask train "
                                         "to write it again"):
        stages.evaluate(params, layout)


@pytest.mark.parametrize(("report", "content", "message"), [
    ("train_json", "[]", r"train.json: expected a JSON object, found list; rerun multitask train"),
    ("baselines_json", '{"left": {}}', r"baselines.json: no tasks; rerun multitask baselines"),
])
def test_evaluate_names_a_report_of_the_wrong_shape(
        pipeline: tuple[Params, Layout], report: str, content: str, message: str) -> None:
    params, layout = pipeline
    (layout.root / "reports").mkdir(exist_ok=True)
    layout.train_json.write_text("{}")
    layout.baselines_json.write_text(json.dumps({keys.TASKS: {}}))
    getattr(layout, report).write_text(content)
    with pytest.raises(ValueError, match=message):
        stages.evaluate(params, layout)
