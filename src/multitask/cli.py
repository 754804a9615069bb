"""``multitask <stage>``: one subcommand per DVC stage, plus the registry and helper commands.

The only module that knows argparse. Each subcommand loads the params file, takes the pipeline
folder's :class:`~multitask.layout.Layout` (the folder holding that file) and calls a plain,
typed library function: ``train(params, layout)``, ``tune(params, layout, workers=...)`` ...
Only argparse is imported at start, so ``multitask --help`` answers at once; a subcommand
imports its library module (torch, mlflow, great_expectations ...) when it runs.

One module, not several: it is the only module that knows argparse, so every subcommand's
arguments and help live here, side by side in one table.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multitask import __version__
from multitask.layout import Layout
from multitask.redaction import RedactingFilter, redact

if TYPE_CHECKING:
    from multitask.config import Params


@dataclass(frozen=True)
class Command:
    """A subcommand: the library function it calls and how its arguments look."""

    target: str  # "module:function", imported when the subcommand runs
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    # how the parsed arguments become the call: (function, args) -> exit code
    call: Callable[[Callable[..., Any], argparse.Namespace], int] = (
        lambda function, args: _stage(function, args))
    # what --params means when it is not the pipeline's file in the current folder (then its
    # default is None)
    params_help: str | None = None
    params_default: str | None = None  # --params's default where params_help is given
    reads_params: bool = True  # False: no --params (the command reads no params file)
    # exit status of an expected failure (bad params, missing file); ci-report takes 2, as its
    # 1 means "the gate failed", which a script must tell apart from "could not compare"
    error_status: int = 1


def _pipeline(args: argparse.Namespace) -> tuple[Params, Layout]:
    """The params file and the layout of the folder it lives in."""
    from multitask.config import load_params

    params = load_params(args.params)
    return params, Layout(Path(args.params).parent)


def _stage(function: Callable[..., Any], args: argparse.Namespace, **options: Any) -> int:
    """Call a stage function with the params and layout; it raises on failure."""
    pipeline = _pipeline(args)
    _limit_threads()
    function(*pipeline, **options)
    return 0


def _limit_threads() -> None:
    """A stage honours ``$MULTITASK_THREADS`` (torch's CPU threads; `multitask compare`
    sets it for the experiments it runs side by side)."""
    from multitask.device import limit_threads

    limit_threads()


def _data_parallel(function: Callable[..., Any], args: argparse.Namespace) -> int:
    """A training stage: under torchrun when ``train.processes > 1`` asks for it."""
    params, layout = _pipeline(args)
    from multitask.training import distributed

    if distributed.should_launch(params.train.processes):
        argv = [args.command, "--params", args.params, *(["--verbose"] if args.verbose else [])]
        return distributed.relaunch(argv, params.train.processes)
    _limit_threads()
    function(params, layout)
    return 0


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", action="append", metavar="NAME",
        help="fetch this source of data/sources.yaml instead of those data.dataset needs "
        "(repeatable)")


def _tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, default=None,
        help="worker processes sharing the study (default: tune.workers in params.yaml)")
    parser.add_argument(
        "--n-trials", type=int, default=None,
        help="trials to reach in the stored study (default: tune.n_trials)")
    parser.add_argument(
        "--if-used", action="store_true",
        help="tune only when train.weighting is 'tuned'; otherwise write reports/tuning/ "
        "saying that no study ran (the DVC stage's form: train reads no tuned weights then)")


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="show the decision without registering or moving any alias")
    parser.add_argument("--status", action="store_true",
                        help="print champion and challenger side by side, per task, and exit")
    parser.add_argument("--run-id", default=None,
                        help="MLflow run to promote (default: the run in reports/train.json)")


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="model URI, e.g. models:/multifashion@champion or runs:/<id>/model")
    parser.add_argument("images", nargs="+",
                        help="image files (any format Pillow reads: PNG, JPEG, BMP, WebP, TIFF "
                        "...), .npy arrays of raw pixels 0..255, or folders of them (their "
                        "files in name order)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _methods_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help='print {"weighting": [...], "architectures": [...]}')


def _ci_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True,
                        help="folder the base branch's pipeline ran in (e.g. sample/ of its "
                        "checkout): its params.yaml and reports/")
    parser.add_argument("--head", default=".",
                        help="folder this branch's pipeline ran in (default: .)")
    parser.add_argument("--output", default=str(Layout().ci_report),
                        help="where to write the markdown report; its PNG goes beside it, the "
                        "same name ending .png (default: %(default)s)")


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME",
                        help="the comparison's name: its experiments are NAME-<row>-s<seed>, "
                        "its outputs reports/comparisons/NAME/, its MLflow parent run "
                        "'compare NAME'")
    parser.add_argument("--vary", nargs="+", action="append", default=[],
                        metavar=("KEY", "VALUE"),
                        help="one row per value of KEY (repeatable: every combination), "
                        "labelled by the values, e.g. --vary train.weighting equal pcgrad")
    parser.add_argument("--row", nargs=2, action="append", default=[],
                        metavar=("LABEL", "KEY=VALUE[,KEY=VALUE...]"),
                        help="one labelled row (repeatable), e.g. --row tuned "
                        "train.weighting=tuned")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param of every row (repeatable), e.g. --set train.epochs=30")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED",
                        help="train.seed of each row's experiments (default: 0 1 2)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="experiments run side by side (dvc queue start --jobs N), each "
                        "with MULTITASK_THREADS = CPUs // N torch threads unless that variable "
                        "is set (default: 1)")
    parser.add_argument("--pipeline", default="dvc.yaml", metavar="DVC_YAML",
                        help="the pipeline the experiments run: dvc.yaml (default) or "
                        "sample/dvc.yaml; keys are set in the params.yaml beside it")
    parser.add_argument("--collect-only", action="store_true",
                        help="run nothing: read back the experiments that already ran (and "
                        "comparison.json's measurements that still stand)")
    parser.add_argument("--rev", metavar="COMMIT",
                        help="with --collect-only: read back the experiments derived from "
                        "COMMIT, or from a commit before it with the same pipeline inputs "
                        "(default: HEAD; a comparison records its commit in "
                        "comparison.json)")
    parser.add_argument("--against", action="append", default=[], metavar="COMPARISON",
                        help="also take each row's Δm%% against the single-task baselines of "
                        "this earlier comparison (its comparison.json beside the pipeline), "
                        "seed by seed: a fixed reference where rows change the baselines' "
                        "schedule or regularisation (repeatable), e.g. --against lr")


def _compare(function: Callable[..., Any], args: argparse.Namespace) -> int:
    from multitask.comparison import Spec, expand_rows, resolve_pipeline
    from multitask.comparison.rows import check_name, parse_assignment

    pipeline = resolve_pipeline(args.pipeline)
    beside = pipeline.root / pipeline.params_file
    if args.params is not None and Path(args.params).resolve() != beside:
        raise ValueError(f"--params {args.params}: the experiments of --pipeline "
                         f"{args.pipeline} set their keys in {pipeline.params_file}; leave "
                         "--params out or pick the pipeline with --pipeline")
    spec = Spec(check_name(args.name), expand_rows(args.vary, args.row),
                tuple(parse_assignment(text, "--set") for text in args.set), tuple(args.seeds))
    function(spec, args.pipeline, jobs=args.jobs, collect_only=args.collect_only, rev=args.rev,
             against=tuple(args.against))
    return 0


COMMANDS: dict[str, Command] = {
    "check": Command(
        "multitask.data.sources:check",
        "validate params.yaml and data/sources.yaml (the pipeline's first stage)",
        "Validate every key and name of the params file (data set, architecture, weighting "
        "methods and their params ...), the sources file beside it and the files the params "
        "name (a manifest read in place, a model.pretrained state_dict, loaded into the "
        "encoder to see that it fits), then write "
        "reports/params_check.txt, the same for all valid params. Every other stage depends "
        "on it, so a bad value stops dvc repro / dvc exp run before any output is removed. "
        "Warns when a manifest read in place is no dependency of validate and preprocess in "
        "the dvc.yaml beside the params (DVC would not rerun them when it changes). With "
        "model.pretrained: imagenet, warns when torchvision's file is not in torch.hub's cache "
        "($TORCH_HOME/hub/checkpoints) yet and stops at a cached one whose SHA-256 does not "
        "start with the part of its name after the dash."),
    "download": Command(
        "multitask.data.download:download",
        "fetch the raw data set from its mirrors and verify every file",
        "Fetch each file of the sources the data set needs from the first mirror that has it "
        "(a local folder, relative to the pipeline folder, or HTTP), verify the SHA-256 of "
        "its decompressed payload (or, for archive_sha256 entries, of the file as published) "
        "and move it into data/raw/<source>/. Verified files are not fetched again; a partial "
        "HTTP download resumes, also in the next run after the retries or the time limit ran "
        "out.",
        _download_arguments,
        lambda function, args: _stage(function, args, sources=args.source or ())),
    "validate": Command(
        "multitask.data.validation:validate_raw",
        "check the raw data with Great Expectations; non-zero exit on any failure",
        "Run the expectation suite over a per-image table of the raw data and write "
        "reports/validation/summary.json plus the Great Expectations data docs "
        "(reports/validation/data_docs/). Exits 1 naming each failed expectation, its column "
        "and the offending values."),
    "preprocess": Command(
        "multitask.data.preprocess:preprocess",
        "build the train/val/test splits: composites, a manifest's images or CIFAR-10",
        "Build the train/val/test splits under data/processed (arrays plus meta.json, "
        "swapped into place as one folder): for MultiFashion and the other composite data "
        "sets, composites of two items (top-left and bottom-right) from the raw IDX files, "
        "the validation split from held-out items; for data.dataset: manifest, the "
        "manifest's images fitted to one size with each task's labels (regression values "
        "as float32); for cifar10, the archive's images with the object and vehicle labels."),
    "pretrain": Command(
        "multitask.pretraining:pretrain",
        "train the shared encoder on image rotations (for model.pretrained: self_supervised)",
        "With model.pretrained: self_supervised, train the shared encoder (model.backbone) to "
        "tell which multiple of 90 degrees each training image was turned by, reading no "
        "label, with the recipe of the pretrain section of params.yaml; write "
        "models/pretrain/encoder.pt (which baselines, tune and train then start from) and "
        "reports/pretrain.json, log an MLflow run and register the model as "
        "pretrain.registered_name with alias 'newest' (model.pretrained: "
        "models:/<name>@newest starts another pipeline from it). Resumes from the last "
        "checkpoint after an interruption. With any other model.pretrained it trains nothing, "
        "leaves "
        "models/pretrain empty and writes reports/pretrain.json saying so (the same every "
        "time, so no later stage reruns)."),
    "baselines": Command(
        "multitask.training.stages:baselines",
        "train one single-task model per task (the reference for Δm%%)",
        "Train one single-task model per task with the same backbone and schedule as the "
        "multi-task model into models/baselines/ and write reports/baselines.json with each "
        "one's test metrics and reports/baselines_info.json (backbone, start, epochs, data "
        "hash, validation accuracies, kept epoch, seconds). With train.processes > 1 it runs "
        "that many data-parallel processes (torchrun).",
        call=_data_parallel),
    "tune": Command(
        "multitask.tuning:tune",
        "tune the task-loss weights with Optuna",
        "Run (or resume) the Optuna study over task-loss weights on the validation split and "
        "write reports/tuning/ (chosen weights, Pareto front, study summary).",
        _tune_arguments,
        lambda function, args: _stage(function, args, workers=args.workers,
                                      n_trials=args.n_trials, if_used=args.if_used)),
    "train": Command(
        "multitask.training.stages:train",
        "train the multi-task network",
        "Train the multi-task network and write models/model.pt, reports/train.json and the "
        "per-epoch curves under reports/plots/. Resumes from the last checkpoint after an "
        "interruption. With train.processes > 1 it runs that many data-parallel processes "
        "(torchrun; rank 0 logs and writes).",
        call=_data_parallel),
    "evaluate": Command(
        "multitask.training.stages:evaluate",
        "evaluate on the test split: per-task metrics and Δm%%",
        "Evaluate models/model.pt on the test split, write reports/metrics.json (each task's "
        "metrics by its kind: accuracy, macro F1 or AUROC and F1, loss; MAE and RMSE for a "
        "regression task; mean_accuracy and delta_m_pct against reports/baselines.json), the "
        "confusion matrices under reports/confusion/ (predicted against true for regression "
        "tasks), and complete the MLflow run."),
    "promote": Command(
        "multitask.promotion:promote",
        "register the evaluated model and move the champion alias through the task-aware gate",
        "Register the evaluated model as a new version; it becomes 'champion' only if no task "
        "is worse than the champion's by more than promote.tolerance and the aggregate "
        "improves, else 'challenger'. Exit 0: promoted (or already champion); 3: kept as "
        "challenger; 1: error. --dry-run exits the same way and changes nothing.",
        _promote_arguments,
        lambda function, args: _promote(function, args)),
    "registry": Command(
        "multitask.promotion:status",
        "print champion and challenger side by side, per task",
        "Print the registered model's champion and challenger versions with their per-task "
        "test metrics.",
        call=lambda function, args: function(_pipeline(args)[0]),
        params_help="params file naming the registered model (promote.model_name, else "
        "tracking.experiment, else data.dataset) and its tracking settings (default: "
        "params.yaml)", params_default="params.yaml"),
    "predict": Command(
        "multitask.predict:predict",
        "predict every task's answer for images with a logged or registered model",
        "Load a model by URI (models:/<name>@champion, models:/<name>/<version>, "
        "runs:/<id>/model ...) and print each task's answer for each image: a classification "
        "task's label and its probability, a regression task's value. Images are prepared as "
        "the model's training images were (EXIF orientation, 16-bit grey, the model's "
        "recorded resize: pad or crop).",
        _predict_arguments,
        lambda function, args: function(args.model, args.images, as_json=args.json),
        reads_params=False),
    "methods": Command(
        "multitask.catalog:show",
        "list the weighting methods and architectures params.yaml accepts",
        "List every task-weighting method (train.weighting) and architecture "
        "(model.architecture) by name, with a one-line description.",
        _methods_arguments,
        lambda function, args: function(as_json=args.json), reads_params=False),
    "compare": Command(
        "multitask.comparison:compare",
        "compare rows of params over several seeds (DVC experiments, MLflow group)",
        "Run every row (each --vary value or their combinations, each --row; --set for all) "
        "once per seed as a DVC experiment NAME-<row>-s<seed>, queued in a copy of the "
        "workspace (left as it is) and run --jobs at a time; experiments already run with "
        "the same params are read back, not rerun (those queued on HEAD, or on an earlier "
        "commit with the same pipeline inputs), and so are those the comparison's "
        "comparison.json recorded on an earlier commit when git shows none of the "
        "pipeline's inputs (dvc.yaml, params, stage dependencies, requirements.lock) "
        "changed since, uncommitted edits included (a fresh clone has no experiment "
        "refs). The single-task baselines "
        "run with the same seeds. Writes reports/comparisons/NAME/ beside the pipeline: "
        "comparison.json (per row and seed), comparison.md (per task mean ± sample std "
        "of test accuracy, mean accuracy, Δm% with its 95% t interval, rows ranked by Δm% "
        "and marked tied where their interval overlaps the best one's, and each row's Δm% "
        "minus the best row's paired seed by seed, with its interval) and comparison.png "
        "(per-task accuracy with error bars, two tasks one against the other; the paired "
        "differences in a last panel); with "
        "--against OTHER each row's Δm% also against comparison OTHER's single-task "
        "baselines, seed by seed, a column of the table. In MLflow "
        "the experiments' runs are nested under one parent run 'compare NAME' tagged "
        "multitask.comparison=NAME. Keys and values are validated before anything is "
        "queued. Example: multitask compare methods --vary train.weighting equal dwa pcgrad "
        "--set train.epochs=15 --jobs 2",
        _compare_arguments, _compare,
        params_help="params file of the pipeline (default and only choice: params.yaml "
        "beside --pipeline, where the experiments set their keys)"),
    "ci-report": Command(
        "multitask.ci_report:ci_report",
        "compare two pipeline results per task and gate regressions (used by CI)",
        "Write a markdown report of per-task metric and param deltas between a base and a "
        "head result, and a PNG of both sides' curves and confusion matrices beside it. Exit "
        "status: 0 the gate passed, 1 a task's metric regressed by more than "
        "ci.regression_tolerance or is missing or not a number in the head (the report names "
        "it), 2 an input is missing or malformed (no report is written).",
        _ci_report_arguments,
        lambda function, args: function(args.base, args.head, args.output, args.params),
        params_help="params file holding ci.regression_tolerance; CI passes the base "
        "branch's, so a pull request cannot loosen its own gate (default: params.yaml)",
        params_default="params.yaml", error_status=2),
}


def _promote(function: Callable[..., int], args: argparse.Namespace) -> int:
    if args.status:
        from multitask.promotion import status

        return status(_pipeline(args)[0])
    return function(*_pipeline(args), run_id=args.run_id, dry_run=args.dry_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multitask",
        description="Multi-task learning experiments: one subcommand per DVC pipeline stage "
        "(check -> download -> validate -> preprocess -> pretrain -> baselines -> tune -> "
        "train -> evaluate), plus the model registry (promote, registry), predict, methods "
        "(the weighting methods and architectures), compare (rows of params over seeds) and "
        "ci-report (the pull-request report and its gate).",
    )
    parser.add_argument("--version", action="version", version=f"multitask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.help, description=command.description)
        if command.reads_params:
            child.add_argument(
                "--params", default=command.params_default if command.params_help
                else "params.yaml",
                help=command.params_help or "parameters file (default: params.yaml in the "
                "current folder); the pipeline's data, models and reports live beside it")
        child.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        command.arguments(child)
    return parser


def _first_on_host() -> bool:
    """Whether this is its host's first process (torchrun's ``LOCAL_RANK`` 0, or not under
    torchrun). Every data-parallel process logs the same epochs, so the first one says them
    (and that it was interrupted); the others report warnings and errors only."""
    return os.environ.get("LOCAL_RANK", "0") in ("", "0")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from multitask.allocator import keep_freed_memory
    from multitask.cpus import choose_wait_policy

    # after --help and usage errors (which load nothing), before the command's module loads
    # torch: OpenMP reads the policy once, and no tensor exists yet to come from fresh pages
    policy = choose_wait_policy()
    malloc = keep_freed_memory()
    logging.basicConfig(
        level=(logging.DEBUG if args.verbose
               else logging.INFO if _first_on_host() else logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if policy:
        logging.getLogger(__name__).debug("OpenMP wait: %s", policy)
    if malloc:
        logging.getLogger(__name__).debug("malloc keeps freed memory: %s", malloc)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    if stage := os.environ.get("DVC_STAGE"):  # killing dvc does not stop its stage's command
        from multitask.processes import die_with, launcher

        die_with(launcher(), f"the dvc process that runs stage {stage}")
    command = COMMANDS[args.command]
    module_name, function_name = command.target.split(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        return int(command.call(function, args) or 0)
    except KeyboardInterrupt:
        if _first_on_host():
            print("multitask: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        # Expected failures (bad params, bad files, failed checks) carry a message that names
        # the file or key and what to do; a traceback would only bury it. OSError also
        # covers what the environment refuses (a permission, a full disk, a lock's timeout),
        # whose message names the path.
        if args.verbose:
            raise
        print(f"multitask {args.command}{_stage_folder()}: error: {redact(str(exc))}",
              file=sys.stderr)
        return command.error_status


def _stage_folder() -> str:
    """`` (in sample/)`` when DVC runs this command in a pipeline folder below its repository's
    root (``$DVC_ROOT``): the error's ``params.yaml: ...`` is that folder's, not the root's."""
    root = os.environ.get("DVC_ROOT")
    if not root:
        return ""
    try:
        folder = Path.cwd().resolve().relative_to(Path(root).resolve())
    except (OSError, ValueError):  # a cwd outside the repository: nothing to say
        return ""
    return "" if folder == Path() else f" (in {folder.as_posix()}/)"


if __name__ == "__main__":
    raise SystemExit(main())
