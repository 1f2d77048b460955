"""Exception hierarchy.

Every error raised on purpose by stimsim derives from :class:`StimsimError`, so the
command line can turn it into a one-line message and exit code 2 instead of a traceback.
Messages name the offending field, the value given and what would fix it.

Values echoed in messages go through :func:`shown`, which caps them at
:data:`MAX_VALUE_CHARS`; as a backstop, a whole message is cut at :data:`MAX_MESSAGE_CHARS`
(hostile input must not turn an error into megabytes of text).
"""

from __future__ import annotations

import reprlib

#: longest echo of a user's value in a message (then an ellipsis)
MAX_VALUE_CHARS = 200
#: longest message of any StimsimError (then an ellipsis)
MAX_MESSAGE_CHARS = 2000

# reprlib stops at these sizes while it builds the text, so a huge or deeply nested value
# costs microseconds, not the time to write it out in full
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 8
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_VALUE_CHARS


def clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    text = str(text)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def shown(value, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters, on one line."""
    return clip(_REPR.repr(value).replace("\n", "\\n").replace("\r", "\\r"), limit)


class StimsimError(Exception):
    """Base class of all errors raised on purpose by stimsim."""

    def __str__(self) -> str:  # one line, bounded, whatever went into it
        text = super().__str__().replace("\r", "\\r").replace("\n", "\\n")
        return clip(text, MAX_MESSAGE_CHARS)


class ProtocolError(StimsimError, ValueError):
    """A protocol (YAML or Python object) is invalid."""


class MeshError(StimsimError, ValueError):
    """A mesh file cannot be read or the mesh is unusable (inverted tets, unknown tags...)."""


class SolverError(StimsimError, RuntimeError):
    """The linear solver failed (no convergence, singular system, missing backend)."""


class ResultsError(StimsimError, ValueError):
    """A results folder cannot be read, or a picture or report cannot be made from the given input
    (missing or NaN field, unknown view or surface...)."""


class SafetyViolation(StimsimError):
    """Raised only when a caller asks for safety failures to be exceptions."""


def check_option(name: str, value, allowed, *, error: type = None, hint: str = "") -> object:
    """Return ``value`` if it is one of ``allowed``; else raise ``error`` (default
    :class:`ProtocolError`) naming the option, listing the allowed values and suggesting the
    nearest one.  The one place option values are checked (as MNE-Python's ``_check_option``)."""
    allowed = list(allowed)
    if value in allowed:
        return value
    import difflib

    close = difflib.get_close_matches(str(value)[:100], [str(a) for a in allowed], n=1, cutoff=0.6)
    nearest = f"; did you mean {close[0]!r}?" if close else ""
    raise (error or ProtocolError)(f"{name}: {shown(value)} is not one of {', '.join(str(a) for a in allowed)}"
                                   f"{nearest}{hint}")
