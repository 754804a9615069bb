"""Runs a killed process left RUNNING: recognised by their owner tags and ended as KILLED.

Every stage run carries its process (host, pid and start time) and folder as tags; the next run
of the same stage in the same folder ends the earlier ones whose process is gone. (A run of a
``dvc exp run --temp`` copy is recognised only from that copy's folder.)
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
    """End, as KILLED, this workspace's RUNNING runs of ``stage`` whose process is gone.

    A SIGKILL (or a lost machine) gives a run no chance to end itself; the next run of the
    same stage in the same folder on the same host finds it here. Returns the ended run ids.
    """
    owner = owner_tags()
    query = f"attributes.status = 'RUNNING' and tags.stage = {filter_literal(stage)}"
    ended = []
    for found in client().search_runs([experiment], filter_string=query):
        tags = found.data.tags
        # host and folder are compared here, not interpolated: a path may hold any character
        if any(tags.get(key) != owner[key] for key in ("multitask.host", "multitask.workspace")):
            continue
        pid = int(tags.get("multitask.pid", "0") or 0)
        start = tags.get("multitask.pid_start") or None
        if found.info.run_id == keep or (pid and alive(pid, start)):
            continue
        reason = (f"{stage}: its process (pid {pid} on {owner['multitask.host']}) is gone; "
                  f"ended by the next {stage} in {owner['multitask.workspace']}")
        log.warning("MLflow run %s was left RUNNING; %s -> KILLED", found.info.run_id, reason)
        end_run(found.info.run_id, "KILLED", reason)
        ended.append(found.info.run_id)
    return ended
