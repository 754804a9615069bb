"""What a comparison runs: its rows, each a set of param overrides, times its seeds.

``--vary KEY V1 V2`` gives one row per value (several ``--vary``: every combination),
``--row LABEL KEY=VALUE[,KEY=VALUE...]`` one labelled row, ``--set KEY=VALUE`` applies to every
row, and each row runs once per seed (``train.seed``). Every key is checked against the params
schema before anything is queued, and every row's params are validated in memory exactly as a
stage would load them (:func:`multitask.config.parse_params`), so a typo or a bad value stops the
comparison at once, naming the row, the key and what is known.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from multitask.config import ConfigError, Params, parse_params
from multitask.errors import unknown_name

SEED_KEY = "train.seed"  # set by --seeds: the one key rows never set
# A comparison's name and row labels become experiment names (git refs) and folder names.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?=[A-Za-z0-9_-]))*")
# Assignments of one --row are separated by the commas that start another KEY=, so a value
# may hold commas itself (a list: train.method_params.static.weights=[0.4,0.6]).
_NEXT_ASSIGNMENT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_.]*\s*=)")


@dataclass(frozen=True)
class Row:
    """One row of the table: a label and its param overrides (dotted key -> value as given on
    the command line, as `dvc exp run -S` takes it)."""

    label: str
    overrides: tuple[tuple[str, str], ...]

    def experiment(self, comparison: str, seed: int) -> str:
        """The DVC experiment of this row and seed: ``<comparison>-<label>-s<seed>``."""
        return f"{comparison}-{self.label}-s{seed}"


@dataclass(frozen=True)
class Spec:
    """A whole comparison: its name, rows, the overrides every row shares, and its seeds."""

    name: str
    rows: tuple[Row, ...]
    common: tuple[tuple[str, str], ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)

    def overrides(self, row: Row, seed: int) -> list[tuple[str, str]]:
        """Every override of one experiment: the shared ones, the row's, then its seed."""
        return [*self.common, *row.overrides, (SEED_KEY, str(seed))]

    def experiments(self) -> list[tuple[Row, int, str]]:
        """``(row, seed, experiment name)``, row by row: the seeds of one row run side by side
        and the next row restores their single-task baselines from DVC's run cache."""
        return [(row, seed, row.experiment(self.name, seed))
                for row in self.rows for seed in self.seeds]


def check_name(name: str, what: str = "comparison name") -> str:
    """``name`` if it can be part of an experiment name and a folder name, else an error."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: use letters, digits, '-', '_' and single dots "
                         "inside (it becomes part of DVC experiment names and of "
                         "reports/comparisons/<name>/)")
    return name


def _slug(value: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)
    return re.sub(r"\.{2,}", ".", slug).strip("-.") or "x"


def parse_assignment(text: str, where: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(key, value)``; ``where`` names the option in the error."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"{where}: {text!r} is not KEY=VALUE (e.g. train.weighting=pcgrad)")
    return key.strip(), value.strip()


def parse_assignments(text: str, where: str) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE[,KEY=VALUE...]`` (a value may hold commas, e.g. a list)."""
    return tuple(parse_assignment(part, where) for part in _NEXT_ASSIGNMENT.split(text))


def expand_rows(vary: Sequence[Sequence[str]] = (), rows: Sequence[tuple[str, str]] = ()
                ) -> tuple[Row, ...]:
    """The rows of ``--vary KEY V1 V2 ...`` (their product, labelled by the values joined with
    ``-``) followed by those of ``--row LABEL KEY=VALUE[,...]``; labels must be unique."""
    found: list[Row] = []
    for position, option in enumerate(vary, 1):
        if len(option) < 2:
            raise ValueError(f"--vary number {position} ({' '.join(option) or 'empty'}): give "
                             "a key and at least one value, e.g. --vary train.weighting equal "
                             "pcgrad")
    if vary:
        keys = [option[0] for option in vary]
        for values in itertools.product(*(option[1:] for option in vary)):
            label = "-".join(_slug(value) for value in values)
            found.append(Row(label, tuple(zip(keys, values, strict=True))))
    for label, text in rows:
        found.append(Row(check_name(label, "--row label"),
                         parse_assignments(text, f"--row {label}")))
    if not found:
        raise ValueError("nothing to compare: give at least one --vary KEY V1 V2 ... or "
                         "--row LABEL KEY=VALUE")
    labels = [row.label for row in found]
    if twice := sorted({label for label in labels if labels.count(label) > 1}):
        raise ValueError(f"row label {', '.join(map(repr, twice))} stands for more than one "
                         "row; label the rows yourself with --row LABEL KEY=VALUE,...")
    return tuple(found)


def schema_keys(model: type[BaseModel] = Params, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of the params schema -> whether any key may follow it (a mapping of
    free names such as ``train.method_params``: its contents are checked by the parser)."""
    found: dict[str, bool] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found[key] = False
            found.update(schema_keys(annotation, key + "."))
        else:
            found[key] = getattr(annotation, "__origin__", None) is dict
    return found


def check_key(key: str, where: str) -> None:
    """Raise naming ``key``, the nearest known key and the known keys beside it, unless the
    params schema has it."""
    if key == SEED_KEY:
        raise ValueError(f"{where}: {key}: each row runs once per seed; choose them with "
                         "--seeds, not with --vary, --row or --set")
    known = schema_keys()
    if key in known or any(key.startswith(f"{k}.") and is_open for k, is_open in known.items()):
        return
    parts = key.split(".")
    depth = next(i for i in range(len(parts), -1, -1) if ".".join(parts[:i]) in known
                 or i == 0)
    section = ".".join(parts[:depth])
    siblings = [k for k in known if k.count(".") == depth
                and (not section or k.startswith(section + "."))]
    raise ValueError(f"{where}: {unknown_name('key', '.'.join(parts[:depth + 1]), siblings)}")


def _parse_value(text: str) -> Any:
    """A value as `dvc exp run -S` writes it into params.yaml (a YAML scalar or list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _assign(raw: dict[str, Any], key: str, value: Any) -> None:
    *sections, last = key.split(".")
    node = raw
    for section in sections:
        child = node.get(section)
        if not isinstance(child, dict):
            child = node[section] = {}
        node = child
    node[last] = value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[tuple[str, str]]
                    ) -> dict[str, Any]:
    """A copy of the params mapping ``raw`` with each ``(key, value)`` set."""
    changed = copy.deepcopy(raw)
    for key, value in overrides:
        _assign(changed, key, _parse_value(value))
    return changed


def row_params(spec: Spec, raw: dict[str, Any], path: str | Path) -> dict[str, Params]:
    """Each row's params (first seed) parsed as a stage would load them; one error listing
    every unknown key, conflicting override and bad value, each naming its row."""
    problems: list[str] = []
    common = {key for key, _ in spec.common}
    for key, _ in spec.common:
        try:
            check_key(key, "--set")
        except ValueError as exc:
            problems.append(str(exc))
    for row in spec.rows:
        for key, _ in row.overrides:
            try:
                check_key(key, f"row {row.label}")
            except ValueError as exc:
                problems.append(str(exc))
            if key in common:
                problems.append(f"row {row.label}: {key} is also given by --set; keep one")
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    parsed: dict[str, Params] = {}
    for row in spec.rows:
        try:
            parsed[row.label] = parse_params(
                apply_overrides(raw, spec.overrides(row, spec.seeds[0])), path)
        except ConfigError as exc:
            problems += [f"row {row.label}: {line}" for line in str(exc).splitlines()]
    if problems:
        raise ConfigError("\n".join(problems))
    return parsed
