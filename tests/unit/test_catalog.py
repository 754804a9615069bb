"""`multitask methods`: every weighting method and architecture params.yaml accepts, by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torch import Tensor

from multitask import catalog, cli
from multitask.models import ARCHITECTURES
from multitask.weighting import METHODS, LossWeighting


def run(capsys: pytest.CaptureFixture[str], json_output: bool) -> str:
    assert catalog.show(as_json=json_output) == 0
    return capsys.readouterr().out


def test_json_lists_exactly_the_registered_names_plus_tuned(
        capsys: pytest.CaptureFixture[str]) -> None:
    listed = json.loads(run(capsys, json_output=True))
    assert listed == {
        "weighting": [*sorted(METHODS), "tuned"],
        "architectures": sorted(ARCHITECTURES),
    }
    assert {"equal", "static", "tuned"} <= set(listed["weighting"])
    assert {"hps", "mtan", "mmoe", "cross_stitch"} <= set(listed["architectures"])


def test_text_gives_one_line_per_name_with_its_description(
        capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys, json_output=False).splitlines()
    expected = {
        **{name: cls.description for name, cls in METHODS.items()},
        "tuned": catalog.TUNED_DESCRIPTION,
        **{name: description for name, (_, description) in ARCHITECTURES.items()},
    }
    for name, description in expected.items():
        matching = [line for line in lines if line.split()[:1] == [name]]
        assert len(matching) == 1, name
        assert matching[0].rstrip().endswith(description)
    assert "weighting methods (train.weighting):" in lines
    assert "architectures (model.architecture):" in lines


def test_a_newly_registered_method_is_listed_without_touching_the_catalog(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    class Halves(LossWeighting):
        name = "halves"
        description = "every weight one half"

        def weights(self, losses: Tensor) -> Tensor:
            return losses.new_full(losses.shape, 0.5)

    monkeypatch.setitem(METHODS, Halves.name, Halves)
    assert "halves" in json.loads(run(capsys, json_output=True))["weighting"]
    assert any(line.split()[:1] == ["halves"] and line.endswith("every weight one half")
               for line in run(capsys, json_output=False).splitlines())


def test_cli_routes_methods_to_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["methods", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architectures"] == list(catalog.architectures())


@pytest.mark.slow
def test_cli_methods_json_prints_the_catalogue_in_a_fresh_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "multitask", "methods", "--json"],
        capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(result.stdout) == {
        "weighting": list(catalog.weighting_methods()),
        "architectures": list(catalog.architectures()),
    }


def test_tuned_says_the_tune_stage_may_choose_a_method_not_only_weights() -> None:
    # with tune.methods: [static, uncertainty] weights.json may name "uncertainty", and
    # train.weighting: tuned then trains with it (tests/integration/test_tuning.py)
    assert "method" in catalog.TUNED_DESCRIPTION and "tune.methods" in catalog.TUNED_DESCRIPTION
    assert not catalog.TUNED_DESCRIPTION.startswith("fixed weights chosen")
