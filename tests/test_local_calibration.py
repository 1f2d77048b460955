"""The surface mesher's local volume calibration (surf-6.4, docs/meshing.md): a level set whose sub-grid
surface holds too much volume in one region only is corrected there, not spread over the whole surface
as one global shift would spread it."""

from __future__ import annotations

import numpy as np
import pytest

import stimsim.fem.kernels as fem_kernels
from stimsim.head.meshers import surface as S

pytest.importorskip("skimage")

_R = 20.0


def _ball_with_bulging_lower_half(n=56, bulge_mm=0.5):
    """phi of a ball of radius _R (mm, 1 mm voxels, padded by 3 like the mesher's fields) whose lower half
    is ``bulge_mm`` too big, and the ball's voxel mask."""
    c = (n - 1) / 2
    x, y, z = np.mgrid[:n, :n, :n].astype(np.float32) - np.float32(c)
    r = np.sqrt(x * x + y * y + z * z)
    phi = (r - _R - bulge_mm * (z < 0)).astype(np.float32)
    return phi, r <= _R, (x, y, z, r)


def _level_radius(phi, coords, upper: bool, step=4):
    """Mean radius (mm) of the zero level along rays from the centre into one half (z > 8 or z < -8)."""
    from skimage.measure import marching_cubes

    v, f, _, _ = marching_cubes(phi[::step, ::step, ::step], 0.0, spacing=(step,) * 3)
    c = (phi.shape[0] - 1) / 2
    v = v - c
    sel = v[:, 2] > 8 if upper else v[:, 2] < -8
    return float(np.linalg.norm(v[sel], axis=1).mean())


@pytest.mark.parametrize("fast", [True, False])
def test_local_calibration_corrects_where_the_volume_is_wrong(fast, monkeypatch):
    if not fast:
        monkeypatch.setattr(fem_kernels, "numba_ready", lambda *a, **k: False)
    phi, mask, coords = _ball_with_bulging_lower_half()
    phis = {1: phi.copy()}
    before = (_level_radius(phis[1], coords, True), _level_radius(phis[1], coords, False))
    for _ in range(3):
        S._local_shift(phis, 1, {}, mask, (1.0, 1.0, 1.0), 4, 8.0)
    after = (_level_radius(phis[1], coords, True), _level_radius(phis[1], coords, False))
    assert before[1] - before[0] > 0.4  # the set-up: the lower half 0.5 mm too big
    # the halves end up alike: one global shift would have kept them 0.5 mm apart
    assert abs(after[1] - after[0]) < 0.1, (before, after)
    # the lower half came in; the upper one moved only by the sub-grid's corner cutting (marching cubes on
    # a 4 mm grid encloses less than the ball: both halves get that back)
    assert before[1] - after[1] > 0.3, (before, after)
    assert abs(after[0] - before[0]) < 0.2, (before, after)
    # empty layers (a head without a brain, a sphere phantom) are left alone
    empty = {1: np.full_like(phi, 5.0)}
    S._local_shift(empty, 1, {}, np.zeros_like(mask), (1.0, 1.0, 1.0), 4, 8.0)
    assert (empty[1] == 5.0).all()

@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("side", ["inside", "outside"])
def test_local_calibration_keeps_the_minimum_thickness_to_its_neighbours(side, fast, monkeypatch):
    """A surface moved by the local shift stops LOCAL_GAP minimum thicknesses from its neighbouring
    surface (else the thickness rules push both back and the volumes move with them): pulled in
    towards the surface inside it, or pushed out towards the one outside it."""
    if not fast:
        monkeypatch.setattr(fem_kernels, "numba_ready", lambda *a, **k: False)
    # the lower half 1 mm too big (pulled in) or too small (pushed out); the neighbour 1 mm away from the
    # ball's true surface, 2 mm from the level set in the lower half
    sign = 1.0 if side == "inside" else -1.0
    phi, mask, coords = _ball_with_bulging_lower_half(bulge_mm=sign)
    neighbour = (coords[3] - (_R - sign)).astype(np.float32)
    phis, k = ({1: phi.copy(), 2: neighbour}, 1) if side == "inside" else ({1: neighbour, 2: phi.copy()}, 2)
    tk = {1: 0.8}
    keep = S.LOCAL_GAP * tk[1]  # 1.2 mm: binds in the lower half, where the shift wants ~1 mm
    before = phis[2] - phis[1]  # the distance between the two surfaces (the inner field less the outer)
    S._local_shift(phis, k, tk, mask, (1.0, 1.0, 1.0), 4, 8.0)
    gap = phis[2] - phis[1]
    assert before.min() > 0.9  # the set-up: 1 mm or more apart
    assert (gap >= np.minimum(keep, before) - 1e-4).all(), float((gap - np.minimum(keep, before)).min())
    lower = (coords[2] < -8) & (np.abs(phis[k]) < 0.5)
    assert np.median(gap[lower]) < 1.5  # it did move the lower half, as far as allowed


