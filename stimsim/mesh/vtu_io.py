"""VTK XML unstructured grid (``.vtu``) output for ParaView, and reading it back (via meshio).

Layout written by :func:`write_vtu`:

* one ``tetra`` cell block (all tetrahedra, in mesh order), and, only when
  ``include_triangles=True``, a second ``triangle`` block with the surface triangles.
  The default is tetrahedra only: that is what ParaView users expect from a volume result
  (Threshold / Clip / Integrate Variables then see each tissue element exactly once and no
  zero-thickness surface cells);
* cell data ``tag`` (int32) with the tissue tag (triangles: their surface tag);
* one point-data array per ``node_data`` entry and one cell-data array per
  ``element_data`` entry (on triangles: the value of an adjacent tetrahedron, 0 if none).

Data are stored as raw appended binary (no base64, no compression): writing is a memory
copy, much faster than meshio's zlib and base64 writers (timings: docs/meshing.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._logging import logger
from ..errors import MeshError
from ..outputs import atomic_file
from .gmsh_io import MeshFileNotFoundError, checked_fields
from .model import Mesh

__all__ = ["write_vtu", "read_vtu"]

_VTK_FLOAT = {"<f8": "Float64", "<f4": "Float32"}
_SKIP_CELL_KEYS = {"tag", "gmsh:physical", "gmsh:geometrical", "cell_tags"}


def write_vtu(path, mesh: Mesh, node_data=None, element_data=None, *, include_triangles: bool = False,
              dtype: str = "float64") -> Path:
    """Write ``mesh`` and fields as a binary, uncompressed VTU file (atomically).

    Parameters
    ----------
    path : str or Path
    mesh : Mesh
    node_data : dict, optional
        ``{name: (n,) or (n, k)}`` point data.
    element_data : dict, optional
        ``{name: (m,) or (m, k)}`` cell data, one row per tetrahedron.
    include_triangles : bool
        Also write the surface triangles as a second cell block (default False).
    dtype : "float64" (default) or "float32" for the data arrays (halves the file for viewing;
        point coordinates stay float64)
    """
    path = Path(path)
    if not isinstance(mesh, Mesh):
        raise MeshError(f"write_vtu needs a stimsim Mesh, got {type(mesh).__name__}")
    nd = checked_fields(node_data, mesh.n_nodes, "node_data")
    ed = checked_fields(element_data, mesh.n_tets, "element_data")
    tris = include_triangles and len(mesh.tris) > 0
    conn = [mesh.tets]
    tags = [mesh.tet_tags]
    types = [np.full(mesh.n_tets, 10, np.uint8)]  # VTK_TETRA
    if tris:
        conn.append(mesh.tris)
        tags.append(mesh.tri_tags)
        types.append(np.full(len(mesh.tris), 5, np.uint8))  # VTK_TRIANGLE
        owner = mesh.triangle_owner_tets()
    offsets = np.concatenate([np.full(len(c), c.shape[1], np.int64) for c in conn]).cumsum()
    cell_arrays = [("tag", np.concatenate(tags).astype(np.int32))]
    for name, v in ed.items():
        if tris:
            tv = np.where((owner >= 0)[:, None], v[np.maximum(owner, 0)], 0.0)
            v = np.concatenate([v, tv])
        cell_arrays.append((name, v))
    point_arrays = list(nd.items())
    # VTK XML with raw appended binary data: no base64 or compression, so writing is a
    # memory copy (faster than meshio's base64 writer: docs/meshing.md).  Each block is
    # converted to its file dtype only when written, so at most one converted copy is alive.
    blocks: list[tuple[np.ndarray, str]] = []
    offset = 0

    def add(arr, name, ncomp=None, vtk_type=None, dtype=None):
        nonlocal offset
        dt = np.dtype(dtype or arr.dtype)
        kind = vtk_type or {"f8": "Float64", "i4": "Int32", "i8": "Int64", "u1": "UInt8"}[dt.str[1:]]
        comps = f' NumberOfComponents="{ncomp}"' if ncomp else ""
        tag = f'<DataArray type="{kind}" Name="{name}"{comps} format="appended" offset="{offset}"/>'
        blocks.append((arr, dt.str))
        offset += 8 + arr.size * dt.itemsize
        return tag

    def comps(v):
        return v.shape[1] if v.ndim == 2 and v.shape[1] > 1 else None

    def flat(v):
        return v[:, 0] if v.ndim == 2 and v.shape[1] == 1 else v

    n_cells = sum(len(c) for c in conn)
    xml = ['<?xml version="1.0"?>',
           '<VTKFile type="UnstructuredGrid" version="1.0" byte_order="LittleEndian" header_type="UInt64">',
           "<UnstructuredGrid>", f'<Piece NumberOfPoints="{mesh.n_nodes}" NumberOfCells="{n_cells}">',
           "<Points>", add(mesh.nodes, "Points", 3, dtype="<f8"), "</Points>", "<Cells>",
           add(np.concatenate([c.ravel() for c in conn]) if len(conn) > 1 else conn[0], "connectivity",
               dtype="<i4"),
           add(offsets, "offsets", dtype="<i8"), add(np.concatenate(types), "types"), "</Cells>"]
    xml.append("<PointData>")
    fdt = {"float64": "<f8", "float32": "<f4"}[dtype]
    xml += [add(flat(v), name, comps(v), _VTK_FLOAT[fdt], fdt) for name, v in point_arrays]
    xml.append("</PointData><CellData>")
    xml += [add(flat(v), name) if v.dtype.kind == "i" else
            add(flat(v), name, comps(v) if v.ndim == 2 else None, _VTK_FLOAT[fdt], fdt)
            for name, v in cell_arrays]
    xml.append("</CellData></Piece></UnstructuredGrid>")
    xml.append('<AppendedData encoding="raw">\n_')
    with atomic_file(path, suffix=".tmp.vtu") as tmp:
        with open(tmp, "wb") as fh:
            fh.write("\n".join(xml).encode("ascii"))
            for arr, dt in blocks:
                arr = np.ascontiguousarray(arr, dtype=dt)
                fh.write(np.uint64(arr.nbytes).tobytes())
                fh.write(memoryview(arr).cast("B"))
                del arr
            fh.write(b"\n</AppendedData>\n</VTKFile>\n")
    logger.debug("wrote %s", path)
    return path


def read_vtu(path) -> tuple[Mesh, dict]:
    """Read a VTU file with tetrahedra (and optionally triangles) back into a Mesh.

    Tags come from cell data ``tag`` (written by :func:`write_vtu`) or ``gmsh:physical``;
    without either, tetrahedra get tag 1 and triangles 1001 (with a warning).
    Returns ``(mesh, {"node": {...}, "element": {...}, "tri_element": {...}})``.
    """
    from meshio import vtu  # the format reader itself: meshio.read() calls sys.exit on failure

    path = Path(path)
    if not path.exists():
        raise MeshFileNotFoundError(f"mesh file not found: {path}")
    try:
        m = vtu.read(str(path))
    except (Exception, SystemExit) as exc:  # meshio raises many kinds (ReadError, ParseError, ...)
        raise MeshError(
            f"{path}: cannot read VTU file ({type(exc).__name__}: {exc}); re-export it or write it with write_vtu"
        ) from None
    tag_key = next((k for k in ("tag", "gmsh:physical") if k in m.cell_data), None)
    if tag_key is None:
        logger.warning("%s has no 'tag' cell data; using tag 1 for tetrahedra and 1001 for triangles", path)
    parts = {"tetra": [], "triangle": []}
    fields = {"node": {}, "element": {}, "tri_element": {}}
    per_block = {"tetra": {}, "triangle": {}}
    for i, block in enumerate(m.cells):
        if block.type not in parts:
            continue
        t = np.asarray(m.cell_data[tag_key][i]).ravel() if tag_key else None
        if t is None:
            t = np.full(len(block.data), 1 if block.type == "tetra" else 1001)
        parts[block.type].append((block.data, t))
        for name, arrs in m.cell_data.items():
            if name in _SKIP_CELL_KEYS or name.startswith("gmsh:"):
                continue
            per_block[block.type].setdefault(name, []).append(np.asarray(arrs[i], np.float64))

    def cat(kind, nn):
        if not parts[kind]:
            return np.zeros((0, nn), np.int64), np.zeros(0, np.int64)
        return np.concatenate([c for c, _ in parts[kind]]), np.concatenate([t for _, t in parts[kind]])

    tets, tet_tags = cat("tetra", 4)
    tris, tri_tags = cat("triangle", 3)
    if len(tets) == 0:
        raise MeshError(f"{path}: the VTU file has no tetrahedra")
    nodes = np.asarray(m.points, np.float64)[:, :3]
    mesh = Mesh(nodes=nodes, tets=tets, tet_tags=tet_tags, tris=tris, tri_tags=tri_tags)
    for name, v in m.point_data.items():
        fields["node"][name] = np.asarray(v, np.float64)
    for kind, key in (("tetra", "element"), ("triangle", "tri_element")):
        for name, arrs in per_block[kind].items():
            fields[key][name] = np.concatenate(arrs)
    return mesh, fields
