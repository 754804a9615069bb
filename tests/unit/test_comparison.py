"""`multitask compare` without DVC: rows, key validation, statistics on hand-computed values,
the table, the plot, reading DVC's answers, and the stages' thread limit."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from multitask.comparison.experiments import (
    STALLED_POLLS,
    Dvc,
    Pipeline,
    copy_sources_first,
    experiments,
    idle_workers_gone,
    queue_all,
    queue_status,
    run_to_files,
    wait,
)
from multitask.comparison.plot import plot
from multitask.comparison.references import add_references
from multitask.comparison.report import (
    Measured,
    markdown,
    paired_to_best,
    summary,
    threads_of,
)
from multitask.comparison.rows import (
    Row,
    Spec,
    apply_overrides,
    expand_rows,
    parse_assignments,
    row_params,
)
from multitask.comparison.statistics import paired, rank, summarise
from multitask.config import ConfigError
from multitask.device import available_cpus, limit_threads

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PARAMS = ROOT / "sample" / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(SAMPLE_PARAMS.read_text())


# ---------------------------------------------------------------------------------------- rows
def test_vary_gives_the_product_of_its_values_and_rows_follow() -> None:
    rows = expand_rows([["train.weighting", "equal", "pcgrad"], ["model.architecture", "hps",
                                                                   "mtan"]],
                       [("tuned", "train.weighting=tuned,train.optimizer.lr=0.01")])
    assert [row.label for row in rows] == ["equal-hps", "equal-mtan", "pcgrad-hps",
                                           "pcgrad-mtan", "tuned"]
    assert rows[2].overrides == (("train.weighting", "pcgrad"), ("model.architecture", "hps"))
    assert rows[4].overrides == (("train.weighting", "tuned"), ("train.optimizer.lr", "0.01"))


def test_set_applies_to_every_row_and_seeds_make_the_experiments() -> None:
    rows = expand_rows([["train.optimizer.lr", "0.001", "1e-2"]])
    assert [row.label for row in rows] == ["0.001", "1e-2"]
    spec = Spec("lr", rows, (("train.epochs", "3"),), (4, 7))
    assert spec.overrides(rows[1], 7) == [("train.epochs", "3"), ("train.optimizer.lr", "1e-2"),
                                          ("train.seed", "7")]
    # row by row, so the next row reuses the seeds' baselines from DVC's run cache
    assert [name for *_, name in spec.experiments()] == [
        "lr-0.001-s4", "lr-0.001-s7", "lr-1e-2-s4", "lr-1e-2-s7"]


def test_a_row_value_may_hold_commas() -> None:
    assert parse_assignments("train.weighting=static,train.method_params.static.weights="
                             "[0.4, 0.6],train.epochs=2", "--row r") == (
        ("train.weighting", "static"), ("train.method_params.static.weights", "[0.4, 0.6]"),
        ("train.epochs", "2"))


@pytest.mark.parametrize(("vary", "rows", "message"), [
    ([], [], "nothing to compare"),
    ([["train.weighting"]], [], "give a key and at least one value"),
    ([["train.weighting", "a b", "a-b"]], [], "'a-b' stands for more than one row"),
    ([], [("x", "train.epochs")], "'train.epochs' is not KEY=VALUE"),
    ([], [("bad/label", "train.epochs=2")], "--row label 'bad/label'"),
])
def test_rows_that_cannot_be_built_are_refused(vary: list, rows: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_rows(vary, rows)


# ---------------------------------------------------------------------------- key validation
def _problems(raw: dict, spec: Spec) -> str:
    with pytest.raises(ConfigError) as raised:
        row_params(spec, raw, "sample/params.yaml")
    return str(raised.value)


def test_a_misspelt_key_names_itself_the_nearest_and_the_known_keys(raw: dict) -> None:
    message = _problems(raw, Spec("x", (Row("a", (("train.epoch", "3"),)),)))
    assert message.startswith("row a: unknown key 'train.epoch'; did you mean 'train.epochs'?")
    assert "available: train.augment, train.batch_size" in message
    message = _problems(raw, Spec("x", (Row("a", (("train.epochs", "3"),)),),
                                  (("trian.epochs", "2"),)))
    assert message.startswith("--set: unknown key 'trian'; did you mean 'train'?")
    message = _problems(raw, Spec("x", (Row("a", (("train.optimizer.lrr", "1"),)),)))
    assert "unknown key 'train.optimizer.lrr'; did you mean 'train.optimizer.lr'?" in message


def test_seed_and_keys_set_twice_are_refused(raw: dict) -> None:
    message = _problems(raw, Spec("x", (Row("a", (("train.seed", "3"),)),)))
    assert "train.seed: each row runs once per seed; choose them with --seeds" in message
    message = _problems(raw, Spec("x", (Row("a", (("train.epochs", "3"),)),),
                                  (("train.epochs", "2"),)))
    assert "row a: train.epochs is also given by --set; keep one" in message


def test_values_are_validated_as_the_stage_would_with_the_row_named(raw: dict) -> None:
    spec = Spec("x", (Row("good", (("train.weighting", "pcgrad"),)),
                      Row("typo", (("train.weighting", "pcgrd"),)),
                      Row("zero", (("train.epochs", "0"),))))
    message = _problems(raw, spec)
    assert ("row typo: sample/params.yaml: train.weighting: unknown weighting method 'pcgrd'; "
            "did you mean 'pcgrad'?") in message
    assert "row zero: sample/params.yaml: train.epochs: Input should be greater than or equal" \
        in message
    assert "row good" not in message


def test_valid_rows_parse_with_their_overrides_and_free_mapping_keys(raw: dict) -> None:
    spec = Spec("x", (Row("c", (("train.weighting", "cagrad"),
                                ("train.method_params.cagrad.c", "0.25"))),
                      Row("lr", (("train.optimizer.lr", "1e-3"),))), seeds=(5,))
    parsed = row_params(spec, raw, "sample/params.yaml")
    assert parsed["c"].train.method_params["cagrad"] == {"c": 0.25}
    assert parsed["lr"].train.optimizer.lr == 0.001 and parsed["lr"].train.seed == 5
    assert raw["train"]["weighting"] == "tuned"  # the loaded mapping is not edited
    assert apply_overrides({}, [("a.b.c", "[1, 2]")]) == {"a": {"b": {"c": [1, 2]}}}


# -------------------------------------------------------------------------------- statistics
def test_mean_sample_std_and_the_t_interval_of_three_seeds() -> None:
    summary_ = summarise([1.0, 2.0, 6.0], interval=True)
    assert summary_.mean == 3.0
    assert summary_.std == pytest.approx(math.sqrt(7.0))  # (4 + 1 + 9) / (3 - 1)
    half = 4.302652729911275 * math.sqrt(7.0) / math.sqrt(3.0)  # t(0.975, 2 dof)
    assert (summary_.low, summary_.high) == (pytest.approx(3.0 - half),
                                             pytest.approx(3.0 + half))
    alone = summarise([0.5], interval=True)
    assert (alone.std, alone.low, alone.interval) == (None, None, (0.5, 0.5))


def test_rows_overlapping_the_best_interval_are_tied() -> None:
    deltas = {"a": summarise([1.0, 1.1, 1.2], interval=True),  # 1.1 ± 0.248
              "b": summarise([0.8, 0.9, 1.0], interval=True),  # 0.9 ± 0.248: overlaps a
              "c": summarise([-1.0, -0.9, -0.8], interval=True),  # -0.9: below a's interval
              "d": summarise([1.5], interval=True)}  # one seed: the point 1.5, the best
    assert rank(deltas) == [("d", True), ("a", False), ("b", False), ("c", False)]
    del deltas["d"]
    assert rank(deltas) == [("a", True), ("b", True), ("c", False)]


# ----------------------------------------------------------------------------- table and plot
def _metrics(left: float, right: float, base: tuple[float, float]) -> tuple[dict, dict]:
    delta = ((left - base[0]) / base[0] + (right - base[1]) / base[1]) / 2 * 100
    metrics = {"tasks": {"left": {"accuracy": left}, "right": {"accuracy": right}},
               "mean_accuracy": (left + right) / 2, "delta_m_pct": delta}
    return metrics, {"tasks": {"left": {"accuracy": base[0]}, "right": {"accuracy": base[1]}}}


def _result() -> dict:
    spec = Spec("demo", expand_rows([["train.weighting", "equal", "pcgrad"]]), seeds=(0, 1))
    baselines = [(0.80, 0.80), (0.82, 0.78)]
    accuracies = {"equal": [(0.79, 0.80), (0.81, 0.78)], "pcgrad": [(0.81, 0.82), (0.84, 0.80)]}
    measured = {label: [Measured(seed, f"demo-{label}-s{seed}", f"{label}{seed}" * 8,
                                 *_metrics(*accuracies[label][seed], baselines[seed]))
                        for seed in (0, 1)] for label in accuracies}
    return summary(spec, measured, pipeline="dvc.yaml", params_file="params.yaml")


def test_summary_ranks_rows_and_keeps_every_seed() -> None:
    result = _result()
    assert [row["label"] for row in result["rows"]] == ["pcgrad", "equal"]
    best = result["rows"][0]
    assert best["tasks"]["left"]["per_seed"] == [0.81, 0.84]
    assert best["tasks"]["left"]["mean"] == pytest.approx(0.825)
    assert best["tasks"]["left"]["std"] == pytest.approx(math.sqrt(2 * 0.015 ** 2))
    # Δm% per seed against that seed's baselines: (0.81/0.80 + 0.82/0.80 - 2) / 2 = +1.875%,
    # (0.84/0.82 + 0.80/0.78 - 2) / 2 = +2.50156%
    assert best["delta_m_pct"]["per_seed"] == pytest.approx([1.875, 2.5015635])
    assert best["experiments"] == ["demo-pcgrad-s0", "demo-pcgrad-s1"]
    assert result["baselines"]["right"]["per_seed"] == [0.80, 0.78]
    json.dumps(result)  # what comparison.json holds


def test_the_table_shows_mean_std_interval_ties_and_baselines() -> None:
    lines = markdown(_result()).splitlines()
    assert lines[0].startswith("`multitask compare demo` on `dvc.yaml`, seeds 0, 1:")
    rows = [line for line in lines if line.startswith("| ")][1:]
    # Δm% 2.1883 ± 0.4431 over two seeds: half-width t(0.975, 1) · s / √2 = 12.706 · 0.4431 /
    # 1.4142 = 3.981
    assert rows[0] == ("| 1 | `pcgrad` | `train.weighting=pcgrad` | 0.8250 ± 0.0212 | "
                       "0.8100 ± 0.0141 | 0.8175 ± 0.0035 | +2.19 [-1.79, +6.17] | best | — |")
    # equal's Δm% (-0.63, -0.61) lies inside that interval; minus pcgrad's seed by seed
    # (-2.50, -3.11): mean -2.81, s = 0.4323, half-width 12.706 · 0.4323 / 1.4142 = 3.884
    assert rows[1].startswith("| 2 | `equal` |")
    assert rows[1].endswith("| tied | -2.81 [-6.69, +1.08] |")
    assert rows[2] == ("| | single-task baselines | | 0.8100 ± 0.0141 | 0.7900 ± 0.0141 | "
                       "0.8000 ± 0.0000 | 0 (reference) | | |")
    alone = _result()
    alone["rows"] = alone["rows"][:1]  # one row: nothing to pair, no such column or caption
    lines = markdown(alone).splitlines()
    assert "paired" not in lines[0] and lines[2].endswith("| Δm% [95% interval] | |")
    assert lines[4].endswith("| best |") and lines[5].endswith("| 0 (reference) | |")


def test_the_paired_difference_to_the_best_separates_rows_the_overlap_calls_tied() -> None:
    """A seed that suits every row (seed 2 here) widens each row's interval alike; seed by
    seed the row is below the best every time, and the paired interval says so."""
    def row(per_seed: list[float], seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
        return {"seeds": list(seeds), "delta_m_pct": summarise(per_seed, interval=True).as_dict()}

    best, other = row([1.0, 3.0, 5.0]), row([0.5, 2.4, 4.6])
    elsewhere = row([0.5, 2.4, 4.6], seeds=(3, 4, 5))
    assert rank({"best": summarise([1.0, 3.0, 5.0], interval=True),
                 "other": summarise([0.5, 2.4, 4.6], interval=True)})[1] == ("other", True)
    differences = paired_to_best([best, other, elsewhere])
    assert differences[0] is None and differences[2] is None  # itself; not on the same seeds
    # d = (-0.5, -0.6, -0.4): mean -0.5, s = 0.1, half-width t(0.975, 2) · 0.1 / √3 = 0.2484
    assert differences[1]["per_seed"] == pytest.approx([-0.5, -0.6, -0.4])
    assert differences[1]["mean"] == pytest.approx(-0.5)
    assert differences[1]["ci_high"] == pytest.approx(-0.5 + 4.302653 * 0.1 / math.sqrt(3))
    with pytest.raises(ValueError, match="3 values against 2: the two rows must be measured"):
        paired([1.0, 2.0, 3.0], [1.0, 2.0])


def _with_threads(result: dict, counts: dict[tuple[str, int], dict | None]) -> dict:
    """``result`` with each (row, seed)'s thread counts as comparison.json holds them."""
    for row in result["rows"]:
        row["threads"] = [counts.get((row["label"], seed), {"train": 2, "baselines": 2})
                          for seed in row["seeds"]]
    return result


