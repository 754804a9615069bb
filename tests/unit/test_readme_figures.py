"""Figures the README quotes in its prose agree with the committed files they come from.

The rendered blocks are test_readme.py's; these are the numbers written by hand around them:
a sentence or table that quotes a report, a comparison or a benchmark row, a parameter count
(the model built on the CPU), a count of tests or methods. Reports are read as the last commit
holds them: `make repro` on another CPU rewrites the workspace's with that CPU's floats.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _readme() -> str:
    """README.md with its line breaks folded, so a figure split over two lines still matches."""
    return " ".join((ROOT / "README.md").read_text().split())


def _committed(path: str) -> str:
    shown = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True,
                           text=True)
    if shown.returncode != 0:
        pytest.skip(f"no committed {path} (not a git checkout?)")
    return shown.stdout


def _signed(value: float, digits: int) -> str:
    """As the README writes a signed figure: a minus sign, not a hyphen."""
    return f"{value:.{digits}f}".replace("-", "−")


def test_the_example_gradient_figures_are_its_last_epoch_in_history_csv() -> None:
    history = list(csv.DictReader(io.StringIO(
        _committed("examples/fashion-manifest/reports/plots/history.csv"))))
    last = history[-1]
    category, height = (float(last["grad/norm/category"]), float(last["grad/norm/height_px"]))
    cosine = float(last["grad/cos/category__height_px"])
    found = re.search(r"the category loss's gradient on the shared encoder is ([\d.]+) times the "
                      r"height loss's \(norms ([\d.]+) against ([\d.]+), .*?\) and nearly "
                      r"orthogonal to it \(cosine ([−\d.]+)\)", _readme())
    assert found, "README.md, A heterogeneous example: the gradient sentence is gone"
    assert found.groups() == (f"{category / height:.1f}", f"{category:.2f}", f"{height:.2f}",
                              _signed(cosine, 3)), (
        "README.md, A heterogeneous example: the gradient figures differ from the last epoch "
        "of examples/fashion-manifest/reports/plots/history.csv")


# (the README's words around a parameter count, with {n} where the count stands; the model;
# how many networks of it the count covers)
PARAMETER_COUNTS = [
    ("one LeNet and two heads, {n} parameters", {"architecture": "hps"}, 2, 1),
    ("the two single-task networks together (2 × {n})", {"architecture": "hps"}, 1, 1),
    ("the two single-task LeNets together ({n} parameters)", {"architecture": "hps"}, 1, 2),
    ("after each stage: {n} parameters", {"architecture": "cross_stitch", "stitch": "scalar"},
     2, 1),
    ("(`model.stitch: linear`, {n} parameters",
     {"architecture": "cross_stitch", "stitch": "linear"}, 2, 1),
    ("MMoE (4 experts; {n} parameters)", {"architecture": "mmoe"}, 2, 1),
    ("(`model.architecture: branched`, {n} parameters", {"architecture": "branched"}, 2, 1),
    ("MTAN ({n})", {"architecture": "mtan"}, 2, 1),
    ("`model.width: 2` doubles its channels and features, {n} parameters with two heads",
     {"architecture": "hps", "width": 2}, 2, 1),
    ("single-task LeNets of width 2 ({n} parameters each)", {"architecture": "hps", "width": 2},
     1, 1),
    ("with scalar units, {n} parameters",
     {"architecture": "cross_stitch", "stitch": "scalar", "width": 1.5}, 2, 1),
    ("against single-task LeNets of {n})", {"architecture": "hps", "width": 1.5}, 1, 1),
    ("they would take the pair to {n} parameters",
     {"architecture": "cross_stitch", "stitch": "linear", "width": 1.5}, 2, 1),
    ("(width 1.4, shifts, 50 epochs, {n} parameters)",
     {"architecture": "cross_stitch", "stitch": "linear", "width": 1.4}, 2, 1),
    ("a single-task LeNet of that width has {n}", {"architecture": "hps", "width": 1.4}, 1, 1),
]


@pytest.mark.parametrize(("words", "model", "tasks", "networks"), PARAMETER_COUNTS,
                         ids=[words for words, *_ in PARAMETER_COUNTS])
def test_a_parameter_count_is_what_the_model_code_builds(
        words: str, model: dict[str, object], tasks: int, networks: int) -> None:
    """Each count is of the network `build_model` gives for MultiFashion (1×36×36, 10-way
    tasks), the single-task ones with one head."""
    from multitask.config import ModelConfig
    from multitask.data.processed import task_of
    from multitask.models import build_model

    heads = [task_of({"name": name, "classes": 10}) for name in ("left", "right")[:tasks]]
    network = build_model(ModelConfig(**model), heads, 1, 36)
    count = networks * sum(parameter.numel() for parameter in network.parameters())
    readme = _readme()
    assert words.format(n=f"{count:,}") in readme, (
        f"README.md: {model} builds {count:,} parameters; the README says "
        + (re.search(re.escape(words).replace(re.escape("{n}"), r"[\d,]+"), readme)
           or [f"nothing like {words!r}"])[0])


def _plain() -> str:
    """The README folded, with minus signs as hyphens and without bold marks."""
    return _readme().replace("−", "-").replace("**", "")


def _comparison(name: str) -> dict[str, dict]:
    """A committed `multitask compare` result of the root pipeline, its rows by label."""
    result = json.loads(_committed(f"reports/comparisons/{name}/comparison.json"))
    return {row["label"]: row for row in result["rows"]}


def _interval(summary: dict[str, float]) -> str:
    return f"{summary['mean']:+.2f} [{summary['ci_low']:+.2f}, {summary['ci_high']:+.2f}]"


def _spread(summary: dict[str, float]) -> str:
    return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def test_the_schedule_tables_are_the_short_and_fast_comparisons() -> None:
    """The tables of "10 epochs, not 15" and "7 epochs, not 10" copy reports/comparisons/short
    and fast (per seed, mean and interval, against their own, 15- and 20-epoch baselines)."""
    rows = {**_comparison("short"), **_comparison("fast")}
    readme = _plain()
    for epochs in (10, 8):
        row = rows[f"e{epochs}"]
        cells = [row["delta_m_pct"], row["against"]["epochs"], row["against"]["lr"]]
        line = f"| {epochs} epochs | " + " | ".join(
            ", ".join(f"{value:+.2f}" for value in cell["per_seed"]) + ": " + _interval(cell)
            for cell in cells) + " |"
        assert line in readme, f"README.md, 10 epochs, not 15: no row {line}"
    for epochs in (10, 8, 7, 6, 5):
        row = rows[f"e{epochs}"]
        line = (f"| {epochs} | {_spread(row['tasks']['left'])} | {_spread(row['tasks']['right'])}"
                f" | {_interval(row['delta_m_pct'])} | {_interval(row['against']['epochs'])} | "
                f"{_interval(row['against']['lr'])} |")
        assert line in readme, f"README.md, 7 epochs, not 10: no row {line}"


def test_the_opening_figures_are_the_default_and_long_profile_comparisons() -> None:
    """The opening's default (DB-MTL, five seeds: `default-weighting`), the figures of equal
    weights, the default before, in "Why this default" (`fast`'s `e7`), and the long profile."""
    from multitask.comparison.statistics import paired

    rows = _comparison("default-weighting")
    default, equal = rows["dbmtl"], rows["equal"]
    before, long = _comparison("fast")["e7"], _comparison("long-linear")["w1.4-shift2-e50"]
    readme = _plain()
    tasks = default["tasks"]
    difference = paired(equal["delta_m_pct"]["per_seed"], default["delta_m_pct"]["per_seed"])
    expected = [
        f"each of seeds 0 to 4 after 7 epochs, {tasks['left']['mean']:.4f} / "
        f"{tasks['right']['mean']:.4f} on average, Δm% {default['delta_m_pct']['mean']:+.2f} "
        f"with a 95% interval of [{default['delta_m_pct']['ci_low']:+.2f}, "
        f"{default['delta_m_pct']['ci_high']:+.2f}]",
        f"(paired, equal weights {difference.mean:+.2f} [{difference.low:+.2f}, "
        f"{difference.high:+.2f}];",
        f"the same network gave {before['delta_m_pct']['mean']:+.2f} with a 95% interval of "
        f"[{before['delta_m_pct']['ci_low']:+.2f}, {before['delta_m_pct']['ci_high']:+.2f}] "
        "over seeds 0, 1 and 2",
        f"tied those of 15 epochs ({_interval(before['against']['epochs'])})",
        f"the 20-epoch ones ({_interval(before['against']['lr'])})",
        f"reaches {_spread(long['tasks']['left'])} / {_spread(long['tasks']['right'])} test "
        "accuracy over seeds 0, 1 and 2",
        f"Δm% {long['delta_m_pct']['mean']:+.2f} with a 95% interval of "
        f"[{long['delta_m_pct']['ci_low']:+.2f}, {long['delta_m_pct']['ci_high']:+.2f}]",
    ]
    for words in expected:
        assert words in readme, f"README.md's opening: no {words!r}"


def test_the_tracking_server_tests_are_counted_as_pytest_collects_them() -> None:
    files = ["tests/integration/test_tracking_server.py",
             "tests/unit/test_tracking_server_script.py"]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
         "--collect-only", "-q", "-m", "slow", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    counts = re.search(r"(\d+)/\d+ tests collected \((\d+) deselected\)", collected.stdout)
    assert counts, collected.stdout[-2000:] + collected.stderr[-2000:]
    slow, fast = counts.groups()
    assert f"These are {slow} slow tests and {fast} fast ones." in _readme(), (
        f"README.md, One tracking server for a team: {' and '.join(files)} hold {slow} slow "
        f"and {fast} fast tests")


def _half_minutes(seconds: float) -> str:
    halves = round(seconds / 30)
    return f"{halves // 2}½" if halves % 2 else f"{halves // 2}"


def test_the_fresh_clone_benchmark_durations_are_their_rows_sums() -> None:
    """Benchmarks: how long `ci`, `repro` and `compare` take, from reports/benchmarks.json."""
    groups = json.loads(_committed("reports/benchmarks.json"))
    rows = {group: {row["name"]: row["value"] for row in entry["rows"]}
            for group, entry in groups.items()}
    ci = sum(value for name, value in rows["ci"].items()
             if name.endswith("_s") and not name.startswith("ci_pr_job_"))
    repro = rows["repro"]["make_repro_setup_warm_pip_cache_s"] + rows["repro"]["make_repro_s"]
    compare = sum(value for name, value in rows["compare"].items() if name.endswith("/wall_s"))
    words = (f"take about {_half_minutes(ci)}, {_half_minutes(repro)} and "
             f"{_half_minutes(compare)} minutes on the 2-core AMD EPYC (the sums of their timed "
             f"rows: `ci` {ci:,.1f} s, setup with a cold and a warm pip cache included, "
             f"{groups['ci']['measured_at'][:10]}; `repro` "
             f"setup {rows['repro']['make_repro_setup_warm_pip_cache_s']:.0f} s and the pipeline "
             f"{rows['repro']['make_repro_s']:.0f} s, {groups['repro']['measured_at'][:10]}; "
             f"`compare` {compare:,.1f} s for its three comparisons, "
             f"{groups['compare']['measured_at'][:10]})")
    assert words in _readme(), f"README.md, Benchmarks: expected {words!r}"


def _rounded(value: float, digits: int) -> str:
    """Rounded half up on the decimal digits, as a person reads 70.5 ms as 71."""
    step = Decimal(1).scaleb(-digits)
    return f"{Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_UP):,}"


def _peer(tasks: int, layout: str) -> list[tuple[str, str, int]]:
    """One row of the TorchJD table: per-task gradients here and TorchJD's, UPGrad both ways."""
    suffix = "" if layout == "channels_last" else "@contiguous"
    engine = (f"weighting/T{tasks}/parameter_gradients{suffix}_vs_peer_torchjd:mean{suffix}")
    upgrad = f"weighting/T{tasks}/upgrad{suffix}_vs_peer_torchjd:upgrad{suffix}"
    return [(engine, "cpu_ms", 0), (engine, "peer_cpu_ms", 0), (upgrad, "cpu_ms", 0),
            (upgrad, "peer_cpu_ms", 0)]


# (the README's words with {} where a figure stands; for each, the benchmarks.json row, its
# field and the decimals shown)
BENCHMARK_FIGURES = [
    ("a cross-stitch training step on two threads took {} ms idle with the short spin, {} ms "
     "with GNU OpenMP's default long spin and {} ms sleeping at once; beside two spinning "
     "processes, {} ms sleeping at once, {} ms with the short spin and {} ms with the long one "
     "(one thread: {} to {} ms). `dvc repro --force sample/dvc.yaml` took {} s idle and {} s "
     "beside two spinning processes, against {} s there",
     [(f"contention_step_ms_{name}", "value", 0) for name in (
         "idle_2t_short_spin", "idle_2t_spinning", "idle_2t_passive", "load2_2t_passive",
         "load2_2t_short_spin", "load2_2t_spinning", "load2_1t_spinning",
         "load2_1t_short_spin")]
     + [(f"contention_repro_sample_s_{name}", "value", 0) for name in (
         "idle_defaults", "loaded_defaults", "loaded_all_cores_spinning")]),
    ("the hard-sharing step from {} to {} ms on one thread and {} to {} ms on two; the "
     "cross-stitch step (the default) is unchanged within noise ({} vs {} ms on one thread, {} "
     "vs {} ms on two)",
     [(f"allocator_step_ms_{name}", "value", 1) for name in (
         "hps_1t_glibc_defaults", "hps_1t_kept", "hps_2t_glibc_defaults", "hps_2t_kept",
         "cross_stitch_1t_glibc_defaults", "cross_stitch_1t_kept",
         "cross_stitch_2t_glibc_defaults", "cross_stitch_2t_kept")]),
    ("first convolution {} ms channels-last, {} contiguous, {} weight-gradient-as-convolution, {} "
     "im2col; second {} ms channels-last, {} contiguous, {} and {}.",
     [(f"layers_{layer}_{form}_forward_backward_AVX512", "value", 1 if form != "im2col" or
       layer == "conv2" else 0)
      for layer in ("conv1", "conv2")
      for form in ("onednn_channels_last", "onednn_contiguous", "weight_grad_as_conv",
                   "im2col")]),
    ("hard sharing {} ms compiled against {} ms eager, cross-stitch {} against {} ms, after {} s "
     "and {} s of compilation",
     [(f"compile_step_ms_{name}", "value", 1) for name in (
         "hps_compiled", "hps_eager", "cross_stitch_compiled", "cross_stitch_eager")]
     + [(f"compile_first_5_steps_s_{name}_compiled", "value", 0)
        for name in ("hps", "cross_stitch")]),
    ("preprocessed them at {} images/s with at most {} MiB of the process's own (anonymous) "
     "memory",
     [("manifest preprocess, 200000 PNG 64x64x3", "value", 0),
      ("manifest preprocess, peak anonymous memory", "value", 0)]),
    ("peaked at {} MiB of anonymous memory against {} MiB with the split loaded whole, at the "
     "same speed ({} against {} images/s",
     [("train peak anonymous memory, memory-mapped", "value", 0),
      ("train peak anonymous memory, loaded whole", "value", 0),
      ("train images/s, CPU, memory-mapped", "value", 0),
      ("train images/s, CPU, loaded whole", "value", 0)]),
    ("2 processes (1 thread each) train at {}× the speed of one process with 2 threads (equal "
     "weighting) and {}× (MGDA",
     [("train images/s, 2 process(es), CPU, equal", "extra_note", 2),
      ("train images/s, 2 process(es), CPU, mgda", "extra_note", 2)]),
    ("download {} s, validate {} s, preprocess {} s, pretrain {} s, tune {} s, baselines {} s, "
     "train {} s, evaluate {} s",
     [(f"make_repro_stage_{stage}_s", "value", 0) for stage in (
         "download", "validate", "preprocess", "pretrain", "tune", "baselines", "train",
         "evaluate")]),
    ("one step of `equal` took {} ms of CPU at 2 tasks and {} ms at 10.",
     [(f"weighting/T{tasks}/equal/step_cpu_ms", "value", 1) for tasks in (2, 10)]),
    *((f"| {tasks} | {title} | {{}} ms | {{}} ms | {{}} ms | {{}} ms |", _peer(tasks, layout))
      for tasks in (2, 10)
      for layout, title in (("channels_last", "channels-last (the trainer's)"),
                            ("contiguous", "contiguous"))),
]


@pytest.mark.parametrize(("words", "figures"), BENCHMARK_FIGURES,
                         ids=[words[:40] for words, _ in BENCHMARK_FIGURES])
def test_a_benchmark_figure_in_the_prose_is_its_row_in_benchmarks_json(
        words: str, figures: list[tuple[str, str, int]]) -> None:
    groups = json.loads(_committed("reports/benchmarks.json"))
    rows = {row["name"]: row for entry in groups.values() for row in entry["rows"]}
    values = []
    for name, field, digits in figures:
        value = rows[name][field]
        if isinstance(value, str):  # "0.85x one process"
            value = float(value.split("x")[0])
        values.append(_rounded(value, digits))
    expected = words.format(*values)
    assert expected in _readme(), f"README.md: expected, from reports/benchmarks.json: {expected}"


def test_the_example_network_time_is_its_committed_train_json() -> None:
    train = json.loads(_committed("examples/fashion-manifest/reports/train.json"))
    assert (f"network {train['seconds']:.1f} s (`seconds` in `reports/train.json`;"
            in _readme()), ("README.md, A heterogeneous example: the committed network's "
                            f"time is {train['seconds']} s (reports/train.json)")


def test_the_pretraining_reading_is_the_committed_study() -> None:
    """"What it buys on MultiFashion": the gains it reads off reports/pretraining/study.json."""
    rows = json.loads(_committed("reports/pretraining/study.json"))["rows"]

    def mean(fraction: float, start: str, figure: str) -> float:
        values = [row["delta_m_pct"] if figure == "delta_m" else 100 * row["accuracy"][figure]
                  for row in rows if row["fraction"] == fraction and row["start"] == start]
        return statistics.mean(values)

    def gain(fraction: float, figure: str) -> str:
        return _rounded(mean(fraction, "self_supervised", figure)
                        - mean(fraction, "scratch", figure), 1)

    words = (f"lifts task `left` by about {gain(0.05, 'left')} points and `right` by about "
             f"{gain(0.05, 'right')}, about three standard deviations apart; with 20%, by about "
             f"{gain(0.2, 'left')} and {gain(0.2, 'right')};")
    improves = (f"Δm% improves at every fraction (by about {gain(0.05, 'delta_m')}, "
                f"{gain(0.2, 'delta_m')} and {gain(1.0, 'delta_m')} points)")
    readme = _readme()
    assert words in readme, f"README.md, Pretrained encoders: expected {words!r}"
    assert improves in readme, f"README.md, Pretrained encoders: expected {improves!r}"


def test_the_one_seed_method_and_architecture_figures_are_method_comparison_json() -> None:
    """Results and the 15-epoch tables' reading quote reports/method_comparison.json."""
    entries = json.loads(_committed("reports/method_comparison.json"))
    methods = entries["default@15"]["methods"]
    tuned, baselines = methods["tuned"], entries["default@15"]["baselines"]
    delta = {name: result["delta_m_pct"] for name, result in methods.items()}
    means = [result["mean_accuracy"] for result in methods.values()]
    architectures = {name: entries[f"{name}@15"]["methods"]["equal"]["delta_m_pct"]
                     for name in ("mmoe", "cross_stitch", "mtan")}
    expected = [
        f"left {tuned['tasks']['left']['accuracy']:.4f}, right "
        f"{tuned['tasks']['right']['accuracy']:.4f} against {baselines['left']:.4f} / "
        f"{baselines['right']:.4f} after 15 epochs, Δm% {_signed(tuned['delta_m_pct'], 2)}",
        f"every weighting method lay between {_signed(min(delta.values()), 1)} and "
        f"{_signed(max(delta.values()), 1)}",
        f"within {math.ceil(1000 * (max(means) - min(means))) / 10} points of mean accuracy of "
        "each other "
        f"({min(means):.3f} to {max(means):.3f})",
        f"DB-MTL's log losses come first (Δm% {_signed(delta['dbmtl'], 2)})",
        f"(Δm% {architectures['mmoe']:+.2f} and {architectures['cross_stitch']:+.2f}), and MTAN "
        f"(63,680) matches them ({_signed(architectures['mtan'], 2)}), while hard sharing "
        f"(31,910) pays for its single 50-unit shared layer with {_signed(delta['equal'], 2)}",
    ]
    readme = _readme()
    for words in expected:
        assert words in readme, f"README.md: expected, from method_comparison.json: {words!r}"


def _seeds(row: dict, task: str) -> list[float]:
    return row["tasks"][task]["per_seed"]


def _listed(items: list[str]) -> str:
    """"a, b and c", as the README lists the seeds."""
    return ", ".join(items[:-1]) + f" and {items[-1]}"


def test_the_results_prose_quotes_the_comparisons_seed_by_seed() -> None:
    """Results on MultiFashion: per-seed accuracies and Δm% written out in the paragraphs."""
    candidates, lr = _comparison("candidates")["equal"], _comparison("lr")["lr2e-3"]
    stitch, epochs = _comparison("stitch")["linear"], _comparison("epochs")["e15"]
    short, fast = _comparison("short"), _comparison("fast")
    long = _comparison("long-linear")["w1.4-shift2-e50"]

    def deltas(row: dict) -> str:
        return _listed([f"{value:+.2f}" for value in row["delta_m_pct"]["per_seed"]])

    def pairs(row: dict) -> str:
        return ", ".join(f"{left} / {right}" for left, right in
                         zip(_seeds(row, "left"), _seeds(row, "right"), strict=True))

    expected = [
        f"Δm% {deltas(candidates)} (seed 2: left {_seeds(candidates, 'left')[2]} against "
        f"{candidates['baselines']['left']['per_seed'][2]}, right "
        f"{_seeds(candidates, 'right')[2]} against "
        f"{candidates['baselines']['right']['per_seed'][2]}), mean "
        f"{candidates['delta_m_pct']['mean']:+.2f} with a 95% interval of "
        f"[{candidates['delta_m_pct']['ci_low']:+.2f}, "
        f"{candidates['delta_m_pct']['ci_high']:+.2f}]",
        f"({deltas(lr)}, seed 2's right task a hair under its single-task network's, "
        f"{_seeds(lr, 'right')[2]} against {lr['baselines']['right']['per_seed'][2]}; mean "
        f"{lr['delta_m_pct']['mean']:+.2f}, 95% interval [{lr['delta_m_pct']['ci_low']:+.2f}, "
        f"{lr['delta_m_pct']['ci_high']:+.2f}])",
        "Δm% " + _listed([f"{delta:+.2f} ({left:.4f} / {right:.4f})" for delta, left, right in zip(
            stitch["delta_m_pct"]["per_seed"], _seeds(stitch, "left"), _seeds(stitch, "right"),
            strict=True)]),
        f"per seed {pairs(epochs)})",
        f"Δm% is {deltas(epochs)}, mean {epochs['delta_m_pct']['mean']:+.2f}, 95% interval "
        f"[{epochs['delta_m_pct']['ci_low']:+.2f}, {epochs['delta_m_pct']['ci_high']:+.2f}]",
        f"(per seed {pairs(short['e10'])})",
        "5 epochs miss 0.80 on task `left` on every seed ("
        + ", ".join(str(value) for value in _seeds(fast["e5"], "left")) + ")",
        f"7 epochs keep both tasks of every seed above 0.804 ({pairs(fast['e7'])})",
    ]
    for seed in range(3):
        expected.append(
            f"| {seed} | {long['baselines']['left']['per_seed'][seed]} / "
            f"{long['baselines']['right']['per_seed'][seed]} | {_seeds(long, 'left')[seed]} / "
            f"{_seeds(long, 'right')[seed]} | {long['delta_m_pct']['per_seed'][seed]:+.2f} |")
    expected.append(
        f"| mean ± std | {_spread(long['baselines']['left'])} / "
        f"{_spread(long['baselines']['right'])} | {_spread(long['tasks']['left'])} / "
        f"{_spread(long['tasks']['right'])} | {_interval(long['delta_m_pct'])} |")
    readme = _plain()
    for words in expected:
        words = words.replace("−", "-")
        assert words in readme, f"README.md, Results on MultiFashion: expected {words!r}"


# The rows of the README's cost table by the methods they cover (`weighting` benchmark names)
COST_ROWS = {
    "| loss-based (`equal`, `static`, `uncertainty`, `dwa`, `rlw`, `dbmtl`), FAMO with `update: "
    "next_batch` |": ["equal", "static", "uncertainty", "dwa", "rlw", "dbmtl", "famo+next_batch"],
    "| representation gradients (`mgda`, `imtl`, `graddrop`, and every Gramian method with "
    "`gradients: representation`) |": ["mgda", "imtl", "graddrop", *(
        f"{name}@representation" for name in ("pcgrad", "cagrad", "nashmtl", "upgrad",
                                              "alignedmtl", "gradnorm"))],
    "| exact FAMO (`update: same_batch`, the default) |": ["famo"],
    "| parameter gradients (`pcgrad`, `cagrad`, `alignedmtl`, `upgrad`, `gradnorm`, `nashmtl`) |":
        ["pcgrad", "cagrad", "alignedmtl", "upgrad", "gradnorm", "nashmtl"],
    "| Nash-MTL solving every 4th step (`update_weights_every: 4`) |": ["nashmtl+every4"],
}


def test_the_weighting_cost_table_spans_its_benchmark_rows() -> None:
    """Experiments, cost per step relative to `equal`: each cell is the range (or the value) of
    the `weighting/T<n>/<method>/step_time` rows of reports/benchmarks.json."""
    rows = {row["name"]: row["value"]
            for row in json.loads(_committed("reports/benchmarks.json"))["weighting"]["rows"]}
    readme = _readme()
    for words, methods in COST_ROWS.items():
        cells = []
        for tasks in (2, 10):
            ratios = [rows[f"weighting/T{tasks}/{method}/step_time"] for method in methods]
            low, high = _rounded(min(ratios), 2), _rounded(max(ratios), 2)
            cells.append(f"{low}×" if low == high else f"{low}–{high}×")
        line = f"{words} {cells[0]} | {cells[1]} |"
        assert line in readme, f"README.md, Weighting methods: expected {line}"

    def yardstick(name: str) -> list[str]:
        return [_rounded(rows[f"weighting/T{tasks}/{name}"], 2) for tasks in (2, 10)]

    forward, engine = yardstick("no_grad_forward/step_time"), yardstick(
        "parameter_gradients/step_time")
    batched = sorted(yardstick("gradients/is_grads_batched_over_loop"))
    for words in (f"A no-grad forward alone costs {min(forward)}–{max(forward)}× a step",
                  f"costs {engine[0]}× at 2 tasks and {engine[1]}× at 10",
                  f"is_grads_batched=True)` {batched[0]}–{batched[1]}× slower"):
        assert words in readme, f"README.md, Weighting methods: expected {words!r}"


def test_the_opening_counts_methods_and_architectures_as_the_registries_do() -> None:
    from multitask.catalog import architectures, weighting_methods

    methods = [name for name in weighting_methods() if name != "tuned"]  # tuned: static's
    assert (f"**{len(methods)} task-weighting methods** and **{len(architectures())} "
            "architectures**") in _readme()



def test_the_default_weighting_paragraph_is_the_default_weighting_comparison() -> None:
    """`default-dbmtl`: DB-MTL against equal weights over five seeds, the rule it met (equal
    weights' paired interval wholly below zero, DB-MTL above on every seed), equal weights'
    first three seeds equal to `fast`'s `e7`, and `make repro`'s report as DB-MTL's seed 0."""
    from multitask.comparison.statistics import paired

    rows = _comparison("default-weighting")
    dbmtl, equal = rows["dbmtl"], rows["equal"]
    ours, theirs = dbmtl["delta_m_pct"]["per_seed"], equal["delta_m_pct"]["per_seed"]
    difference = paired(theirs, ours)
    assert difference.high < 0 and all(b > a for a, b in zip(theirs, ours, strict=True))
    gaps = [b - a for a, b in zip(theirs, ours, strict=True)]
    fast = _comparison("fast")["e7"]
    for task in ("left", "right"):
        assert equal["tasks"][task]["per_seed"][:3] == fast["tasks"][task]["per_seed"]
    params = yaml.safe_load(_committed("params.yaml"))
    assert params["train"]["weighting"] == "dbmtl"
    metrics = json.loads(_committed("reports/metrics.json"))
    assert [metrics["tasks"][t]["accuracy"] for t in ("left", "right")] == [
        dbmtl["tasks"][t]["per_seed"][0] for t in ("left", "right")]
    assert metrics["delta_m_pct"] == pytest.approx(ours[0], abs=1e-9)
    expected = [
        f"gives DB-MTL {_spread(dbmtl['tasks']['left'])} / {_spread(dbmtl['tasks']['right'])}, "
        f"Δm% {_interval(dbmtl['delta_m_pct'])}, and equal weights "
        f"{_spread(equal['tasks']['left'])} / {_spread(equal['tasks']['right'])}, "
        f"{_interval(equal['delta_m_pct'])}",
        f"by {min(gaps):.2f} to {max(gaps):.2f} points of Δm% ("
        + ", ".join(f"{v:+.2f}" for v in ours) + " against "
        + ", ".join(f"{v:+.2f}" for v in theirs) + ")",
        f"paired, equal weights {difference.mean:+.2f} [{difference.low:+.2f}, "
        f"{difference.high:+.2f}], wholly below zero",
        f"its seed 0 to the digit ({metrics['tasks']['left']['accuracy']} / "
        f"{metrics['tasks']['right']['accuracy']}, Δm% {metrics['delta_m_pct']:+.2f}; with equal "
        f"weights {fast['tasks']['left']['per_seed'][0]} / "
        f"{fast['tasks']['right']['per_seed'][0]}, {fast['delta_m_pct']['per_seed'][0]:+.2f})",
    ]
    readme = _plain()
    for words in expected:
        assert words.replace("−", "-") in readme, f"README.md, default-dbmtl: expected {words!r}"


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen")


def test_the_weighting_figures_are_the_methods_comparisons_paired_by_seed() -> None:
    """The opening's and `methods-paired`'s claims about the sixteen three-seed weighting rows
    (reports/comparisons/methods and methods-more, which share their baselines seed by seed)."""
    from multitask.comparison.statistics import paired

    rows = {**_comparison("methods"), **_comparison("methods-more")}
    baselines = rows["equal"]["baselines"]
    assert all(row["baselines"] == baselines for row in rows.values())
    # every row above the single-task networks on both tasks, on every seed
    for label, row in rows.items():
        for task in ("left", "right"):
            for ours, theirs in zip(row["tasks"][task]["per_seed"],
                                    baselines[task]["per_seed"], strict=True):
                assert ours > theirs, (label, task, ours, theirs)
    best = rows["dbmtl"]["delta_m_pct"]["per_seed"]
    others = {label: row["delta_m_pct"]["per_seed"] for label, row in rows.items()
              if label != "dbmtl"}
    for label, values in others.items():  # DB-MTL above every other row on every seed
        assert all(value < top for value, top in zip(values, best, strict=True)), label
    differences = {label: paired(values, best) for label, values in others.items()}
    below = [d for d in differences.values() if d.high < 0]
    rest = [d for d in differences.values() if d.high >= 0]
    means = [row["delta_m_pct"]["mean"] for row in rows.values()]
    expected = [
        f"the {NUMBER_WORDS[len(rows)]} mean Δm% within {max(means) - min(means):.2f} points of "
        "each other",
        f"{NUMBER_WORDS[len(below)]} of the {NUMBER_WORDS[len(others)]} intervals lie wholly "
        f"below zero, and none of the {NUMBER_WORDS[len(rest)]} others reaches above +0.25",
    ]
    assert max(d.high for d in rest) <= 0.25
    names = {"upgrad": "UPGrad", "alignedmtl": "Aligned-MTL", "pcgrad": "PCGrad",
             "equal": "equal weights", "famo": "FAMO", "tuned": "`tuned`", "graddrop": "GradDrop"}
    expected += [f"{name} {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"
                 for label, name in names.items() for d in [differences[label]]]
    full = next(iter(_comparison("dbmtl-full").values()))  # the gradient half as well
    assert full["baselines"] == baselines
    expected += [_listed([f"{v:+.2f}" for v in full["delta_m_pct"]["per_seed"]]) + ", mean "
                 + _interval(full["delta_m_pct"])]
    expected += [f"{_interval(paired(full['delta_m_pct']['per_seed'], values).as_dict())} "
                 f"against {against}" for values, against in (
                     (best, "log losses alone"), (rows["equal"]["delta_m_pct"]["per_seed"],
                                                 "equal weights"))]
    readme = _plain()
    for words in expected:
        assert words.replace("−", "-") in readme, f"README.md: expected {words!r}"
