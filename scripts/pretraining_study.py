"""What self-supervised pretraining buys on MultiFashion, measured where it should matter most.

For each seed, one encoder is pretrained on the rotation task over all training images (no
label read: :func:`multitask.pretraining.fit_encoder`, the pretrain stage's recipe). Then, at
each labelled fraction of the training split (``train.data_fraction``: 0.05, 0.2, 1.0 by
default), the multi-task network and one single-task baseline per task are trained twice, from
scratch and from that seed's encoder, with the same seed. Δm% of each multi-task run is taken
against the baselines of the same fraction, seed and start, so it isolates what multi-task
learning adds; the accuracies themselves show what pretraining adds.

Through the session API (no DVC, no MLflow), on the processed data of the pipeline whose params
file is given (the root pipeline's data/processed by default; run `dvc repro` first, and with
``train.weighting: tuned`` its reports/tuning/weights.json). Every finished run is appended to
reports/pretraining/study.json at once, so an interrupted study resumes where it stopped (rows
already there are skipped; encoders are kept under reports/pretraining/encoders/). It also
writes study.md (the table for the README) and study.png (test accuracy vs labelled fraction,
error bars over seeds), all atomically.

    python scripts/pretraining_study.py                          # the full study (hours on CPU)
    python scripts/pretraining_study.py --seeds 0 --fractions 0.05 --epochs 2 --pretrain-epochs 1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from multitask import keys
from multitask.config import Params, load_params
from multitask.io import atomic_open, read_json, write_json
from multitask.layout import Layout
from multitask.models import pretrained
from multitask.models.pretrained import EncoderWeights
from multitask.pretraining import fit_encoder, pretraining_params
from multitask.tasks import main_tasks
from multitask.training import session
from multitask.training.data import ProcessedData
from multitask.training.metrics import delta_m
from multitask.training.metrics import evaluate as evaluate_split
from multitask.training.stages import baseline_params
from multitask.weighting import build_weighting

log = logging.getLogger("pretraining_study")
ROOT = Path(__file__).resolve().parents[1]
STARTS = ("scratch", "self_supervised")
FRACTIONS = (0.05, 0.2, 1.0)
SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------- the runs
def study_params(params: Params, seed: int, fraction: float, start: str,
                 epochs: int | None, pretrain_epochs: int | None) -> Params:
    """``params`` for one cell of the study: the seed, the labelled fraction, the epochs, and
    ``model.pretrained`` saying which start (recorded with the network; the weights themselves
    are passed to the session explicitly)."""
    train = params.train.model_copy(update={
        "seed": seed, "data_fraction": fraction, "epochs": epochs or params.train.epochs})
    model = params.model.model_copy(update={
        "pretrained": "self_supervised" if start == "self_supervised" else "none"})
    pretrain = params.pretrain.model_copy(
        update={"epochs": pretrain_epochs or params.pretrain.epochs})
    return params.model_copy(update={"train": train, "model": model, "pretrain": pretrain})


def encoder_for(params: Params, data: ProcessedData, folder: Path) -> EncoderWeights:
    """This seed's self-supervised encoder: read back when an earlier run of the study saved
    it, else pretrained now (on every training image, whatever the labelled fraction)."""
    recipe = pretraining_params(params)
    path = folder / (f"{recipe.model.backbone}-seed-{recipe.train.seed}-"
                     f"epochs-{recipe.train.epochs}.pt")
    if not path.is_file():
        fitted = fit_encoder(params, data, progress=False)
        session.save_network(path, fitted.model, recipe, data)
    return pretrained.file_weights(path)


def scores(params: Params, data: ProcessedData, start: EncoderWeights | None,
                  layout: Layout) -> tuple[dict[str, float], dict[str, float]]:
    """Test accuracy per task of the multi-task network and of each task's baseline."""
    tasks = session.task_list(params, data)
    method = session.build_method(params, tasks, layout)
    fitted = session.fit(params, data, tasks, method, start=start, progress=False)
    scored = main_tasks(tasks)
    multitask = evaluate_split(fitted.model, data, keys.TEST, scored).metrics
    single = baseline_params(params)
    baselines = {}
    for task in scored:
        alone = session.fit(single, data, [task], build_weighting("equal", 1), start=start,
                            progress=False)
        baselines[task.name] = evaluate_split(alone.model, data, keys.TEST,
                                              [task]).metrics[task.name][keys.ACCURACY]
    return {t.name: multitask[t.name][keys.ACCURACY] for t in scored}, baselines


# ------------------------------------------------------------------------------------ results
def row_key(row: dict[str, Any]) -> tuple[str, float, int]:
    return row["start"], float(row["fraction"]), int(row["seed"])


