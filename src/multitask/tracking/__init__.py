"""The only door to MLflow, in four rooms.

- :mod:`.store`: where the store is (``$MLFLOW_TRACKING_URI`` or the repository's SQLite file);
- :mod:`.runs`: the run of a stage and nested trial runs, never left RUNNING
  (:mod:`.provenance` tags them; :mod:`.orphans` ends those a killed process left behind);
- :mod:`.models`: logging the served model and loading it back through pyfunc;
- :mod:`.registry`: registered versions, tags and aliases.

mlflow itself is imported inside the functions that need it, so importing this package is cheap.
"""

from multitask.tracking.models import (
    DEFAULT_RESIZE,
    MODEL_FORMAT,
    MODEL_FORMAT_TAG,
    MODEL_NAME,
    MODEL_URI_TAG,
    NetworkState,
    fetch_checked_model,
    load_model,
    log_model,
    network_state,
)
from multitask.tracking.orphans import end_orphaned_runs, owner_tags
from multitask.tracking.provenance import run_tags
from multitask.tracking.registry import (
    ModelVersion,
    delete_alias,
    register_version,
    registered_names,
    set_alias,
    set_version_tags,
    version_by_alias,
    versions_of_run,
)
from multitask.tracking.runs import (
    DATA_TAG,
    EVALUATED_TAG,
    StageRun,
    experiment_name,
    nested_run,
    rerun_of,
    stage_run,
)
from multitask.tracking.store import (
    ARTIFACT_DIR,
    STORE_FILE,
    URI_ENV,
    StoreError,
    artifact_root,
    client,
    describe_uri,
    end_run,
    experiment_id,
    filter_literal,
    get_run,
    missing_store,
    repo_root,
    require_pipeline_store,
    run_json,
    tracking_uri,
)

__all__ = [
    "ARTIFACT_DIR",
    "DATA_TAG",
    "DEFAULT_RESIZE",
    "EVALUATED_TAG",
    "MODEL_FORMAT",
    "MODEL_FORMAT_TAG",
    "MODEL_NAME",
    "MODEL_URI_TAG",
    "STORE_FILE",
    "URI_ENV",
    "ModelVersion",
    "NetworkState",
    "StageRun",
    "StoreError",
    "artifact_root",
    "client",
    "delete_alias",
    "describe_uri",
    "end_orphaned_runs",
    "end_run",
    "experiment_id",
    "experiment_name",
    "fetch_checked_model",
    "filter_literal",
    "get_run",
    "load_model",
    "log_model",
    "missing_store",
    "nested_run",
    "network_state",
    "owner_tags",
    "register_version",
    "registered_names",
    "repo_root",
    "require_pipeline_store",
    "rerun_of",
    "run_json",
    "run_tags",
    "set_alias",
    "set_version_tags",
    "stage_run",
    "tracking_uri",
    "version_by_alias",
    "versions_of_run",
]
