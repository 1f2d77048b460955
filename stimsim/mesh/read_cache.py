"""A parsed copy of a head's mesh file in the cache folder, so that the next run on the same head
reads arrays instead of parsing Gmsh again.

Users run many montages on one head; parsing the shipped Colin27 (a 6.8 MB gzipped MSH 2.2 file) takes
0.15-0.3 s each time, reading the arrays back ~0.02 s.  The copy also holds the exterior surface
(:attr:`Mesh.boundary_faces` and their tetrahedra): finding it sorts all 4 x 588k faces of Colin27,
~0.2 s that every electrode or coil placement would otherwise pay again.  The copy is keyed by the
file's SHA-256 (which a run computes anyway for its summary) and the parser's :data:`FORMAT`, written atomically
(``meshes/`` in :func:`stimsim.cache.cache_dir`), and the folder is pruned to :data:`MAX_BYTES`.  A copy
that does not load is parsed again; a read-only or missing cache folder only costs the speed.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..cache import cache_dir, prune, sha256_file
from .model import Mesh

FORMAT = 2
#: files smaller than this parse about as fast as a copy loads
MIN_BYTES = 1 << 20
MAX_BYTES = 1 << 30
_KEYS = ("nodes", "tets", "tet_tags", "tris", "tri_tags")
_BOUNDARY_KEYS = ("boundary_faces", "boundary_face_tets")


def cached_copy(sha256: str) -> Path:
    return cache_dir("meshes") / f"{sha256}-f{FORMAT}.npz"


def read_mesh_cached(path: Path, sha256: str) -> tuple[Mesh, bool]:
    """``(mesh, from_cache)`` of the mesh file ``path`` whose SHA-256 is ``sha256``."""
    from . import read_mesh

    path = Path(path)
    if path.stat().st_size < MIN_BYTES:
        return read_mesh(path)[0], False
    try:
        copy = cached_copy(sha256)
    except (RuntimeError, OSError, KeyError):  # no home folder and no STIMSIM_CACHE
        return read_mesh(path)[0], False
    try:
        with np.load(copy, allow_pickle=False) as z:
            mesh = Mesh(**{k: z[k] for k in _KEYS})
            mesh._adopt_boundary(*(z[k] for k in _BOUNDARY_KEYS))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # no copy yet, or one that does not load: parse the file
    else:
        try:
            os.utime(copy)  # least recently used goes first when pruning
        except OSError:  # a read-only cache: the copy is still good
            pass
        return mesh, True
    mesh = read_mesh(path)[0]
    # stored only if the file is still what was hashed (not rewritten between hashing and parsing),
    # and only a mesh whose node indices are in range: the exterior surface stored with the copy is
    # found before check_mesh has looked at the file, which then reports what is wrong with it
    if sha256_file(path) == sha256 and _indices_in_range(mesh):
        store(copy, mesh)
    return mesh, False


def _indices_in_range(mesh: Mesh) -> bool:
    n = mesh.n_nodes
    return all(not a.size or (int(a.min()) >= 0 and int(a.max()) < n) for a in (mesh.tets, mesh.tris))


def store(copy: Path, mesh: Mesh) -> None:
    from ..outputs import atomic_file

    try:
        with atomic_file(copy, suffix=".npz") as tmp:
            np.savez(tmp, **{k: getattr(mesh, k) for k in _KEYS + _BOUNDARY_KEYS})
        prune(copy.parent, MAX_BYTES, "*.npz")
    except OSError:  # a read-only or full cache: the next run parses again
        pass


def forget(sha256: str) -> None:
    """Remove the copy (one that loaded but failed the mesh checks)."""
    try:
        cached_copy(sha256).unlink()
    except OSError:
        pass
