"""One package logger, ``logging.getLogger("stimsim")``; the CLI sets its level."""

import logging

logger = logging.getLogger("stimsim")
logger.addHandler(logging.NullHandler())


def set_log_level(verbose: bool | int | str | None = None) -> None:
    """Set the stimsim logger level (``True`` = INFO, ``"DEBUG"``, an int, ``None`` = WARNING)."""
    if verbose is None or verbose is False:
        level = logging.WARNING
    elif verbose is True:
        level = logging.INFO
    elif isinstance(verbose, str):
        level = getattr(logging, verbose.upper())
    else:
        level = int(verbose)
    logger.setLevel(level)
