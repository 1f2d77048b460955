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

from .cache import sha256_file
from .conductivity import conductivity_table, element_conductivities
from .errors import MeshError, ProtocolError
from .fem.assembly import P1Geometry, assemble_stiffness
from .mesh import Mesh, check_mesh, read_mesh
from .mesh.checks import check_connectivity

#: heads that ship inside the package: name -> (file in stimsim/data, description)
EMBEDDED_HEADS = {
    "sphere": ("sphere3.msh.gz", "three-layer sphere, radii 85/90/95 mm, tags 3/4/5 (SimNIBS test mesh)"),
    "colin27": ("colin27.msh.gz", "Colin27 adult head (MCX labels), 588k tets, SimNIBS tags 1 WM 2 GM 3 CSF "
                                  "4 bone 5 scalp, with 10-05 EEG positions"),
}


def protocol_sha256(protocol) -> str:
    """Content hash of a validated protocol (defaults included): what a results folder was computed from."""
    from .protocol import protocol_to_dict

    return hashlib.sha256(json.dumps(protocol_to_dict(protocol), sort_keys=True).encode()).hexdigest()


def _head_path(head: str, base_dir: Path | None) -> Path:
    path = Path(head).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def head_folder(head: str, base_dir: Path | None = None):
    """The :class:`~stimsim.head.folder.HeadFolder` a protocol's ``head`` names, or None when it
    names an embedded head or a mesh file."""
    if head in EMBEDDED_HEADS:
        return None
    path = _head_path(head, base_dir)
    if not path.is_dir():
        return None
    from .head.folder import read_head_folder

    return read_head_folder(path)


def resolve_head(head: str, base_dir: Path | None = None) -> Path:
    """Path of the mesh a protocol's ``head`` names: an embedded name, a mesh file, or a head folder
    made by ``stimsim head`` (its ``head.msh``)."""
    if head in EMBEDDED_HEADS:
        return Path(str(resources.files("stimsim") / "data" / EMBEDDED_HEADS[head][0]))
    path = _head_path(head, base_dir)
    if path.is_dir():
        folder = head_folder(head, base_dir)  # a MeshError naming what is missing, for other folders
        return folder.mesh_path
    if not path.is_file():
        raise ProtocolError(
            f"head: {head!r} is neither an embedded head ({', '.join(EMBEDDED_HEADS)}), a mesh file nor a head "
            "folder (`stimsim head T1.nii.gz --out FOLDER`)"
            + (f" (looked in {path.parent})" if base_dir is not None else "")
        )
    return path


def mni_to_head(head: str, base_dir: Path | None = None, *, field: str = "mni") -> np.ndarray:
    """4x4 affine from MNI152 mm to the head's mm: a head folder's inverse subject->MNI transform, or
    the identity for the embedded colin27 (its frame is the MNI frame of the Colin27 T1)."""
    if head == "colin27":
        return np.eye(4)
    folder = head_folder(head, base_dir)
    if folder is None:
        raise ProtocolError(f"{field}: head {head!r} has no MNI transform; use a head folder made by `stimsim head` "
                            "(or the embedded colin27), or give positions in the head's own mm")
    return np.linalg.inv(folder.subject_to_mni_matrix)


def mni_point_to_head(head: str, point_mni, base_dir: Path | None = None, *, field: str = "mni") -> np.ndarray:
    """(3,) or (k, 3) MNI152 mm point(s) in the head's mm, by :func:`mni_to_head`."""
    m = mni_to_head(head, base_dir, field=field)
    return np.asarray(point_mni, float) @ m[:3, :3].T + m[:3, 3]


def read_head(protocol, base_dir: Path | None = None, mesh: Mesh | None = None) -> tuple[Mesh, dict, dict]:
    """Read and check the head a protocol names: ``(mesh, input hashes, timings)``.

    ``mesh`` replaces reading ``protocol.head`` (batches, notebooks); it is checked all the same.
    Connectivity is checked later, on the stiffness pattern (:meth:`HeadModel.assemble`).
    """
    inputs = {"protocol_sha256": protocol_sha256(protocol)}
    t = time.perf_counter()
    known = set(conductivity_table(protocol.conductivities))
    from_copy = False
    if mesh is None:
        from .mesh.read_cache import forget, read_mesh_cached

        path = resolve_head(protocol.head, base_dir)
        digest = sha256_file(path)
        mesh, from_copy = read_mesh_cached(path, digest)
        inputs["head"] = protocol.head
        inputs["head_file"] = path.name
        inputs["head_sha256"] = digest
    try:
        mesh = check_mesh(mesh, known_tags=known, connectivity=False)
    except MeshError:
        if not from_copy:
            raise
        # a damaged copy, or a mesh that fails anyway: the file's own errors are reported
        forget(digest)
        mesh = check_mesh(read_mesh(path)[0], known_tags=known, connectivity=False)
    return mesh, inputs, {"read_s": time.perf_counter() - t}


def named_position(name: str, protocol, base_dir: Path | None = None, field: str = "position"):
    """mm coordinates of an EEG position name on the protocol's head (its positions file, or the
    positions of its head folder)."""
    from .head.eeg import eeg_position

    positions = protocol.positions
    if positions is not None and base_dir is not None and not Path(positions).is_absolute():
        positions = str(Path(base_dir) / positions)
    try:
        if positions is None:
            folder = head_folder(protocol.head, base_dir)
            if folder is not None:
                positions = str(folder.positions_path)
        return tuple(float(x) for x in eeg_position(name, protocol.head, positions=positions))
    except ProtocolError as err:
        raise ProtocolError(f"{field}: {err}") from None


