"""Run the benchmarks and merge their rows into reports/benchmarks.json.

Each ``benchmarks/bench_<name>.py`` exposes ``run() -> list[dict]``; a row has at least
``name``, ``value`` and ``unit``, and where the project sets one, ``target`` and ``ok``. A
benchmark's rows replace its earlier ones, except that a row skipped here (no value, with the
reason as ``skipped``) keeps its earlier measurement, and a benchmark with no rows at all on
this machine (``gpu`` without CUDA) keeps all of them. While a benchmark runs, a line every
minute says it still does (several take tens of minutes and print nothing until they end).

    python -m benchmarks.run            # all
    python -m benchmarks.run data cli   # only bench_data.py and bench_cli.py
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import platform
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT
from multitask.allocator import keep_freed_memory
from multitask.device import cpu_model
from multitask.io import write_json
from multitask.layout import Layout
from multitask.processes import sigterm_raises

RESULTS = Layout(ROOT).benchmarks_json  # the checkout's, wherever the command is started


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))


def commit() -> str | None:
    """The checkout's commit (``-dirty`` when tracked files differ from it); None outside git."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        return None
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                            capture_output=True, text=True)
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def shown(row: dict[str, Any]) -> str:
    """A row as the runner prints it: value, unit, target and whether it was met, or why
    there is no value."""
    if row.get("value") is None:
        why = row.get("skipped") or row.get("error") or row.get("note") or "no reason given"
        return f"not measured ({why})"
    status = "" if "ok" not in row else ("  ok" if row["ok"] else "  MISSED")
    target = f" (target {row['target']})" if "target" in row else ""
    return f"{row['value']} {row['unit']}{target}{status}"


def recorded(rows: list[dict[str, Any]], earlier: dict[str, Any] | None,
             machine: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` as recorded on ``machine``: a row skipped here (no value; ``skipped`` says why:
    a pipeline not reproduced) keeps the measurement of that name in ``earlier`` (the group's
    last entry), with its own date and machine and, as ``kept``, why it was not measured again,
    instead of erasing it. So does a GPU row that a machine without one does not produce at all
    (``training``, ``backbones``, ``distributed`` add their GPU rows beside the CPU ones)."""
    if not earlier:
        return rows
    before = {r["name"]: r for r in earlier["rows"]}
    out = []
    for row in rows:
        old = before.get(row["name"], {})
        if row.get("value") is None and "skipped" in row and old.get("value") is not None:
            row = _kept(old, earlier, row["skipped"])
        out.append(row)
    if machine.get("cuda") is None:
        measured = {row["name"] for row in rows}
        out += [_kept(old, earlier, "needs a GPU; the last run's machine had none")
                for old in earlier["rows"] if old["name"] not in measured
                and old.get("value") is not None
                and old.get("machine", earlier["machine"]).get("cuda")]
    return out


def _kept(old: dict[str, Any], earlier: dict[str, Any], why: str) -> dict[str, Any]:
    """``old`` (a row of ``earlier``) kept by a run that did not measure it, and why."""
    return {"measured_at": earlier["measured_at"], "machine": earlier["machine"], **old,
            "kept": why}


@contextlib.contextmanager
def still_running(name: str, every_s: float = 60.0) -> Iterator[None]:
    """For the block, print every ``every_s`` seconds that benchmark ``name`` still runs and for
    how long (a waiting thread: it costs the measurements nothing)."""
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(every_s):
            minutes = (time.monotonic() - started) / 60
            print(f"  {name}: still running, {minutes:.0f} min so far", flush=True)

    reporter = threading.Thread(target=report, name=f"still_running({name})", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        done.set()
        reporter.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description="Run benchmarks; results in " + str(RESULTS))
    parser.add_argument("names", nargs="*", help=f"subset of: {', '.join(available())} (none: "
                        "all of them, one after another; several take tens of minutes, and "
                        "ci, repro and compare set up a fresh clone of the repository: run "
                        "them on an idle machine)")
    args = parser.parse_args(argv)
    if unknown := [name for name in args.names if name not in available()]:
        parser.error(f"no benchmark named {', '.join(unknown)} (benchmarks/bench_<name>.py); "
                     f"choose from: {', '.join(available())}")
    names = args.names or available()
    sigterm_raises()  # as Ctrl-C: temporary folders removed, child processes stopped
    malloc = keep_freed_memory()  # as the multitask command does: benchmarks measure what it runs
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    machine = {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "malloc": malloc or "unchanged",
    }
    measured_commit = commit()
    failed: list[str] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"== {name}", flush=True)
        try:
            with still_running(name):
                rows = module.run()
        except Exception as exc:  # shown, and the exit status says so; the others still run
            traceback.print_exc()
            print(f"  failed ({type(exc).__name__}: {exc}); earlier results kept", flush=True)
            failed.append(name)
            continue
        if not rows:  # nothing to measure here (the GPU rows on a CPU machine): keep the last
            print("  no rows on this machine; earlier results kept", flush=True)
            continue
        rows = recorded(rows, results.get(name), machine)
        for row in rows:
            kept = (f"; not measured here ({row['kept']}): the {row['measured_at'][:10]} "
                    "measurement kept") if "kept" in row else ""
            print(f"  {row['name']}: {shown(row)}{kept}", flush=True)
        results[name] = {
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": measured_commit,
            "machine": machine,
            "rows": rows,
        }
        write_json(RESULTS, results)
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (their earlier results are kept in {RESULTS})")


if __name__ == "__main__":
    main()
