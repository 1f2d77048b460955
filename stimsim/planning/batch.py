"""Run many protocols (montages, coil placements) in parallel, locally or on a dask cluster.

Each finished simulation is written to ``OUT/<id>/`` at once (atomically, by
:func:`stimsim.results.write_results`), so a crash loses nothing already computed and a
rerun skips every id whose ``summary.json`` exists.  ``jobs`` runs processes with joblib;
``scheduler="tcp://host:port"`` sends the same tasks to a dask.distributed cluster (a real
engine that scales past one machine).  Both paths run the same worker function, so they
give the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from .._logging import logger
from ..errors import StimsimError


def _run_one(task_id: str, protocol: dict, base_dir: str | None, out_dir: str) -> dict:
    """Worker: simulate one protocol and write its results folder; returns its headline numbers."""
    from ..protocol import validate_protocol
    from ..results import write_results
    from ..simulation import simulate

    p = validate_protocol(protocol, source=task_id)
    result = simulate(p, base_dir=Path(base_dir) if base_dir else None)
    out = write_results(result, Path(out_dir) / task_id, overwrite=True)
    summary = json.loads((out / "summary.json").read_text())
    return {"id": task_id, "peak_magnE_V_per_m": max(s["max"] for s in summary["magnE_V_per_m"].values()),
            "iterations": summary["solver"]["iterations"], "safety": summary["safety"]["verdict"]}


def _done(out_dir: Path, task_id: str) -> dict | None:
    path = out_dir / task_id / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return {"id": task_id, "peak_magnE_V_per_m": max(s["max"] for s in summary["magnE_V_per_m"].values()),
            "iterations": summary["solver"]["iterations"], "safety": summary["safety"]["verdict"],
            "resumed": True}


def run_batch(tasks: dict[str, dict], out_dir, *, base_dir=None, jobs: int = 1, scheduler: str | None = None,
              fallback_to_local: bool = False, progress: bool = True) -> list[dict]:
    """Simulate every ``{id: protocol mapping}``; return one row per id (in input order).

    Raises
    ------
    StimsimError
        If the dask scheduler cannot be reached (unless ``fallback_to_local``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {tid: _done(out_dir, tid) for tid in tasks}
    todo = [tid for tid, row in rows.items() if row is None]
    if len(todo) < len(tasks):
        logger.info("resuming: %d of %d already done", len(tasks) - len(todo), len(tasks))
    bd = str(base_dir) if base_dir else None
    results = []
    if todo and scheduler:
        try:
            from distributed import Client

            client = Client(scheduler, timeout="5s")
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
                futures = [client.submit(_run_one, tid, tasks[tid], bd, str(out_dir), pure=False) for tid in todo]
                for fut in _progress(as_completed(futures), len(futures), progress):
                    results.append(fut.result())
            finally:
                client.close()
    if todo and not scheduler:
        if jobs == 1:
            gen = (_run_one(tid, tasks[tid], bd, str(out_dir)) for tid in todo)
        else:
            from joblib import Parallel, delayed

            gen = Parallel(n_jobs=jobs, return_as="generator_unordered")(
                delayed(_run_one)(tid, tasks[tid], bd, str(out_dir)) for tid in todo)
        results.extend(_progress(gen, len(todo), progress))
    for r in results:
        rows[r["id"]] = r
    return [rows[tid] for tid in tasks]


def _progress(iterable, total, enabled):
    if not enabled:
        return iterable
    from rich.progress import track

    return track(iterable, total=total, description=f"{total} simulations", transient=True)
