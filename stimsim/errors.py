"""Exception hierarchy.

Every error raised on purpose by stimsim derives from :class:`StimsimError`, so the
command line can turn it into a one-line message and exit code 2 instead of a traceback.
Messages name the offending field, the value given and what would fix it.
"""


class StimsimError(Exception):
    """Base class of all errors raised on purpose by stimsim."""


class ProtocolError(StimsimError, ValueError):
    """A protocol (YAML or Python object) is invalid."""


class MeshError(StimsimError, ValueError):
    """A mesh file cannot be read or the mesh is unusable (inverted tets, unknown tags...)."""


class SolverError(StimsimError, RuntimeError):
    """The linear solver failed (no convergence, singular system, missing backend)."""


class SafetyViolation(StimsimError):
    """Raised only when a caller asks for safety failures to be exceptions."""
