"""Meshes: the :class:`Mesh` model, file input/output and sanity checks.

* :func:`read_mesh` / :func:`write_mesh` dispatch on the file name:
  ``.msh`` and ``.msh.gz`` (Gmsh MSH 2.2 or 4.1, ASCII or binary) and ``.vtu``.
* A missing file raises :class:`MeshFileNotFoundError`, which is both a
  :class:`~stimsim.errors.MeshError` and a :class:`FileNotFoundError`; an unknown
  extension or an unreadable / corrupt file raises :class:`~stimsim.errors.MeshError`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MeshError
from .checks import check_mesh, mesh_quality
from .gmsh_io import MeshFileNotFoundError, read_msh, write_msh
from .model import Mesh
from .vtu_io import read_vtu, write_vtu

__all__ = [
    "Mesh",
    "MeshFileNotFoundError",
    "read_mesh",
    "write_mesh",
    "check_mesh",
    "mesh_quality",
    "read_msh",
    "write_msh",
    "read_vtu",
    "write_vtu",
]

_MSH = (".msh", ".msh.gz")
_VTU = (".vtu",)


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_MSH):
        return "msh"
    if name.endswith(_VTU):
        return "vtu"
    raise MeshError(f"unknown mesh file type {path.name!r}; use a .msh, .msh.gz or .vtu file")


def read_mesh(path) -> tuple[Mesh, dict]:
    """Read a mesh file (``.msh``, ``.msh.gz`` or ``.vtu``); returns ``(mesh, fields)``.

    ``fields`` is ``{"node": {...}, "element": {...}, "tri_element": {...}}`` (see
    :func:`read_msh`).
    """
    path = Path(path)
    kind = _kind(path)
    if not path.exists():
        raise MeshFileNotFoundError(f"mesh file not found: {path}")
    return read_msh(path) if kind == "msh" else read_vtu(path)


def write_mesh(path, mesh: Mesh, node_data=None, element_data=None, **kwargs) -> Path:
    """Write a mesh (and fields) to ``.msh`` / ``.msh.gz`` / ``.vtu`` chosen by the extension.

    Extra keyword arguments go to :func:`write_msh` (``version``, ``binary``) or
    :func:`write_vtu` (``include_triangles``).
    """
    path = Path(path)
    if _kind(path) == "msh":
        return write_msh(path, mesh, node_data, element_data, **kwargs)
    return write_vtu(path, mesh, node_data, element_data, **kwargs)
