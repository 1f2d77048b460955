"""One package logger, ``logging.getLogger("stimsim")``; the CLI sets its level, library calls
with ``verbose=`` change it only for their own duration (:func:`log_level`)."""

import logging
from contextlib import contextmanager

logger = logging.getLogger("stimsim")
logger.addHandler(logging.NullHandler())


def _level(verbose) -> int:
    if verbose is None or verbose is False:
        level = logging.WARNING
    elif verbose is True:
        level = logging.INFO
    elif isinstance(verbose, str):
        level = getattr(logging, verbose.upper())
    else:
        level = int(verbose)
    return level


def set_log_level(verbose: bool | int | str | None = None) -> None:
    """Set the stimsim logger level (``True`` = INFO, ``"DEBUG"``, an int, ``None`` = WARNING)."""
    logger.setLevel(_level(verbose))


@contextmanager
def log_level(verbose: bool | int | str | None):
    """The stimsim logger at ``verbose``'s level inside the block, restored after it (``None``:
    unchanged) -- what a library call's ``verbose=`` argument does."""
    if verbose is None:
        yield
        return
    previous = logger.level
    logger.setLevel(_level(verbose))
    try:
        yield
    finally:
        logger.setLevel(previous)