@pytest.mark.parametrize("fast", [True, False])
def test_nothing_counts_as_inside_past_the_last_sub_grid_sample(fast, monkeypatch):
    """Tissue up to the far end of the label grid (a field of view cut through the head; the mesher's
    3 voxels of padding after it): marching cubes closes the surface at the last sub-grid sample, so
    the padding past it is outside.  Holding the last sample's value there counted it as inside, an
    excess that pulled the surface in by ~1 mm over 15 mm next to the cut (found in review)."""
    if not fast:
        monkeypatch.setattr(fem_kernels, "numba_ready", lambda *a, **k: False)
    n, step = 48, 4  # the last sample at 44, the last tissue voxel; 45-47 the padding
    x, y, z = np.mgrid[:n, :n, :n].astype(np.float32)
    mask = (x >= 10) & (x <= 44) & (y >= 10) & (y <= 36) & (z >= 10) & (z <= 36)
    phi = np.maximum.reduce([10 - x, x - 44, 10 - y, y - 36, 10 - z, z - 36]).astype(np.float32) - 0.3
    phis = {1: phi.copy()}
    S._local_shift(phis, 1, {}, mask, (1.0, 1.0, 1.0), step, 8.0)
    moved = phis[1] - phi
    assert abs(float(moved[38:, 18:29, 18:29].mean())) < 0.25, float(moved[38:, 18:29, 18:29].mean())


def test_numba_and_numpy_local_shifts_agree(monkeypatch):
    """Both forms on a grid that is no multiple of the sub-grid step, with both neighbours and an override."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    shape = (45, 52, 39)
    noise = ndi.gaussian_filter(rng.normal(size=shape), 4).astype(np.float32) * 30
    x = np.indices(shape).astype(np.float32)
    r = np.sqrt(((x - np.array(shape, np.float32)[:, None, None, None] / 2) ** 2).sum(0))
    phis = {1: (r - 19 + noise).astype(np.float32), 2: (r - 15 + noise).astype(np.float32),
            3: (r - 11).astype(np.float32)}
    mask = (r - 18 + 0.5 * noise) < 0
    u = rng.random(shape)
    override = np.where(u < 0.02, -1, np.where(u > 0.98, 1, 0)).astype(np.int8)
    out = []
    for ready in (True, False):
        if not ready:
            monkeypatch.setattr(fem_kernels, "numba_ready", lambda *a, **k: False)
        ph = {k: v.copy() for k, v in phis.items()}
        S._local_shift(ph, 2, {1: 1.0, 2: 1.0}, mask, (1.0, 1.0, 1.0), 3, 8.0, override=override)
        out.append(ph[2])
    assert np.abs(out[0] - phis[2]).max() > 0.3  # it did shift
    np.testing.assert_allclose(out[0], out[1], atol=1e-4)


@pytest.mark.parametrize("fast", [True, False])
def test_a_skull_defect_does_not_draw_the_bone_or_the_csf_surface_into_it(fast, monkeypatch):
    """A craniectomy: the bone layer's sheet across the hole (its minimum thickness) becomes scalp outside
    the brain's voxels and CSF inside them in the mesh.  Told so (``override``), the local shifts of the
    bone's and the CSF's outer surfaces over the hole are those far from it; counted as missing bone
    (the whole sheet outside the bone's surface, found in review), the bone's surface was pushed
    0.7 mm out across the hole, and without the CSF part the CSF's surface 0.8 mm."""
    if not fast:
        monkeypatch.setattr(fem_kernels, "numba_ready", lambda *a, **k: False)
    n = 64
    c = (n - 1) / 2
    x, y, z = np.mgrid[:n, :n, :n].astype(np.float32) - np.float32(c)
    r = np.sqrt(x * x + y * y + z * z)
    hole = (np.hypot(x, y) < 10) & (z > 0)
    sheet = hole & (r > 20) & (r <= 23)
    to_csf = sheet & (r <= 21.5)  # the sheet's part inside the brain's voxels
    masks = {2: ((r <= 23) & ~sheet) | to_csf, 3: (r <= 20) | to_csf}
    over = {2: np.where(sheet & ~to_csf, -1, 0).astype(np.int8), 3: np.where(to_csf, 1, 0).astype(np.int8)}
    wrong = {2: np.where(sheet, -1, 0).astype(np.int8), 3: None}
    at_hole = hole & (np.abs(r - 21.5) < 2.5)
    far = (z < -8) & (np.abs(r - 21.5) < 2.5)

    def shift(k, override):
        phis = {2: (r - 23).astype(np.float32), 3: (r - 20).astype(np.float32)}
        before = phis[k].copy()
        S._local_shift(phis, k, {2: 0.1}, masks[k], (1.0, 1.0, 1.0), 4, 8.0, override=override)
        moved = phis[k] - before
        return float(moved[at_hole].mean()), float(moved[far].mean())

    for k in (2, 3):
        hole_mm, far_mm = shift(k, over[k])
        assert abs(hole_mm - far_mm) < 0.2, (k, hole_mm, far_mm)
        hole_mm, far_mm = shift(k, wrong[k])
        assert hole_mm - far_mm < -0.4, (k, hole_mm, far_mm)  # what the wrong count did: pushed out
