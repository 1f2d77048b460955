"""Can this machine render off-screen?  Asked once per process, in a subprocess.

A VTK wheel without an OpenGL library (no X server, no EGL, no OSMesa) prints "Failed to
load EGL!" / "libOSMesa not found" and then *segfaults*; running a tiny render in a child
process turns that into a clear :class:`~stimsim.errors.StimsimError`.  Without a display,
the probe tries EGL, then OSMesa, and tells VTK (``VTK_DEFAULT_OPENGL_WINDOW``) to use the
first one that works, which also avoids VTK's "bad X server connection" warning.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass

from ..errors import StimsimError

#: the apt packages that give VTK an off-screen OpenGL (Debian/Ubuntu)
SYSTEM_PACKAGES = "libegl1 libgl1-mesa-dri"
INSTALL_HINT = (f"install an OpenGL library for off-screen rendering: `apt-get install --no-install-recommends "
                f"{SYSTEM_PACKAGES}` (or `libosmesa6`) on Debian/Ubuntu")

_PROBE_CODE = (
    "import pyvista as pv\n"
    "pl = pv.Plotter(off_screen=True, window_size=(64, 48))\n"
    "pl.add_mesh(pv.Sphere(), color='red')\n"
    "img = pl.screenshot(return_img=True)\n"
    "pl.close()\n"
    "import sys\n"
    "sys.stdout.write('STIMSIM-RENDER-OK %d' % int(img.std() > 0))\n"
)


@dataclass(frozen=True)
class RenderProbe:
    ok: bool
    backend: str | None  # VTK render window class used, None = VTK's default
    reason: str


_cache: dict[str, RenderProbe] = {}


def _candidates() -> list[str | None]:
    forced = os.environ.get("VTK_DEFAULT_OPENGL_WINDOW")
    if forced:
        return [forced]
    if sys.platform.startswith("linux"):
        headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        egl_osmesa = ["vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow"]
        return egl_osmesa if headless else [None] + egl_osmesa
    return [None]


def _try(backend: str | None, timeout: float) -> tuple[bool, str]:
    env = dict(os.environ)
    if backend:
        env["VTK_DEFAULT_OPENGL_WINDOW"] = backend
    env.setdefault("PYVISTA_OFF_SCREEN", "true")
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE_CODE], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"{backend or 'default window'}: the test render did not finish in {timeout:g} s"
    if proc.returncode == 0 and "STIMSIM-RENDER-OK 1" in proc.stdout:
        return True, ""
    how = "crashed (segmentation fault)" if proc.returncode in (-11, 139) else f"failed (exit code {proc.returncode})"
    hints = [ln.strip() for ln in (proc.stderr or "").splitlines()
             if any(w in ln for w in ("EGL", "OSMesa", "libGL", "Error", "error"))]
    detail = f": {hints[-1][-200:]}" if hints else ""
    return False, f"{backend or 'default window'} {how}{detail}"


def probe_rendering(*, refresh: bool = False, timeout: float = 120.0) -> RenderProbe:
    """Run (once per process) a tiny off-screen render in a subprocess; see :func:`rendering_available`."""
    if "probe" in _cache and not refresh:
        return _cache["probe"]
    if importlib.util.find_spec("pyvista") is None or importlib.util.find_spec("vtkmodules") is None:
        result = RenderProbe(False, None, "pyvista/vtk are not installed: pip install 'stimsim[viz]' "
                                          "(pyvista, vtk)")
        _cache["probe"] = result
        return result
    reasons = []
    result = None
    for backend in _candidates():
        ok, why = _try(backend, timeout)
        if ok:
            result = RenderProbe(True, backend, "")
            if backend and not os.environ.get("VTK_DEFAULT_OPENGL_WINDOW"):
                os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = backend  # read when a render window is created
            break
        reasons.append(why)
    if result is None:
        result = RenderProbe(False, None, "off-screen rendering does not work here (" + "; ".join(reasons)
                             + f"); {INSTALL_HINT}")
    _cache["probe"] = result
    return result


def rendering_available(*, refresh: bool = False) -> bool:
    """True when PyVista can render off-screen on this machine (probed once, in a subprocess)."""
    return probe_rendering(refresh=refresh).ok


def require_rendering() -> RenderProbe:
    """Like :func:`rendering_available` but raises a :class:`StimsimError` that says what to install."""
    probe = probe_rendering()
    if not probe.ok:
        raise StimsimError(probe.reason)
    return probe
