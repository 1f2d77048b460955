"""Process-wide settings of the command line, in one place: memory allocator, GIL switching,
signals, garbage collection at exit.  Library code never changes them; only ``stimsim`` (the
console script) does.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager


def single_malloc_arena() -> None:
    """One glibc malloc arena for all threads (M_ARENA_MAX = 1).

    A TMS run computes the coil's field in a worker thread; with an arena per thread, memory
    that thread frees is not reused by the main thread, so peak RSS grows by ~30 MB on a
    668k-tet head (and the run is no faster).  The work is in large numpy arrays, so sharing
    one arena costs no lock contention worth measuring.  Process-wide: only the CLI sets it, for
    every command but those that mesh (:data:`~.common.MESHING_COMMANDS`): the surface mesher's
    signed distances run on two threads, each allocating grids of tens of MB, and with one arena
    Colin27's took 0.5 s longer.
    """
    import ctypes

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX
        except (OSError, AttributeError):  # not glibc: keep the allocator's default
            pass


@contextmanager
def fast_gil_switching(interval_s: float = 2e-4):
    """A 0.2 ms GIL switch interval while a run simulates and writes, restored afterwards.

    A TMS run, and every run's writing, has a worker thread running Python (numba loading its
    kernels, coil placement, file writers) while the main thread runs numpy, which releases and
    re-takes the GIL at every call; each re-take waited up to the 5 ms default switch interval.
    At 0.2 ms a TMS run on the 668k-tet sphere took 2.11 instead of 2.21 s (mean of 10).
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds like an exception, so every ``finally``/``with`` clean-up runs
    (a results folder's temporary files are removed); not a KeyboardInterrupt, which click
    would turn into "Aborted!"."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_on_signal(signum, frame):
    # the clean-up that follows must not be cut short by a second Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread."""
    signal.signal(signal.SIGTERM, raise_on_signal)
    signal.signal(signal.SIGINT, raise_on_signal)


def freeze_gc() -> None:
    """Skip the interpreter's last garbage collections at exit.

    They walk every object numba, scipy and pydantic created: ~0.2 s after a TMS run.  Frozen
    objects are freed with the process all the same.
    """
    import gc

    gc.freeze()
