"""Which implementation runs the heavy loops: numba kernels when numba is installed, else numpy.

Every choice goes through :func:`use_numba` at call time (not at import), so one switch, the
``backend=`` argument or this module's :data:`HAVE_NUMBA`, decides for the P1 kernels, the TMS
primary field and SPR recovery alike.  The numpy paths are the tested fallbacks.
"""

from __future__ import annotations

import importlib.util

from ..errors import SolverError, check_option

#: numba is installed (found without importing it; :func:`numba_importable` imports it)
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
#: why ``import numba`` failed in this process (e.g. a NumPy it does not support), or None
NUMBA_IMPORT_ERROR: str | None = None

BACKENDS = ("auto", "numba", "numpy")


def use_numba(backend: str = "auto") -> bool:
    """True if the numba kernels should run for ``backend`` ("auto": when installed and, if tried, importable)."""
    check_option("backend", backend, BACKENDS)
    usable = HAVE_NUMBA and NUMBA_IMPORT_ERROR is None
    if backend == "numba" and not usable:
        why = f"does not import ({NUMBA_IMPORT_ERROR})" if HAVE_NUMBA else "is not installed: pip install numba"
        raise SolverError(f"backend 'numba' requested but numba {why}")
    return usable if backend == "auto" else backend == "numba"


def numba_ready(backend: str = "auto") -> bool:
    """:func:`use_numba`, and for ``"auto"`` numba really imports (tried once per process)."""
    return use_numba(backend) and (backend != "auto" or numba_importable())


def numba_importable() -> bool:
    """Import numba; on failure remember why (every later :func:`use_numba` is then False) and warn once."""
    global NUMBA_IMPORT_ERROR
    if NUMBA_IMPORT_ERROR is not None:
        return False
    try:
        import numba  # noqa: F401
    except Exception as exc:  # ImportError, or a broken LLVM / NumPy ABI (OSError, SystemError)
        from .._logging import logger

        NUMBA_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
        logger.warning("numba does not import (%s); using the slower numpy code", NUMBA_IMPORT_ERROR)
        return False
    return True


__all__ = ["HAVE_NUMBA", "BACKENDS", "use_numba", "numba_ready", "numba_importable"]
