"""Runs a killed process left RUNNING: recognised by their owner tags and ended as KILLED.

Every stage run carries its process (host, pid and start time) and folder as tags; the next run
of the same stage in the same folder ends the earlier ones whose process is gone. A run whose
folder no longer exists (a ``dvc exp run --temp`` or ``--queue`` copy, which DVC removes when
the experiment stops) can never be rerun there, so the next run of its stage in any folder of
the same host ends it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from multitask.processes import HOST, alive, this_process
from multitask.tracking.store import client, end_run, filter_literal, store_errors

log = logging.getLogger(__name__)


def owner_tags() -> dict[str, str]:
    """Which process runs a stage, and in which folder: what :func:`end_orphaned_runs` reads."""
    pid, start = this_process()
    return {"multitask.host": HOST, "multitask.pid": str(pid), "multitask.pid_start": start or "",
            "multitask.workspace": str(Path.cwd().resolve())}


@store_errors
def end_orphaned_runs(experiment: str, stage: str, keep: str | None = None) -> list[str]:
    """End, as KILLED, the RUNNING runs of ``stage`` whose process is gone, of this workspace
    or of a folder on this host that no longer exists.

    A SIGKILL (or a lost machine) gives a run no chance to end itself; the next run of the
    same stage in the same folder on the same host finds it here, and so does the next in any
    folder when the run's own folder is gone (a removed experiment copy). Returns the ended
    run ids.
    """
    owner = owner_tags()
    query = f"attributes.status = 'RUNNING' and tags.stage = {filter_literal(stage)}"
    ended = []
    for found in client().search_runs([experiment], filter_string=query):
        tags = found.data.tags
        # host and folder are compared here, not interpolated: a path may hold any character
        workspace = tags.get("multitask.workspace", "")
        if tags.get("multitask.host") != owner["multitask.host"] or (
                workspace != owner["multitask.workspace"]
                and (not workspace or Path(workspace).exists())):
            continue
        pid = int(tags.get("multitask.pid", "0") or 0)
        start = tags.get("multitask.pid_start") or None
        if found.info.run_id == keep or (pid and alive(pid, start)):
            continue
        gone = "" if workspace == owner["multitask.workspace"] else f" and so is {workspace}"
        reason = (f"{stage}: its process (pid {pid} on {owner['multitask.host']}) is gone"
                  f"{gone}; ended by the next {stage} in {owner['multitask.workspace']}")
        log.warning("MLflow run %s was left RUNNING; %s -> KILLED", found.info.run_id, reason)
        end_run(found.info.run_id, "KILLED", reason)
        ended.append(found.info.run_id)
    return ended
