"""The fields stay the same: four fixed runs against arrays stored before the core was restructured.

``tests/data/reference_fields.npz`` was written by ``tests/data/make_reference_fields.py`` at
commit 4582532 (the last one before the HeadModel restructuring); every later change to the
pipeline must reproduce it to 1e-10 relative (the CG stops at the same iteration on the same
arithmetic, so any change of formula or order of operations shows here).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).with_name("data")
_spec = importlib.util.spec_from_file_location("make_reference_fields", DATA / "make_reference_fields.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


@pytest.fixture(scope="module")
def reference():
    with np.load(DATA / "reference_fields.npz") as z:
        return dict(z)


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("case", list(make.CASES))
def test_fields_match_the_stored_reference(case, reference):
    result, tets, nodes = make.compute(case)
    np.testing.assert_array_equal(tets, reference[f"{case}_tets"])  # same mesh, same samples
    assert rel(result.E[tets], reference[f"{case}_E"]) <= 1e-10
    assert rel(result.potential_V[nodes], reference[f"{case}_v"]) <= 1e-10
    if f"{case}_E_recovered" in reference:
        assert rel(result.E_recovered[tets], reference[f"{case}_E_recovered"]) <= 1e-10
