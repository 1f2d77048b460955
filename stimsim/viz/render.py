"""Off-screen pictures of a simulated field with PyVista (the only module that imports pyvista).

:func:`plot_field` draws |E| (or |J|, the potential, dA/dt...) on the brain surface and/or a
cut plane, with the electrodes or the TMS coil, a labelled colour bar and a named camera
view; :func:`export_html` writes the same scene as a standalone interactive HTML page.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyvista as pv

from .._logging import logger
from ..errors import StimsimError, check_option
from .field_data import (FIELDS, SURFACES, FieldData, VizError, check_roi, face_normals, load_field_data,
                    resolve_surface_tags, surface_faces, weighted_percentile)
from ..outputs import write_png  # noqa: F401  (part of this module's API)
from .probe import require_rendering

#: named camera views: direction from the focal point to the camera, and the up vector
#: (head frame as in SimNIBS: x left -> right, y posterior -> anterior, z inferior -> superior)
VIEWS = {
    "top": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    "bottom": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "left": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "right": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "front": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "back": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "iso": ((1.0, -1.0, 1.0), (0.0, 0.0, 1.0)),
}
CUT_AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
POLARITY_COLOURS = {1: "#d62728", -1: "#1f77b4", 0: "#7f7f7f"}  # anode red, cathode blue
CMAP = "viridis"


def check_view(view):
    """Validate ``view``: a name in :data:`VIEWS`, a camera tuple ``(position, focal_point, view_up)``, or None."""
    if view is None:
        return None
    if isinstance(view, str):
        if view.lower() not in VIEWS:
            raise VizError(f"view: {view!r} is not a named view; choose one of {', '.join(VIEWS)} "
                           "or give a camera tuple (position, focal_point, view_up)")
        return view.lower()
    try:
        cam = [tuple(float(x) for x in v) for v in view]
    except (TypeError, ValueError):
        cam = None
    if cam is None or len(cam) != 3 or any(len(v) != 3 for v in cam):
        raise VizError(f"view: {view!r} is neither a named view ({', '.join(VIEWS)}) nor a camera tuple "
                       "(position, focal_point, view_up) of three 3-vectors")
    return cam


def check_cut_plane(cut_plane, centre) -> tuple[np.ndarray, np.ndarray] | None:
    """``None``, ``'x'|'y'|'z'`` (through ``centre``) or ``(origin, normal)`` -> (origin, unit normal)."""
    if cut_plane is None:
        return None
    if isinstance(cut_plane, str):
        check_option("cut_plane", cut_plane.lower(), CUT_AXES, error=VizError, hint=" (or give (origin_mm, normal))")
        return np.asarray(centre, float), np.asarray(CUT_AXES[cut_plane.lower()])
    try:
        origin, normal = (np.asarray(v, float).reshape(3) for v in cut_plane)
    except (TypeError, ValueError):
        raise VizError(f"cut_plane: {cut_plane!r} is not 'x', 'y', 'z' or (origin_mm, normal)") from None
    if not (np.all(np.isfinite(origin)) and np.all(np.isfinite(normal))) or np.linalg.norm(normal) == 0:
        raise VizError(f"cut_plane: normal {normal.tolist()} must be a finite non-zero vector")
    return origin, normal / np.linalg.norm(normal)


def _font_file() -> str | None:
    """DejaVu Sans shipped with matplotlib (a PyVista dependency): VTK's built-in fonts lack '∣'."""
    try:
        import matplotlib

        path = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    except ImportError:
        return None
    return str(path) if path.is_file() else None


def _bar_title(label: str, unit: str) -> tuple[str, str | None]:
    """Colour-bar title and the font file to draw it with.

    VTK reads '|' in text as a table-column separator, so |E| is written with U+2223 (∣) in a
    font that has it, or as 'E magnitude' when no such font is found.  A long title (a TI
    envelope's) is broken into lines that fit above the bar.
    """
    import textwrap

    text = f"{label} ({unit})"
    if len(text) > 20:
        text = "\n".join(textwrap.wrap(text, 13, break_long_words=False))
    font = _font_file()
    if font:
        return text.replace("|", "\u2223"), font
    return re.sub(r"\|(\w+)\|", r"\1 magnitude", text), None


