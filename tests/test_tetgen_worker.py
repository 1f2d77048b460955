"""TetGen in a child process (stimsim.head.meshers.tetgen_worker): the same tetrahedra as in this
process, and a crash on crossing surfaces is a refusal the caller survives."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_heads import simnibs_balls

pytest.importorskip("tetgen")

from stimsim.head.meshers import tetgen_worker  # noqa: E402

SWITCHES = "pq1.5a50Q"


def _sphere(radius, centre=(0.0, 0.0, 0.0), subdivisions=3):
    """A closed triangulated sphere: an icosahedron, its faces split in four ``subdivisions`` times."""
    p = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0], [0, -1, p], [0, 1, p], [0, -1, -p], [0, 1, -p],
                  [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]], float)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                  [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                  [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    for _ in range(subdivisions):
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, inv = np.unique(edges, axis=0, return_inverse=True)
        mid = len(v) + inv.reshape(3, -1).T  # midpoints of edges 01, 12, 20
        v = np.vstack([v, v[uniq].mean(1)])
        a, b, c = f.T
        ab, bc, ca = mid.T
        f = np.concatenate([np.c_[a, ab, ca], np.c_[b, bc, ab], np.c_[c, ca, bc], np.c_[ab, bc, ca]])
    v = v / np.linalg.norm(v, axis=1, keepdims=True) * radius + centre
    return v, f.astype(np.int32)


def _two_overlapping():
    (va, fa), (vb, fb) = _sphere(10.0), _sphere(10.0, (5.0, 0.0, 0.0))
    return np.vstack([va, vb]), np.vstack([fa, fb + len(va)])


def test_child_gives_the_same_tetrahedra_as_this_process():
    verts, faces = _sphere(10.0)
    stats = {}
    nodes, tets = tetgen_worker.tetrahedralize(verts, faces, SWITCHES, stats=stats)
    ref_nodes, ref_tets = tetgen_worker._in_process(verts, faces, SWITCHES, False)
    assert stats["isolated"] and stats["peak_mib"] > 0
    assert tets.dtype == np.int64 and tets.shape[1] == 4 and len(tets) > 100
    np.testing.assert_array_equal(nodes, ref_nodes)
    np.testing.assert_array_equal(tets, ref_tets)
    # the input points first, as the mesher relies on (-Y keeps the surfaces)
    np.testing.assert_array_equal(nodes[:len(verts)], verts)


def test_crossing_surfaces_are_refused_and_this_process_goes_on(tmp_path, monkeypatch):
    """Two overlapping spheres: TetGen aborts its process (glibc: 'malloc(): invalid size') or refuses
    them; either way a RuntimeError here, and the temporary files are gone."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    verts, faces = _two_overlapping()
    with pytest.raises(RuntimeError) as refused:
        tetgen_worker.tetrahedralize(verts, faces, SWITCHES)
    assert "intersect" in str(refused.value) or isinstance(refused.value, tetgen_worker.TetGenCrashed)
    assert list(tmp_path.iterdir()) == []
    nodes, tets = tetgen_worker.tetrahedralize(*_sphere(8.0), SWITCHES)  # still here, and TetGen still works
    assert len(tets) > 50


_STARTED = "open('started', 'w').close(); "