def resolve_position(position, protocol, mesh: Mesh, base_dir: Path | None = None, field: str = "position"):
    """mm coordinates of a protocol position: [x, y, z] as given, an EEG name on the head, or
    ``{mni: [x, y, z]}`` mapped by the head's MNI transform and moved to the closest scalp point."""
    if isinstance(position, str):
        return named_position(position, protocol, base_dir, field)
    mni = getattr(position, "mni", None)
    if mni is None:
        return tuple(float(x) for x in position)
    from .head.eeg import project_to_scalp

    point = mni_point_to_head(protocol.head, mni, base_dir, field=f"{field}.mni")
    return tuple(float(x) for x in project_to_scalp(mesh, point[None])[0])


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

    The arrays are not copied and must not be changed.  The model keeps the linear solvers set
    up on it (:meth:`solver`, :meth:`grounded_system`), so a factorisation or AMG hierarchy is
    built once per boundary condition and shared by every right-hand side that follows: the TMS
    run, ``TMSModel`` and ``optimize tms`` on the same head, or leadfields and TI channels.
    """

    mesh: Mesh
    sigma: np.ndarray
    geometry: P1Geometry
    stiffness: sp.csr_matrix
    inputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def grounded_system(self):
        """The stiffness matrix with one node (the first tetrahedron's first) held at 0 V: the system
        of every TMS solve on this head (:func:`~stimsim.fem.grounded_system`), built once."""
        from .fem import grounded_system

        if "grounded" not in self._cache:
            self._cache["grounded"] = grounded_system(self.stiffness, node=int(self.mesh.tets[0, 0]))
        return self._cache["grounded"]

    def solver(self, system, backend: str = "auto", *, rtol: float = 1e-10, maxiter: int = 1000):
        """The :class:`~stimsim.fem.FactorizedSolver` of ``system`` (a grounded or electrode system of
        this head's stiffness matrix), set up on first use and then reused.

        ``backend="auto"`` chooses as :func:`~stimsim.fem.linear.pick_backend` does; ``rtol`` and
        ``maxiter`` apply to the ``"amg"`` backend (CG) only.  Systems are told apart by their
        boundary condition (the grounded node, or which nodes each electrode merges).
        """
        from .fem.linear import FactorizedSolver, pick_backend

        if backend == "auto":
            backend = pick_backend(system.matrix.shape[0])
        key = ("solver", _system_key(system), backend) + ((rtol, maxiter) if backend == "amg" else ())
        if key not in self._cache:
            self._cache[key] = FactorizedSolver(system.matrix, backend=backend, rtol=rtol, maxiter=maxiter)
        return self._cache[key]

    def with_electrode_layers(self, placed, electrodes, conductivities=None) -> tuple["HeadModel", list]:
        """This head with a sponge layer meshed under each pad whose protocol electrode says
        ``model: sponge`` (:func:`stimsim.fem.sponge.add_sponges`, ``thickness_mm`` thick), assembled
        with ``conductivities`` (the sponge's tag 500, saline, defaults to 1.0 S/m); returns it and the
        electrodes on top of their sponges, or this head and ``placed`` when every pad is a patch.
        The head's own nodes and elements keep their numbers, so fields on the head compare directly."""
        thickness = [e.thickness_mm if getattr(e, "model", "patch") == "sponge" else None for e in electrodes]
        if not any(thickness):
            return self, list(placed)
        from .fem.sponge import add_sponges

        t = time.perf_counter()
        mesh, on_top = add_sponges(self.mesh, placed, thickness)
        timings = dict(self.timings, sponges_s=time.perf_counter() - t)
        return HeadModel.assemble(mesh, conductivities, inputs=self.inputs, timings=timings,
                                  gradients=self.geometry.grads_kdm is not None), on_top

    def release_solvers(self) -> None:
        """Free the solvers (and grounded system) this model holds now, not when it goes away."""
        for key, value in list(self._cache.items()):
            if key[0] == "solver":
                value.close()
        self._cache.clear()

    @classmethod
    def assemble(cls, mesh: Mesh, conductivities=None, *, inputs: dict | None = None, timings: dict | None = None,
                 gradients: bool = True) -> "HeadModel":
        """Conductivities and stiffness matrix of a read, checked mesh.

        ``gradients=False`` keeps element volumes only and builds the matrix with the numba
        kernels (:mod:`stimsim.fem.p1_numba`), 61 MiB less on a 668k-tet head: for a single run,
        whose right-hand side and fields come from the same kernels.
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


def _system_key(system) -> tuple:
    """What tells two systems of one stiffness matrix apart: their boundary condition."""
    ground = getattr(system, "ground", None)
    if ground is not None:
        return ("grounded", int(ground), system.matrix.shape[0])
    dof = np.ascontiguousarray(system.dof)
    return ("electrodes", hashlib.sha256(dof.tobytes()).hexdigest(), tuple(int(d) for d in system.electrode_dofs))


__all__ = ["HeadModel", "read_head", "named_position", "resolve_position", "head_folder", "mni_to_head",
           "mni_point_to_head",
           "resolve_head", "protocol_sha256", "sha256_file", "EMBEDDED_HEADS"]
