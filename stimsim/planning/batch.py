"""Run many protocols (montages, coil placements) in parallel, locally or on a dask cluster.

Each finished simulation is written to ``OUT/<id>/`` at once (atomically, through
:class:`stimsim.outputs.ResultsFolder`), so a crash loses nothing already computed.  A rerun
reuses a finished folder only when its ``summary.json`` records the same protocol content hash
(an edited protocol runs again and replaces its own earlier result).  ``jobs`` runs processes
with joblib; ``scheduler="tcp://host:port"`` sends the same tasks to a dask.distributed cluster
(a real engine that scales past one machine).  Both paths run the same worker function, so
they give the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .._logging import logger
from ..errors import StimsimError


def _row(task_id: str, summary: dict, **extra) -> dict:
    return {"id": task_id, "peak_magnE_V_per_m": max(s["max"] for s in summary["magnE_V_per_m"].values()),
            "iterations": summary["solver"]["iterations"],
            "safety": summary["safety"].get("summary", summary["safety"]["verdict"]), **extra}


def _run_one(task_id: str, protocol: dict, base_dir: str | None, out_dir: str) -> dict:
    """Worker: simulate one protocol and write its results folder; returns its headline numbers.

    A problem with this one protocol (bad head path, a folder stimsim did not write in the way)
    becomes the row's ``error``, so the other protocols still run.
    """
    from ..protocol import validate_protocol
    from ..results import write_results
    from ..safety import check_result
    from ..simulation import simulate

    try:
        p = validate_protocol(protocol, source=task_id)
        result = simulate(p, base_dir=Path(base_dir) if base_dir else None)
        out = write_results(result, Path(out_dir) / task_id, overwrite=True, safety=check_result(result).as_dict())
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except StimsimError as err:
        return {"id": task_id, "error": str(err)}
    return _row(task_id, summary)


def _done(out_dir: Path, task_id: str, protocol: dict) -> dict | None:
    """The row of a finished result computed from exactly this protocol, else None."""
    from ..protocol import validate_protocol
    from ..simulation import protocol_sha256

    path = out_dir / task_id / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        done_hash = summary["inputs"]["protocol_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or foreign: run again (writing refuses folders stimsim did not write)
    try:
        expected = protocol_sha256(validate_protocol(protocol, source=task_id))
    except StimsimError:
        return None  # the worker reports it
    if done_hash != expected:
        logger.info("%s: protocol changed since its result was written; running it again", task_id)
        return None
    return _row(task_id, summary, resumed=True)


def task_ids(files: list[Path]) -> list[str]:
    """One distinct, stable result-folder name per protocol file: its stem, or when two files share
    a stem (``a/montage.yaml``, ``b/montage.yaml``), the stem and a hash of the file's full path."""
    stems = [Path(f).stem for f in files]
    ids = []
    for f, stem in zip(files, stems):
        if stems.count(stem) > 1:
            digest = hashlib.sha256(os.fsencode(Path(f).resolve())).hexdigest()[:8]
            stem = f"{stem}-{digest}"
        ids.append(stem)
    return ids


def run_batch(tasks: dict[str, dict], out_dir, *, base_dir=None, jobs: int = 1, scheduler: str | None = None,
              fallback_to_local: bool = False, progress: bool = True, connect_timeout_s: float = 5.0) -> list[dict]:
    """Simulate every ``{id: protocol mapping}``; return one row per id (in input order).

    ``base_dir`` is the folder relative paths in the protocols are resolved against: one folder
    for all, or a mapping ``id -> folder`` (each protocol file's own folder).  A row has
    ``error`` instead of numbers when that protocol failed.  ``connect_timeout_s``: how long to try
    reaching the dask ``scheduler``.

    Raises
    ------
    StimsimError
        If the dask scheduler cannot be reached (unless ``fallback_to_local``), ``jobs`` < 1, or
        ``out_dir`` is a file.
    """
    from ..outputs import OutputError, check_output_target

    if not isinstance(jobs, int) or jobs < 1:
        raise StimsimError(f"jobs: give a number of parallel processes >= 1 (got {jobs!r})")
    out_dir = check_output_target(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is an existing file; give a folder for the results")
    out_dir.mkdir(parents=True, exist_ok=True)
    dirs = {tid: (base_dir.get(tid) if isinstance(base_dir, dict) else base_dir) for tid in tasks}
    dirs = {tid: (str(d) if d else None) for tid, d in dirs.items()}
    rows = {tid: _done(out_dir, tid, tasks[tid]) for tid in tasks}
    todo = [tid for tid, row in rows.items() if row is None]
    if len(todo) < len(tasks):
        logger.info("resuming: %d of %d already done", len(tasks) - len(todo), len(tasks))
    results = []
    if todo and scheduler:
        try:
            from distributed import Client

            client = Client(scheduler, timeout=f"{connect_timeout_s:g}s")
        except Exception as exc:
            if not fallback_to_local:
                raise StimsimError(
                    f"dask scheduler {scheduler} cannot be reached ({type(exc).__name__}); start it or drop "
                    "--dask-scheduler (add --fallback-local to run here instead)") from None
            logger.warning("dask scheduler %s unreachable; running locally", scheduler)
            scheduler = None
        else:
            from distributed import as_completed

            try:
                futures = [client.submit(_run_one, tid, tasks[tid], dirs[tid], str(out_dir), pure=False)
                           for tid in todo]
                for fut in _progress(as_completed(futures), len(futures), progress):
                    results.append(fut.result())
            finally:
                client.close()
    if todo and not scheduler:
        if jobs == 1:
            gen = (_run_one(tid, tasks[tid], dirs[tid], str(out_dir)) for tid in todo)
        else:
            from joblib import Parallel, delayed

            gen = Parallel(n_jobs=jobs, return_as="generator_unordered")(
                delayed(_run_one)(tid, tasks[tid], dirs[tid], str(out_dir)) for tid in todo)
        results.extend(_progress(gen, len(todo), progress))
    for r in results:
        rows[r["id"]] = r
    return [rows[tid] for tid in tasks]


def _progress(iterable, total, enabled):
    if not enabled:
        return iterable
    from rich.progress import track

    return track(iterable, total=total, description=f"{total} simulations", transient=True)
