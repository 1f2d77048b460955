"""numpy's transparent-huge-page advice, off while stimsim allocates large grids.

numpy asks the kernel for transparent huge pages on every large array (``madvise(MADV_HUGEPAGE)``).
Where the kernel answers that by compacting memory on the first touch of each page (transparent
huge-page ``defrag`` set to ``madvise``, many distributions' default) and the machine is a virtual
one, first touching fresh memory took 8 ms/MB instead of 0.5 on the 2-core VM stimsim is developed
on: a 500 MB array 4.2 s against 0.23 s, and ``stimsim mesh`` of Colin27 22-24 s against 19-20 s
(docs/meshing.md, top section).  Arrays are the same either way; only how the kernel backs them
changes.  A user's own choice (numpy's ``NUMPY_MADVISE_HUGEPAGE`` environment variable) is left alone.
The setting is numpy's, for the whole process: two threads meshing at once may leave it off.
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def _switch():
    """numpy's setter (returns the previous setting), or None where this numpy has none."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return getattr(multiarray, "_set_madvise_hugepage", None)


def hugepage_advice(enabled: bool) -> bool | None:
    """Turn numpy's huge-page advice on or off, unless the user set ``NUMPY_MADVISE_HUGEPAGE``; the
    previous setting (None: left alone, or not available)."""
    switch = _switch()
    if switch is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return None
    return bool(switch(bool(enabled)))


@contextmanager
def without_hugepage_advice():
    """numpy's huge-page advice off inside the block, as it was after it."""
    before = hugepage_advice(False)
    try:
        yield
    finally:
        if before is not None:
            hugepage_advice(before)


def hugepage_advice_off(func):
    """Decorator: ``func`` runs :func:`without_hugepage_advice`."""
    from functools import wraps

    @wraps(func)
    def wrapper(*args, **kwargs):
        with without_hugepage_advice():
            return func(*args, **kwargs)

    return wrapper
