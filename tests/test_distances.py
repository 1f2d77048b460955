"""Exact voxel distances of the meshers (stimsim.head.meshers.topology) against scipy's."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from stimsim.head.meshers.topology import distance_to_background, distance_to_other_side


def _masks():
    rng = np.random.default_rng(7)
    blobs = ndi.gaussian_filter(rng.standard_normal((23, 17, 29)), 2.0) > 0.05
    yield blobs
    yield np.asfortranarray(blobs)  # a NIfTI volume's layout
    yield np.ones((6, 7, 8), bool)
    yield np.zeros((6, 7, 8), bool)
    one = np.zeros((9, 9, 9), bool)
    one[4, 2, 6] = True
    yield one


@pytest.mark.parametrize("with_edt", [True, False])
@pytest.mark.parametrize("zooms", [(1.0, 1.0, 1.0), (0.5, 0.9, 1.6)])
def test_distance_to_other_side_is_both_transforms(zooms, with_edt, monkeypatch):
    """Inside the mask, the distance to the nearest voxel outside; outside, to the nearest inside:
    scipy's exact transforms of the mask and of its complement (inf where there is no other side),
    with the edt package and without it (scipy's), of a bool mask or of 0/1 integers."""
    if with_edt:
        pytest.importorskip("edt")
    else:
        monkeypatch.setitem(__import__("sys").modules, "edt", None)  # import edt -> ImportError
    for mask in [*_masks(), next(_masks()).astype(np.uint8)]:
        got = distance_to_other_side(mask, zooms)
        assert got.dtype == np.float32 and got.shape == mask.shape
        if with_edt:  # the mask's memory order kept (mixed orders make later arithmetic slow)
            fortran = mask.flags.f_contiguous and not mask.flags.c_contiguous
            assert got.flags.f_contiguous if fortran else got.flags.c_contiguous
        if mask.all() or not mask.any():  # no other side anywhere
            assert np.isinf(got).all()
            continue
        mask = mask.astype(bool)
        want = np.where(mask, ndi.distance_transform_edt(mask, sampling=zooms),
                        ndi.distance_transform_edt(~mask, sampling=zooms))
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_array_equal(got, np.where(mask, distance_to_background(mask, zooms),
                                                    distance_to_background(~mask, zooms)))
