"""Mesh file input/output (Gmsh MSH 2.2/4.1, VTU) and mesh checks."""

from __future__ import annotations

import gzip
import logging
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from stimsim.errors import MeshError
from stimsim.mesh import (
    Mesh,
    MeshFileNotFoundError,
    check_mesh,
    mesh_quality,
    read_mesh,
    read_msh,
    read_vtu,
    write_mesh,
    write_msh,
    write_vtu,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPHERE22 = DATA / "meshes" / "sphere3.msh"
SPHERE41 = DATA / "meshes" / "sphere3_v4_1_binary.msh"


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"reference file missing on CI: {path}")
        pytest.skip(f"reference file not available: {path}")
    return path


# ---------------------------------------------------------------------------------------
# synthetic meshes
# ---------------------------------------------------------------------------------------
_CUBE_SPLIT = np.array([[0, 1, 2, 6], [0, 2, 3, 6], [0, 3, 7, 6], [0, 7, 4, 6], [0, 4, 5, 6], [0, 5, 1, 6]])


def box_mesh(n: int = 4, h: float = 2.5) -> Mesh:
    """n^3 cubes split into 6 positive tetrahedra; tag 1 for x < middle, 2 otherwise;
    boundary triangles tagged 1000 + tag of their tetrahedron."""
    x = np.arange(n + 1) * h
    g = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1).reshape(-1, 3)
    i = np.arange((n + 1) ** 3).reshape(n + 1, n + 1, n + 1)
    c = np.stack([i[:-1, :-1, :-1], i[1:, :-1, :-1], i[1:, 1:, :-1], i[:-1, 1:, :-1],
                  i[:-1, :-1, 1:], i[1:, :-1, 1:], i[1:, 1:, 1:], i[:-1, 1:, 1:]], -1).reshape(-1, 8)  # fmt: skip
    tets = c[:, _CUBE_SPLIT].reshape(-1, 4)
    p = g[tets]
    vol = np.einsum("ij,ij->i", p[:, 1] - p[:, 0], np.cross(p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]))
    tets[vol < 0] = tets[vol < 0][:, [0, 2, 1, 3]]
    tags = np.where(p.mean(1)[:, 0] < n * h / 2, 1, 2)
    m = Mesh(g + 0.1234567891234, tets, tags)
    return Mesh(m.nodes, tets, tags, m.boundary_faces, 1000 + tags[m.boundary_face_tets])


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return box_mesh()


@pytest.fixture(scope="module")
def fields(mesh):
    rng = np.random.default_rng(42)
    node = {"potential": rng.standard_normal(mesh.n_nodes), "two": rng.standard_normal((mesh.n_nodes, 2))}
    elem = {"E": rng.standard_normal((mesh.n_tets, 3)) * 1e-3, "magnE": rng.random(mesh.n_tets)}
    return node, elem


