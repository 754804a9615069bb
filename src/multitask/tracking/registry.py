"""The MLflow model registry: versions, their tags and aliases (no decisions here).

The promotion gate (:mod:`multitask.promotion`) decides; these functions only read and move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multitask.tracking.store import client, filter_literal, store_errors


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model, as the promotion gate needs it."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]


def _version(entity: Any) -> ModelVersion:
    return ModelVersion(name=entity.name, version=str(entity.version), run_id=entity.run_id,
                        source=entity.source, tags=dict(entity.tags or {}),
                        aliases=tuple(getattr(entity, "aliases", None) or ()))


def _missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


@store_errors
def version_by_alias(name: str, alias: str) -> ModelVersion | None:
    """The version of registered model ``name`` holding ``alias``; None if there is none."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(create=False)  # reading: a missing store is not created
    try:
        registered = mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise
    version = dict(registered.aliases or {}).get(alias)
    return None if version is None else _version(mlflow_client.get_model_version(name, version))


@store_errors
def registered_names() -> list[str]:
    """The names of the store's registered models (its first page of them)."""
    return sorted(model.name for model in client(create=False).search_registered_models())


@store_errors
def versions_of_run(name: str, run_id: str) -> list[ModelVersion]:
    """The versions of ``name`` registered from run ``run_id`` (oldest first)."""
    query = f"name = {filter_literal(name)} and run_id = {filter_literal(run_id)}"
    found = client().search_model_versions(query)
    return sorted((_version(v) for v in found), key=lambda v: int(v.version))


@store_errors
def register_version(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``name`` (created if new), with ``tags``."""
    import mlflow

    client()
    registered = mlflow.register_model(model_uri, name, tags=tags)
    return _version(client().get_model_version(name, registered.version))


@store_errors
def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    mlflow_client = client()
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)


@store_errors
def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


@store_errors
def delete_alias(name: str, alias: str) -> None:
    """Remove ``alias`` from ``name``; nothing to do when it is not set."""
    if version_by_alias(name, alias) is not None:
        client().delete_registered_model_alias(name, alias)