@pytest.mark.parametrize("program, error, words", [
    ("import os; os.abort()", tetgen_worker.TetGenCrashed, "SIGABRT"),
    ("import os, signal, sys; sys.stderr.write('free(): invalid next size (normal)\\n'); sys.stderr.flush(); "
     "os.kill(os.getpid(), signal.SIGSEGV)", tetgen_worker.TetGenCrashed, "SIGSEGV: free(): invalid next size"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", MemoryError, "SIGKILL"),
    ("import sys; open('error.txt', 'w').write('Internal TetGen error within recoversubfaces'); sys.exit(83)",
     RuntimeError, "recoversubfaces"),
    ("import sys; open('error.txt', 'w').write('cannot allocate'); sys.exit(84)", MemoryError, "cannot allocate"),
    ("import sys; open('error.txt', 'w').write('OSError: [Errno 28] No space left on device'); sys.exit(86)",
     tetgen_worker.TetGenChildError, "No space left on device"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", tetgen_worker.TetGenChildError, "SIGTERM"),
    ("pass", tetgen_worker.TetGenChildError, "exit code 0"),
    ("raise ValueError('odd')", tetgen_worker.TetGenChildError, "exit code 1: ValueError: odd"),
])
def test_how_the_child_ends_is_told_apart(monkeypatch, program, error, words):
    """TetGen's refusal and a crash on the surfaces (fatal signals) are refusals, retried by the mesher;
    out of memory or SIGKILL is a MemoryError; anything else (SIGTERM, a full disk, no answer) is an
    error of its own, not a refusal."""
    monkeypatch.setattr(tetgen_worker, "_CHILD", _STARTED + program)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as exc:
        tetgen_worker.tetrahedralize(*_sphere(8.0), SWITCHES)
    if error is RuntimeError:
        assert not isinstance(exc.value, tetgen_worker.TetGenCrashed)
    if error is tetgen_worker.TetGenChildError:
        assert not isinstance(exc.value, RuntimeError)  # (so the mesher does not retry it)


def test_without_a_child_tetgen_runs_here(monkeypatch):
    verts, faces = _sphere(8.0)
    ref = tetgen_worker._in_process(verts, faces, SWITCHES, False)

    def no_processes(*args, **kwargs):
        raise OSError("processes are not allowed here")

    def no_temporary_directory(*args, **kwargs):
        raise PermissionError("read-only")

    no_tetgen = _STARTED + "import sys; sys.stderr.write('ModuleNotFoundError: tetgen'); sys.exit(85)"  # another Python
    not_python = "pass"  # what a frozen application's executable does with -c: not our program
    for patch in (("sys.executable", ""), ("sys.frozen", True), ("subprocess.run", no_processes),
                  ("tempfile.mkdtemp", no_temporary_directory), (tetgen_worker, "_CHILD", no_tetgen),
                  (tetgen_worker, "_CHILD", not_python)):
        with monkeypatch.context() as m:
            m.setattr(*patch, raising=False)
            m.setattr(tetgen_worker, "_NO_CHILD", [])
            stats = {}
            nodes, tets = tetgen_worker.tetrahedralize(verts, faces, SWITCHES, stats=stats)
            assert stats["isolated"] is False, patch
            np.testing.assert_array_equal(tets, ref[1])
            if patch[-1] == not_python:  # remembered: the next call does not try again
                m.setattr(tetgen_worker, "_CHILD", "import os; os.abort()")
                tetgen_worker.tetrahedralize(verts, faces, SWITCHES, stats=stats)


def test_a_crash_on_the_first_surfaces_is_handled_as_crossing_surfaces(monkeypatch):
    """The mesher treats TetGen crashing on its surfaces as it treats them crossing: it meshes the
    surfaces as they were before their short edges merged, and the mesh is whole."""
    pytest.importorskip("skimage")
    from stimsim.head.meshers import make_head_mesh

    vol = simnibs_balls()
    real, calls = tetgen_worker.tetrahedralize, []

    def crash_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise tetgen_worker.TetGenCrashed("TetGen crashed on these surfaces (SIGABRT)")
        return real(*args, **kwargs)

    monkeypatch.setattr(tetgen_worker, "tetrahedralize", crash_first)
    mesh, info = make_head_mesh(vol, np.eye(4), "simnibs", method="surface", element_size_mm=4.0, progress=False,
                                cache=False, return_info=True)
    assert len(calls) == 2 and info.mesher.get("merges_undone") and "tetgen_retries" not in info.mesher
    assert set(np.unique(mesh.tet_tags)) == {1, 2, 3, 4, 5}
    assert info.mesher["tetgen_peak_mib"] > 0


def test_the_childs_peak_is_its_own():
    """stats['peak_mib'] is this process's memory plus the child's own peak: a child's ru_maxrss on
    Linux also holds its parent's memory at the fork, which counted the parent twice (Colin27: a
    584 MiB child for TetGen's 319)."""
    if not __import__("os").path.exists("/proc/self/status"):
        pytest.skip("needs /proc (Linux) to read resident memory")
    ballast = np.ones(400 * 2 ** 20 // 8)  # 400 MiB resident here
    stats = {}
    tetgen_worker.tetrahedralize(*_sphere(8.0), SWITCHES, stats=stats)
    here = tetgen_worker._rss_mib()
    assert here > 400
    child = stats["peak_mib"] - here
    assert 5 < child < 250, (stats, here)  # python + numpy + tetgen on a small sphere: ~30-60 MiB
    del ballast


def test_a_failed_child_is_one_error_not_retried(monkeypatch):
    """TetGen's process failing for another reason than the surfaces (a full disk, SIGTERM) stops the
    mesher with one line at once: no fallback surfaces, no thicker layers."""
    from stimsim.errors import MeshError
    from stimsim.head.meshers import make_head_mesh, surface

    calls = []

    def failed(*args, **kwargs):
        calls.append(1)
        raise tetgen_worker.TetGenChildError("TetGen's process failed (exit code 86: OSError: [Errno 28] No space)")

    monkeypatch.setattr(tetgen_worker, "tetrahedralize", failed)
    vol = simnibs_balls()
    with pytest.raises(MeshError, match="No space") as exc:
        make_head_mesh(vol, np.eye(4), "simnibs", method="surface", element_size_mm=4.0, progress=False, cache=False)
    assert not isinstance(exc.value, surface.TetGenFailed) and len(calls) == 1


def test_a_child_killed_at_start_is_not_taken_for_another_python(monkeypatch):
    """A child killed before it got going (the out-of-memory killer) is out of memory, and the next
    call still runs TetGen in a child: only an executable that exits without running the program
    sends TetGen into this process for good."""
    monkeypatch.setattr(tetgen_worker, "_NO_CHILD", [])
    monkeypatch.setattr(tetgen_worker, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(MemoryError):
        tetgen_worker.tetrahedralize(*_sphere(8.0), SWITCHES)
    assert tetgen_worker._NO_CHILD == []