def assert_same_mesh(a: Mesh, b: Mesh):
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.tets, b.tets)
    np.testing.assert_array_equal(a.tet_tags, b.tet_tags)
    np.testing.assert_array_equal(a.tris, b.tris)
    np.testing.assert_array_equal(a.tri_tags, b.tri_tags)


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["2.2", "4.1"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
@pytest.mark.parametrize("suffix", [".msh", ".msh.gz"])
def test_msh_round_trip(tmp_path, mesh, fields, version, binary, suffix):
    node, elem = fields
    path = tmp_path / f"head{suffix}"
    write_msh(path, mesh, node, elem, version=version, binary=binary)
    if suffix.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    back, f = read_msh(path)
    assert_same_mesh(mesh, back)
    assert set(f["node"]) == set(node) and set(f["element"]) == set(elem)
    for k, v in node.items():
        np.testing.assert_array_equal(f["node"][k], v)  # exact, also in ASCII
    for k, v in elem.items():
        np.testing.assert_array_equal(f["element"][k], v)
    # triangles carry the value of their (only) tetrahedron
    owner = mesh.triangle_owner_tets()
    np.testing.assert_array_equal(f["tri_element"]["E"], elem["E"][owner])
    # no temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_vtu_round_trip(tmp_path, mesh, fields):
    node, elem = fields
    path = tmp_path / "head.vtu"
    write_vtu(path, mesh, node, elem, include_triangles=True)
    back, f = read_vtu(path)
    assert_same_mesh(mesh, back)
    for k, v in node.items():
        np.testing.assert_array_equal(f["node"][k], v)
    for k, v in elem.items():
        np.testing.assert_array_equal(f["element"][k], v)
    np.testing.assert_array_equal(f["tri_element"]["magnE"], elem["magnE"][mesh.triangle_owner_tets()])
    # default: tetrahedra only (what ParaView users expect for a volume result)
    write_mesh(path, mesh, node, elem)
    back, f = read_mesh(path)
    assert len(back.tris) == 0
    np.testing.assert_array_equal(back.tets, mesh.tets)
    np.testing.assert_array_equal(back.tet_tags, mesh.tet_tags)
    np.testing.assert_array_equal(f["element"]["E"], elem["E"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_vtu_readable_by_meshio(tmp_path, mesh, fields):
    meshio = pytest.importorskip("meshio")
    node, elem = fields
    path = tmp_path / "head.vtu"
    write_vtu(path, mesh, node, elem)
    m = meshio.read(path)
    np.testing.assert_array_equal(m.points, mesh.nodes)
    assert [c.type for c in m.cells] == ["tetra"]
    np.testing.assert_array_equal(m.cells[0].data, mesh.tets)
    np.testing.assert_array_equal(m.cell_data["tag"][0], mesh.tet_tags)
    np.testing.assert_array_equal(m.point_data["potential"], node["potential"])


def test_write_mesh_dispatch_and_read_mesh(tmp_path, mesh):
    for name in ("a.msh", "a.msh.gz", "a.vtu"):
        write_mesh(tmp_path / name, mesh)
        back, _ = read_mesh(tmp_path / name)
        np.testing.assert_array_equal(back.tets, mesh.tets)
    with pytest.raises(MeshError, match="unknown mesh file type"):
        write_mesh(tmp_path / "a.stl", mesh)


def test_write_rejects_bad_field_shape_and_keeps_old_file(tmp_path, mesh):
    path = tmp_path / "a.msh"
    write_msh(path, mesh)
    before = path.read_bytes()
    with pytest.raises(MeshError, match="one row per tetrahedron"):
        write_msh(path, mesh, element_data={"E": np.zeros(mesh.n_tets + 1)})
    with pytest.raises(MeshError, match="one row per node"):
        write_msh(path, mesh, node_data={"v": np.zeros((mesh.n_nodes, 3, 2))})
    with pytest.raises(MeshError, match="MSH version"):
        write_msh(path, mesh, version="3.0")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.msh"]


def test_write_is_atomic_on_failure(tmp_path, mesh, monkeypatch):
    path = tmp_path / "a.msh"
    write_msh(path, mesh)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_msh(path, mesh, binary=False)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.msh"]


# ---------------------------------------------------------------------------------------
# other writers' files
# ---------------------------------------------------------------------------------------
def test_handwritten_v22_ascii_with_gaps_and_other_elements(tmp_path):
    """Non-contiguous node ids, unsorted elements, points/lines/quads, 3 tags, physical 0."""
    text = """$MeshFormat
2.2 0 8
$EndMeshFormat
$PhysicalNames
1
3 7 "brain"
$EndPhysicalNames
$Nodes
5
10 0 0 0
20 1 0 0
30 0 1 0
40 0 0 1
55 1 1 1
$EndNodes
$Elements
7
100 15 2 0 1 10
7 4 2 7 7 10 20 30 40
5 2 2 1007 1 10 30 20
6 1 2 0 3 10 20
3 4 3 0 9 2 20 30 40 55
9 3 2 0 1 10 20 55 30
4 2 2 1008 8 20 30 40
$EndElements
$NodeData
1
"pot"
1
0.0
3
0
1
2
55 2.5
10 -1
$EndNodeData
$ElementData
1
"s"
1
0.0
3
0
1
3
7 70
5 50
100 1e3
$EndElementData
"""
    p = tmp_path / "hand.msh"
    p.write_text(text)
    m, f = read_msh(p)
    np.testing.assert_array_equal(m.nodes, [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
    # elements in id order: tet 3 then tet 7; tri 4 then tri 5
    np.testing.assert_array_equal(m.tets, [[1, 2, 3, 4], [0, 1, 2, 3]])
    np.testing.assert_array_equal(m.tet_tags, [9, 7])  # physical 0 -> elementary tag 9
    np.testing.assert_array_equal(m.tris, [[1, 2, 3], [0, 2, 1]])
    np.testing.assert_array_equal(m.tri_tags, [1008, 1007])
    np.testing.assert_array_equal(f["node"]["pot"], [-1, np.nan, np.nan, np.nan, 2.5])
    np.testing.assert_array_equal(f["element"]["s"], [np.nan, 70])
    np.testing.assert_array_equal(f["tri_element"]["s"], [np.nan, 50])


def test_handwritten_v41_ascii_entities(tmp_path):
    """Physical tag from $Entities; an entity without physical group keeps its entity tag;
    a parametric node block; a point entity and a line element."""
    text = """$MeshFormat
4.1 0 8
$EndMeshFormat
$Entities
1 0 1 2
1 0 0 0 0
1 0 0 0 1 1 1 1 1003 0
1 0 0 0 1 1 1 1 3 0
2 0 0 0 1 1 1 0 0
$EndEntities
$Nodes
3 6 1 6
0 1 0 1
1
0 0 0
2 1 1 2
2
3
1 0 0 0.5 0.5
0 1 0 0.25 0.25
3 2 0 3
4
5
6
0 0 1
1 1 1
2 2 2
$EndNodes
$Elements
4 4 1 4
3 2 4 1
4 1 2 3 4
3 1 4 1
3 2 3 5 4
2 1 2 1
1 1 3 2
1 9 1 1
2 1 2
$EndElements
"""
    p = tmp_path / "hand41.msh"
    p.write_text(text)
    m, _ = read_msh(p)
    assert m.n_nodes == 6
    np.testing.assert_array_equal(m.nodes[:3], [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(m.tets, [[1, 2, 4, 3], [0, 1, 2, 3]])  # sorted by element id 3, 4
    np.testing.assert_array_equal(m.tet_tags, [3, 2])  # entity 1 -> physical 3; entity 2 has none
    np.testing.assert_array_equal(m.tris, [[0, 2, 1]])
    np.testing.assert_array_equal(m.tri_tags, [1003])


def _binary22_per_element_blocks(mesh: Mesh, e: str = "<") -> bytes:
    """MSH 2.2 binary as Gmsh writes it: one block header per element, plus points/lines."""
    out = [b"$MeshFormat\n2.2 1 8\n", struct.pack(e + "i", 1), b"\n$EndMeshFormat\n"]
    n = mesh.n_nodes
    rec = np.empty(n, [("id", e + "i4"), ("xyz", e + "f8", 3)])
    rec["id"] = np.arange(1, n + 1)
    rec["xyz"] = mesh.nodes
    out += [f"$Nodes\n{n}\n".encode(), rec.tobytes(), b"\n$EndNodes\n"]
    words = []
    eid = 1
    words += [[15, 1, 2, eid, 1, 1, 1]]
    eid += 1
    words += [[1, 1, 2, eid, 0, 5, 1, 2]]
    eid += 1
    for conn, tags, etype in ((mesh.tris, mesh.tri_tags, 2), (mesh.tets, mesh.tet_tags, 4)):
        for c, t in zip(conn.tolist(), tags.tolist()):
            words.append([etype, 1, 2, eid, t, t] + [v + 1 for v in c])
            eid += 1
    flat = np.concatenate([np.array(w, np.int32) for w in words]).astype(e + "i4")
    out += [f"$Elements\n{eid - 1}\n".encode(), flat.tobytes(), b"\n$EndElements\n"]
    return b"".join(out)


@pytest.mark.parametrize("endian", ["<", ">"], ids=["little", "big"])
def test_binary22_per_element_blocks(tmp_path, mesh, endian):
    p = tmp_path / "gmsh_style.msh"
    p.write_bytes(_binary22_per_element_blocks(mesh, endian))
    back, _ = read_msh(p)
    assert_same_mesh(mesh, back)


@pytest.mark.parametrize("version", ["2.2", "4.1"])
def test_ascii_with_crlf_line_ends(tmp_path, mesh, fields, version):
    node, elem = fields
    p = tmp_path / "crlf.msh"
    write_msh(p, mesh, node, elem, version=version, binary=False)
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    back, f = read_msh(p)
    assert_same_mesh(mesh, back)
    np.testing.assert_array_equal(f["node"]["two"], node["two"])
    np.testing.assert_array_equal(f["element"]["E"], elem["E"])


# ---------------------------------------------------------------------------------------
# reference files
# ---------------------------------------------------------------------------------------
def _volume_per_tag(m: Mesh) -> dict:
    return {int(t): float(m.volumes_mm3[m.tet_tags == t].sum()) for t in np.unique(m.tet_tags)}


def test_reference_sphere_v22_and_v41_agree():
    a, fa = read_mesh(_need(SPHERE22))
    b, fb = read_mesh(_need(SPHERE41))
    assert a.n_nodes == b.n_nodes == 4556
    assert set(np.unique(a.tet_tags)) == {3, 4, 5}
    assert set(np.unique(a.tri_tags)) == {1003, 1004, 1005}
    np.testing.assert_array_equal(np.sort(a.nodes, axis=0), np.sort(b.nodes, axis=0))
    for x, y in ((a.tet_tags, b.tet_tags), (a.tri_tags, b.tri_tags)):
        ux, cx = np.unique(x, return_counts=True)
        uy, cy = np.unique(y, return_counts=True)
        np.testing.assert_array_equal(ux, uy)
        np.testing.assert_array_equal(cx, cy)
    va, vb = _volume_per_tag(a), _volume_per_tag(b)
    assert va.keys() == vb.keys()
    for t in va:
        assert va[t] == pytest.approx(vb[t], rel=1e-12)
    # shells: 4/3 pi (r_out^3 - r_in^3) within the faceting error of a coarse mesh
    r = {3: (0, 85), 4: (85, 90), 5: (90, 95)}
    for t, (r0, r1) in r.items():
        assert va[t] == pytest.approx(4 / 3 * np.pi * (r1**3 - r0**3), rel=0.03)
    # surface tags sit on their radius
    for t, rad in ((1003, 85), (1004, 90), (1005, 95)):
        rr = np.linalg.norm(a.nodes[a.tris[a.tri_tags == t]], axis=-1)
        np.testing.assert_allclose(rr, rad, rtol=1e-6)
    assert fa == {"node": {}, "element": {}, "tri_element": {}}
    # SimNIBS meshes are positively oriented, connected, and pass the checks unchanged
    assert (a.signed_volumes_mm3 > 0).all()
    assert check_mesh(a, known_tags=[3, 4, 5]) is a


def _meshio_by_type(m):
    out = {}
    for i, c in enumerate(m.cells):
        tags = m.cell_data["gmsh:physical"][i]
        d, t = out.get(c.type, ([], []))
        d.append(c.data)
        t.append(tags)
        out[c.type] = (d, t)
    return {k: (np.concatenate(d), np.concatenate(t)) for k, (d, t) in out.items()}


def _rows_sorted(conn, tags):
    key = np.column_stack([np.sort(conn, axis=1), tags])
    return key[np.lexsort(key.T[::-1])]


@pytest.mark.parametrize("which", ["v22", "v41"])
def test_reader_matches_meshio_on_reference_files(which):
    meshio = pytest.importorskip("meshio")
    path = _need(SPHERE22 if which == "v22" else SPHERE41)
    ours, _ = read_msh(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = meshio.read(path)
    # meshio keeps the file's node order, stimsim sorts nodes by id (differs in MSH 4.1
    # files with nodes in entity blocks): match points by their coordinates
    oa, ob = np.lexsort(ours.nodes.T), np.lexsort(ref.points.T)
    np.testing.assert_array_equal(ours.nodes[oa], ref.points[ob])
    to_ours = np.empty(len(ob), np.int64)
    to_ours[ob] = oa
    if which == "v22":
        np.testing.assert_array_equal(ours.nodes, ref.points)
    by = _meshio_by_type(ref)
    for kind, conn, tags in (("tetra", ours.tets, ours.tet_tags), ("triangle", ours.tris, ours.tri_tags)):
        rc, rt = by[kind]
        np.testing.assert_array_equal(_rows_sorted(conn, tags), _rows_sorted(to_ours[rc], rt))
        if which == "v22":  # same (file) order
            np.testing.assert_array_equal(conn, rc)
            np.testing.assert_array_equal(tags, rt)


@pytest.mark.parametrize(
    "version,binary", [("2.2", True), ("2.2", False), ("4.1", True), ("4.1", False)], ids=str
)
def test_meshio_reads_our_files(tmp_path, mesh, fields, version, binary):
    meshio = pytest.importorskip("meshio")
    node, elem = fields
    path = tmp_path / "out.msh"
    # meshio 5.3.5 cannot read $ElementData of MSH 2.2 files (nschloe/meshio#1257),
    # not even its own; element data are checked with meshio on MSH 4.1 only
    write_msh(path, mesh, node, elem if version == "4.1" else None, version=version, binary=binary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = meshio.read(path)
    np.testing.assert_array_equal(ref.points, mesh.nodes)
    by = _meshio_by_type(ref)
    np.testing.assert_array_equal(_rows_sorted(*by["tetra"]), _rows_sorted(mesh.tets, mesh.tet_tags))
    np.testing.assert_array_equal(_rows_sorted(*by["triangle"]), _rows_sorted(mesh.tris, mesh.tri_tags))
    np.testing.assert_array_equal(ref.point_data["potential"], node["potential"])
    np.testing.assert_array_equal(ref.point_data["two"], node["two"])
    geo = np.concatenate(ref.cell_data["gmsh:geometrical"])
    phys = np.concatenate(ref.cell_data["gmsh:physical"])
    np.testing.assert_array_equal(geo, phys)
    if version == "4.1":
        # meshio orders cells by entity block; map back through the (unique) sorted rows
        e = np.concatenate([d for c, d in zip(ref.cells, ref.cell_data["E"]) if c.type == "tetra"])
        rc = np.concatenate([c.data for c in ref.cells if c.type == "tetra"])
        ko = np.lexsort(np.sort(rc, axis=1).T[::-1])
        km = np.lexsort(np.sort(mesh.tets, axis=1).T[::-1])
        np.testing.assert_array_equal(e[ko], elem["E"][km])


def _gmsh():
    try:
        import gmsh
    except Exception as exc:  # ImportError, OSError for missing GL/X libraries
        pytest.skip(f"gmsh module not importable headless: {exc}")
    return gmsh


@pytest.mark.parametrize("version,binary", [("2.2", True), ("4.1", False), ("4.1", True)], ids=str)
def test_gmsh_opens_our_files(tmp_path, mesh, fields, version, binary):
    gmsh = _gmsh()
    node, elem = fields
    path = tmp_path / "out.msh"
    write_msh(path, mesh, node, elem, version=version, binary=binary)
    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.open(str(path))
        tags, xyz, _ = gmsh.model.mesh.getNodes()
        order = np.argsort(tags)
        np.testing.assert_array_equal(xyz.reshape(-1, 3)[order], mesh.nodes)
        types, etags, enodes = gmsh.model.mesh.getElements()
        counts = dict(zip([int(t) for t in types], [len(e) for e in etags]))
        assert counts == {2: len(mesh.tris), 4: mesh.n_tets}
        groups = set(gmsh.model.getPhysicalGroups())
        expect = {(3, int(t)) for t in np.unique(mesh.tet_tags)} | {(2, int(t)) for t in np.unique(mesh.tri_tags)}
        assert groups == expect
        # elementary (entity) tag == physical tag
        for dim, tag in groups:
            assert list(gmsh.model.getEntitiesForPhysicalGroup(dim, tag)) == [tag]
        views = {gmsh.option.getString(f"View[{gmsh.view.getIndex(v)}].Name"): v for v in gmsh.view.getTags()}
        assert set(views) == {"potential", "two", "E", "magnE"}
        kind, dtags, data, _, ncomp = gmsh.view.getHomogeneousModelData(views["potential"], 0)
        assert kind == "NodeData" and ncomp == 1
        np.testing.assert_array_equal(data[np.argsort(dtags)], node["potential"])
        kind, dtags, data, _, ncomp = gmsh.view.getHomogeneousModelData(views["E"], 0)
        assert kind == "ElementData" and ncomp == 3
        vals = data.reshape(-1, 3)[np.argsort(dtags)]
        np.testing.assert_array_equal(vals[len(mesh.tris) :], elem["E"])
    finally:
        gmsh.finalize()


def test_reads_gmsh_written_views(tmp_path, mesh):
    """Gmsh's own $ElementData on tetrahedra only, v2.2 binary and v4.1 ASCII."""
    gmsh = _gmsh()
    src = tmp_path / "src.msh"
    write_msh(src, mesh)
    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.open(str(src))
        _, et, en = gmsh.model.mesh.getElements(3)
        ntags, xyz, _ = gmsh.model.mesh.getNodes()
        lookup = np.zeros(int(ntags.max()) + 1, np.int64)
        lookup[ntags] = np.arange(len(ntags))
        cx = xyz.reshape(-1, 3)[lookup[en[0].reshape(-1, 4)]].mean(1)[:, 0]  # centroid x
        v = gmsh.view.add("cx")
        gmsh.view.addHomogeneousModelData(v, 0, gmsh.model.getCurrent(), "ElementData", et[0], cx)
        for ver, binary in ((2.2, 1), (4.1, 0), (4.1, 1)):
            gmsh.option.setNumber("Mesh.MshFileVersion", ver)
            gmsh.option.setNumber("Mesh.Binary", binary)
            out = tmp_path / f"g{ver}_{binary}.msh"
            gmsh.view.write(v, str(out))
            back, f = read_msh(out)
            # Gmsh may renumber nodes on output: compare geometry, not indices
            assert back.n_tets == mesh.n_tets and len(back.tris) == len(mesh.tris)
            np.testing.assert_allclose(np.sort(back.nodes, axis=0), np.sort(mesh.nodes, axis=0), rtol=1e-15)
            assert _volume_per_tag(back) == pytest.approx(_volume_per_tag(mesh), rel=1e-12)
            np.testing.assert_allclose(f["element"]["cx"], back.centroids[:, 0], rtol=1e-12)
            assert "cx" not in f["tri_element"]
    finally:
        gmsh.finalize()


# ---------------------------------------------------------------------------------------
# errors on reading
# ---------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(MeshFileNotFoundError, match="not found") as ei:
        read_mesh(tmp_path / "nope.msh")
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, MeshError)
    with pytest.raises(FileNotFoundError):
        read_msh(tmp_path / "nope.msh")
    with pytest.raises(FileNotFoundError):
        read_mesh(tmp_path / "nope.vtu")


def test_unknown_extension(tmp_path):
    p = tmp_path / "head.stl"
    p.write_text("solid x")
    with pytest.raises(MeshError, match="unknown mesh file type"):
        read_mesh(p)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"hello world\n", "does not start with"),
        (b"$MeshFormat\n3.0 0 8\n$EndMeshFormat\n", "version 3.0"),
        (b"$MeshFormat\n2.2 0 8\n$EndMeshFormat\n$Nodes\n2\n1 0 0 0\n2 1 x 0\n$EndNodes\n", "non-numeric"),
        (b"$MeshFormat\n2.2 0 8\n$EndMeshFormat\n$Nodes\n3\n1 0 0 0\n2 1 0 0\n$EndNodes\n", "announces 3 nodes"),
        (b"$MeshFormat\n2.2 0 8\n$EndMeshFormat\n$Nodes\n1\n1 0 0 0\n", "no \\$EndNodes"),
        (
            b"$MeshFormat\n2.2 0 8\n$EndMeshFormat\n$Nodes\n1\n1 0 0 0\n$EndNodes\n"
            b"$Elements\n1\n1 4 2 1 1 1 2 3 4\n$EndElements\n",
            "node id 2",
        ),
        (
            b"$MeshFormat\n2.2 0 8\n$EndMeshFormat\n$Nodes\n1\n1 0 0 0\n$EndNodes\n"
            b"$Elements\n1\n1 4 2 1 1 1 2 3\n$EndElements\n",
            "type 4",
        ),
        (b"$MeshFormat\n2.2 1 8\n\x02\x00\x00\x00\n$EndMeshFormat\n", "endianness"),
    ],
)
def test_corrupt_files(tmp_path, content, match):
    p = tmp_path / "bad.msh"
    p.write_bytes(content)
    with pytest.raises(MeshError, match=match):
        read_mesh(p)


def test_corrupt_gzip_and_vtu(tmp_path, mesh):
    p = tmp_path / "bad.msh.gz"
    p.write_bytes(gzip.compress(b"$MeshFormat\n2.2 0 8\n$EndMeshFormat\n")[:-6])
    with pytest.raises(MeshError):
        read_mesh(p)
    v = tmp_path / "bad.vtu"
    v.write_text("<VTKFile><broken")
    with pytest.raises(MeshError, match="cannot read VTU"):
        read_mesh(v)


@pytest.mark.parametrize("version,binary", [("2.2", True), ("2.2", False), ("4.1", True), ("4.1", False)], ids=str)
def test_damaged_files_only_raise_mesh_error(tmp_path, version, binary):
    """Truncations, deletions and byte flips give MeshError (or a readable mesh), never a raw traceback."""
    m = box_mesh(2)
    src = tmp_path / "src.msh"
    nd, ed = {"v": np.arange(m.n_nodes, dtype=float)}, {"e": np.ones(m.n_tets)}
    write_msh(src, m, nd, ed, version=version, binary=binary)
    good = src.read_bytes()
    rng = np.random.default_rng(7)
    p = tmp_path / "bad.msh"
    for i in range(60):
        d = bytearray(good)
        if i % 3 == 0:
            d = d[: rng.integers(0, len(d))]
        elif i % 3 == 1:
            for _ in range(4):
                d[rng.integers(0, len(d))] = int(rng.integers(0, 256))
        else:
            j = int(rng.integers(0, len(d)))
            del d[j : j + int(rng.integers(1, 30))]
        p.write_bytes(bytes(d))
        try:
            read_mesh(p)
        except MeshError:
            pass


# ---------------------------------------------------------------------------------------
# check_mesh
# ---------------------------------------------------------------------------------------
def test_check_mesh_accepts_good_mesh(mesh):
    assert check_mesh(mesh, known_tags=[1, 2, 3]) is mesh


def _edit(m: Mesh, **kw) -> Mesh:
    d = dict(nodes=m.nodes, tets=m.tets, tet_tags=m.tet_tags, tris=m.tris, tri_tags=m.tri_tags)
    d.update(kw)
    return Mesh(**d)


def test_check_empty():
    with pytest.raises(MeshError, match="empty"):
        check_mesh(Mesh(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0)))


def test_check_non_finite(mesh):
    nodes = mesh.nodes.copy()
    nodes[5, 1] = np.nan
    with pytest.raises(MeshError, match=r"1 nodes have non-finite coordinates \(first: node #5\)"):
        check_mesh(_edit(mesh, nodes=nodes))


def test_check_index_out_of_range(mesh):
    tets = mesh.tets.copy()
    tets[3, 2] = mesh.n_nodes
    with pytest.raises(MeshError, match=r"1 tetrahedra refer to node indices outside .*first: #3"):
        check_mesh(_edit(mesh, tets=tets))
    tris = mesh.tris.copy()
    tris[0, 0] = -1
    with pytest.raises(MeshError, match="triangles refer to node indices"):
        check_mesh(_edit(mesh, tris=tris))


def test_check_degenerate(mesh):
    # an extra flat tetrahedron: three nodes of tet 0 plus a new node on their face
    t0 = mesh.tets[0]
    nodes = np.vstack([mesh.nodes, mesh.nodes[t0[:3]].mean(0)])
    tets = np.vstack([mesh.tets, [[t0[0], t0[1], t0[2], mesh.n_nodes]]])
    bad = Mesh(nodes, tets, np.r_[mesh.tet_tags, 1])
    with pytest.raises(MeshError, match=rf"1 of {mesh.n_tets + 1} tetrahedra are degenerate .*first: #{mesh.n_tets}"):
        check_mesh(bad)


def test_check_inverted_mix(mesh):
    tets = mesh.tets.copy()
    tets[[4, 9]] = tets[[4, 9]][:, [1, 0, 2, 3]]
    msg = rf"2 of {mesh.n_tets} tetrahedra are inverted \(first: #4\); re-orient or re-mesh"
    with pytest.raises(MeshError, match=msg):
        check_mesh(_edit(mesh, tets=tets))


def test_check_all_negative_is_flipped(mesh, caplog):
    flipped = _edit(mesh, tets=mesh.tets[:, [1, 0, 2, 3]])
    with caplog.at_level(logging.INFO, logger="stimsim"):
        fixed = check_mesh(flipped)
    assert (fixed.signed_volumes_mm3 > 0).all()
    np.testing.assert_allclose(fixed.volumes_mm3, mesh.volumes_mm3)
    assert "negatively oriented" in caplog.text
    with pytest.raises(MeshError, match="fix_orientation=True"):
        check_mesh(flipped, fix_orientation=False)


def test_check_unused_nodes_dropped(mesh, caplog):
    extra = np.vstack([mesh.nodes[:2], [[100.0, 100, 100]], mesh.nodes[2:]])
    remap = np.r_[0, 1, np.arange(3, mesh.n_nodes + 1)]
    m2 = _edit(mesh, nodes=extra, tets=remap[mesh.tets], tris=remap[mesh.tris])
    with caplog.at_level(logging.WARNING, logger="stimsim"):
        fixed = check_mesh(m2)
    assert "not used by any tetrahedron" in caplog.text
    assert_same_mesh(fixed, mesh)


def test_check_disconnected(mesh):
    shift = mesh.nodes + [100.0, 0, 0]
    small = mesh.tets[:5] + mesh.n_nodes
    used = np.unique(small)
    nodes = np.vstack([mesh.nodes, shift])
    keep = np.zeros(len(nodes), bool)
    keep[: mesh.n_nodes] = True
    keep[used] = True
    idx = np.cumsum(keep) - 1
    m2 = Mesh(nodes[keep], idx[np.vstack([mesh.tets, small])], np.r_[mesh.tet_tags, [1] * 5])
    with pytest.raises(MeshError, match=rf"2 disconnected pieces \(tetrahedra per piece: {mesh.n_tets}, 5\)"):
        check_mesh(m2)


def test_check_unknown_tags(mesh):
    m2 = _edit(mesh, tet_tags=np.where(np.arange(mesh.n_tets) < 3, 7, mesh.tet_tags))
    with pytest.raises(MeshError, match=r"tissue tags \[7\] .*give conductivities for them"):
        check_mesh(m2, known_tags=[1, 2])


# ---------------------------------------------------------------------------------------
# mesh_quality
# ---------------------------------------------------------------------------------------
def test_mesh_quality_regular_tet():
    s = np.sqrt(2.0)
    nodes = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    tets = np.array([[0, 1, 2, 3]])
    m = Mesh(nodes, tets if Mesh(nodes, tets, [1]).signed_volumes_mm3[0] > 0 else tets[:, [1, 0, 2, 3]], [4])
    q = mesh_quality(m)
    assert q["n_nodes"] == 4 and q["n_tets"] == 1
    assert q["edge_length_mm"]["min"] == pytest.approx(2 * s)
    assert q["radius_ratio"]["min"] == pytest.approx(1.0)
    assert q["min_dihedral_deg"] == pytest.approx(np.degrees(np.arccos(1 / 3)))
    assert q["volume_mm3_per_tag"] == {4: pytest.approx(8 / 3)}


def test_mesh_quality_box(mesh):
    q = mesh_quality(mesh)
    assert q["volume_mm3"] == pytest.approx(10.0**3)
    assert q["volume_mm3_per_tag"][1] == pytest.approx(500.0)
    assert q["edge_length_mm"]["min"] == pytest.approx(2.5)
    assert q["edge_length_mm"]["max"] == pytest.approx(2.5 * np.sqrt(3))
    assert 0 < q["radius_ratio"]["min"] < 1
    assert 0 < q["min_dihedral_deg"] < q["max_dihedral_deg"] < 180