def _polydata(nodes: np.ndarray, faces: np.ndarray) -> tuple[pv.PolyData, np.ndarray]:
    """Triangle surface of only the used nodes; returns it and the used node indices (its point order)."""
    used = np.unique(faces)
    local = np.searchsorted(used, faces).astype(np.int64)
    cells = np.hstack([np.full((len(faces), 1), 3, np.int64), local]).ravel()
    return pv.PolyData(nodes[used], cells), used


def _point_values(n_nodes: int, faces: np.ndarray, face_values: np.ndarray) -> np.ndarray:
    """Average of the adjacent faces' values at each node (only this surface's faces: no mixing across tissues)."""
    s = np.bincount(faces.ravel(), weights=np.repeat(face_values, 3), minlength=n_nodes)
    c = np.bincount(faces.ravel(), minlength=n_nodes)
    return s / np.maximum(c, 1)


def _tissue_outlines(sl):
    """Lines where tissues meet on a cut (the rims of each tissue's part of the slice)."""
    parts = []
    for t in np.unique(sl.cell_data["tag"]):
        piece = sl.threshold((t - 0.5, t + 0.5), scalars="tag")
        try:
            piece = piece.extract_surface(algorithm="dataset_surface")
        except TypeError:  # pyvista < 0.47 has no ``algorithm``
            piece = piece.extract_surface()
        rim = piece.extract_feature_edges(boundary_edges=True, feature_edges=False, manifold_edges=False,
                                          non_manifold_edges=False)
        if rim.n_cells:
            parts.append(rim)
    if not parts:
        return None
    return parts[0].merge(parts[1:]) if len(parts) > 1 else parts[0]


def _set_camera(pl, view, bounds_centre, radius, cut):
    if isinstance(view, list):
        pl.camera_position = view
        return
    if view is None:
        direction, up = (cut[1], (0.0, 0.0, 1.0)) if cut is not None else VIEWS["top"]
        if cut is not None and abs(np.dot(direction, up)) > 0.9:
            up = (0.0, 1.0, 0.0)
    else:
        direction, up = VIEWS[view]
    d = np.asarray(direction, float)
    d /= np.linalg.norm(d)
    pl.camera_position = [tuple(bounds_centre + 4.0 * radius * d), tuple(bounds_centre), tuple(up)]
    pl.reset_camera()


def _electrode_meshes(data: FieldData):
    mesh = data.mesh
    faces = mesh.boundary_faces
    nodes_b, normals_b = mesh.boundary_node_normals()
    normal_of = np.zeros((mesh.n_nodes, 3))
    normal_of[nodes_b] = normals_b
    for e in data.electrodes:
        sign = int(np.sign(e.current_A))
        colour = POLARITY_COLOURS[sign]
        label = f"{e.name} ({e.current_A * 1e3:+.3g} mA)"
        patch_faces = faces[np.isin(faces, e.nodes).all(axis=1)]
        lift = mesh.nodes + 1.0 * normal_of  # 1 mm above the scalp, no z-fighting with a drawn scalp
        centre = lift[e.center_node]
        if len(patch_faces):
            yield _polydata(lift, patch_faces)[0], colour, label, centre
        else:
            yield pv.Sphere(radius=4.0, center=centre), colour, label, centre