def test_a_train_record_gives_the_thread_counts_of_the_run_and_its_baselines() -> None:
    assert threads_of({"run_id": "a", "threads": 2, "baselines_threads": 1}) == {
        "train": 2, "baselines": 1}
    assert threads_of({"run_id": "a", "threads": None}) is None  # a GPU run
    assert threads_of({"run_id": "a"}) is None  # written before thread counts


def test_the_caption_names_the_thread_count_and_every_measurement_off_it() -> None:
    same = markdown(_with_threads(_result(), {})).splitlines()[0]
    assert same.endswith("on these seeds). Every experiment ran on 2 CPU threads.")
    # a seed's baselines restored from DVC's run cache, trained at another thread count, and
    # one experiment run with --jobs 2 (one thread each)
    mixed = markdown(_with_threads(_result(), {
        ("equal", 1): {"train": 2, "baselines": 1},
        ("pcgrad", 0): {"train": 1, "baselines": 1}})).splitlines()[0]
    assert mixed.endswith(
        "Experiments ran on 2 CPU threads except `pcgrad` seed 0: 1 CPU thread; `equal` seed "
        "1: 2 CPU threads, its baselines 1 (on the CPU the same params and seed repeat exactly "
        "only at the same thread count).")
    # a comparison extended after thread counts were recorded: the older seeds are named
    extended = markdown(_with_threads(_result(), {("equal", 0): None})).splitlines()[0]
    assert extended.endswith("Experiments ran on 2 CPU threads except `equal` seed 0: not "
                             "recorded (on the CPU the same params and seed repeat exactly only "
                             "at the same thread count).")
    # summaries written before thread counts (no "threads") say nothing of them
    assert "thread" not in markdown(_result()).splitlines()[0]
    assert "thread" not in markdown(_with_threads(_result(), {
        (label, seed): None for label in ("equal", "pcgrad") for seed in (0, 1)
    })).splitlines()[0]


