"""Load numba and a run's compiled kernels in a background thread, started as early as possible.

A fresh process spends ~0.6 s importing numba, starting its parallel back end and loading the
cached kernels (measured: docs/solver.md).  A tDCS/tACS ``stimsim run`` starts this once the protocol
is read, so the loading overlaps the imports and the mesh read of the main thread, which waits for it
(:func:`wait`) before its first kernel call: the two threads never run numba's parallel code at the
same time (its "workqueue" back end, used where neither TBB nor OpenMP is installed, aborts the
process then).  A numba that is installed but does not import (a NumPy version it does not support)
is noted in :mod:`stimsim.fem.kernels`, and the run takes the numpy path.  This module imports
nothing heavy itself.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

_lock = threading.Lock()
_started: Future | None = None


def _load(done: Future) -> None:
    try:
        from .fem import kernels

        if kernels.use_numba() and kernels.numba_importable():
            from .fem import amg_kernels, p1_numba

            p1_numba.warm_up(tms=False)
            amg_kernels.warm_up()
        done.set_result(None)
    except BaseException as exc:  # surfaces in wait(), in the main thread
        done.set_exception(exc)


def start() -> Future:
    """Start loading (once per process); returns the future :func:`wait` waits on."""
    global _started
    with _lock:
        if _started is None:
            _started = Future()
            # not a daemon: a process that fails early still waits for the loader before exiting,
            # rather than tearing down the interpreter under a thread inside LLVM
            threading.Thread(target=_load, args=(_started,), name="stimsim-kernel-loader").start()
        return _started


def wait() -> None:
    """Start loading if nobody has, and wait until the kernels are loaded (re-raises its errors)."""
    start().result()
