"""Which implementation runs the heavy loops: numba kernels when numba is installed, else numpy.

Every choice goes through :func:`use_numba` at call time (not at import), so one switch, the
``backend=`` argument or this module's :data:`HAVE_NUMBA`, decides for the P1 kernels, the TMS
primary field and SPR recovery alike.  The numpy paths are the tested fallbacks.
"""

from __future__ import annotations

import importlib.util

from ..errors import SolverError, check_option

#: numba is importable (found without importing it: a tDCS run never loads numba)
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

BACKENDS = ("auto", "numba", "numpy")


def use_numba(backend: str = "auto") -> bool:
    """True if the numba kernels should run for ``backend`` ("auto": when installed)."""
    check_option("backend", backend, BACKENDS)
    if backend == "numba" and not HAVE_NUMBA:
        raise SolverError("backend 'numba' requested but numba is not installed: pip install numba")
    return HAVE_NUMBA if backend == "auto" else backend == "numba"


__all__ = ["HAVE_NUMBA", "BACKENDS", "use_numba"]