def _other(seeds: list[int], left: list[float], right: list[float]) -> dict:
    """Another comparison's summary, as far as a reference needs it."""
    return {"tasks": ["left", "right"], "metrics": {"left": "accuracy", "right": "accuracy"},
            "seeds": seeds, "commit": "e613b87" + "0" * 33,
            "baselines": {"left": {"per_seed": left}, "right": {"per_seed": right}}}


def test_rows_are_also_measured_against_another_comparisons_baselines_seed_by_seed() -> None:
    result = _result()
    # the other comparison ran seeds 2, 1, 0: its baselines are matched by seed, not position
    add_references(result, {"lr": _other([2, 1, 0], [0.5, 0.84, 0.81], [0.5, 0.80, 0.81])})
    pcgrad, equal = result["rows"]
    # pcgrad seed 0: (0.81/0.81 + 0.82/0.81 - 2) / 2 = +0.6173 %; seed 1: (0.84/0.84 +
    # 0.80/0.80 - 2) / 2 = 0
    assert pcgrad["against"]["lr"]["per_seed"] == pytest.approx([0.6172840, 0.0])
    assert pcgrad["against"]["lr"]["mean"] == pytest.approx(0.3086420)
    assert pcgrad["against"]["lr"]["commit"].startswith("e613b87")
    # equal seed 0: (0.79/0.81 + 0.80/0.81 - 2) / 2 = -1.8519 %; seed 1: (0.81/0.84 +
    # 0.78/0.80 - 2) / 2 = -3.0357 %; two seeds: half-width t(0.975, 1) s / √2
    values = [-1.8518519, -3.0357143]
    assert equal["against"]["lr"]["per_seed"] == pytest.approx(values)
    half = 12.7062047 * abs(values[0] - values[1]) / math.sqrt(2) / math.sqrt(2)
    assert equal["against"]["lr"]["ci_low"] == pytest.approx(sum(values) / 2 - half)
    assert [row["delta_m_pct"] for row in result["rows"]] == \
        [row["delta_m_pct"] for row in _result()["rows"]]  # the row's own Δm% is untouched
    lines = markdown(result).splitlines()
    assert lines[0].endswith("; Δm% vs `lr`: against the single-task baselines of comparison "
                             "`lr` (commit `e613b87`), seed by seed, a reference that stays put "
                             "while the rows change.")
    table = [line for line in lines if line.startswith("|")]
    assert table[0].endswith("| Δm% [95% interval] | | paired − best | Δm% vs `lr` |")
    assert table[1] == "|---|---|---|---|---|---|---|---|---|---|"
    assert table[2].endswith("| best | — | +0.31 [-3.61, +4.23] |")
    assert table[3].endswith("| -2.81 [-6.69, +1.08] | -2.44 [-9.96, +5.08] |")
    assert table[4].endswith("| 0 (reference) | | | |")  # the baselines have no such cell


