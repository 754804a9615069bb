"""Compare weighting methods (and architectures) on the full data with `dvc exp run`.

One DVC experiment per method, all with the same epochs and seed; run in the workspace, DVC
reuses the committed data, baseline and tune stages, so each experiment trains and evaluates
only, and the script puts the workspace back as it found it afterwards. The per-task
results are read back from `dvc exp show --json` (the same numbers MLflow holds for each run) into
reports/method_comparison.json, which scripts/update_readme.py renders into the README.

    python scripts/compare_methods.py --epochs 3 equal uncertainty dwa pcgrad ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from multitask.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = Layout(ROOT).method_comparison
METRICS = Layout().metrics_json.as_posix()  # as dvc exp show and git show name them
BASELINES = Layout().baselines_json.as_posix()


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run DVC with this interpreter's scripts (the stages' `multitask`) first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{result.stdout[-2000:]}"
                           f"{result.stderr[-2000:]}")
    return result


def experiment_name(method: str, epochs: int) -> str:
    return f"cmp-{method.replace('_', '-')}-e{epochs}"


def run_experiments(methods: list[str], epochs: int, architecture: str | None,
                    queued: bool) -> list[str]:
    """One experiment per method: queued (each in a copy), or one after another in the workspace.

    Either way DVC reuses the outputs of every stage the change does not touch (data, baselines,
    tune) from its cache; the workspace is put back afterwards (:func:`restore_workspace`).
    """
    names = []
    for method in methods:
        name = experiment_name(method if not architecture else f"{architecture}-{method}", epochs)
        overrides = ["-S", f"train.weighting={method}", "-S", f"train.epochs={epochs}"]
        if architecture:
            overrides += ["-S", f"model.architecture={architecture}"]
        if queued:
            dvc("exp", "run", "--queue", "--name", name, *overrides)
        else:
            print(f"running {name}", flush=True)
            dvc("exp", "run", "--name", name, *overrides)
        names.append(name)
    if queued:
        wait_for_queue()
    return names


def changed_files() -> set[str]:
    """Tracked files that differ from HEAD."""
    diff = subprocess.run(["git", "diff", "--name-only", "HEAD"], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    return set(diff.stdout.split())


def restore_workspace(before: set[str]) -> None:
    """Undo what the workspace experiments changed (params.yaml, dvc.lock, reports, models),
    keeping the files that were already modified before and this script's own output."""
    touched = sorted(changed_files() - before - {str(OUTPUT.relative_to(ROOT))})
    if touched:
        subprocess.run(["git", "checkout", "HEAD", "--", *touched], cwd=ROOT, check=True)
    dvc("checkout", "--force")


def wait_for_queue(poll_s: float = 20.0) -> None:
    dvc("queue", "start", "--jobs", "1")
    while True:
        status = dvc("queue", "status", check=False).stdout
        if not any(state in status for state in ("Queued", "Running")):
            return
        time.sleep(poll_s)


def _find(node: Any, name: str) -> dict[str, Any] | None:
    """The experiment record named ``name`` anywhere in `dvc exp show --json` output."""
    if isinstance(node, dict):
        if node.get("name") == name and isinstance(node.get("data"), dict):
            return node["data"]
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find(child, name)
        if found is not None:
            return found
    return None


def _committed(path: str) -> dict[str, Any] | None:
    shown = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True,
                           text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def collect(names: dict[str, str], epochs: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Each method's metrics, and the single-task baseline accuracies they were measured against.

    Every experiment of one table shares the baselines (same data, model and schedule), so the
    first experiment's ``reports/baselines.json`` stands for all.
    """
    shown = json.loads(dvc("exp", "show", "--json").stdout)
    committed_baselines = _committed(BASELINES) or {}
    results: dict[str, Any] = {}
    baselines: dict[str, float] = {}
    for method, name in names.items():
        data = _find(shown, name) or {}
        metrics = data.get("metrics", {}).get(METRICS, {}).get("data")
        reference = data.get("metrics", {}).get(BASELINES, {}).get("data")
        if not metrics and method == "tuned" and committed_baselines.get("epochs") == epochs:
            # the committed pipeline run (params.yaml's default method at the same epochs)
            name, metrics, reference = ("HEAD (the committed pipeline run)", _committed(METRICS),
                                        committed_baselines)
        if not metrics:
            results[method] = {"experiment": name, "error": "no metrics (failed or not run)"}
            continue
        results[method] = {"experiment": name, **metrics}
        if reference and not baselines:
            baselines = {task: m["accuracy"] for task, m in reference["tasks"].items()}
    return results, baselines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--architecture", default=None,
                        help="model.architecture for every experiment (default: params.yaml)")
    parser.add_argument("--collect-only", action="store_true",
                        help="read back already-run experiments, run nothing")
    parser.add_argument("--queue", action="store_true",
                        help="queue the experiments (each in a copy) instead of running them "
                        "one after another in the workspace")
    args = parser.parse_args()
    prefix = f"{args.architecture}-" if args.architecture else ""
    names = {m: experiment_name(prefix + m, args.epochs) for m in args.methods}
    if not args.collect_only:
        before = changed_files()
        try:
            run_experiments(args.methods, args.epochs, args.architecture, args.queue)
        finally:
            if not args.queue:
                restore_workspace(before)
    results, baselines = collect(names, args.epochs)
    previous = json.loads(OUTPUT.read_text()) if OUTPUT.is_file() else {}
    key = f"{args.architecture or 'default'}@{args.epochs}"
    entry = previous.setdefault(key, {"epochs": args.epochs, "architecture": args.architecture,
                                      "methods": {}})
    entry["methods"].update(results)  # methods of earlier invocations stay in the table
    if baselines:
        entry["baselines"] = baselines
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(previous, indent=2) + "\n")
    for method, result in results.items():
        print(method, json.dumps(result))


if __name__ == "__main__":
    main()