def plot_field(source, *, field: str = "magnE", surface="brain", cut_plane=None, view=None,
               threshold: float | None = None, roi=None, clim=None, show_electrodes: bool = True,
               show_coil: bool = True, off_screen: bool = True, screenshot=None,
               window_size=(900, 700), title: str | None = None, smooth: bool = True,
               show_axes: bool = True, cmap: str = CMAP):
    """Draw a field of a simulation on the brain surface and/or a cut plane.

    Parameters
    ----------
    source : SimulationResult | str | Path | FieldData
        A simulation result, or a results folder written by ``stimsim run`` (or its ``fields.vtu``).
    field : str, default: ``"magnE"``
        One of ``magnE`` (``E``), ``J`` (``magnJ``), ``E_recovered``, ``v`` (potential), ``dAdt`` (TMS);
        TI: ``TImax``, ``TI_normal``, ``TI_dir`` (the only channel pair's; with several pairs
        ``TImax_<a>_<b>``...), ``E_<channel>``, ``v_<channel>``; multichannel tACS: ``E_<channel>``,
        ``peak_phase_deg`` (:meth:`FieldData.available_fields` lists a result's).  Vectors are drawn as
        magnitudes; a field defined only in part of the head (``TI_normal``: grey matter) is drawn there only.
    surface : str | list[int] | None, default: ``"brain"``
        ``brain`` (grey + white matter, or the innermost tissue of a layered sphere), ``gm``, ``wm``,
        ``scalp``, a list of tissue tags, or None for no surface (cut plane only).
    cut_plane : None | ``'x'`` | ``'y'`` | ``'z'`` | (origin_mm, normal), default: None
        Also draw the field on this plane through the whole head; the surface is then clipped so the
        plane shows (the half on the normal's side is removed).  Axis names cut through the surface centre.
    view : str | camera tuple | None, default: None
        ``top``, ``bottom``, ``left``, ``right``, ``front``, ``back``, ``iso``, or
        ``(position, focal_point, view_up)``.  None: ``top``, or facing the cut plane.
    threshold : float, optional
        Colour only where the field is at least this value (grey elsewhere).
    roi : (centre_mm, radius_mm), optional
        Draw a region of interest as a translucent sphere.
    clim : (low, high), optional
        Colour range; default 0 to the 99.9th percentile (by area) of the field on the surface
        (by volume over the head when only a cut plane is drawn).
    show_electrodes, show_coil : bool, default: True
        Draw the electrode pads (red anode, blue cathode) or the coil windings and handle direction.
    off_screen : bool, default: True
        Render without a window (the default; needs no display).
    screenshot : None | True | str | Path, default: None
        None: return the :class:`pyvista.Plotter` (call ``.show()`` or ``.screenshot()``).
        True: render, close and return the image as an (h, w, 3) uint8 array.
        A path: also write the PNG there (atomically).
    window_size : (int, int), default: (900, 700)
    title : str, optional
        Text in the upper left corner.

    Returns
    -------
    pyvista.Plotter, or numpy.ndarray when ``screenshot`` is given.

    Raises
    ------
    VizError
        Unknown view, surface, field or cut plane; a field with NaN; a results folder without fields.
    StimsimError
        Off-screen rendering is not possible on this machine (says which system library to install).

    Examples
    --------
    >>> from stimsim.viz import plot_field                                   # doctest: +SKIP
    >>> img = plot_field("results/demo", view="left", screenshot="left.png")  # doctest: +SKIP
    """
    view = check_view(view)
    roi = check_roi(roi)
    data = load_field_data(source)
    values, loc, label, unit = data.scalar(field)
    bar_title, bar_font = _bar_title(label, unit)
    mesh = data.mesh
    tags = resolve_surface_tags(mesh, surface) if surface is not None else None
    if tags is None and cut_plane is None:
        raise VizError("surface=None needs a cut_plane: there would be nothing to draw")
    if threshold is not None and not np.isfinite(threshold):
        raise VizError(f"threshold: {threshold!r} must be a finite number")
    if off_screen:
        require_rendering()

    # NaN by design outside a tissue (TI_normal outside grey matter; FieldData.scalar refuses NaN elsewhere):
    # draw only where the field is defined
    finite = np.isfinite(values) if loc == "element" else None
    partial = finite is not None and not finite.all()
    faces = owner = None
    if tags is not None:
        faces, owner = surface_faces(mesh, tags)
        if partial:
            keep = finite[owner]
            if not keep.any():
                raise VizError(f"field: {field!r} ({label}) is not defined on this surface (tags {tags}); it is "
                               "defined in part of the head only: choose another surface or a cut plane")
            faces, owner = faces[keep], owner[keep]
        centre = mesh.nodes[np.unique(faces)].mean(axis=0)
    else:
        centre = mesh.nodes.mean(axis=0)
    cut = check_cut_plane(cut_plane, centre)

    # colour range: robust peak of the field in the drawn tissues
    if clim is None:
        if loc == "element":
            if faces is not None:  # what the surface shows, weighted by area
                v, w = values[owner], face_normals(mesh.nodes, faces)[1]
            else:
                v, w = values[finite], mesh.volumes_mm3[finite]
            lo, hi = 0.0, weighted_percentile(v, w, 99.9)
            if v.min() < 0:  # a signed field (a phase): symmetric about 0
                hi = max(hi, -weighted_percentile(v, w, 0.1))
                lo = -hi
        else:
            vals = values[np.unique(faces)] if faces is not None else values
            lo, hi = float(vals.min()), float(vals.max())
            if lo < 0 < hi:
                lo, hi = -max(-lo, hi), max(-lo, hi)
        clim = (lo, hi if hi > lo else lo + 1.0)
    clim = (float(clim[0]), float(clim[1]))

    pl = pv.Plotter(off_screen=off_screen, window_size=tuple(window_size))
    try:
        pl.set_background("white")
        bar = dict(title=bar_title, vertical=True, position_x=0.86, position_y=0.12, width=0.07, height=0.76,
                   color="black", fmt="%.3g", n_labels=5, title_font_size=15 if "\n" in bar_title else 18,
                   label_font_size=15)
        shared = dict(scalars=bar_title, cmap=cmap, clim=clim, scalar_bar_args=bar, show_scalar_bar=True)
        if faces is not None:
            surf, used = _polydata(mesh.nodes, faces)
            if loc == "element":
                fv = values[owner]
                if smooth:
                    surf.point_data[bar_title] = _point_values(mesh.n_nodes, faces, fv)[used]
                else:
                    surf.cell_data[bar_title] = fv
            else:
                surf.point_data[bar_title] = values[used]
            if cut is not None:
                surf = surf.clip(normal=cut[1], origin=cut[0], invert=True)
            if threshold is not None:
                pl.add_mesh(surf, color="lightgrey", smooth_shading=True, show_scalar_bar=False)
                above = surf.threshold(threshold, scalars=bar_title)
                if above.n_cells:
                    pl.add_mesh(above, smooth_shading=True, **shared)
                else:
                    logger.warning("threshold %g: no part of the surface reaches it (max %.3g %s)", threshold,
                                   float(np.nanmax(values)), unit)
            else:
                pl.add_mesh(surf, smooth_shading=True, **shared)
        if cut is not None:
            grid = pv.UnstructuredGrid({pv.CellType.TETRA: mesh.tets.astype(np.int64)}, mesh.nodes)
            grid.cell_data["tag"] = mesh.tet_tags
            if loc == "element":
                grid.cell_data[bar_title] = values
            else:
                grid.point_data[bar_title] = values
            sl = grid.slice(normal=cut[1], origin=cut[0])
            if sl.n_cells == 0:
                raise VizError(f"cut_plane: the plane through {np.round(cut[0], 1).tolist()} mm with normal "
                               f"{np.round(cut[1], 3).tolist()} misses the head")
            outlines = _tissue_outlines(sl)
            if partial:
                sl = sl.extract_cells(np.flatnonzero(np.isfinite(sl.cell_data[bar_title])))
            if threshold is not None:
                pl.add_mesh(sl, color="lightgrey", show_scalar_bar=False)
                sl = sl.threshold(threshold, scalars=bar_title)
            if sl.n_cells:
                pl.add_mesh(sl, **shared)
            if outlines is not None:
                pl.add_mesh(outlines, color="black", line_width=1, opacity=0.5)
        if show_electrodes and data.electrodes:
            for patch, colour, text, pos in _electrode_meshes(data):
                pl.add_mesh(patch, color=colour, opacity=0.35)
                if isinstance(patch, pv.PolyData) and patch.n_cells > 1:
                    rim = patch.extract_feature_edges(boundary_edges=True, feature_edges=False,
                                                      manifold_edges=False, non_manifold_edges=False)
                    if rim.n_cells:
                        pl.add_mesh(rim, color=colour, line_width=4)
                pl.add_point_labels(np.atleast_2d(pos), [text], font_size=14, text_color=colour,
                                    shape_opacity=0.0, show_points=False, always_visible=False)
        if show_coil and data.coil_matrix is not None:
            m = data.coil_matrix
            if data.coil_dipoles_mm is not None:
                dip = data.coil_dipoles_mm
                if len(dip) > 4000:
                    dip = dip[np.linspace(0, len(dip) - 1, 4000).astype(int)]
                pl.add_mesh(pv.PolyData(dip), color="#555555", point_size=3, opacity=0.5)
            centre_c = m[:3, 3]
            pl.add_mesh(pv.Arrow(start=centre_c, direction=m[:3, 1], scale=45.0), color="#ff7f0e")
            pl.add_mesh(pv.Sphere(radius=3.0, center=centre_c), color="#ff7f0e")
            pl.add_point_labels(np.atleast_2d(centre_c + 45.0 * m[:3, 1]), ["coil handle"], font_size=14,
                                text_color="#ff7f0e", shape_opacity=0.0, show_points=False, always_visible=False)
        if roi is not None:
            pl.add_mesh(pv.Sphere(radius=roi[1], center=roi[0]), color="#2ca02c", opacity=0.3)
            pl.add_mesh(pv.Sphere(radius=roi[1], center=roi[0], theta_resolution=16, phi_resolution=12),
                        style="wireframe", color="#2ca02c", opacity=0.6)
            pl.add_point_labels(np.atleast_2d(roi[0]), ["ROI"], font_size=14, text_color="#2ca02c",
                                shape_opacity=0.0, show_points=False, always_visible=False)
        if bar_font:
            for bar in pl.scalar_bars.values():
                for prop in (bar.GetTitleTextProperty(), bar.GetLabelTextProperty()):
                    prop.SetFontFamily(4)  # VTK_FONT_FILE
                    prop.SetFontFile(bar_font)
        if title:
            pl.add_text(title, position="upper_left", font_size=12, color="black")
        if show_axes:
            pl.add_axes(color="black", xlabel="x", ylabel="y", zlabel="z")
        radius = float(np.linalg.norm(np.ptp(mesh.nodes, axis=0))) / 2
        _set_camera(pl, view, centre, radius, cut)
    except BaseException:
        pl.close()
        raise
    if screenshot is None:
        return pl
    try:
        img = pl.screenshot(return_img=True)
    finally:
        pl.close()
    if screenshot is not True:
        write_png(screenshot, img)
    return img


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding of an (h, w, 3|4) uint8 image."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def export_html(source, path, **kwargs) -> Path:
    """Write the :func:`plot_field` scene as one standalone interactive HTML page (rotate, zoom).

    Needs ``trame-pyvista`` and ``nest_asyncio2`` (``pip install 'stimsim[viz]'``).  Keyword
    arguments go to :func:`plot_field`.  The file appears complete or not at all.
    """
    try:
        import trame_vtk  # noqa: F401  (pyvista's exporter needs trame)
    except ImportError:
        raise StimsimError("export_html needs trame: pip install trame-pyvista nest_asyncio2 "
                           "(or pip install 'stimsim[viz]')") from None
    kwargs.pop("screenshot", None)
    kwargs.setdefault("window_size", (900, 700))
    pl = plot_field(source, off_screen=True, **kwargs)
    from ..outputs import atomic_file

    path = Path(path)
    try:
        with atomic_file(path, suffix=".html") as tmp:
            if hasattr(pl, "trame") and hasattr(pl.trame, "export_html"):
                pl.trame.export_html(tmp)
            else:  # pyvista < 0.48
                pl.export_html(tmp)
    finally:
        pl.close()
    return path


__all__ = ["plot_field", "export_html", "write_png", "png_bytes", "check_view", "VIEWS", "FIELDS", "SURFACES"]


def show_image(img: np.ndarray):
    """An IPython ``Image`` of a rendered array, for notebooks (static, needs no browser-side VTK)."""
    from IPython.display import Image

    return Image(data=png_bytes(img), format="png")


__all__.append("show_image")
