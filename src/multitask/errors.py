"""One way to turn a pydantic validation error into lines a user can act on.

Every line names the file, the dotted key and what is wrong: ``params.yaml: train.epoch:
unknown key; did you mean 'epochs'?``. Used for ``params.yaml`` as a whole, for each
``train.method_params.<method>`` and for the CI gate's section of another branch's params.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A problem in a params file; the message names the file and the key."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown <kind> '<name>'; did you mean '<nearest>'? (available: ...)``: how every
    registry (data sets, architectures, weighting methods) words a name it does not hold."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{name}'{hint} (available: {', '.join(names)})"


def _section(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation,
                                                                     BaseModel) else None


def _owner(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at ``loc`` (for 'did you mean'); a
    ``dict[str, Model]`` field's entries (``data.tasks.<name>``) are owned by ``Model``."""
    model: type[BaseModel] | None = root
    entries: type[BaseModel] | None = None  # the model of the entry named by the next part
    for part in loc[:-1]:
        if entries is not None:
            model, entries = entries, None
            continue
        if model is None or not isinstance(part, str):
            return None
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        annotation = getattr(field, "annotation", None)
        if get_origin(annotation) is dict and (value := _section(get_args(annotation)[1])):
            model, entries = None, value
            continue
        model = _section(annotation)
    return model


def _line(error: dict[str, Any], root: type[BaseModel], where: str, prefix: str) -> str:
    loc = tuple(error["loc"])
    dotted = ".".join([*([prefix] if prefix else []), *(str(p) for p in loc)])
    if error["type"] == "extra_forbidden":
        owner = _owner(root, loc)
        names = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else (
            f"; valid keys: {', '.join(sorted(names))}" if names else
            "; it takes no keys" if owner else "")
        return f"{where}: {dotted}: unknown key{hint}"
    # A section's own check (a model validator) gets the whole section as its input, and its
    # message already names the key and value: repeating the mapping would bury it.
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    return f"{where}: {dotted}: {message}" + ("" if isinstance(given, Mapping)
                                               else f" (got {given!r})")


def describe(exc: ValidationError, root: type[BaseModel], where: str | Path,
             prefix: str = "") -> str:
    """One line per problem of ``exc`` (raised validating ``root``) in file ``where``;
    ``prefix`` is the dotted key of the validated mapping inside that file."""
    return "\n".join(_line(e, root, str(where), prefix) for e in exc.errors())


def validate(root: type[BaseModel], raw: Any, where: str | Path, prefix: str = "") -> Any:
    """``root.model_validate(raw)``, raising :class:`ConfigError` with :func:`describe`'s lines."""
    try:
        return root.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(exc, root, where, prefix)) from None
