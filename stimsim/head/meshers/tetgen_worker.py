"""TetGen run in a child process, so that its crashes cannot take the caller's process with it.

Why: on surfaces that cross, TetGen does not always stop with an error.  It can write past the end of
its own heap blocks, and glibc then aborts the whole Python process ("free(): invalid next size",
"malloc(): invalid size").  Two overlapping spheres abort on the first call; a contrived head with bone
in every sulcus aborted while the mesher was about to retry with thicker layers.  No ``try`` can catch
that.  In a child process such a crash is one more refusal of the surfaces, which the mesher retries or
reports in one line (docs/meshing.md, "TetGen in a child process").

The child imports only numpy and tetgen (about 0.2 s), reads the surfaces from a private temporary
directory, and writes the nodes and tetrahedra back there; the directory is removed afterwards.  Where
no child can be started (no ``sys.executable``, a sandbox that forbids processes) TetGen runs in this
process, as before.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..._logging import logger

#: exit codes of the child (other than 0 = done): TetGen refused the surfaces / ran out of memory /
#: the child could not import numpy or tetgen (another environment: TetGen then runs in this process) /
#: any other error on the way (a full disk ...).  Not 1-3: Python's own errors exit 1, and abort() on
#: Windows exits 3
_REFUSED, _NO_MEMORY, _NO_IMPORT, _FAILED = 83, 84, 85, 86
#: signals that mean TetGen crashed on the surfaces (a refusal); any other ends the run (SIGTERM, SIGINT ...)
_CRASH_SIGNALS = {getattr(signal, n) for n in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE") if hasattr(signal, n)}

#: the child's program: only numpy and tetgen are imported (not stimsim, whose import is slow), and
#: it runs in the temporary directory, so that no file of the caller's working directory shadows them
_CHILD = r"""
import sys
open("started", "w").close()  # (a Python that runs this program: tetrahedralize checks for it)
try:  # die with the parent (Linux): a cancelled job does not leave TetGen running
    import ctypes, os, signal
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[2]):  # the parent died before that: nothing to do
        sys.exit(0)
except Exception:
    pass
try:
    import numpy as np
    import tetgen
except Exception as exc:
    sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
    sys.exit(85)
switches = sys.argv[1]


