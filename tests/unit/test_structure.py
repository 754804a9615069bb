"""The package's shape: imports point down the layers and never in a circle; modules stay small;
every path dvc.yaml declares is the layout's; no private name crosses a module boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from multitask.layout import Layout

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# Lowest first. A module may import its own layer and the ones below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("multitask", "multitask.io", "multitask.keys", "multitask.tasks", "multitask.device",
     "multitask.errors", "multitask.gate", "multitask.layout", "multitask.redaction",
     "multitask.data.datasets"),
    ("multitask.models", "multitask.weighting"),
    ("multitask.config",),
    ("multitask.data",),
    ("multitask.training",),
    ("multitask.tracking",),
    ("multitask.training.stages", "multitask.pretraining", "multitask.tuning",
     "multitask.promotion", "multitask.predict", "multitask.ci_report", "multitask.ci_plots",
     "multitask.catalog", "multitask.comparison"),
    ("multitask.cli", "multitask.__main__"),
]
LONG_MODULE_LINES = 300
LONG_MODULE_REASON = "One module, not several:"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "multitask").rglob("*.py"))}


def layer(module: str) -> int:
    """The layer of the longest prefix of ``module`` named in :data:`LAYERS`."""
    best, rank = "", -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, rank = name, index
    assert rank >= 0, f"{module}: in no layer; add it to LAYERS"
    return rank


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside ``if TYPE_CHECKING:`` (not run, so not a dependency)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in ast.walk(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    lines.add(child.lineno)
    return lines


def imports(module: str) -> set[str]:
    """The project modules ``module`` imports when it runs (function-level imports included)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("multitask"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("multitask"):
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    found.discard(module)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_import_points_down_or_sideways() -> None:
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in GRAPH.items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_there_is_no_import_cycle() -> None:
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(planted) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_weighting_is_a_leaf_package() -> None:
    outside = {d for m, deps in GRAPH.items() if m.startswith("multitask.weighting")
               for d in deps if not d.startswith("multitask.weighting")}
    assert outside <= {"multitask.errors"}, outside


def test_only_the_tracking_package_imports_mlflow() -> None:
    users = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                users.append(module)
    assert {m for m in users if not m.startswith("multitask.tracking")} == set()


def test_only_the_cli_knows_argparse() -> None:
    users = {m for m, p in MODULES.items() if "import argparse" in p.read_text()}
    assert users == {"multitask.cli"}


def test_no_private_name_is_imported_across_modules() -> None:
    crossing = []
    for root in (SRC, ROOT / "tests", ROOT / "benchmarks", ROOT / "scripts"):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("multitask")
                        and any(a.name.startswith("_") and not a.name.endswith("__")
                                for a in node.names)):
                    crossing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not crossing, crossing


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_modules_say_why(module: str) -> None:
    text = MODULES[module].read_text()
    if len(text.splitlines()) > LONG_MODULE_LINES:
        docstring = ast.get_docstring(ast.parse(text)) or ""
        assert LONG_MODULE_REASON in docstring, (
            f"{module}: over {LONG_MODULE_LINES} lines; split it or say why in its docstring "
            f"('{LONG_MODULE_REASON} ...')")


def dvc_files(pipeline: Path) -> dict[str, tuple[set[str], set[str]]]:
    """Each stage's data deps (code under ${PKG} left out) and outs (metrics included)."""
    def names(entries: list) -> set[str]:
        return {next(iter(e)) if isinstance(e, dict) else e for e in entries}

    stages = yaml.safe_load(pipeline.read_text())["stages"]
    return {name: ({d for d in names(stage.get("deps", [])) if not d.startswith("${PKG}")},
                   names(stage.get("outs", [])) | names(stage.get("metrics", [])))
            for name, stage in stages.items()}


@pytest.mark.parametrize("pipeline", ["dvc.yaml", "sample/dvc.yaml"])
def test_dvc_yaml_declares_exactly_the_layout_paths(pipeline: str) -> None:
    declared = dvc_files(ROOT / pipeline)
    expected = {name: (set(files.deps), set(files.outs))
                for name, files in Layout().stage_files().items()}
    assert declared == expected
