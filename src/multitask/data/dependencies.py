"""Whether DVC watches a file the pipeline reads from outside it: ``check``'s warnings.

A manifest data set read in place (no ``manifest`` source to download) is no output of any
stage, so DVC reruns ``validate`` and ``preprocess`` when a label or an image changes only if
each lists the manifest and its image folders (or a folder above them) among its deps;
likewise ``baselines``, ``tune`` and ``train`` for a ``model.pretrained`` weights file, whose
path alone is a param. :func:`unwatched_stages` reads the pipeline's ``dvc.yaml`` as DVC would
for that question:
``${...}`` in a dep is filled in from the same context DVC templates with (the ``params.yaml``
beside it, then each entry of ``vars``: a mapping, or a YAML file, ``file.yaml:key,...``
taking only those keys); a reference it cannot resolve is left as written, so it matches
nothing and the warning errs on the side of being shown.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from multitask.data.manifest import IMAGE_COLUMN, Manifest
from multitask.layout import Layout

__all__ = ["READING_STAGES", "STARTING_STAGES", "folder_of", "in_words", "unwatched_stages",
           "watched"]

# The stages that read a manifest's rows and images; check only reads its header and splits
READING_STAGES = ("validate", "preprocess")
# The stages whose networks start from model.pretrained
STARTING_STAGES = ("baselines", "tune", "train")
TEMPLATE = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


def watched(manifest: Manifest) -> list[str]:
    """The manifest and each folder of its images, normalised absolute paths: what the
    reading stages must depend on."""
    base = manifest.path.parent
    folders = {os.path.dirname(os.path.join(base, image))
               for image in manifest.frame[IMAGE_COLUMN].unique()}
    return [os.path.abspath(path) for path in (manifest.path, *sorted(folders))]


def folder_of(paths: list[str], layout: Layout) -> str:
    """The folder holding all of :func:`watched`'s ``paths``, as a dependency would name it."""
    common = Path(os.path.commonpath(paths))
    root = Path(os.path.abspath(layout.root))
    return common.relative_to(root).as_posix() if common.is_relative_to(root) else str(common)


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def template_context(folder: Path, entries: Any) -> dict[str, Any]:
    """What DVC fills ``${...}`` with in the ``dvc.yaml`` of ``folder`` whose ``vars`` are
    ``entries``: ``params.yaml`` there, updated by each entry in order."""
    context: dict[str, Any] = {}
    default = _yaml(folder / "params.yaml")
    if isinstance(default, dict):
        context.update(default)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            context.update(entry)
        elif isinstance(entry, str):
            name, _, wanted = entry.partition(":")
            content = _yaml(folder / name)
            if isinstance(content, dict):
                keys = [key.strip() for key in wanted.split(",") if key.strip()]
                context.update({k: v for k, v in content.items() if not keys or k in keys})
    return context


def interpolated(text: str, context: dict[str, Any]) -> str:
    """``text`` with each ``${a.b}`` whose dotted path leads to a plain value in ``context``
    replaced by it; any other reference is kept as written."""
    def value(match: re.Match[str]) -> str:
        found: Any = context
        for part in match.group(1).split("."):
            if not isinstance(found, dict) or part not in found:
                return match.group(0)
            found = found[part]
        return match.group(0) if isinstance(found, dict | list) else str(found)

    return TEMPLATE.sub(value, text)


def unwatched_stages(paths: list[str], layout: Layout,
                     stages_reading: tuple[str, ...] = READING_STAGES) -> list[str]:
    """The ``stages_reading`` of the pipeline's ``dvc.yaml`` (those present) that do not depend
    on each of ``paths`` (absolute; :func:`watched`: the manifest and its image folders) or a
    folder above it: DVC would not rerun them when one changes. None without a readable
    ``dvc.yaml`` (``multitask check`` run outside a pipeline)."""
    document = _yaml(layout.dvc_yaml)
    stages = document.get("stages") if isinstance(document, dict) else None
    if not isinstance(stages, dict):
        return []
    context = template_context(layout.dvc_yaml.parent, document.get("vars"))
    root = os.path.abspath(layout.root)
    unwatched = []
    for name in stages_reading:
        stage = stages.get(name)
        if not isinstance(stage, dict):
            continue
        deps = [os.path.abspath(os.path.join(root, os.path.expanduser(interpolated(dep, context))))
                for dep in stage.get("deps") or [] if isinstance(dep, str)]
        if not all(any(path == dep or path.startswith(dep.rstrip(os.sep) + os.sep)
                       for dep in deps) for path in paths):
            unwatched.append(name)
    return unwatched


def in_words(stages: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: stage names in a sentence."""
    return " and ".join(filter(None, [", ".join(stages[:-1]), *stages[-1:]]))