def load_rows(path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows an earlier run of the same study wrote; an error if it was another study."""
    if not path.is_file():
        return []
    stored = read_json(path)
    if stored.get("config") != config:
        raise SystemExit(
            f"{path}: written by a study with other settings ({stored.get('config')}, now "
            f"{config}); move it away or pass --output to start another study")
    return list(stored["rows"])


def summary(rows: Iterable[dict[str, Any]], tasks: list[str]
            ) -> dict[tuple[str, float], dict[str, tuple[float, float]]]:
    """Per (start, fraction): mean and standard deviation over seeds of each task's test
    accuracy and of Δm%."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["start"], float(row["fraction"])), []).append(row)

    def spread(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    return {cell: {**{task: spread([r["accuracy"][task] for r in found]) for task in tasks},
                   keys.DELTA_M: spread([r[keys.DELTA_M] for r in found])}
            for cell, found in sorted(cells.items(), key=lambda item: (item[0][1], item[0][0]))}


def markdown(rows: list[dict[str, Any]], tasks: list[str], config: dict[str, Any]) -> str:
    seeds = sorted({int(r["seed"]) for r in rows})
    lines = [
        f"Test accuracy per task (mean ± std over seeds {seeds}) and Δm% against single-task "
        "baselines trained at the same labelled fraction, seed and start; "
        f"{config['epochs']} epochs, encoders pretrained {config['pretrain_epochs']} epochs on "
        "image rotations over all training images.",
        "",
        "| labelled fraction | start | " + " | ".join(tasks) + " | Δm% |",
        "|---|---|" + "---|" * (len(tasks) + 1),
    ]
    for (start, fraction), values in summary(rows, tasks).items():
        cells = [f"{values[t][0]:.4f} ± {values[t][1]:.4f}" for t in tasks]
        mean, std = values[keys.DELTA_M]
        lines.append(f"| {fraction:g} | {start} | " + " | ".join(cells)
                     + f" | {mean:+.2f} ± {std:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from multitask.training.plots import save_figure

    table = summary(rows, tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for start in STARTS:
            cells = [(fraction, values[task]) for (s, fraction), values in table.items()
                     if s == start]
            if cells:
                axis.errorbar([f for f, _ in cells], [m for _, (m, _) in cells],
                              yerr=[s for _, (_, s) in cells], marker="o", capsize=3,
                              label=start.replace("_", "-"))
        axis.set_xscale("log")
        axis.set_xlabel("labelled fraction of the training split")
        axis.set_ylabel(f"test accuracy, task {task}")
        axis.set_title(f"task {task}")
        axis.legend()
    fig.tight_layout()
    save_figure(fig, path)


def write_outputs(layout: Layout, rows: list[dict[str, Any]], tasks: list[str],
                  config: dict[str, Any]) -> None:
    write_json(layout.pretraining_study_json, {"config": config, "rows": rows})
    with atomic_open(layout.pretraining_study_md) as handle:
        handle.write(markdown(rows, tasks, config))
    plot(rows, tasks, layout.pretraining_study_png)


# --------------------------------------------------------------------------------------- main
def run_study(params: Params, layout: Layout, output: Layout, *, seeds: Iterable[int],
              fractions: Iterable[float], epochs: int | None, pretrain_epochs: int | None,
              progress: bool = True,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every (seed, fraction, start) cell not yet in ``output``'s study.json; returns all rows.

    ``layout`` is the pipeline folder whose processed data (and tuned weights) are used;
    ``output`` the folder the study writes under (the same by default).
    """
    config = {"params": str(params.source), "epochs": epochs or params.train.epochs,
              "pretrain_epochs": pretrain_epochs or params.pretrain.epochs,
              "weighting": params.train.weighting, "backbone": params.model.backbone,
              "architecture": params.model.architecture}
    rows = load_rows(output.pretraining_study_json, config)
    done = {row_key(row) for row in rows}
    todo = [(seed, float(fraction), start) for seed in seeds for fraction in fractions
            for start in STARTS if (start, float(fraction), seed) not in done]
    data = session.load_data(params, layout)
    scored = main_tasks(session.task_list(params, data))
    tasks = [t.name for t in scored]
    encoders = output.pretraining_study_dir / "encoders"
    for seed, fraction, start in tqdm(todo, desc="pretraining study", unit="run",
                                      disable=None if progress else True):
        cell = study_params(params, seed, fraction, start, epochs, pretrain_epochs)
        started = time.perf_counter()
        weights = encoder_for(cell, data, encoders) if start == "self_supervised" else None
        accuracy, baselines = scores(cell, data, weights, layout)
        row = {"start": start, "fraction": fraction, "seed": seed, "accuracy": accuracy,
               "baseline_accuracy": baselines,
               keys.DELTA_M: delta_m(accuracy, baselines,
                                      {t.name: t.higher_is_better for t in scored}),
               "encoder_sha256": None if weights is None else weights.sha256,
               "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        write_outputs(output, rows, tasks, config)  # after every run: an interruption loses one
        log.info("%s fraction %g seed %d: %s, Δm%% %+.2f", start, fraction, seed,
                 {t: round(a, 4) for t, a in accuracy.items()}, row[keys.DELTA_M])
        if on_row is not None:
            on_row(row)
    if rows:
        write_outputs(output, rows, tasks, config)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Test accuracy per task and Δm% from scratch "
        "vs from the self-supervised (rotation) encoder at several labelled fractions, same "
        "seeds; writes reports/pretraining/study.json, study.md and study.png beside the "
        "params file, and skips the runs already in study.json.")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"),
                        help="the pipeline's params file; its data/processed is used "
                        "(default: the root pipeline's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="train.seed values (default: 0 1 2)")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                        help="labelled fractions of the training split, train.data_fraction "
                        "(default: 0.05 0.2 1.0)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every multi-task and baseline run (default: "
                        "train.epochs)")
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help="epochs of each encoder's pretraining (default: pretrain.epochs)")
    parser.add_argument("--output", default=None,
                        help="folder whose reports/pretraining/ receives the study (default: "
                        "the params file's folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    params = load_params(args.params)
    layout = Layout(Path(args.params).parent)
    output = Layout(Path(args.output)) if args.output else layout
    rows = run_study(params, layout, output, seeds=args.seeds, fractions=args.fractions,
                     epochs=args.epochs, pretrain_epochs=args.pretrain_epochs)
    print(json.dumps({"rows": len(rows), "json": str(output.pretraining_study_json),
                      "table": str(output.pretraining_study_md),
                      "plot": str(output.pretraining_study_png)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
