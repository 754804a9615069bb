"""``multitask methods``: the names ``params.yaml`` accepts for ``train.weighting`` and
``model.architecture``, each with a one-line description.

Read from the registries (:data:`multitask.weighting.METHODS`,
:data:`multitask.models.ARCHITECTURES`), so a newly registered method or architecture is listed
without touching this module.
"""

from __future__ import annotations

import json

from multitask.layout import Layout
from multitask.models import ARCHITECTURES
from multitask.weighting import METHODS, TUNED

# `tuned` is no class in the registry: it names what the tune stage chose, fixed loss weights
# or, when tune.methods lets it pick one, another method (training.session.tuned_method).
# Users look here for every value train.weighting takes, so it is listed too.
TUNED_DESCRIPTION = ("the fixed weights, or the method (tune.methods), the tune stage chose "
                     f"({Layout().tuned_weights})")


def weighting_methods() -> dict[str, str]:
    """Every name ``train.weighting`` accepts -> its description, registered ones sorted."""
    methods = {name: METHODS[name].description for name in sorted(METHODS)}
    methods.setdefault(TUNED, TUNED_DESCRIPTION)
    return methods


def architectures() -> dict[str, str]:
    """Every name ``model.architecture`` accepts -> its description, sorted."""
    return {name: ARCHITECTURES[name][1] for name in sorted(ARCHITECTURES)}


def render(sections: dict[str, dict[str, str]]) -> str:
    """One titled block per section, one ``name  description`` line per entry."""
    width = max(len(name) for entries in sections.values() for name in entries)
    blocks = []
    for title, entries in sections.items():
        lines = [f"  {name:<{width}}  {description}" for name, description in entries.items()]
        blocks.append("\n".join([f"{title}:", *lines]))
    return "\n\n".join(blocks)


def show(as_json: bool = False) -> int:
    """Print the catalogue; with ``as_json``, ``{"weighting": [...], "architectures": [...]}``."""
    methods, models = weighting_methods(), architectures()
    if as_json:
        print(json.dumps({"weighting": list(methods), "architectures": list(models)}))
    else:
        print(render({
            "weighting methods (train.weighting)": methods,
            "architectures (model.architecture)": models,
        }))
    return 0
