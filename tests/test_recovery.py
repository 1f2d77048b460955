"""Superconvergent patch recovery (stimsim.fem.fields.recover_gradient_spr).

The numba kernel and the numpy implementation must give the same result (same patches,
weights, conditioning and fallback rules) and both must reproduce a field that is linear
within each tissue exactly, wherever no node of the element falls back to averaging.
"""

import numpy as np
import pytest

from stimsim.errors import SolverError
from stimsim.fem import fields, kernels
from stimsim.fem.assembly import P1Geometry
from stimsim.fem.fields import recover, recover_gradient_spr


@pytest.fixture(scope="module")
def sphere():
    from stimsim.mesh import read_mesh
    from stimsim.simulation import resolve_head

    mesh, _ = read_mesh(resolve_head("sphere"))  # 3 tissues (tags 3, 4, 5), 22.7k tets
    return mesh, P1Geometry.from_mesh(mesh)


def _fields(mesh, geometry):
    rng = np.random.default_rng(7)
    x = mesh.nodes
    potential = 1e-3 * x[:, 0] ** 2 + np.sin(x[:, 1] / 20) + 0.05 * x[:, 2] * (mesh.nodes[:, 0] > 10)
    return {
        "random": rng.standard_normal((mesh.n_tets, 3)),
        "efield": fields.element_efield(geometry, potential),
    }


def _rel_max(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("min_samples", [10, 30, 4])
@pytest.mark.parametrize("field", ["random", "efield"])
def test_spr_numba_matches_numpy(sphere, field, min_samples):
    """min_samples=30 sends most nodes of sphere3 to the averaging fallback; min_samples=4
    admits flat/degenerate patches, which the det(M)/prod(diag M) test must reject (48 nodes)."""
    pytest.importorskip("numba")
    mesh, g = sphere
    v = _fields(mesh, g)[field]
    args = (g, mesh.tet_tags, v, mesh.centroids, mesh.nodes)
    fast = recover_gradient_spr(*args, min_samples=min_samples, backend="numba")
    ref = recover_gradient_spr(*args, min_samples=min_samples, backend="numpy")
    assert fast.shape == ref.shape and np.all(np.isfinite(fast))
    # ill-conditioned (but accepted) patches amplify round-off when min_samples is tiny
    assert _rel_max(fast, ref) < (1e-10 if min_samples >= 10 else 1e-8)
    assert np.array_equal(recover_gradient_spr(*args, min_samples=min_samples), fast)  # auto -> numba


@pytest.mark.parametrize("ncomp", [1, 2, 3])
def test_spr_numba_any_tags_and_components(sphere, ncomp):
    """Tag values need not be small or contiguous, and the field may have any number of components."""
    pytest.importorskip("numba")
    mesh, g = sphere
    v = np.random.default_rng(3).standard_normal((mesh.n_tets, ncomp))
    relabel = np.select([mesh.tet_tags == 3, mesh.tet_tags == 4], [-7, 10 ** 9], 2).astype(np.int64)
    base = recover_gradient_spr(g, mesh.tet_tags, v, mesh.centroids, mesh.nodes, backend="numpy")
    for tags in (mesh.tet_tags, relabel, relabel.astype(np.float64)):
        for backend in ("numba", "numpy"):
            out = recover_gradient_spr(g, tags, v, mesh.centroids, mesh.nodes, backend=backend)
            assert out.shape == (mesh.n_tets, ncomp)
            assert _rel_max(out, base) < 1e-10, (tags.dtype, backend)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_spr_reproduces_a_linear_field_per_tissue(sphere, backend):
    """A field linear within each tissue (different in each) is recovered exactly on every
    element whose 4 nodes fit a patch, i.e. have >= min_samples elements of its tissue."""
    if backend == "numba":
        pytest.importorskip("numba")
    mesh, g = sphere
    rng = np.random.default_rng(11)
    c = mesh.centroids
    v = np.empty((mesh.n_tets, 3))
    for tag in np.unique(mesh.tet_tags):
        sel = mesh.tet_tags == tag
        grad, offset = rng.standard_normal((3, 3)), rng.standard_normal(3) * 50
        v[sel] = c[sel] @ grad.T + offset
    out = recover_gradient_spr(g, mesh.tet_tags, v, c, mesh.nodes, min_samples=10, backend=backend)
    for tag in np.unique(mesh.tet_tags):
        sel = np.flatnonzero(mesh.tet_tags == tag)
        count = np.bincount(mesh.tets[sel].ravel(), minlength=mesh.n_nodes)
        fit = np.all(count[mesh.tets[sel]] >= 10, axis=1)
        assert fit.mean() > 0.4, (tag, fit.mean())  # the check covers a good part of each tissue
        err = np.abs(out[sel[fit]] - v[sel[fit]]).max() / np.abs(v[sel]).max()
        assert err < 1e-9, (tag, err)
        # elsewhere the averaging fallback is not exact, but still close for a linear field
        assert np.abs(out[sel] - v[sel]).max() < 0.5 * np.abs(v[sel]).max()


def test_spr_backend_selection(sphere, monkeypatch):
    mesh, g = sphere
    v = np.ones((mesh.n_tets, 3))
    args = (g, mesh.tet_tags, v, mesh.centroids, mesh.nodes)
    with pytest.raises(ValueError, match="backend"):
        recover_gradient_spr(*args, backend="fortran")
    monkeypatch.setattr(kernels, "HAVE_NUMBA", False)
    with pytest.raises(SolverError, match="numba"):
        recover_gradient_spr(*args, backend="numba")
    # without numba, "auto" and the recover() dispatch take the numpy path
    np.testing.assert_allclose(recover_gradient_spr(*args), 1.0, rtol=1e-12)
    np.testing.assert_allclose(recover("spr", g, mesh, v), 1.0, rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_spr_centroids_computed_when_not_given(sphere, backend):
    if backend == "numba":
        pytest.importorskip("numba")
    mesh, geometry = sphere
    values = _fields(mesh, geometry)["efield"]
    given = recover_gradient_spr(geometry, mesh.tet_tags, values, mesh.centroids, mesh.nodes, backend=backend)
    own = recover_gradient_spr(geometry, mesh.tet_tags, values, None, mesh.nodes, backend=backend)
    assert _rel_max(own, given) < 1e-12