def test_a_reference_counts_lower_is_better_metrics_the_other_way() -> None:
    result = {"tasks": ["age"], "metrics": {"age": "mae"}, "confidence": 0.95,
              "rows": [{"seeds": [0, 1], "tasks": {"age": {"per_seed": [4.0, 5.0]}}}]}
    other = {"tasks": ["age"], "metrics": {"age": "mae"}, "seeds": [0, 1],
             "baselines": {"age": {"per_seed": [5.0, 4.0]}}}
    add_references(result, {"years": other})
    # an error of 4 against 5 is 20 % better; 5 against 4 is 25 % worse
    assert result["rows"][0]["against"]["years"]["per_seed"] == pytest.approx([20.0, -25.0])


@pytest.mark.parametrize(("change", "message"), [
    ({"baselines": None}, "--against lr: the rows of that comparison have baselines that "
                          "differ"),
    ({"seeds": [0, 2]}, "--against lr: that comparison has no baselines for seed 1 (its "
                        "seeds: 0, 2)"),
    ({"metrics": {"left": "accuracy", "right": "mae"}},
     "comparison 'lr' measures {'left': 'accuracy', 'right': 'mae'}, this one"),
])
def test_a_reference_that_cannot_serve_is_refused_with_its_reason(change: dict,
                                                                  message: str) -> None:
    other = _other([0, 1], [0.8, 0.8], [0.8, 0.8]) | change
    with pytest.raises(ValueError, match=re.escape(message)):
        add_references(_result(), {"lr": other})


