"""What the pictures and the report draw, gathered without importing VTK.

:func:`load_field_data` turns a :class:`~stimsim.simulation.SimulationResult` or a results
folder into one :class:`~stimsim.results.FieldData` (read by :func:`stimsim.results.read_results`):
the mesh, the element and node fields, the electrodes (scalp nodes under each pad) or the coil
(dipole positions in the head frame), the protocol and the summary.  Surfaces to draw (:func:`surface_faces`) are the outward boundary of a set of
tissues, computed with numpy from the tetrahedra.
"""

from __future__ import annotations

import os

import numpy as np

from .._logging import logger
from ..errors import ResultsError, check_option
from ..mesh.model import Mesh
from ..results import FIELDS, FieldData, read_results, result_field_data  # noqa: F401  (FIELDS: viz API)

#: the error of pictures and reports: the same class as a results folder's (one ``except`` for both)
VizError = ResultsError

#: names accepted by ``surface=`` (besides a list of tissue tags)
SURFACES = ("brain", "gm", "wm", "scalp")


def load_field_data(source, *, base_dir=None) -> FieldData:
    """A :class:`FieldData` from a SimulationResult, a results folder (or its fields file), or a FieldData.

    Raises
    ------
    VizError
        The folder does not exist or holds no fields.
    """
    if isinstance(source, FieldData):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_results(source)
    if hasattr(source, "mesh") and hasattr(source, "E") and hasattr(source, "potential_V"):
        data = result_field_data(source, base_dir)
        # the modality's fields too (TI envelopes, each channel's E, tACS peak phase), as a results folder has them
        extra = source.extra_element_fields() if hasattr(source, "extra_element_fields") else {}
        data.element.update({k: v for k, v in extra.items() if k not in data.element})
        return data
    raise VizError(f"expected a SimulationResult or a results folder, got {type(source).__name__}")




# ------------------------------------------------------------------------------------------ geometry


def innermost_tag(mesh: Mesh) -> int:
    """The tissue whose elements lie closest (volume-weighted) to the centre of the mesh."""
    c = mesh.centroids
    vol = mesh.volumes_mm3
    centre = np.average(c, axis=0, weights=vol)
    r = np.linalg.norm(c - centre, axis=1)
    tags = mesh.tissue_tags
    mean_r = [np.average(r[mesh.tet_tags == t], weights=vol[mesh.tet_tags == t]) for t in tags]
    return int(tags[int(np.argmin(mean_r))])


def resolve_surface_tags(mesh: Mesh, surface) -> list[int]:
    """Tissue tags whose outer boundary is drawn for ``surface`` (a name in :data:`SURFACES` or tags).

    ``brain``: white + grey matter (1, 2) when present (their outer boundary is the pial surface), else
    the innermost tissue (the inner ball of a layered sphere).  ``gm``: grey matter (2), else as brain.
    ``wm``: white matter (1).  ``scalp``: every tissue (the outer surface of the head).
    """
    present = [int(t) for t in mesh.tissue_tags]
    if isinstance(surface, (int, np.integer)):
        surface = [int(surface)]
    if isinstance(surface, (list, tuple, np.ndarray)):
        tags = [int(t) for t in surface]
        missing = [t for t in tags if t not in present]
        if not tags or missing:
            raise VizError(f"surface: tags {missing or tags} are not tissues of the mesh (it has {present})")
        return tags
    key = str(surface).lower()
    check_option("surface", key, SURFACES, error=VizError, hint=f" (or a list of tissue tags from {present})")
    if key == "scalp":
        return present
    if key == "wm":
        if 1 not in present:
            raise VizError(f"surface: 'wm' needs white matter (tag 1); the mesh has tags {present}")
        return [1]
    if key == "gm" and 2 in present:
        return [2]
    brain = [t for t in (1, 2) if t in present]
    if brain:
        return brain
    tag = innermost_tag(mesh)
    logger.info("surface %r: no white/grey matter (tags 1, 2) in the mesh; using the innermost tissue, tag %d",
                surface, tag)
    return [tag]


def surface_faces(mesh: Mesh, tags) -> tuple[np.ndarray, np.ndarray]:
    """Outward boundary triangles of the union of ``tags`` and the tetrahedron that owns each.

    Returns ``(faces (f, 3) node indices, owner (f,) tetrahedron indices into mesh)``.
    """
    sel = np.flatnonzero(np.isin(mesh.tet_tags, list(tags)))
    if len(sel) == 0:
        raise VizError(f"surface: no tetrahedra with tags {list(tags)}")
    sub = Mesh(mesh.nodes, mesh.tets[sel], mesh.tet_tags[sel])
    return sub.boundary_faces, sel[sub.boundary_face_tets]


def face_normals(nodes: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals and areas (mm²) of triangles."""
    p = nodes[faces]
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    norm = np.linalg.norm(n, axis=1)
    return n / np.maximum(norm, 1e-300)[:, None], 0.5 * norm


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Volume-weighted percentile, as in :mod:`stimsim.results`."""
    from ..stats import weighted_percentiles

    return weighted_percentiles(np.asarray(values, float), np.asarray(weights, float), [q])[0]


def check_roi(roi):
    """Validate an ROI given as (centre_mm [x, y, z], radius_mm); None passes through."""
    if roi is None:
        return None
    try:
        centre, radius = roi
        centre = np.asarray(centre, float).reshape(3)
        radius = float(radius)
    except (TypeError, ValueError):
        raise VizError(f"roi: {roi!r} must be (centre_mm [x, y, z], radius_mm)") from None
    if not np.all(np.isfinite(centre)) or not radius > 0:
        raise VizError(f"roi: centre {centre.tolist()} must be finite and radius {radius} mm positive")
    return centre, radius