def peak():  # this child's own peak memory (KiB), for the caller's report
    # VmHWM, not ru_maxrss: on Linux a child's ru_maxrss also holds its parent's resident memory at
    # the fork (the peak of the memory map it replaced at exec)
    try:
        kib = [int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
    except Exception:
        try:
            import resource
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kib = kib // 1024 if sys.platform == "darwin" else kib  # bytes there
        except Exception:
            return
    try:
        open("peak.txt", "w").write(str(kib))
    except Exception:  # (a report only)
        pass


def fail(code, exc):
    open("error.txt", "w").write(str(exc) if code != 86 else f"{type(exc).__name__}: {exc}")
    peak()
    sys.exit(code)


try:
    verts, faces = np.load("verts.npy"), np.load("faces.npy")
    out = tetgen.TetGen(verts, faces).tetrahedralize(switches=switches)
except MemoryError as exc:
    fail(84, exc)
except RuntimeError as exc:
    fail(83, exc)
except Exception as exc:
    fail(86, exc)
try:
    np.save("nodes.tmp.npy", np.asarray(out[0], float))
    np.save("elems.tmp.npy", np.asarray(out[1])[:, :4].astype(np.int64))
    import os
    os.replace("nodes.tmp.npy", "nodes.npy")
    os.replace("elems.tmp.npy", "elems.npy")
except MemoryError as exc:
    fail(84, exc)
except Exception as exc:
    fail(86, exc)
peak()
"""


class TetGenCrashed(RuntimeError):
    """TetGen's process died on the surfaces (SIGSEGV, SIGABRT ...: a refusal of the surfaces)."""


class TetGenChildError(Exception):
    """TetGen's process failed otherwise (an error writing its output, stopped by a signal such as
    SIGTERM, an exit without an answer): not a refusal of the surfaces, so not retried."""


#: set once the child's Python turned out not to run the program (a frozen application's executable)
_NO_CHILD = []


def _rss_mib() -> float:
    """This process's resident memory now (MiB; 0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0


class _quiet_stdout:
    """Send file descriptor 1 to /dev/null for the ``with`` block (C code printing)."""

    def __init__(self, enabled=True):
        self.enabled, self.saved = enabled, None

    def __enter__(self):
        if self.enabled:
            try:
                sys.stdout.flush()
                self.saved = os.dup(1)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.close(null)
            except (OSError, ValueError, AttributeError):  # no usable fd 1 (embedded interpreters)
                self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            os.dup2(self.saved, 1)
            os.close(self.saved)


def _trim_heap() -> None:
    """Give the heap this process freed back to the system (glibc's ``malloc_trim``), before the child
    starts: in one process TetGen reused those pages; beside a child they would sit idle (Colin27: the
    caller's resident memory 582 -> 447 MiB at the call)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _in_process(verts: np.ndarray, faces: np.ndarray, switches: str, verbose: bool) -> tuple[np.ndarray, np.ndarray]:
    import tetgen

    with _quiet_stdout(not verbose):  # TetGen's C code prints to stdout even with Q
        out = tetgen.TetGen(verts, faces.astype(np.int32)).tetrahedralize(switches=switches)
    return np.asarray(out[0], float), np.asarray(out[1])[:, :4].astype(np.int64)


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _here(why: str, verts, faces, switches, verbose, stats) -> tuple[np.ndarray, np.ndarray]:
    logger.info("TetGen runs in this process (%s)", why)
    stats["isolated"] = False
    return _in_process(verts, faces, switches, verbose)


#: Windows exit statuses: no memory (STATUS_NO_MEMORY), crashes (abort()'s 3, an access violation,
#: a stack overrun, a heap corruption)
_NT_NO_MEMORY = 0xC0000017
_NT_CRASHES = {3, 0xC0000005, 0xC0000409, 0xC0000374, 0xC00000FD, 0xC000001D, 0xC0000094}


def _crashed(rc: int) -> bool:
    """Whether exit status ``rc`` is a crash: a fatal signal, or on Windows one of :data:`_NT_CRASHES`."""
    if rc < 0:
        return -rc in _CRASH_SIGNALS
    return os.name == "nt" and rc in _NT_CRASHES


def tetrahedralize(verts: np.ndarray, faces: np.ndarray, switches: str, verbose: bool = False,
                   stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TetGen's nodes (n x 3, float) and tetrahedra (m x 4, int64) of the closed surfaces ``verts``,
    ``faces`` with ``switches``, computed in a child process.

    Raises ``RuntimeError`` (TetGen's message) when TetGen refuses the surfaces, and
    :class:`TetGenCrashed` (a ``RuntimeError``) when it crashes on them (a fatal signal; the message
    names it and the C library's last line); ``MemoryError`` when it runs out of memory or is killed
    (SIGKILL: the kernel's out-of-memory killer); :class:`TetGenChildError` when its process fails
    otherwise (stopped by another signal, an error writing its output).
    ``stats`` (optional dict) receives ``"peak_mib"``: this process's memory at the call plus the
    child's own peak (the most over several calls), and ``"isolated"``: whether a child ran.  TetGen
    runs in this process where no child can run it: no ``sys.executable`` or a frozen application,
    no process or temporary directory allowed, or a child that cannot import tetgen (another
    environment's Python) or does not run the program (remembered for this process)."""
    verts = np.ascontiguousarray(verts, float)
    faces = np.ascontiguousarray(faces, np.int32)
    stats = {} if stats is None else stats
    if not sys.executable or getattr(sys, "frozen", False) or _NO_CHILD:
        return _here("no Python to start a child with", verts, faces, switches, verbose, stats)
    try:
        tmp = tempfile.mkdtemp(prefix="stimsim-tetgen-")
    except OSError as exc:
        return _here(f"no temporary directory: {exc}", verts, faces, switches, verbose, stats)
    try:
        d = Path(tmp)
        try:
            np.save(d / "verts.npy", verts)
            np.save(d / "faces.npy", faces)
        except OSError as exc:
            return _here(f"cannot write to {tmp}: {exc}", verts, faces, switches, verbose, stats)
        _trim_heap()
        # the child finds modules where this process does (a path added to sys.path at run time)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        for name in ("PYTHONFAULTHANDLER", "PYTHONDEVMODE"):  # (a crash's last line: the C library's)
            env.pop(name, None)
        if verbose:
            sys.stdout.flush()  # (TetGen's lines after this process's own)
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD, switches, str(os.getpid())], cwd=tmp, env=env,
                                  stdout=None if verbose else subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, check=False)
        except OSError as exc:  # no processes here (a sandbox): TetGen in this process, as before
            return _here(f"no child process: {exc}", verts, faces, switches, verbose, stats)
        rc = proc.returncode
        last = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        if rc >= 0 and not (d / "started").exists():  # sys.executable did not run the program (not a Python)
            _NO_CHILD.append(sys.executable)
            return _here(f"{sys.executable} is not a Python that runs the child", verts, faces, switches,
                         verbose, stats)
        if rc == _NO_IMPORT:  # sys.executable is not this environment's Python
            return _here(f"{sys.executable} cannot import tetgen: {' '.join(last)}", verts, faces, switches,
                         verbose, stats)
        stats["isolated"] = True
        try:
            child_mib = int((d / "peak.txt").read_text()) / 1024  # KiB
        except (OSError, ValueError):
            child_mib = 0.0
        stats["peak_mib"] = max(stats.get("peak_mib", 0.0), _rss_mib() + child_mib)  # over the tries
        if rc == 0 and (d / "elems.npy").exists():
            return np.load(d / "nodes.npy"), np.load(d / "elems.npy")
        message = (d / "error.txt").read_text() if (d / "error.txt").exists() else ""
        if rc in (_NO_MEMORY, -getattr(signal, "SIGKILL", 9), _NT_NO_MEMORY):  # (no SIGKILL on Windows)
            raise MemoryError(message or "TetGen was killed (SIGKILL; out of memory?)")
        if rc == _REFUSED:
            raise RuntimeError(message)
        why = _signal_name(rc) if rc < 0 else f"exit code {rc}"
        detail = f": {last[-1]}" if last else ""
        if _crashed(rc):
            raise TetGenCrashed(f"TetGen crashed on these surfaces ({why}{detail})")
        raise TetGenChildError(f"TetGen's process failed ({why}" + (f": {message}" if message else detail) + ")")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
