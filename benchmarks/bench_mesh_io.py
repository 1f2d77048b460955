"""Mesh I/O timings: stimsim readers/writers against meshio on a head-sized mesh.

Builds (once, cached in ``benchmarks/_cache/``) a 3-layer ball with radii 85/90/95 mm
meshed by Gmsh with ~2.85 mm elements (about 110k nodes, 640k tetrahedra; volume tags
3/4/5, surface tags 1003/1004/1005).  Without the ``gmsh`` module a structured
synthetic ball of similar size is used instead.

Usage::

    python benchmarks/bench_mesh_io.py [--size 2.85] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
import warnings
from pathlib import Path

import numpy as np

from stimsim.mesh import Mesh, read_msh, read_vtu, write_msh, write_vtu

CACHE = Path(__file__).resolve().parent / "_cache"
RADII = (85.0, 90.0, 95.0)


def gmsh_ball(h: float, out: Path) -> bool:
    """Mesh the 3-layer ball with Gmsh and write it (Gmsh's own writer) in four flavours."""
    try:
        import gmsh
    except Exception as exc:  # ImportError, or a missing shared library
        print(f"gmsh unavailable ({exc}); using a synthetic mesh")
        return False
    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.NumThreads", 2)
        gmsh.model.add("ball")
        occ = gmsh.model.occ
        balls = [occ.addSphere(0, 0, 0, r) for r in RADII]
        occ.fragment([(3, balls[-1])], [(3, b) for b in balls[:-1]])
        occ.synchronize()
        r = np.array(RADII)
        shells = 4 / 3 * math.pi * (r**3 - np.r_[0.0, r[:-1]] ** 3)
        for dim, tag in gmsh.model.getEntities(3):
            k = int(np.argmin(abs(shells - occ.getMass(dim, tag))))
            gmsh.model.addPhysicalGroup(3, [tag], 3 + k)
        for dim, tag in gmsh.model.getEntities(2):
            k = int(np.argmin(abs(4 * math.pi * r**2 - occ.getMass(dim, tag))))
            gmsh.model.addPhysicalGroup(2, [tag], 1003 + k)
        gmsh.option.setNumber("Mesh.MeshSizeMin", h)
        gmsh.option.setNumber("Mesh.MeshSizeMax", h)
        gmsh.option.setNumber("Mesh.Algorithm3D", 10)
        t = time.perf_counter()
        gmsh.model.mesh.generate(3)
        print(f"gmsh meshing: {time.perf_counter() - t:.1f} s")
        flavours = (
            (2.2, 0, "gmsh_v22_ascii"),
            (2.2, 1, "gmsh_v22_bin"),
            (4.1, 0, "gmsh_v41_ascii"),
            (4.1, 1, "gmsh_v41_bin"),
        )
        for ver, binary, name in flavours:
            gmsh.option.setNumber("Mesh.MshFileVersion", ver)
            gmsh.option.setNumber("Mesh.Binary", binary)
            gmsh.write(str(out / f"{name}.msh"))
    finally:
        gmsh.finalize()
    return True


def synthetic_ball(n: int = 60) -> Mesh:
    """Structured ball: cubes split into 6 tetrahedra, cubes kept inside r = 95 mm."""
    x = np.linspace(-95, 95, n + 1)
    g = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1).reshape(-1, 3)
    idx = np.arange((n + 1) ** 3).reshape(n + 1, n + 1, n + 1)
    lo, hi = slice(None, -1), slice(1, None)
    corners = [(lo, lo, lo), (hi, lo, lo), (hi, hi, lo), (lo, hi, lo)]
    corners += [(lo, lo, hi), (hi, lo, hi), (hi, hi, hi), (lo, hi, hi)]
    c = np.stack([idx[s] for s in corners], -1).reshape(-1, 8)
    split = np.array([[0, 1, 2, 6], [0, 2, 3, 6], [0, 3, 7, 6], [0, 7, 4, 6], [0, 4, 5, 6], [0, 5, 1, 6]])
    centre = g[c].mean(1)
    rad = np.linalg.norm(centre, axis=1)
    c = c[rad < 95]
    rad = rad[rad < 95]
    tets = c[:, split].reshape(-1, 4)
    tags = np.repeat(np.searchsorted(RADII, rad) + 3, 6)
    used, tets = np.unique(tets, return_inverse=True)
    tets = tets.reshape(-1, 4)
    nodes = g[used]
    p = nodes[tets]
    vol = np.einsum("ij,ij->i", p[:, 1] - p[:, 0], np.cross(p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]))
    tets[vol < 0] = tets[vol < 0][:, [0, 2, 1, 3]]
    m = Mesh(nodes, tets, tags)
    bf = m.boundary_faces
    return Mesh(nodes, tets, tags, bf, np.full(len(bf), 1005))


