"""What the pictures and the report draw, gathered without importing VTK.

:func:`load_field_data` turns a :class:`~stimsim.simulation.SimulationResult` or a results
folder (``fields.vtu`` / ``fields.msh`` + ``summary.json`` + ``protocol.yaml``) into one
:class:`FieldData`: the mesh, the element and node fields, the electrodes (scalp nodes
under each pad) or the coil (dipole positions in the head frame), the protocol and the
summary.  Surfaces to draw (:func:`surface_faces`) are the outward boundary of a set of
tissues, computed with numpy from the tetrahedra.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._logging import logger
from ..errors import StimsimError, check_option
from ..mesh.model import Mesh


class VizError(StimsimError, ValueError):
    """A picture or report cannot be made from the given input (unknown view, missing or NaN field...)."""


#: field name -> (label, unit, location, key in the element/node data, vector?)
FIELDS = {
    "magnE": ("|E|", "V/m", "element", "E", True),
    "E": ("|E|", "V/m", "element", "E", True),
    "J": ("|J|", "A/m²", "element", "J", True),
    "magnJ": ("|J|", "A/m²", "element", "J", True),
    "E_recovered": ("|E| (recovered)", "V/m", "element", "E_recovered", True),
    "magnE_recovered": ("|E| (recovered)", "V/m", "element", "E_recovered", True),
    "v": ("potential", "V", "node", "v", False),
    "dAdt": ("|dA/dt|", "V/m", "node", "dAdt", True),
}

#: names accepted by ``surface=`` (besides a list of tissue tags)
SURFACES = ("brain", "gm", "wm", "scalp")


@dataclass(frozen=True)
class ElectrodeGlyph:
    """An electrode to draw: its scalp nodes (0-based), centre node and current (A)."""

    name: str
    current_A: float
    nodes: np.ndarray
    center_node: int


@dataclass(frozen=True, eq=False)
class FieldData:
    """Mesh + fields + sources of one simulation, as drawn by :func:`stimsim.viz.plot_field`.

    Attributes
    ----------
    mesh : Mesh (mm)
    element : dict name -> (m,) or (m, 3) array over tetrahedra (``E``, ``J``, ``E_recovered``, ``magnE``...)
    node : dict name -> (n,) or (n, 3) array over nodes (``v``, ``dAdt``)
    protocol : the validated protocol, or None when unknown
    summary : the ``summary.json`` content when read from a results folder, else None
    electrodes : electrodes to draw (tDCS/tACS)
    coil_dipoles_mm : (k, 3) coil dipole positions in the head frame (TMS), or None
    coil_matrix : (4, 4) coil-to-head matrix (TMS), or None
    origin : where the data came from (for messages)
    """

    mesh: Mesh
    element: dict
    node: dict
    protocol: object = None
    summary: dict | None = None
    electrodes: list = field(default_factory=list)
    coil_dipoles_mm: np.ndarray | None = None
    coil_matrix: np.ndarray | None = None
    origin: str = "simulation result"
    inputs: dict = field(default_factory=dict)

    def available_fields(self) -> list[str]:
        out = []
        for name, (_, _, loc, key, _) in FIELDS.items():
            data = self.element if loc == "element" else self.node
            if key in data or (name in data):
                out.append(name)
        return out

    def scalar(self, name: str) -> tuple[np.ndarray, str, str, str]:
        """``(values, location, label, unit)`` of a field; vectors become magnitudes.

        Raises
        ------
        VizError
            Unknown field name, a field this result does not have, or non-finite values.
        """
        if name not in FIELDS:
            raise VizError(f"field: {name!r} is not a known field; choose one of {', '.join(FIELDS)}")
        label, unit, loc, key, vector = FIELDS[name]
        data = self.element if loc == "element" else self.node
        if key in data:
            arr = np.asarray(data[key], dtype=float)
        elif name in data:
            arr = np.asarray(data[name], dtype=float)
        else:
            have = ", ".join(self.available_fields()) or "none"
            raise VizError(f"field: {self.origin} has no {loc} field {key!r} (available: {have})")
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if vector and arr.ndim == 2:
            arr = np.linalg.norm(arr, axis=1)
        n_expected = self.mesh.n_tets if loc == "element" else self.mesh.n_nodes
        if arr.shape[0] != n_expected:
            raise VizError(f"field: {key!r} in {self.origin} has {arr.shape[0]} values but the mesh has "
                           f"{n_expected} {'tetrahedra' if loc == 'element' else 'nodes'}")
        bad = ~np.isfinite(arr)
        if bad.any():
            raise VizError(f"field: {key!r} in {self.origin} has {int(bad.sum())} non-finite (NaN/inf) values out of "
                           f"{arr.size}; the simulation did not produce a usable field, rerun it")
        return arr, loc, label, unit

    def element_vectors(self, key: str = "E") -> np.ndarray:
        arr = np.asarray(self.element[key], float)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise VizError(f"field: {key!r} in {self.origin} is not a 3-vector per element")
        if not np.all(np.isfinite(arr)):
            raise VizError(f"field: {key!r} in {self.origin} has non-finite (NaN/inf) values; rerun the simulation")
        return arr


# ------------------------------------------------------------------------------------------ loading


def _coil_dipoles(protocol, matrix, base_dir) -> np.ndarray | None:
    try:
        from ..coils import load_coil

        coil = load_coil(protocol.coil, base_dir)
        pos, _ = coil.transformed(np.asarray(matrix, float))
        return pos
    except Exception as err:  # a picture without the coil windings is still useful
        logger.warning("coil windings not drawn: %s", err)
        return None


def _from_result(result, base_dir=None) -> FieldData:
    element = {"E": result.E, "J": result.J}
    if result.E_recovered is not None:
        element["E_recovered"] = result.E_recovered
    node = result.node_fields()
    electrodes = [ElectrodeGlyph(e.name, float(e.current_A), np.asarray(e.nodes), int(e.center_node))
                  for e in getattr(result, "electrodes", [])]  # a TESResult's; a TMSResult has a coil
    matrix = dipoles = None
    placement = getattr(result, "placement", None)
    if placement is not None:
        matrix = np.asarray(placement.matrix, float)
        dipoles = _coil_dipoles(result.protocol, matrix, base_dir)
    return FieldData(result.mesh, element, node, result.protocol, None, electrodes, dipoles, matrix,
                     "the simulation result", dict(result.inputs))


def _electrodes_from_protocol(protocol, mesh) -> list[ElectrodeGlyph]:
    try:
        from ..simulation import electrode_specs
        from ..fem.electrodes import place_electrodes

        placed = place_electrodes(mesh, electrode_specs(protocol, mesh=mesh))
    except StimsimError as err:
        logger.warning("electrodes not drawn: %s", err)
        return []
    return [ElectrodeGlyph(e.name, float(e.current_A), np.asarray(e.nodes), int(e.center_node)) for e in placed]


def _from_folder(path: Path) -> FieldData:
    from ..mesh import read_mesh
    from ..protocol import load_protocol

    if path.is_file():
        folder, candidates = path.parent, [path]
    elif path.is_dir():
        folder, candidates = path, [path / "fields.vtu", path / "fields.msh"]
    else:
        raise VizError(f"results folder not found: {path} (make one with `stimsim run PROTOCOL --out {path}`)")
    fields_file = next((c for c in candidates if c.is_file()), None)
    if fields_file is None:
        raise VizError(f"results folder {folder} has no fields.vtu or fields.msh; it is not (or no longer) the "
                       "output of `stimsim run` — run the simulation again")
    mesh, fields = read_mesh(fields_file)
    element, node = dict(fields.get("element", {})), dict(fields.get("node", {}))
    if not any(k in element for k in ("E", "magnE", "J", "magnJ")):
        raise VizError(f"{fields_file} holds no field (no element data E, magnE, J or magnJ); it is a bare mesh, "
                       "not a stimsim result — run the simulation again")
    summary = None
    if (folder / "summary.json").is_file():
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise VizError(f"{folder / 'summary.json'}: not valid JSON ({err})") from None
    protocol = load_protocol(folder / "protocol.yaml") if (folder / "protocol.yaml").is_file() else None
    electrodes, dipoles, matrix = [], None, None
    recorded = [e for e in (summary or {}).get("electrodes", []) if "nodes" in e]
    if recorded:  # the folder says where its electrodes were (stimsim >= this format)
        electrodes = [ElectrodeGlyph(e["name"], float(e["current_mA"]) * 1e-3, np.asarray(e["nodes"], np.int64),
                                     int(e["center_node"])) for e in recorded]
    elif protocol is not None and protocol.kind != "tms":  # older folders: place them again
        electrodes = _electrodes_from_protocol(protocol, mesh)
    placement = ((summary or {}).get("tms") or {}).get("placement")
    if protocol is not None and protocol.kind == "tms" and placement is not None:
        matrix = np.asarray(placement["matrix"], float)
        dipoles = _coil_dipoles(protocol, matrix, folder)
    return FieldData(mesh, element, node, protocol, summary, electrodes, dipoles, matrix, str(fields_file),
                     dict((summary or {}).get("inputs", {})))


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
        return _from_folder(Path(source))
    if hasattr(source, "mesh") and hasattr(source, "E") and hasattr(source, "potential_V"):
        return _from_result(source, base_dir)
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
    from ..results import weighted_percentiles

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
