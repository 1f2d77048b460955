"""``stimsim view`` and ``stimsim report``: pictures and a self-contained HTML report.

``view_command`` and ``report_command`` return 0 on success and raise
:class:`~stimsim.errors.StimsimError` on bad input (the caller prints ``error: ...`` and exits
with code 2).  They log, never print.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .._logging import logger
from ..errors import StimsimError
from .common import app, fail, numbers, state, status


@app.command()
def view(
    results: Path = typer.Argument(..., help="results folder of `stimsim run` (or its fields.vtu/.msh)"),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write"),
    field: str = typer.Option("magnE", "--field", help="magnE, E, J, magnJ, E_recovered, v, dAdt; TI: TImax, "
                              "TI_normal, TI_dir (TImax_<a>_<b>... with 3+ channels), E_<channel>, v_<channel>; "
                              "multichannel tACS: E_<channel>, peak_phase_deg"),
    view_name: Optional[str] = typer.Option(None, "--view", help="top, bottom, left, right, front, back, iso"),
    cut: Optional[str] = typer.Option(None, "--cut", help="x | y | z | ox,oy,oz,nx,ny,nz (cut plane)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="hide values below this"),
    surface: str = typer.Option("brain", "--surface", help="brain, gm, wm, scalp or tags"),
    roi: Optional[str] = typer.Option(None, "--roi", help="'x,y,z,r' mm: mark a region of interest"),
):
    """Render the field off-screen to a PNG (brain surface, cut planes, electrodes or coil, colour bar).

    Example: stimsim view stimsim_demo --out fig.png --view left --cut y
    (TI results: --field TImax draws the interference envelope)
    """
    from rich.console import Console

    from ..outputs import check_output_file
    try:
        check_output_file(out)
        with status(Console(stderr=True, quiet=state["quiet"]), "rendering ..."):
            code = view_command(results, out, field, view_name, cut, threshold, surface=surface, roi=roi)
    except StimsimError as err:
        fail(err)
    raise typer.Exit(code=code)


@app.command()
def report(
    protocol: str = typer.Argument(..., help="protocol YAML file or library id"),
    out: Path = typer.Option(..., "--out", "-o", help="HTML file to write (self-contained)"),
    results: Optional[Path] = typer.Option(None, "--results", help="reuse (or create) this results folder"),
    roi: Optional[str] = typer.Option(None, "--roi", help="'x,y,z,r' mm: ROI for the dose table"),
):
    """One self-contained HTML page: protocol, pictures, dose/ROI table, safety verdicts, provenance.

    Example: stimsim report montage.yaml --out report.html --roi 30,20,70,10
    """
    from rich.console import Console

    from ..protocol.library import get_protocol, library_ids
    from ..outputs import check_output_file, check_output_target

    try:
        check_output_file(out)
        if results is not None:
            check_output_target(results, option="--results")
        source = protocol
        if not Path(protocol).is_file() and protocol in library_ids():
            source = get_protocol(protocol).path  # a library id: report its file
        with status(Console(stderr=True, quiet=state["quiet"]), "simulating and rendering ..."):
            code = report_command(source, out, results, roi=roi)
    except StimsimError as err:
        fail(err)
    raise typer.Exit(code=code)


def parse_cut(text: str | None):
    """``None``/``"none"``, ``"x"|"y"|"z"`` or ``"ox,oy,oz,nx,ny,nz"`` (mm, normal) -> a ``cut_plane`` value."""
    from ..viz.field_data import VizError

    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    t = str(text).strip().lower()
    if t in ("x", "y", "z"):
        return t
    v = numbers(t)
    if len(v) != 6:
        raise VizError(f"--cut: {text!r} is not x, y, z or 'ox,oy,oz,nx,ny,nz' (origin mm, normal)")
    return (v[:3], v[3:])


def parse_roi(text: str | None):
    """``"x,y,z,r"`` (mm) -> ``((x, y, z), r)``; None stays None."""
    from ..viz.field_data import VizError

    if text is None or str(text).strip() == "":
        return None
    v = numbers(text)
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
    field : magnE | J | E_recovered | v | dAdt, or a modality's field: TImax | TI_normal | TI_dir (TI; with
        more than one channel pair TImax_<a>_<b>...), E_<channel> (TI, multichannel tACS), peak_phase_deg
    view : top | bottom | left | right | front | back | iso (default: top, or facing the cut)
    cut : x | y | z | "ox,oy,oz,nx,ny,nz" — also draw a cut plane
    threshold : colour only where the field reaches this value
    surface : brain | gm | wm | scalp
    roi : "x,y,z,r" in mm — draw a region of interest
    """
    from ..viz.field_data import VizError
    from ..viz.render import plot_field

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
    from ..viz.field_data import VizError

    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise VizError(f"--out: {out_html} must end in .html")
    make_report(Path(protocol_path), out_html, results_dir=results_dir, roi=parse_roi(roi), pictures=pictures)
    return 0


__all__ = ["view_command", "report_command", "parse_cut", "parse_roi"]
