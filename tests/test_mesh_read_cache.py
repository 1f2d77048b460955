"""The parsed copy of a head's mesh file (stimsim.mesh.read_cache): the same mesh as parsing, and a
damaged, stale or unwritable copy never changes a run's result."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stimsim.head_model import read_head, resolve_head, sha256_file
from stimsim.mesh import read_mesh
from stimsim.mesh import read_cache
from stimsim.protocol import validate_protocol


@pytest.fixture
def head(tmp_path, monkeypatch):
    """The embedded sphere copied to a protocol's folder; every file size gets a copy (the sphere
    is smaller than MIN_BYTES); a fresh cache folder."""
    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(read_cache, "MIN_BYTES", 0)
    path = tmp_path / "head.msh.gz"
    shutil.copy(resolve_head("sphere", None), path)
    protocol = validate_protocol({"kind": "tdcs", "head": "head.msh.gz", "electrodes": [
        {"name": "a", "position": [0, 0, 95], "current_mA": 1, "shape": "disc", "diameter_mm": 20},
        {"name": "b", "position": [95, 0, 0], "current_mA": -1, "shape": "disc", "diameter_mm": 20}]})
    return path, protocol


def _same(a, b):
    for k in ("nodes", "tets", "tet_tags", "tris", "tri_tags"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k


def test_second_read_comes_from_the_copy_and_equals_the_parse(head):
    path, protocol = head
    parsed, _ = read_mesh(path)
    m1, inputs, _ = read_head(protocol, path.parent)
    copy = read_cache.cached_copy(sha256_file(path))
    assert copy.exists() and inputs["head_sha256"] == sha256_file(path)
    _same(m1, parsed)
    mesh, from_copy = read_cache.read_mesh_cached(path, inputs["head_sha256"])
    assert from_copy
    _same(mesh, parsed)
    # the exterior surface comes with the copy (not sorted out again) and is the parsed mesh's
    assert "_boundary" in mesh.__dict__
    assert np.array_equal(mesh.boundary_faces, parsed.boundary_faces)
    assert np.array_equal(mesh.boundary_face_tets, parsed.boundary_face_tets)


def test_a_stored_boundary_that_does_not_fit_is_parsed_again(head):
    """A copy whose stored exterior surface points outside its mesh is not used."""
    path, protocol = head
    read_head(protocol, path.parent)
    copy = read_cache.cached_copy(sha256_file(path))
    with np.load(copy) as z:
        arrays = dict(z)
    arrays["boundary_faces"] = arrays["boundary_faces"] + len(arrays["nodes"])
    with open(copy, "wb") as f:
        np.savez(f, **arrays)
    mesh, from_copy = read_cache.read_mesh_cached(path, sha256_file(path))
    assert not from_copy
    _same(mesh, read_mesh(path)[0])


def test_read_head_uses_the_copy(head, monkeypatch):
    """The second read_head does not parse: the file's parser is not called."""
    path, protocol = head
    first, _, _ = read_head(protocol, path.parent)
    import stimsim.mesh as mesh_module

    def no_parse(*a, **k):
        raise AssertionError("parsed again")

    monkeypatch.setattr(mesh_module, "read_mesh", no_parse)
    second, _, _ = read_head(protocol, path.parent)
    _same(first, second)


def test_no_home_folder(head, monkeypatch):
    """No STIMSIM_CACHE and no home folder: the file is parsed, nothing fails."""
    path, protocol = head
    monkeypatch.delenv("STIMSIM_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", "")

    def nowhere():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(nowhere))
    parsed, _ = read_mesh(path)
    mesh, _, _ = read_head(protocol, path.parent)
    _same(mesh, parsed)


def test_read_only_copy_is_used(head, monkeypatch):
    """A copy whose time stamp cannot be touched (a read-only cache) is still used."""
    path, protocol = head
    read_head(protocol, path.parent)
    import os

    def refuse(*a, **k):
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "utime", refuse)
    mesh, from_copy = read_cache.read_mesh_cached(path, sha256_file(path))
    assert from_copy


def test_a_file_rewritten_while_parsing_is_not_stored(head, monkeypatch):
    """The hash is taken, then the file changes before it is parsed: no copy under the old hash."""
    path, protocol = head
    old = sha256_file(path)
    from stimsim.mesh import Mesh, write_mesh

    m, _ = read_mesh(path)
    write_mesh(path, Mesh(m.nodes * 1.01, m.tets, m.tet_tags))  # the file is now another one
    mesh, from_copy = read_cache.read_mesh_cached(path, old)
    assert not from_copy and np.allclose(mesh.nodes, m.nodes * 1.01)
    assert not read_cache.cached_copy(old).exists()


def test_an_edited_file_is_parsed_again(head):
    path, protocol = head
    read_head(protocol, path.parent)
    # another file at the same path: another hash, so the old copy is never used
    from stimsim.mesh import Mesh, write_mesh

    m, _ = read_mesh(path)
    write_mesh(path, Mesh(m.nodes * 1.01, m.tets, m.tet_tags))
    m2, _, _ = read_head(protocol, path.parent)
    assert np.allclose(m2.nodes, m.nodes * 1.01)


@pytest.mark.parametrize("damage", ["garbage", "bad-indices"])
def test_a_damaged_copy_is_parsed_again(head, damage):
    path, protocol = head
    parsed, _ = read_mesh(path)
    read_head(protocol, path.parent)
    copy = read_cache.cached_copy(sha256_file(path))
    if damage == "garbage":
        copy.write_bytes(b"not a zip file")
    else:  # loads, but its tetrahedra point past the nodes: the mesh checks refuse it
        np.savez(copy, nodes=parsed.nodes[:10], tets=parsed.tets, tet_tags=parsed.tet_tags, tris=parsed.tris,
                 tri_tags=parsed.tri_tags)
    mesh, _, _ = read_head(protocol, path.parent)
    _same(mesh, parsed)


def test_unwritable_cache_still_reads(head, tmp_path, monkeypatch):
    path, protocol = head
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("STIMSIM_CACHE", str(blocker))  # cache_dir/meshes cannot be created
    parsed, _ = read_mesh(path)
    mesh, _, _ = read_head(protocol, path.parent)
    _same(mesh, parsed)


def test_a_file_with_indices_out_of_range_gets_the_mesh_check_error(tmp_path, monkeypatch):
    """A mesh file whose tetrahedra point past its nodes: the run reports the mesh check's error (the
    exterior surface stored with a copy is not looked for first), and no copy is stored."""
    import meshio

    from stimsim.errors import MeshError

    monkeypatch.setenv("STIMSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(read_cache, "MIN_BYTES", 0)
    m, _ = read_mesh(resolve_head("sphere", None))
    tets = m.tets.copy()
    tets[5, 3] = m.n_nodes + 10
    path = tmp_path / "bad.vtu"
    meshio.write(str(path), meshio.Mesh(m.nodes, [("tetra", tets)], cell_data={"gmsh:physical": [m.tet_tags]}))
    protocol = validate_protocol({"kind": "tdcs", "head": "bad.vtu", "electrodes": [
        {"name": "a", "position": [0, 0, 95], "current_mA": 1, "shape": "disc", "diameter_mm": 20},
        {"name": "b", "position": [95, 0, 0], "current_mA": -1, "shape": "disc", "diameter_mm": 20}]})
    with pytest.raises(MeshError, match="outside"):
        read_head(protocol, tmp_path)
    assert not read_cache.cached_copy(sha256_file(path)).exists()
