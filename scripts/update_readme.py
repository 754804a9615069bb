"""Render the README's measured figures from the files that hold them, never by hand.

Blocks between `<!-- NAME:start -->` and `<!-- NAME:end -->` are replaced:
- results: the metrics, baselines and train reports of the last `make repro` (paths from
  multitask.layout), titled from params.yaml's data set; per task its primary metric
  (accuracy, or MAE in the unit params.yaml's data.tasks declares for a regression task)
- comparison: reports/comparisons/*/comparison.json (`multitask compare`, each table with its
  plot), then the one-seed tables measured before it (reports/method_comparison.json)
- pretraining: reports/pretraining/study.md and study.png (scripts/pretraining_study.py)
- benchmarks: reports/benchmarks.json (`make bench`)

    python scripts/update_readme.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from multitask.comparison.report import column_title, primary_metrics
from multitask.comparison.report import markdown as comparison_table
from multitask.data.datasets import DATASETS
from multitask.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def load(file: Path) -> Any:
    return json.loads(file.read_text()) if file.is_file() else None


def results(layout: Layout | None = None, title: str | None = None) -> str:
    """A pipeline's results table (default: the root's, titled "Full <data set>")."""
    layout = layout or Layout(ROOT)
    metrics, baselines, train = (load(layout.metrics_json), load(layout.baselines_json),
                                 load(layout.train_json))
    if not (metrics and baselines and train):
        return "_No full-data run recorded yet: run `make repro`._"
    data = (yaml.safe_load(layout.params.read_text()) or {}).get("data", {})
    title = title or f"Full {DATASETS[data.get('dataset', 'multifashion')].title}"
    primary = primary_metrics(metrics)  # accuracy; MAE for a regression task
    tasks = list(primary)
    declared = data.get("tasks") or {}  # a manifest data set's tasks: their units
    units = {t: (declared.get(t) or {}).get("unit", "") for t in tasks}
    split = (f"test split ({data['test_size']:,} composites)" if "test_size" in data
             else "test split")
    weighting = f"`{train.get('requested_weighting', train['weighting'])}` weighting"
    tuned = load(layout.tuned_weights)
    if train.get("requested_weighting") == "tuned" and tuned:
        weighting += " (" + ", ".join(f"{t} {w:.2f}" for t, w in tuned["weights"].items()) \
            + ", chosen by the tune stage)"
    lines = [
        f"{title}, {weighting}, {train['epochs']} epochs, "
        f"{train['device']}; {split}:",
        "",
        "| | " + " | ".join(f"task {column_title(t, primary[t], units[t])}" for t in tasks)
        + " | Δm% |",
        "|---|" + "---|" * (len(tasks) + 1),
        "| multi-task (one network) | " + " | ".join(
            f"{metrics['tasks'][t][primary[t]]:.4f}" for t in tasks)
        + f" | {metrics['delta_m_pct']:+.2f} |",
        "| single-task baselines (one network per task) | " + " | ".join(
            f"{baselines['tasks'][t][primary[t]]:.4f}" for t in tasks) + " | 0 (reference) |",
        "",
        f"Training took {train['seconds']:.0f} s wall (median epoch: "
        f"{train['train_images_per_s']:.0f} training images/s).",
    ]
    return "\n".join(lines)


def comparison() -> str:
    """The tables of `multitask compare` over seeds, each with its plot (read where ROOT says,
    so the test can point it at the committed files), then the one-seed tables before them."""
    blocks = comparison_tables(Layout(ROOT))
    if not blocks:
        blocks = ["_No comparison over seeds yet: `multitask compare NAME --vary KEY V1 V2 ...` "
                  "(above)._", ""]
    earlier = one_seed_comparison()
    if earlier:
        blocks += ["**One seed, before comparisons over seeds** (single draws, not rankings):",
                   "", earlier]
    return "\n".join(blocks).rstrip()


def comparison_tables(layout: Layout) -> list[str]:
    """Each `multitask compare` table of a pipeline folder, followed by its plot."""
    blocks = []
    names = sorted(f.name for f in layout.comparisons_dir.iterdir()) \
        if layout.comparisons_dir.is_dir() else []
    for result in filter(None, (load(layout.comparison_json(name)) for name in names)):
        plot = layout.comparison_png(result["name"]).relative_to(ROOT).as_posix()
        blocks += [comparison_table(result).rstrip(), "",
                   f"![each task's test metric per row, mean ± std over seeds]({plot})", ""]
    return blocks


def one_seed_comparison() -> str:
    """One table of methods per budget, and one of architectures per budget (with hard
    sharing's row for the same method as the reference), each ranked by Δm%: the one-seed
    measurements of reports/method_comparison.json, made before `multitask compare`."""
    data = load(Layout(ROOT).method_comparison)
    if not data:
        return ""
    tables: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in data.values():
        kind = "methods" if entry["architecture"] is None else "architectures"
        table = tables.setdefault((kind, entry["epochs"]), {"rows": {}, "baselines": None})
        for method, result in entry["methods"].items():
            table["rows"][(entry["architecture"] or "hps", method)] = result
        table["baselines"] = table["baselines"] or entry.get("baselines")
    for (kind, epochs), table in tables.items():
        if kind == "architectures":
            reference = tables.get(("methods", epochs), {}).get("rows", {})
            for method in {method for _, method in table["rows"]}:
                if ("hps", method) in reference:
                    table["rows"][("hps", method)] = reference[("hps", method)]
    blocks = []
    for (kind, epochs), table in sorted(tables.items(), key=lambda kv: (kv[0][0] != "methods",
                                                                         kv[0][1])):
        blocks += [*_comparison_table(kind, epochs, table["rows"], table["baselines"]), ""]
    return "\n".join(blocks).rstrip()


def _comparison_table(kind: str, epochs: int, rows: dict[tuple[str, str], dict[str, Any]],
                      baselines: dict[str, float] | None) -> list[str]:
    tasks = next((list(r["tasks"]) for r in rows.values() if "tasks" in r), [])
    if kind == "methods":
        title, first = "hard sharing (`hps`, the default architecture then)", "method"
    else:
        title, first = "by `model.architecture`", "architecture, method"
    # the method's default is the paper's loss-scale half: say so where its row ranks
    dbmtl = ("; `dbmtl` ran with its defaults, so its row is log-loss weighting alone, not the "
             "paper's full DB-MTL (`balance_gradients: true`)"
             if kind == "methods" and any(m == "dbmtl" for _, m in rows) else "")
    lines = [
        f"{epochs} epochs each, {title}, same seed (`dvc exp run`, read back with "
        f"`dvc exp show`){dbmtl}:",
        "",
        f"| {first} | " + " | ".join(f"`{t}` accuracy" for t in tasks)
        + " | mean accuracy | Δm% |",
        "|---|" + "---|" * (len(tasks) + 2),
    ]
    for (architecture, method), result in sorted(
            rows.items(), key=lambda kv: -kv[1].get("delta_m_pct", -1e9)):
        label = f"`{method}`" if kind == "methods" else f"`{architecture}`, `{method}`"
        if "tasks" not in result:
            lines.append(f"| {label} | " + " | ".join("—" for _ in tasks)
                         + f" | — | {result.get('error', 'failed')} |")
            continue
        lines.append(f"| {label} | " + " | ".join(
            f"{result['tasks'][t]['accuracy']:.4f}" for t in tasks)
            + f" | {result['mean_accuracy']:.4f} | {result['delta_m_pct']:+.2f} |")
    if baselines:
        lines.append("| single-task baselines (Δm% reference) | " + " | ".join(
            f"{baselines[t]:.4f}" for t in tasks)
            + f" | {sum(baselines.values()) / len(baselines):.4f} | 0 |")
    return lines


def _value(row: dict[str, Any]) -> str:
    value = row.get("value")
    if value is None:
        return f"— ({row.get('skipped') or row.get('error') or row.get('note') or 'not measured'})"
    return f"{value:g} {row.get('unit', '')}".strip() if isinstance(value, int | float) \
        else f"{value} {row.get('unit', '')}".strip()


def benchmarks() -> str:
    data = load(Layout(ROOT).benchmarks_json)
    if not data:
        return "_No benchmarks recorded yet: run `make bench`._"
    lines = ["| benchmark | measured | target | met |", "|---|---|---|---|"]
    for group, entry in data.items():
        for row in entry["rows"]:
            met = "" if "ok" not in row else ("yes" if row["ok"] else "**no**")
            kept = f" (kept from {row['measured_at'][:10]})" if "kept" in row else ""
            lines.append(f"| {group}: {row['name']} | {_value(row)}{kept} | "
                         f"{row.get('target', '')} | {met} |")
    machines: dict[str, list[str]] = {}
    for group, entry in data.items():
        at = f", commit {entry['commit'][:7]}" if entry.get("commit") else ""
        machines.setdefault(_machine(entry["machine"]), []).append(
            f"{group} ({entry['measured_at'][:10]}{at})")
        for row in (r for r in entry["rows"] if "kept" in r):  # skipped since: its own machine
            machines.setdefault(_machine(row["machine"]), []).append(
                f"{group}: {row['name']} ({row['measured_at'][:10]}; not measured since: "
                f"{row['kept']})")
    lines.append("")
    lines += [f"- {', '.join(groups)}: {machine}." for machine, groups in machines.items()]
    return "\n".join(lines)


def _machine(machine: dict[str, Any]) -> str:
    """Which machine measured a group: CPU model and torch's instruction set when recorded."""
    cpu = (f"{machine['cpu_model']}, torch CPU capability {machine['cpu_capability']}"
           if machine.get("cpu_model") else "CPU model not recorded")
    return (f"{cpu}, {machine['cpu_count']} threads, {machine['platform']}, torch "
            f"{machine['torch']}" + (f", {machine['cuda']}" if machine.get("cuda") else ", no GPU"))


def pretraining() -> str:
    """The table and plot of scripts/pretraining_study.py (read where ROOT says, so the test
    can point it at the committed files)."""
    layout = Layout(ROOT)
    if not layout.pretraining_study_md.is_file():
        return "_Not measured yet: run `python scripts/pretraining_study.py`._"
    plot = layout.pretraining_study_png.relative_to(ROOT).as_posix()
    return (layout.pretraining_study_md.read_text().rstrip() + "\n\n"
            + f"![test accuracy against the labelled fraction, from scratch and from the "
              f"self-supervised encoder]({plot})")


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{README}: no <!-- {name}:start --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


EXAMPLE = "examples/fashion-manifest"


def example_results() -> str:
    """The heterogeneous example's table (README, "A heterogeneous example")."""
    return results(Layout(ROOT / EXAMPLE), "The Fashion-MNIST manifest example")


def example_comparison() -> str:
    """The example's comparisons over seeds (`multitask compare ... --pipeline
    examples/fashion-manifest/dvc.yaml`)."""
    blocks = comparison_tables(Layout(ROOT / EXAMPLE))
    return "\n".join(blocks).rstrip() or "_No comparison over seeds yet._"


def main() -> None:
    text = README.read_text()
    for name, render in (("results", results), ("example-results", example_results),
                         ("example-comparison", example_comparison),
                         ("comparison", comparison), ("pretraining", pretraining),
                         ("benchmarks", benchmarks)):
        text = replace_block(text, name, render())
    README.write_text(text)


if __name__ == "__main__":
    main()