def best(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` calls (meshio's stray prints and warnings silenced)."""
    times = []
    for _ in range(repeat):
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=float, default=2.85, help="Gmsh element size in mm")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import meshio

    CACHE.mkdir(exist_ok=True)
    tag = f"h{args.size:g}"
    src = CACHE / tag
    src.mkdir(exist_ok=True)
    have_gmsh = (src / "gmsh_v22_bin.msh").exists() or gmsh_ball(args.size, src)
    if have_gmsh:
        mesh, _ = read_msh(src / "gmsh_v22_bin.msh")
    else:
        mesh = synthetic_ball()
    print(f"mesh: {mesh!r}")
    rng = np.random.default_rng(0)
    node_data = {"v": rng.standard_normal(mesh.n_nodes)}
    elem_data = {"E": rng.standard_normal((mesh.n_tets, 3))}
    mio = meshio.Mesh(
        mesh.nodes,
        [("triangle", mesh.tris), ("tetra", mesh.tets)],
        cell_data={
            "gmsh:physical": [mesh.tri_tags, mesh.tet_tags],
            "gmsh:geometrical": [mesh.tri_tags, mesh.tet_tags],
        },
    )
    node_tag = np.zeros(mesh.n_nodes, np.int64)
    node_tag[mesh.tets.ravel()] = np.repeat(mesh.tet_tags, 4)
    mio41 = meshio.Mesh(
        mio.points,
        mio.cells,
        cell_data=mio.cell_data,
        point_data={"gmsh:dim_tags": np.column_stack([np.full(mesh.n_nodes, 3), node_tag])},
    )
    mio_vtu = meshio.Mesh(mesh.nodes, [("tetra", mesh.tets)], cell_data={"tag": [mesh.tet_tags]})
    r = args.repeat
    rows = []

    def row(label, path, w_ours, w_mio, r_ours, r_mio):
        """Time the writers, then the readers on the file ``path`` (written by us)."""
        tw = best(w_ours, r)
        tm = best(w_mio, r) if w_mio else float("nan")
        tr = best(r_ours, r)
        trm = best(r_mio, r) if r_mio else float("nan")
        rows.append((label, path.stat().st_size / 1e6, tw, tm, tr, trm))

    out = CACHE / "out"
    out.mkdir(exist_ok=True)
    for ver, binary in (("2.2", False), ("2.2", True), ("4.1", False), ("4.1", True)):
        kind = "bin" if binary else "ascii"
        p = out / f"stimsim_v{ver}_{kind}.msh"
        pm = out / f"meshio_v{ver}_{kind}.msh"
        fmt = "gmsh22" if ver == "2.2" else "gmsh"
        row(
            f"MSH {ver} {'binary' if binary else 'ASCII'} (mesh only)",
            p,
            lambda: write_msh(p, mesh, version=ver, binary=binary),
            lambda: meshio.write(pm, mio if ver == "2.2" else mio41, file_format=fmt, binary=binary),
            lambda: read_msh(p),
            lambda: meshio.read(p),
        )
    for ver in ("2.2", "4.1"):
        p = out / f"stimsim_v{ver}_bin_fields.msh"
        # meshio 5.3.5 cannot read $ElementData from MSH 2.2 (nschloe/meshio#1257)
        row(
            f"MSH {ver} binary + node & element field",
            p,
            lambda: write_msh(p, mesh, node_data, elem_data, version=ver),
            None,
            lambda: read_msh(p),
            (lambda: meshio.read(p)) if ver == "4.1" else None,
        )
    p = out / "stimsim_v22_bin.msh.gz"
    row("MSH 2.2 binary, gzip level 1", p, lambda: write_msh(p, mesh), None, lambda: read_msh(p), None)
    p = out / "stimsim.vtu"
    pm = out / "meshio_zlib.vtu"
    row(
        "VTU tets (ours: raw; meshio: default zlib)",
        p,
        lambda: write_vtu(p, mesh),
        lambda: meshio.write(pm, mio_vtu, file_format="vtu"),
        lambda: read_vtu(p),
        lambda: meshio.read(pm),
    )
    if have_gmsh:
        for name in ("gmsh_v22_ascii", "gmsh_v22_bin", "gmsh_v41_ascii", "gmsh_v41_bin"):
            p = src / f"{name}.msh"
            rows.append(
                (f"read Gmsh-written {name[5:]}", p.stat().st_size / 1e6, float("nan"), float("nan"),
                 best(lambda: read_msh(p), r), best(lambda: meshio.read(p), r))  # fmt: skip
            )

    print(f"\nbest of {r}; times in seconds; 2 CPU cores\n")
    head = f"{'file':42s} {'MB':>6s} {'write':>7s} {'meshio':>7s} {'read':>7s} {'meshio':>7s}"
    print(head)
    print("-" * len(head))
    for label, size, tw, tm, tr, trm in rows:
        f = lambda v: "      -" if math.isnan(v) else f"{v:7.3f}"  # noqa: E731
        print(f"{label:42s} {size:6.1f} {f(tw)} {f(tm)} {f(tr)} {f(trm)}")


if __name__ == "__main__":
    main()
