"""Command-line front ends of ``stimsim view`` and ``stimsim report`` (wired into :mod:`stimsim.cli`).

Both return 0 on success and raise :class:`~stimsim.errors.StimsimError` on bad input (the
caller prints ``error: ...`` and exits with code 2).  They log, never print.
"""

from __future__ import annotations

import time
from pathlib import Path

from .._logging import logger
from .field_data import VizError


def parse_cut(text: str | None):
    """``None``/``"none"``, ``"x"|"y"|"z"`` or ``"ox,oy,oz,nx,ny,nz"`` (mm, normal) -> a ``cut_plane`` value."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    t = str(text).strip().lower()
    if t in ("x", "y", "z"):
        return t
    try:
        v = [float(x) for x in t.replace(" ", "").split(",")]
    except ValueError:
        v = []
    if len(v) != 6:
        raise VizError(f"--cut: {text!r} is not x, y, z or 'ox,oy,oz,nx,ny,nz' (origin mm, normal)")
    return (v[:3], v[3:])


def parse_roi(text: str | None):
    """``"x,y,z,r"`` (mm) -> ``((x, y, z), r)``; None stays None."""
    if text is None or str(text).strip() == "":
        return None
    try:
        v = [float(x) for x in str(text).replace(" ", "").split(",")]
    except ValueError:
        v = []
    if len(v) != 4 or not v[3] > 0:
        raise VizError(f"--roi: {text!r} is not 'x,y,z,radius' in mm with a positive radius")
    return (v[:3], v[3])


def view_command(results_dir, out_png, field: str = "magnE", view: str | None = None, cut: str | None = None,
                 threshold: float | None = None, *, surface: str = "brain", roi: str | None = None,
                 window_size=(900, 700)) -> int:
    """Render a results folder's field to a PNG off-screen (``stimsim view RESULTS --out fig.png``).

    Parameters
    ----------
    results_dir : folder written by ``stimsim run`` (or its ``fields.vtu`` / ``fields.msh``)
    out_png : PNG file to write (atomically)
    field : magnE | J | E_recovered | v | dAdt
    view : top | bottom | left | right | front | back | iso (default: top, or facing the cut)
    cut : x | y | z | "ox,oy,oz,nx,ny,nz" — also draw a cut plane
    threshold : colour only where the field reaches this value
    surface : brain | gm | wm | scalp
    roi : "x,y,z,r" in mm — draw a region of interest
    """
    from .render import plot_field

    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise VizError(f"--out: {out_png} must end in .png")
    t = time.perf_counter()
    img = plot_field(Path(results_dir), field=field, view=view or None, cut_plane=parse_cut(cut),
                     threshold=threshold, surface=surface, roi=parse_roi(roi), screenshot=out_png,
                     window_size=window_size)
    logger.info("wrote %s (%dx%d) in %.2f s", out_png, img.shape[1], img.shape[0], time.perf_counter() - t)
    return 0


def report_command(protocol_path, out_html, results_dir=None, *, roi: str | None = None,
                   pictures: bool | None = None) -> int:
    """Write the HTML report of a protocol (``stimsim report PROTOCOL --out report.html [--results DIR]``).

    Parameters
    ----------
    protocol_path : protocol YAML
    out_html : HTML file to write (atomically)
    results_dir : reuse this results folder (must come from the same protocol); created when missing
    roi : "x,y,z,r" in mm — add the ROI table and draw the ROI
    pictures : None = when rendering works here, True = required, False = none
    """
    from ..report import make_report

    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise VizError(f"--out: {out_html} must end in .html")
    make_report(Path(protocol_path), out_html, results_dir=results_dir, roi=parse_roi(roi), pictures=pictures)
    return 0


__all__ = ["view_command", "report_command", "parse_cut", "parse_roi"]
