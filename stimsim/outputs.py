"""Where stimsim writes, and the promise it keeps there: it never deletes or replaces what it
did not write, and a results folder appears complete or not at all.

:class:`ResultsFolder` reserves an output folder *before* any computing (path rules, a lock,
a temporary folder next to the target, so an unwritable place fails at once), and moves the
finished files into place with :meth:`ResultsFolder.commit`.  Design notes: ``docs/outputs.md``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import StimsimError

#: ``summary.json["format"]`` of a results folder; older stimsim versions wrote only
#: ``stimsim_version``, which is recognised too
RESULTS_FORMAT = "stimsim-results/1"
#: every entry a results folder may hold; a folder with anything else is not replaced
RESULTS_ENTRIES = frozenset({"fields.msh", "fields.vtu", "summary.json", "protocol.yaml"})


@contextmanager
def signals_deferred():
    """Hold back SIGINT and SIGTERM while the block runs, then deliver the first that came.

    ``ThreadPoolExecutor.submit`` starts a thread and waits for it to run; an exception a signal
    handler raised in that wait (the CLI's ``Interrupted``, Python's ``KeyboardInterrupt``) left a
    running writer the pool never joined, and the clean-up removed the results folder while it
    still wrote there (it came back with a half-written file).  Writers are started inside this
    block.  Only Python-level handlers are held (a signal left at the system default still ends the
    process at once); main thread only, as Python delivers signals there."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []

    def hold(signum, frame):
        caught.append(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):
            previous[sig] = handler
            signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


class OutputError(StimsimError, OSError):
    """An output path stimsim must not or cannot write (the message says why and what to do)."""


def is_results_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder stimsim wrote: a results summary and only results files."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        names = {p.name for p in path.iterdir()}
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    marked = isinstance(summary, dict) and (
        summary.get("format") == RESULTS_FORMAT or "stimsim_version" in summary)
    return marked and names <= RESULTS_ENTRIES


def _protected_folders() -> list[Path]:
    out = [Path("/"), Path.cwd().resolve()]
    try:
        out.append(Path.home().resolve())
    except RuntimeError:  # no home directory known
        pass
    return out


