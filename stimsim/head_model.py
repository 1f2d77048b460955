"""The head model every modality, planner and picture shares: mesh, conductivities, P1 forms.

``HeadModel.from_protocol(protocol)`` reads and checks the head a protocol names, assigns a
conductivity to every element and assembles the stiffness matrix, once; tDCS/tACS and TMS
runs, :class:`~stimsim.tms.TMSModel` and leadfields all start from one.  Reading (mesh and
input hashes) and assembling are also separate steps (:func:`read_head`,
:meth:`HeadModel.assemble`), so a TMS run can compute the coil's field in a worker thread
between the two.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .conductivity import conductivity_table, element_conductivities
from .errors import ProtocolError
from .fem.assembly import P1Geometry, assemble_stiffness
from .mesh import Mesh, check_mesh, read_mesh
from .mesh.checks import check_connectivity

#: heads that ship inside the package: name -> (file in stimsim/data, description)
EMBEDDED_HEADS = {
    "sphere": ("sphere3.msh.gz", "three-layer sphere, radii 85/90/95 mm, tags 3/4/5 (SimNIBS test mesh)"),
    "colin27": ("colin27.msh.gz", "Colin27 adult head (MCX labels), 588k tets, SimNIBS tags 1 WM 2 GM 3 CSF "
                                  "4 bone 5 scalp, with 10-05 EEG positions"),
}


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def protocol_sha256(protocol) -> str:
    """Content hash of a validated protocol (defaults included): what a results folder was computed from."""
    from .protocol import protocol_to_dict

    return hashlib.sha256(json.dumps(protocol_to_dict(protocol), sort_keys=True).encode()).hexdigest()


def resolve_head(head: str, base_dir: Path | None = None) -> Path:
    """Path of the mesh a protocol's ``head`` names (an embedded name or a file path)."""
    if head in EMBEDDED_HEADS:
        return Path(str(resources.files("stimsim") / "data" / EMBEDDED_HEADS[head][0]))
    path = Path(head).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise ProtocolError(
            f"head: {head!r} is neither an embedded head ({', '.join(EMBEDDED_HEADS)}) nor an existing mesh file"
            + (f" (looked in {path.parent})" if base_dir is not None else "")
        )
    return path


def read_head(protocol, base_dir: Path | None = None, mesh: Mesh | None = None) -> tuple[Mesh, dict, dict]:
    """Read and check the head a protocol names: ``(mesh, input hashes, timings)``.

    ``mesh`` replaces reading ``protocol.head`` (batches, notebooks); it is checked all the same.
    Connectivity is checked later, on the stiffness pattern (:meth:`HeadModel.assemble`).
    """
    inputs = {"protocol_sha256": protocol_sha256(protocol)}
    t = time.perf_counter()
    if mesh is None:
        path = resolve_head(protocol.head, base_dir)
        mesh, _ = read_mesh(path)
        inputs["head"] = protocol.head
        inputs["head_file"] = path.name
        inputs["head_sha256"] = sha256_file(path)
    mesh = check_mesh(mesh, known_tags=set(conductivity_table(protocol.conductivities)), connectivity=False)
    return mesh, inputs, {"read_s": time.perf_counter() - t}


def named_position(name: str, protocol, base_dir: Path | None = None, field: str = "position"):
    """mm coordinates of an EEG position name on the protocol's head (its positions file)."""
    from .head.eeg import eeg_position

    positions = protocol.positions
    if positions is not None and base_dir is not None and not Path(positions).is_absolute():
        positions = str(Path(base_dir) / positions)
    try:
        return tuple(float(x) for x in eeg_position(name, protocol.head, positions=positions))
    except ProtocolError as err:
        raise ProtocolError(f"{field}: {err}") from None


@dataclass(frozen=True, eq=False)
class HeadModel:
    """A head ready to solve.

    Attributes
    ----------
    mesh : the checked head mesh (mm)
    sigma : (m,) conductivity per element, S/m
    geometry : P1 element volumes and (unless built with ``gradients=False``) gradients
    stiffness : (n, n) CSR stiffness matrix, SI units (S m)
    inputs : hashes of what the model was built from (protocol, head file)
    timings : seconds spent reading (``read_s``) and assembling (``assembly_s``)
    """

    mesh: Mesh
    sigma: np.ndarray
    geometry: P1Geometry
    stiffness: sp.csr_matrix
    inputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @classmethod
    def assemble(cls, mesh: Mesh, conductivities=None, *, inputs: dict | None = None, timings: dict | None = None,
                 gradients: bool = True) -> "HeadModel":
        """Conductivities and stiffness matrix of a read, checked mesh.

        ``gradients=False`` keeps element volumes only and builds the matrix with the numba
        kernels (:mod:`stimsim.fem.p1_numba`), 61 MiB less on a 668k-tet head: for a single TMS
        run, whose right-hand side and fields come from the same kernels.
        """
        t = time.perf_counter()
        sigma = element_conductivities(mesh.tet_tags, conductivity_table(conductivities))
        if gradients:
            geometry = P1Geometry.from_mesh(mesh)
            stiffness = assemble_stiffness(geometry, sigma)
        else:
            from .fem.p1_numba import stiffness_matrix

            geometry = P1Geometry.volumes_only(mesh)
            stiffness = stiffness_matrix(mesh.nodes, mesh.tets, sigma)
        check_connectivity(mesh, stiffness)  # the stiffness pattern is the node graph: no extra graph
        timings = dict(timings or {})
        timings["assembly_s"] = time.perf_counter() - t
        return cls(mesh, sigma, geometry, stiffness, dict(inputs or {}), timings)

    @classmethod
    def from_protocol(cls, protocol, base_dir: Path | None = None, mesh: Mesh | None = None, *,
                      gradients: bool = True) -> "HeadModel":
        """Read the protocol's head (or use ``mesh``) and assemble it with the protocol's conductivities."""
        mesh, inputs, timings = read_head(protocol, base_dir, mesh)
        return cls.assemble(mesh, protocol.conductivities, inputs=inputs, timings=timings, gradients=gradients)

    @classmethod
    def from_mesh(cls, mesh: Mesh, conductivities=None) -> "HeadModel":
        """A head model of a mesh already in memory (checked here), default or given conductivities."""
        mesh = check_mesh(mesh, known_tags=set(conductivity_table(conductivities)), connectivity=False)
        return cls.assemble(mesh, conductivities)

    @classmethod
    def load(cls, head: str | os.PathLike, conductivities=None, base_dir: Path | None = None) -> "HeadModel":
        """Read a head (an embedded name such as ``"sphere"`` or a mesh file) and assemble it."""
        path = resolve_head(os.fspath(head), base_dir)
        t = time.perf_counter()
        mesh, _ = read_mesh(path)
        mesh = check_mesh(mesh, known_tags=set(conductivity_table(conductivities)), connectivity=False)
        inputs = {"head": os.fspath(head), "head_file": path.name, "head_sha256": sha256_file(path)}
        return cls.assemble(mesh, conductivities, inputs=inputs, timings={"read_s": time.perf_counter() - t})


__all__ = ["HeadModel", "read_head", "named_position", "resolve_head", "protocol_sha256", "sha256_file",
           "EMBEDDED_HEADS"]
