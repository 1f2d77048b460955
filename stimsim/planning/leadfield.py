"""tDCS leadfields: the field of every candidate electrode against one reference.

One system is set up (assembly, electrode patches, AMG hierarchy or factorisation) and
solved once per electrode; any montage's field is then the current-weighted sum of the
leadfield columns, with no new solve.  All candidate electrodes are present in every
solve, so pads that carry no current act as floating equipotential conductors (as the
gel-filled electrodes of a real cap do) and superposition is exact.

Files (``.npz``) hold the fields as float32 plus the electrode names and positions, the
mesh and conductivity hashes and a SHA-256 of the field bytes, checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._logging import logger
from ..errors import ProtocolError, StimsimError
from ..fem import ElectrodeSpec, electrode_system, place_electrodes
from ..head_model import HeadModel
from ..mesh import Mesh
from ..outputs import atomic_file


@dataclass(frozen=True, eq=False)
class Leadfield:
    """E (V/m per A) in every element for 1 A into each electrode, returning at the reference.

    Attributes
    ----------
    names : electrode names (the reference is ``names[-1]`` and has no column)
    positions_mm : (k + 1, 3) requested positions
    fields : (k, m, 3) float32
    mesh_sha256 : hash of the mesh arrays the fields belong to
    """

    names: list[str]
    positions_mm: np.ndarray
    fields: np.ndarray
    mesh_sha256: str
    meta: dict

    @property
    def reference(self) -> str:
        return self.names[-1]

    def field(self, currents_mA: dict[str, float]) -> np.ndarray:
        """E (V/m, float64 (m, 3)) of a montage; the reference takes minus the sum of the others."""
        unknown = sorted(set(currents_mA) - set(self.names))
        if unknown:
            raise ProtocolError(f"montage: electrodes {unknown} are not in the leadfield ({len(self.names)} names)")
        out = np.zeros(self.fields.shape[1:], np.float64)
        index = {n: i for i, n in enumerate(self.names[:-1])}
        for name, i_mA in currents_mA.items():
            if name != self.reference and i_mA:
                out += (i_mA * 1e-3) * self.fields[index[name]]
        return out


def mesh_sha256(mesh: Mesh) -> str:
    h = hashlib.sha256()
    for a in (mesh.nodes, mesh.tets, mesh.tet_tags):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def compute_leadfield(mesh: Mesh, positions_mm: dict[str, tuple], reference: str, *,
                      conductivities: dict | None = None, shape: str = "point", diameter_mm: float | None = None,
                      backend: str = "auto", progress: bool = True, block: int = 16) -> Leadfield:
    """Solve once per electrode with a shared set-up (see module docstring).

    Parameters
    ----------
    mesh : head mesh (mm), or a :class:`~stimsim.head_model.HeadModel` (then ``conductivities`` is ignored)
    positions_mm : name -> (x, y, z) mm of every candidate electrode, reference included
    reference : name of the return electrode
    conductivities : overrides, S/m by tag or tissue name
    shape, diameter_mm : "point" (nearest scalp node) or "disc" pads of this diameter
    backend : :class:`~stimsim.fem.FactorizedSolver` backend.  ``"auto"`` (default): PARDISO when the
        optional ``pypardiso`` is installed (``pip install "stimsim[fast]"``) and the system fits
        (:data:`~stimsim.fem.linear.FACTORIZE_MAX_N`), else one AMG hierarchy reused by CG per
        electrode.  The factorisation is much faster per electrode (timings: docs/solver.md).
    block : right-hand sides solved together (a factorisation solves a block faster per column)
    """
    if reference not in positions_mm:
        raise ProtocolError(f"leadfield: reference {reference!r} is not among the {len(positions_mm)} positions")
    names = [n for n in positions_mm if n != reference] + [reference]
    head = mesh if isinstance(mesh, HeadModel) else HeadModel.from_mesh(mesh, conductivities)
    mesh, sigma, geometry = head.mesh, head.sigma, head.geometry
    # currents of +-1 A just to pass the zero-sum check; the solves below set their own
    specs = [ElectrodeSpec(n, tuple(positions_mm[n]), 0.0, shape, diameter_mm=diameter_mm) for n in names]
    specs[0] = ElectrodeSpec(names[0], tuple(positions_mm[names[0]]), 1.0, shape, diameter_mm=diameter_mm)
    specs[-1] = ElectrodeSpec(reference, tuple(positions_mm[reference]), -1.0, shape, diameter_mm=diameter_mm)
    placed = place_electrodes(mesh, specs)
    system = electrode_system(head.stiffness, placed)
    solver = head.solver(system, backend)  # kept by the head model: a second leadfield reuses it
    k = len(names) - 1
    fields = np.empty((k, mesh.n_tets, 3), np.float32)
    starts = range(0, k, max(1, block))
    if progress:
        from rich.progress import track

        starts = track(starts, description=f"leadfield ({k} electrodes)", transient=True)
    for start in starts:
        cols = range(start, min(start + max(1, block), k))
        rhs = np.empty((system.matrix.shape[0], len(cols)))
        for j, i in enumerate(cols):
            currents = np.zeros(len(names))
            currents[i] = 1.0
            currents[-1] = -1.0
            rhs[:, j] = system.rhs(currents)
        x = solver.solve(rhs)
        for j, i in enumerate(cols):
            fields[i] = -geometry.gradient(system.expand(x[:, j]))
    logger.info("leadfield: %d electrodes, reference %s, backend %s", k, reference, solver.backend)
    meta = {"shape": shape, "diameter_mm": diameter_mm, "conductivities_S_per_m":
            {str(t): float(sigma[np.argmax(mesh.tet_tags == t)]) for t in mesh.tissue_tags},
            "backend": solver.backend, "solver_setup_s": round(solver.setup_s, 3),
            "solver_memory_MiB": round(solver.memory_bytes / 2**20, 1)}
    pos = np.array([positions_mm[n] for n in names], float)
    return Leadfield(names, pos, fields, mesh_sha256(mesh), meta)


def _digest(fields: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(fields).tobytes()).hexdigest()


def save_leadfield(lf: Leadfield, path: str | os.PathLike) -> Path:
    """Write a leadfield ``.npz`` atomically (temp file, then rename)."""
    path = Path(path)
    header = {"format": "stimsim-leadfield-1", "names": lf.names, "mesh_sha256": lf.mesh_sha256,
              "fields_sha256": _digest(lf.fields), "meta": lf.meta}
    with atomic_file(path, suffix=".npz") as tmp:
        np.savez(tmp, fields=lf.fields, positions_mm=lf.positions_mm, header=np.array(json.dumps(header)))
    return path


def load_leadfield(path: str | os.PathLike) -> Leadfield:
    """Read a leadfield ``.npz``; a truncated or altered file is a clear error, never garbage."""
    path = Path(path)
    if not path.is_file():
        raise StimsimError(f"leadfield file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            fields = z["fields"]
            positions = z["positions_mm"]
    except Exception as exc:  # zipfile/np errors on corrupt data
        raise StimsimError(f"{path}: not a readable stimsim leadfield ({type(exc).__name__}); recompute it") from None
    if header.get("format") != "stimsim-leadfield-1" or _digest(fields) != header.get("fields_sha256"):
        raise StimsimError(f"{path}: leadfield data fail their checksum (corrupted file); recompute it")
    return Leadfield(header["names"], positions, fields, header["mesh_sha256"], header.get("meta", {}))