def check_output_target(out: str | os.PathLike, *, kind: str = "folder", option: str = "--out") -> Path:
    """Path rules every output obeys, checked before any work; returns ``out`` as a Path.

    Never the current directory, a parent of it, the home folder or ``/`` (an empty ``--out ""``
    from an unset shell variable is the current directory); no name longer than the file
    system allows.
    """
    text = os.fspath(out)
    if text.strip() == "":
        raise OutputError(f"{option} is empty (an unset shell variable?); give a {kind} name")
    path = Path(text).expanduser()
    for part in path.parts:
        if len(os.fsencode(part)) > _name_max(path):
            raise OutputError(f"{option}: the name {_clip(part)} has {len(part)} characters; this file system "
                              f"allows {_name_max(path)}: choose a shorter name")
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    for guarded in _protected_folders():
        if resolved == guarded:
            what = {Path("/"): "the root folder"}.get(guarded, "the current folder" if guarded == cwd
                                                     else "your home folder")
            raise OutputError(f"{option} {text} is {what}; stimsim never writes into or replaces it: "
                              f"give a new {kind} name, e.g. {option} results/run1")
    if cwd.is_relative_to(resolved):
        raise OutputError(f"{option} {text} contains the current folder; give a new {kind} name")
    return path


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a new file's name limits and rights come from)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _name_max(path: Path) -> int:
    try:
        probe = _nearest_existing(path.parent)
        return int(os.pathconf(probe if probe.exists() else ".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _clip(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


#: the first line of every YAML/text file stimsim writes outside a results folder, and the PNG
#: "Software" text; :func:`written_by_stimsim` recognises them
STIMSIM_MARK = "written by stimsim"


def written_by_stimsim(path: str | os.PathLike) -> bool:
    """True if the single file ``path`` carries stimsim's mark (so stimsim may replace it)."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with open(path, "rb") as fh:
            head = fh.read(8192)
        if head.startswith(b"\x89PNG"):
            return b"Software\x00stimsim" in head  # the tEXt chunk write_png adds
        if head.startswith(b"PK"):  # .npz: a stimsim leadfield has exactly these arrays
            import zipfile

            with zipfile.ZipFile(path) as z:
                return {"fields.npy", "positions_mm.npy", "header.npy"} <= set(z.namelist())
        return (STIMSIM_MARK.encode() in head[:200] or b'<meta name="generator" content="stimsim' in head
                or b'"$comment": "stimsim' in head[:200]
                # neuronavigation exports (stimsim.coils.neuronav) carry their formats' own creator fields
                or b"# Created by: stimsim" in head[:200] or b'"AppName": "stimsim"' in head[:200])
    except (OSError, ValueError, RuntimeError):
        return False


def check_output_file(out: str | os.PathLike, *, option: str = "--out") -> Path:
    """Before any work: ``out`` may be written (a new file, or one stimsim wrote) in a writable folder."""
    path = check_output_target(out, kind="file", option=option)
    if path.is_dir():
        raise OutputError(f"{option} {out} is a folder; give a file name")
    if path.exists() and not written_by_stimsim(path):
        raise OutputError(f"{option} {out} exists and was not written by stimsim; stimsim replaces only its own "
                          "files: choose another name (or remove it yourself)")
    probe = _nearest_existing(path.parent)
    if not probe.is_dir():
        raise OutputError(f"{option} {out}: {probe} is a file, not a folder; choose another place")
    try:  # a real write probe: permission bits say nothing for root or read-only mounts
        import tempfile

        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise OutputError(f"{probe}: stimsim cannot create files there ({err.strerror or err}); choose "
                          f"another {option}") from None
    return path


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path next to ``path`` (not yet created); when the block ends without an
    error it replaces ``path`` in one rename, so readers never see half a file.  On any error
    (or Ctrl-C) the temporary file is removed and ``path`` is left as it was.  The parent folder
    is created if missing.  ``suffix``: the temporary name's ending, for writers that look at it
    (``np.savez`` appends ``.npz`` otherwise).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]  # any legal name stays legal
    tmp = path.with_name(f".stimsim-{key}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def write_png(path, img) -> Path:
    """Write an (h, w, 3|4) uint8 image as PNG atomically, marked as written by stimsim (its
    ``Software`` text chunk), so that a later run may replace it."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from . import __version__

    path = Path(path)
    info = PngInfo()
    info.add_text("Software", f"stimsim {__version__}")
    with atomic_file(path, suffix=".png") as tmp:
        Image.fromarray(np.asarray(img, np.uint8)).save(tmp, format="PNG", pnginfo=info)
    return path


def estimate_results_bytes(n_nodes: int, n_tets: int, n_tris: int = 0, *, node_vectors: int = 0) -> tuple[int, int]:
    """(total, largest file) bytes of a results folder for a mesh of this size.

    fields.msh holds coordinates, connectivity and float64 element data (E, |E|, J, |J|,
    recovered E: 11 values) and nodal data (v, plus ``node_vectors`` 3-vectors such as dA/dt);
    fields.vtu the same in float32.  Measured to within ~10 % on the sphere and Colin27; the
    margin covers the rest.
    """
    per_node_msh = 8 + 24 + 8 + 24 * node_vectors
    per_tet_msh = 8 + 4 * 8 + 11 * 8 + 5 * 8  # element tags, connectivity, data, data headers
    msh = n_nodes * per_node_msh + n_tets * per_tet_msh + n_tris * 40
    vtu = n_nodes * (24 + 4 + 12 * node_vectors) + n_tets * (32 + 8 + 1 + 11 * 4) + n_tris * 40
    return int(1.15 * (msh + vtu)) + (1 << 20), int(1.15 * max(msh, vtu))


def check_space(folder: str | os.PathLike, total_bytes: int, largest_file_bytes: int, *, what: str) -> None:
    """Fail before writing when the disk or the process's file size limit cannot take ``what``."""
    free = shutil.disk_usage(folder).free
    if free < total_bytes:
        raise OutputError(f"{what} needs about {total_bytes / 2**20:.0f} MiB but {folder} has "
                          f"{free / 2**20:.0f} MiB free: free some space or choose another --out")
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return
    if limit != resource.RLIM_INFINITY and limit < largest_file_bytes:
        raise OutputError(f"{what} writes a file of about {largest_file_bytes / 2**20:.0f} MiB but this "
                          f"process may write files of at most {limit / 2**20:.1f} MiB (ulimit -f): "
                          "raise the limit (ulimit -f unlimited) and run again")


def os_error_message(err: OSError, fix: str | None = None) -> str:
    """One line for an OSError: the path, the reason, what to do."""
    where = err.filename if err.filename is not None else "a file"
    reason = err.strerror or str(err)
    hint = fix or {
        errno.EACCES: "check its permissions or choose another place",
        errno.EPERM: "check its permissions or choose another place",
        errno.EROFS: "the file system is read-only: choose another place",
        errno.ENOSPC: "the disk is full: free some space or choose another place",
        errno.EDQUOT: "the disk quota is exceeded: free some space or choose another place",
        errno.EFBIG: "the file size limit was reached: raise it (ulimit -f unlimited)",
        errno.ENAMETOOLONG: "choose a shorter name",
        errno.ENOENT: "check the path",
        errno.EISDIR: "give a file, not a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }.get(err.errno, "check the path")
    return f"{where}: {reason}; {hint}"


def acquire_lock(path: Path, busy: str) -> int | None:
    """An exclusive ``flock`` on the file ``path`` (created if missing, holding our pid); the lock file's
    descriptor, or None where ``fcntl`` does not exist.  A lock held by another process raises
    :class:`OutputError` "another stimsim process (pid N) <busy>".  The kernel releases it even on
    SIGKILL."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the callers' other checks still guard
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise OutputError(f"another stimsim process (pid {holder}) {busy}") from None
        # the holder before us may have unlinked the file after we opened it: lock the live one
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def release_lock(path: Path, fd: int | None, *, unlink: bool) -> None:
    """Release :func:`acquire_lock`'s lock; ``unlink`` removes the lock file first (while still held,
    so nobody can hold the old file meanwhile)."""
    if fd is None:
        return
    if unlink:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    os.close(fd)


@contextmanager
def exclusive_lock(path: Path, busy: str, *, unlink: bool = False):
    """``with exclusive_lock(path, busy):`` holds :func:`acquire_lock`'s lock for the block."""
    fd = acquire_lock(path, busy)
    try:
        yield
    finally:
        release_lock(path, fd, unlink=unlink)


class ResultsFolder:
    """Reserve, fill and publish one results folder.

    ``with ResultsFolder(out, overwrite=False) as folder:`` checks the path rules, takes an
    exclusive lock on ``out`` (a second stimsim process writing the same folder fails at once),
    removes temporary folders a killed earlier run left for ``out``, and creates an empty
    temporary folder ``folder.path`` next to ``out``.  Write the files there, then call
    ``folder.commit()``: ``out`` appears complete in one rename.  Leaving the block without a
    commit (an error, Ctrl-C, SIGTERM turned into an exception) removes the temporary folder and
    any parent folders this reservation created.  An existing ``out`` is replaced only with
    ``overwrite=True`` and only if :func:`is_results_folder` says stimsim wrote it.
    """

    def __init__(self, out: str | os.PathLike, *, overwrite: bool = False, option: str = "--out"):
        self.out = check_output_target(out, option=option)
        self.overwrite = overwrite
        self.option = option
        self.path: Path | None = None
        self.committed = False
        self._lock_fd: int | None = None
        self._created: list[Path] = []
        # temporary and lock names hash the output name, so any name the file system allows works
        self._key = hashlib.sha256(os.fsencode(self.out.name)).hexdigest()[:16]

    # ------------------------------------------------------------------ checks

    def _check_existing(self) -> None:
        out = self.out
        if out.is_symlink():
            raise OutputError(f"{self.option} {out} is a symbolic link; stimsim writes only real folders: "
                              "choose another name")
        if not out.exists():
            return
        if not out.is_dir():
            raise OutputError(f"{self.option} {out} is an existing file, not a results folder; "
                              "choose another name")
        if not self.overwrite:
            raise OutputError(f"output folder {out} already exists; choose another {self.option} "
                              "or pass --overwrite")
        if not is_results_folder(out):
            raise OutputError(f"{out} was not written by stimsim (no stimsim summary.json, or other files "
                              f"in it); stimsim replaces only its own results folders: choose another "
                              f"{self.option}")

    # ------------------------------------------------------------------ context

    def __enter__(self) -> "ResultsFolder":
        self._check_existing()
        parent = self.out.parent
        try:
            self._make_parents(parent)
            self._lock()
            self._remove_stale()
            self.path = parent / f".stimsim-{self._key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            self.path.mkdir(mode=0o755)
        except OSError as err:
            self._cleanup()
            if isinstance(err, OutputError):
                raise
            raise OutputError(f"{parent}: stimsim cannot create a results folder there ({err.strerror or err}); "
                              f"choose another {self.option}") from None
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._cleanup()

    def _make_parents(self, parent: Path) -> None:
        missing = []
        p = parent
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            p.mkdir()
            self._created.append(p)

    def _lock_path(self) -> Path:
        return self.out.parent / f".stimsim-{self._key}.lock"

    def _lock(self) -> None:
        self._lock_fd = acquire_lock(self._lock_path(), f"is writing {self.out}; wait for it to finish or choose "
                                                        f"another {self.option}")

    def _unlock(self) -> None:
        release_lock(self._lock_path(), self._lock_fd, unlink=True)
        self._lock_fd = None

    def _remove_stale(self) -> None:
        """Temporary folders of ``out`` are stale once we hold its lock: their writer is dead."""
        if self._lock_fd is None:
            return
        for p in self.out.parent.glob(f".stimsim-{self._key}.*"):
            if p.is_dir() and not p.is_symlink() and p.suffix in (".tmp", ".old"):
                shutil.rmtree(p, ignore_errors=True)

    def _cleanup(self) -> None:
        if self.path is not None and not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
        self._unlock()
        for p in reversed(self._created):
            if self.committed:
                break
            try:
                p.rmdir()  # only if still empty
            except OSError:
                break

    # ------------------------------------------------------------------ publish

    def commit(self) -> Path:
        """Move the written folder into place (replacing a stimsim results folder if allowed)."""
        if self.path is None:
            raise RuntimeError("commit() outside the with block")
        self._check_existing()  # again: the folder may have appeared while we computed
        old = None
        try:
            if self.out.exists():
                old = self.path.with_suffix(".old")
                os.rename(self.out, old)
            os.rename(self.path, self.out)  # fails on a non-empty folder that appeared meanwhile
        except OSError as err:
            if old is not None and not self.out.exists():
                os.rename(old, self.out)
            raise OutputError(os_error_message(err, "another program wrote there meanwhile: choose another "
                                                    f"{self.option}" if err.errno in (errno.ENOTEMPTY, errno.EEXIST)
                                               else None)) from None
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out


__all__ = ["ResultsFolder", "OutputError", "acquire_lock", "release_lock", "exclusive_lock", "atomic_file", "write_png", "check_output_file", "written_by_stimsim",
           "STIMSIM_MARK", "RESULTS_FORMAT", "RESULTS_ENTRIES", "is_results_folder", "check_output_target",
           "check_space", "estimate_results_bytes", "os_error_message"]
