"""Where stimsim keeps files it can rebuild (head meshes, AMG hierarchies, TMS cortical modes).

``$STIMSIM_CACHE``, else ``$XDG_CACHE_HOME/stimsim``, else ``~/.cache/stimsim``, with one sub-folder
per kind of file.  Everything there may be deleted at any time: it is rebuilt when needed.  Files are
named by a hash of what made them and written atomically, so processes may share a folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks): what names an input in summaries and
    the files made from it here."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir(sub: str | None = None) -> Path:
    """The cache root, or its sub-folder ``sub`` (not created here)."""
    env = os.environ.get("STIMSIM_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "stimsim"
    return root / sub if sub else root


def prune(folder: Path, max_bytes: int, pattern: str = "*") -> None:
    """Delete the least recently used files matching ``pattern`` in ``folder`` until they hold at most
    ``max_bytes`` (a reader touches the files it uses).  Errors (a file another process removed) pass."""
    try:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in folder.glob(pattern) if p.is_file()]
    except OSError:
        return
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        try:
            path.unlink()
            total -= size
        except OSError:
            pass