@pytest.mark.parametrize("tasks", [2, 3])
def test_the_plot_names_each_axis_after_its_task_and_pairs_the_rows_with_the_best(
        tmp_path: Path, tasks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    drawn: list[Figure] = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig",
                        lambda self, *a, **k: (drawn.append(self), savefig(self, *a, **k))[1])
    result = _result()
    if tasks == 3:  # one panel per task
        result["tasks"].append("third")
        for row in [*result["rows"], {"baselines": result["baselines"], "tasks": {}}]:
            row["baselines"]["third"] = row["baselines"]["left"]
            if row["tasks"]:
                row["tasks"]["third"] = row["tasks"]["left"]
    plot(result, tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    (figure,) = drawn
    named = [axis.get_xlabel() for axis in figure.axes] + [figure.axes[0].get_ylabel()]
    for task in result["tasks"]:
        assert any(label.endswith(f"task {task}") for label in named), (task, named)
    # the last panel: equal's Δm% minus pcgrad's, paired by seed, pcgrad itself at 0
    last = figure.axes[-1]
    assert last.get_xlabel().startswith("Δm% minus pcgrad's, paired by seed")
    assert [tick.get_text() for tick in last.get_yticklabels()] == ["pcgrad", "equal"]
    assert len(figure.axes) == (1 if tasks == 2 else tasks) + 1
    drawn.clear()
    result["rows"] = result["rows"][:1]  # one row: nothing to pair
    plot(result, tmp_path / "one.png")
    assert len(drawn[0].axes) == (1 if tasks == 2 else tasks)


# --------------------------------------------------------------------- reading DVC's answers
class _Answers(Dvc):
    """A Dvc whose commands answer with canned output (the format of DVC 3.67)."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__(Path("."))
        self.answers = answers

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 0, self.answers[" ".join(args)], "")


def _exp(name: str, state: str | None, metrics: dict | None) -> dict:
    files = {"sample/reports/metrics.json": {"data": metrics} if metrics else
             {"error": {"type": "FileNotFoundError"}},
             "sample/reports/baselines.json": {"data": {"tasks": {}}}}
    return {"revs": [{"rev": f"{name}-rev", "name": name, "error": None if metrics else
                      {"msg": "Experiment run failed"},
                      "data": {"params": {"sample/params.yaml": {"data": {"train": {}}}},
                               "metrics": files}}],
            "executor": None if state is None else {"state": state}}


def test_experiments_are_read_from_exp_show_json() -> None:
    shown = [{"rev": "workspace", "data": {}, "experiments": None},
             {"rev": "abc", "name": "main", "experiments": [
                 _exp("a", "success", {"delta_m_pct": 1.0}), _exp("b", "failed", None),
                 _exp("c", "queued", None), _exp("d", None, {"delta_m_pct": 2.0})]}]
    found = experiments(_Answers({"exp show --json": json.dumps(shown)}),
                        Pipeline(Path("."), Path("sample/dvc.yaml")))
    assert [(e.name, e.state) for e in found] == [("a", "success"), ("b", "failed"),
                                                  ("c", "queued"), ("d", "success")]
    assert {e.baseline for e in found} == {"abc"}  # the commit each was queued on
    assert found[0].metrics == {"delta_m_pct": 1.0} and found[0].params == {"train": {}}
    assert found[0].baselines == {"tasks": {}} and found[1].metrics is None


def test_queue_status_is_parsed() -> None:
    status = ("Task     Name          Created       Status\n"
              "2388bc3  cmp-equal-s1  09:39 AM      Running\n"
              "b094f5d  cmp-equal-s0  Dec 01, 2026  Failed\n\n"
              "Worker status: 1 active, 2 idle\n")
    parsed = queue_status(_Answers({"queue status": status}))
    assert parsed.tasks == {"2388bc3": ("cmp-equal-s1", "Running"),
                            "b094f5d": ("cmp-equal-s0", "Failed")}
    assert (parsed.active, parsed.idle) == (1, 2)


def test_a_command_whose_children_outlive_it_returns_with_its_output(tmp_path: Path) -> None:
    """What `dvc queue start` does: its workers keep its stdout and stderr open after it exits.
    The call returns when the command exits (its daemon still alive), not when the daemon does,
    with the command's own output and status."""
    script = "sleep 120 & echo $!; echo warned >&2; exit 3"
    done = run_to_files(["sh", "-c", script], tmp_path, dict(os.environ))
    daemon = int(done.stdout.strip())
    try:
        assert Path(f"/proc/{daemon}").exists()  # returned while the child still holds the fds
        assert (done.returncode, done.stderr) == (3, "warned\n")
    finally:
        os.kill(daemon, signal.SIGTERM)


class _Queue(Dvc):
    """A Dvc whose `queue status` answers come from a script, one per poll; records each
    `queue start` and `queue stop` (with the number of polls left)."""

    def __init__(self, polls: list[str]) -> None:
        super().__init__(Path("."))
        self.polls, self.starts, self.stops = polls, [], []

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("queue", "start"):
            self.starts.append((len(self.polls), args[-1]))
            return subprocess.CompletedProcess(args, 0, "", "")
        if args[:2] == ("queue", "stop"):
            self.stops.append(len(self.polls))
            return subprocess.CompletedProcess(args, 0, "", "")
        return subprocess.CompletedProcess(args, 0, self.polls.pop(0), "")


def _status(states: list[str], active: int, idle: int = 0) -> str:
    tasks = ("aaaaaaa", "bbbbbbb", "ccccccc")
    rows = "".join(f"{task}  cmp-s{i}  09:39 AM  {state}\n"
                   for i, (task, state) in enumerate(zip(tasks, states, strict=True)))
    return f"Task  Name  Created  Status\n{rows}\nWorker status: {active} active, {idle} idle\n"


def test_idle_workers_of_an_earlier_start_are_stopped_once_and_waited_for() -> None:
    """A worker left idle by an earlier start would take the next task with its own
    environment: once none is busy, `dvc queue stop` asks them to leave (once), and the call
    returns when they are gone."""
    lingering = [_status(["Success"] * 3, active=0, idle=2)] * 3
    dvc = _Queue([*lingering, _status(["Success"] * 3, active=0, idle=0)])
    status = idle_workers_gone(dvc)
    assert (status.active, status.idle) == (0, 0) and dvc.polls == []
    assert dvc.stops == [len(lingering)]  # right after the first poll, not again
    busy = _Queue([_status(["Running", "Success", "Success"], active=1, idle=1)])
    assert (idle_workers_gone(busy).idle, busy.stops) == (1, [])  # its task runs on


def test_a_worker_that_left_early_is_started_again_while_work_waits() -> None:
    watched = {"aaaaaaa": "cmp-s0", "bbbbbbb": "cmp-s1", "ccccccc": "cmp-s2"}
    # s0 finished and its worker left early: one worker for two waiting experiments
    short = [_status(["Success", "Running", "Queued"], active=1)] * STALLED_POLLS
    done = [_status(["Success", "Success", "Success"], active=0)]
    dvc = _Queue([*short, *done])
    wait(dvc, watched, jobs=2, poll_s=0.0)
    assert dvc.starts == [(STALLED_POLLS + 1, "2"), (1, "2")]


def test_no_worker_is_started_when_the_work_left_needs_no_more() -> None:
    watched = {"aaaaaaa": "cmp-s0", "bbbbbbb": "cmp-s1", "ccccccc": "cmp-s2"}
    # one experiment left and one worker on it: a second worker would have nothing to do
    polls = [_status(["Success", "Success", "Running"], active=1)] * (STALLED_POLLS + 2)
    dvc = _Queue([*polls, _status(["Success", "Success", "Success"], active=0)])
    wait(dvc, watched, jobs=2, poll_s=0.0)
    assert dvc.starts == [(len(polls) + 1, "2")]


def test_a_running_task_without_a_worker_is_named_with_the_fix() -> None:
    watched = {"aaaaaaa": "cmp-s0", "bbbbbbb": "cmp-s1", "ccccccc": "cmp-s2"}
    # s1's worker was killed (kill -9): DVC shows s1 Running for good, with no worker alive;
    # s2 waits in the queue, so workers are started again for it first
    orphaned = [_status(["Success", "Running", "Queued"], active=0)] * STALLED_POLLS
    taken = [_status(["Success", "Running", "Running"], active=1)] * (STALLED_POLLS + 1)
    left = [_status(["Success", "Running", "Success"], active=0)] * STALLED_POLLS
    dvc = _Queue([*orphaned, *taken, *left])
    with pytest.raises(RuntimeError) as raised:
        wait(dvc, watched, jobs=2, poll_s=0.0)
    assert str(raised.value) == (
        "experiment cmp-s1 (task bbbbbbb) is marked Running in DVC's queue but no queue worker "
        "runs it (its worker was killed?); mark it failed with `dvc queue kill bbbbbbb` and "
        "rerun the same command: it queues cmp-s1 again and keeps the finished experiments")
    assert dvc.polls == []  # raised once nothing of ours waited, not one poll earlier
    restarted = len(taken) + len(left)  # polls left when the workers were started again
    assert dvc.starts == [(len(orphaned) + restarted, "2"), (restarted, "2")]


def test_a_running_task_whose_process_runs_is_waited_for_while_no_worker_answers(
        tmp_path: Path) -> None:
    """On a loaded machine a busy worker can miss `dvc queue status`'s reply window and count
    as gone: while the process DVC records for the task runs (and has no exit code), the task
    is waited for; once that process is gone without one, it is named as before."""
    watched = {"aaaaaaa": "cmp-s0", "bbbbbbb": "cmp-s1", "ccccccc": "cmp-s2"}
    run = tmp_path / ".dvc" / "tmp" / "exps" / "run" / ("bbbbbbb" + "0" * 33)
    run.mkdir(parents=True)
    record = run / f"{run.name}.json"
    record.write_text(json.dumps({"pid": os.getpid(), "returncode": None}))
    unanswered = [_status(["Success", "Running", "Success"], active=0)] * (STALLED_POLLS + 2)
    dvc = _Queue([*unanswered, _status(["Success", "Success", "Success"], active=0)])
    dvc.root = tmp_path
    wait(dvc, watched, jobs=1, poll_s=0.0)
    assert dvc.polls == []  # waited to the end, no error
    gone = subprocess.Popen(["true"])  # a pid that has exited
    gone.wait()
    record.write_text(json.dumps({"pid": gone.pid, "returncode": None}))
    dvc = _Queue([_status(["Success", "Running", "Success"], active=0)] * STALLED_POLLS)
    dvc.root = tmp_path
    with pytest.raises(RuntimeError, match=r"experiment cmp-s1 \(task bbbbbbb\) is marked Running"):
        wait(dvc, watched, jobs=1, poll_s=0.0)


def test_a_task_marked_running_after_its_worker_left_does_not_stop_the_rest() -> None:
    """DVC can mark a task Success well after its worker exits: the worker that left with
    tasks still queued is started again, and the late task is waited for."""
    watched = {"aaaaaaa": "cmp-s0", "bbbbbbb": "cmp-s1", "ccccccc": "cmp-s2"}
    late = [_status(["Running", "Queued", "Queued"], active=0)] * (STALLED_POLLS + 1)
    rest = [_status(["Success", "Running", "Queued"], active=1),
            _status(["Success", "Success", "Running"], active=1),
            _status(["Success", "Success", "Success"], active=0)]
    dvc = _Queue([*late, *rest])
    wait(dvc, watched, jobs=1, poll_s=0.0)
    assert dvc.polls == []
    assert dvc.starts == [(len(late) + len(rest), "1"), (len(rest) + 1, "1")]


def test_a_task_missing_from_one_status_is_waited_for_and_gone_after_the_grace() -> None:
    watched = {"aaaaaaa": "cmp-s0", "bbbbbbb": "cmp-s1", "ccccccc": "cmp-s2"}
    # a worker took s1 between DVC's read of the running tasks and its read of the queued
    taken = _status(["Success", "Running", "Queued"], active=1).replace("bbbbbbb  cmp-s1", "")
    dvc = _Queue([taken, _status(["Success", "Success", "Success"], active=0)])
    wait(dvc, watched, jobs=1, poll_s=0.0)
    assert dvc.polls == []
    removed = [taken] * STALLED_POLLS  # `dvc queue remove`: gone for good
    with pytest.raises(RuntimeError, match=r"experiment cmp-s1: no longer in `dvc queue status`"):
        wait(_Queue(removed), watched, jobs=1, poll_s=0.0)


def test_running_tasks_are_orphans_only_with_no_worker_active_for_the_grace() -> None:
    watched = {"aaaaaaa": "cmp-s0", "bbbbbbb": "cmp-s1", "ccccccc": "cmp-s2"}
    # right after `dvc queue start` a worker may not have registered yet: not an orphan
    late = [_status(["Running", "Queued", "Queued"], active=0)] * (STALLED_POLLS - 1)
    # running tasks with active workers are waited for, whatever their number
    busy = [_status(["Running", "Running", "Queued"], active=2),
            _status(["Success", "Running", "Running"], active=2)] * STALLED_POLLS
    # then both workers are killed; one started since sits idle: it runs neither task
    killed = [_status(["Success", "Running", "Running"], active=0, idle=1)] * STALLED_POLLS
    dvc = _Queue([*late, *busy, *killed])
    with pytest.raises(RuntimeError) as raised:
        wait(dvc, watched, jobs=2, poll_s=0.0)
    assert dvc.polls == []  # not one poll earlier
    message = str(raised.value)
    assert message.startswith("experiments cmp-s1 (task bbbbbbb), cmp-s2 (task ccccccc) are "
                              "marked Running in DVC's queue but no queue worker runs them")
    assert "mark them failed with `dvc queue kill bbbbbbb ccccccc` and rerun" in message


class _Interrupted(_Queue):
    """A _Queue interrupted by Ctrl-C in its poll ``at`` (counted from 0)."""

    def __init__(self, polls: list[str], at: int) -> None:
        super().__init__(polls)
        self.at = at

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("queue", "status"):
            self.at -= 1
            if self.at == -1:
                raise KeyboardInterrupt
        return super().__call__(*args, check=check)


def test_ctrl_c_names_only_the_experiments_that_go_on_each_with_its_command(
        caplog: pytest.LogCaptureFixture) -> None:
    watched = {"aaaaaaa": "cmp-s0", "bbbbbbb": "cmp-s1", "ccccccc": "cmp-s2"}
    polls = [_status(["Running", "Queued", "Queued"], active=1),
             _status(["Success", "Running", "Queued"], active=1)]  # the queue after Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        wait(_Interrupted(polls, at=1), watched, jobs=1, poll_s=0.0)
    assert caplog.messages[-1] == (
        "interrupted: 2 experiment(s) of this comparison go on in DVC's queue in the "
        "background (dvc queue status). Rerun the same command to wait for them and write the "
        "comparison; stop them with `dvc queue kill cmp-s1` (running) and `dvc queue remove "
        "cmp-s2` (not started)")  # not cmp-s0, which finished


class _Queueing(Dvc):
    """A Dvc on which the second `dvc exp run --queue` is interrupted by Ctrl-C."""

    def __init__(self) -> None:
        super().__init__(Path("."))
        self.queued: list[str] = []

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("exp", "run"):
            if self.queued:
                raise KeyboardInterrupt
            self.queued.append(args[args.index("--name") + 1])
            return subprocess.CompletedProcess(args, 0, "", "")
        rows = "".join(f"{task}  {name}  09:39 AM  {state}\n" for task, name, state in (
            ("aaaaaaa", self.queued[0], "Queued"), ("bbbbbbb", "cmp-s5", "Queued"),
            ("ccccccc", "other-s0", "Queued"), ("ddddddd", "cmp-s6", "Success")))
        return subprocess.CompletedProcess(args, 0, f"Task  Name  Created  Status\n{rows}\n"
                                           "Worker status: 0 active, 0 idle\n", "")


def test_ctrl_c_while_queueing_names_the_experiments_left_waiting_in_the_queue(
        caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline(ROOT, Path("sample/dvc.yaml"))
    planned = [("cmp-s0", [("train.seed", "0")]), ("cmp-s1", [("train.seed", "1")])]
    with pytest.raises(KeyboardInterrupt):
        queue_all(_Queueing(), pipeline, planned, pending=["cmp-s5"])
    assert caplog.messages[-1] == (
        "interrupted while queueing: 2 experiment(s) of this comparison wait in DVC's queue, "
        "not started (dvc queue status); rerun the same command to run them and write the "
        "comparison, or remove them with `dvc queue remove cmp-s0 cmp-s5`")


class _StatusFails(_Queueing):
    """As :class:`_Queueing`, and `dvc queue status` fails after the Ctrl-C."""

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("queue", "status"):
            raise subprocess.CalledProcessError(255, ["dvc", *args], "", "ERROR: lock held")
        return super().__call__(*args, check=check)


def test_ctrl_c_still_ends_as_an_interruption_when_the_queue_cannot_be_read(
        caplog: pytest.LogCaptureFixture) -> None:
    """The warning falls back to what to look at; the KeyboardInterrupt is what propagates."""
    pipeline = Pipeline(ROOT, Path("sample/dvc.yaml"))
    planned = [("cmp-s0", [("train.seed", "0")]), ("cmp-s1", [("train.seed", "1")])]
    with pytest.raises(KeyboardInterrupt):
        queue_all(_StatusFails(), pipeline, planned, pending=[])
    assert "`dvc queue status` lists what this comparison left" in caplog.messages[-1]
    # Ctrl-C in the first poll; the status read after it fails (no answer left: IndexError)
    with pytest.raises(KeyboardInterrupt):
        wait(_Interrupted([], at=0), {"aaaaaaa": "cmp-s0"}, jobs=1, poll_s=0.0)
    assert "may go on in DVC's queue" in caplog.messages[-1]


class _RewritingParams(Dvc):
    """A Dvc whose `dvc exp run --queue` is stopped by Ctrl-C with the commit checked out
    detached and the experiment's params written into the workspace's params file and staged,
    as DVC leaves them mid-queue."""

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("exp", "run"):
            subprocess.run(["git", "checkout", "-q", "--detach"], cwd=self.root, check=True)
            (self.root / "params.yaml").write_text("train:\n  weighting: dwa\n")
            subprocess.run(["git", "add", "params.yaml"], cwd=self.root, check=True)
            raise KeyboardInterrupt
        return subprocess.CompletedProcess(args, 0, "Task  Name  Created  Status\n\n"
                                           "Worker status: 0 active, 0 idle\n", "")


def test_ctrl_c_while_queueing_puts_the_params_and_the_branch_dvc_had_changed_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from multitask.comparison import run_queued

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout

    git("init", "-q", "-b", "main")
    (tmp_path / "params.yaml").write_text("train:\n  weighting: equal  # kept as written\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "pipeline")
    base = git("rev-parse", "HEAD").strip()
    (tmp_path / "notes.txt").write_text("an uncommitted file that is not an input\n")
    spec = Spec("cmp", expand_rows([["train.weighting", "dwa"]]), seeds=(0,))
    (row,) = spec.rows
    dvc = _RewritingParams(tmp_path, env={"MULTITASK_THREADS": "1"})
    with pytest.raises(KeyboardInterrupt):
        run_queued(dvc, Pipeline(tmp_path, Path("dvc.yaml")), spec, [(row, 0, "cmp-dwa-s0")], [],
                   jobs=1, base=base, inputs=["dvc.yaml", "params.yaml"])
    assert (tmp_path / "params.yaml").read_text() == (
        "train:\n  weighting: equal  # kept as written\n")
    assert git("status", "--porcelain") == "?? notes.txt\n"  # nothing staged, notes untouched
    assert git("symbolic-ref", "HEAD") == "refs/heads/main\n"  # the next commit goes on main
    assert (f"checked out main again: Ctrl-C stopped DVC while it had commit {base[:7]} "
            "checked out detached") in caplog.messages
    assert (f"put back params.yaml as commit {base[:7]} has them: Ctrl-C stopped DVC while it "
            "was writing an experiment's params into the workspace") in caplog.messages


@pytest.mark.parametrize("folder", [".", "sample", "examples/fashion-manifest"])
def test_a_queued_stage_imports_its_copys_package_not_the_workspaces(tmp_path: Path,
                                                                      folder: str) -> None:
    """The package is installed editable from this workspace; a stage running in a copy (its
    folder the root or sample/) must import the copy's src/ instead."""
    package = tmp_path / "copy" / "src" / "multitask"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("WHERE = 'the copy'\n")
    cwd = tmp_path / "copy" / folder
    cwd.mkdir(parents=True, exist_ok=True)
    env = Dvc(tmp_path).env
    assert env["PYTHONPATH"].startswith(copy_sources_first())
    done = subprocess.run([sys.executable, "-c", "import multitask; print(multitask.WHERE)"],
                          cwd=cwd, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "the copy"
    alone = subprocess.run([sys.executable, "-c", "import multitask; print(multitask.__file__)"],
                           cwd=cwd, capture_output=True, text=True, check=True)
    assert not alone.stdout.startswith(str(tmp_path))  # without it: the workspace's package


# ------------------------------------------------------------------------- command and threads
@pytest.mark.parametrize(("seeds", "message"), [
    (["0", "-1"], "--seeds 0 -1: -1 is negative; train.seed takes 0 or more"),
    (["1", "1"], "--seeds 1 1: give distinct seeds")])
def test_bad_seeds_are_named_once_before_any_dvc_command(seeds: list[str], message: str
                                                         ) -> None:
    done = subprocess.run([sys.executable, "-m", "multitask", "compare", "x", "--vary",
                           "train.weighting", "equal", "dwa", "--seeds", *seeds, "--pipeline",
                           "sample/dvc.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.count(message) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_typo_exits_1_before_any_dvc_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "multitask", "compare", "x", "--vary",
                           "train.weightng", "equal", "--pipeline", "sample/dvc.yaml"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert ("multitask compare: error: row equal: unknown key 'train.weightng'; did you mean "
            "'train.weighting'?") in done.stderr
    assert "Traceback" not in done.stderr


def test_against_a_comparison_that_was_never_run_exits_1_before_any_dvc_command() -> None:
    done = subprocess.run([sys.executable, "-m", "multitask", "compare", "x", "--vary",
                           "train.weighting", "equal", "--pipeline", "sample/dvc.yaml",
                           "--against", "never-run"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert ("multitask compare: error: --against never-run: no "
            f"{ROOT / 'sample' / 'reports' / 'comparisons' / 'never-run' / 'comparison.json'}"
            ) in done.stderr
    assert "Traceback" not in done.stderr


def test_multitask_threads_limits_torch_and_is_shared_under_torchrun(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("MULTITASK_THREADS", raising=False)
        # unset: the CPUs this process may use (tests/unit/test_threads.py: affinity, quota)
        assert limit_threads() == available_cpus() == torch.get_num_threads()
        monkeypatch.setenv("MULTITASK_THREADS", "1")
        assert limit_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("MULTITASK_THREADS", "5")
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert limit_threads() == 2
        monkeypatch.setenv("MULTITASK_THREADS", "two")
        with pytest.raises(ValueError, match="MULTITASK_THREADS='two': expected a whole number"):
            limit_threads()
    finally:
        torch.set_num_threads(before)
