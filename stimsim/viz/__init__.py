"""Pictures of simulated fields: off-screen PNGs, interactive views and standalone HTML.

``stimsim.viz`` is the only place that imports PyVista/VTK, and it does so lazily: importing
this package loads neither; :func:`plot_field` and :func:`export_html` do.  Off-screen rendering
needs an OpenGL library (Debian/Ubuntu: ``apt-get install --no-install-recommends libegl1
libgl1-mesa-dri``, or ``libosmesa6``); :func:`rendering_available` probes it in a subprocess,
so a missing library is a clear :class:`~stimsim.errors.StimsimError`, not a crash.

Examples
--------
>>> import stimsim, stimsim.viz                                           # doctest: +SKIP
>>> result = stimsim.simulate(stimsim.load_protocol("montage.yaml"))      # doctest: +SKIP
>>> img = stimsim.viz.plot_field(result, view="left", screenshot="left.png")  # doctest: +SKIP
"""

from .field_data import FIELDS, SURFACES, FieldData, VizError, load_field_data
from .probe import probe_rendering, rendering_available, require_rendering

_RENDER = ("plot_field", "export_html", "write_png", "png_bytes", "check_view", "VIEWS", "show_image")


def __getattr__(name):
    if name in _RENDER:
        from . import render

        return getattr(render, name)
    raise AttributeError(f"module 'stimsim.viz' has no attribute {name!r}")


__all__ = ["plot_field", "export_html", "rendering_available", "require_rendering", "probe_rendering",
           "load_field_data", "FieldData", "VizError", "FIELDS", "SURFACES", "VIEWS", "check_view",
           "write_png", "png_bytes", "show_image"]
