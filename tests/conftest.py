import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_OWN_CACHE = []


def pytest_configure(config):
    """The tests keep stimsim's cache (meshes, AMG cycles, TMS modes) in a folder of their own, removed
    at the end, so they neither fill nor read the user's ~/.cache (STIMSIM_CACHE, if set, is kept).
    Each pytest-xdist worker gets a folder of its own too: the tests that count cache hits must not
    see what the other worker wrote."""
    own = os.environ.get("STIMSIM_TEST_CACHE")
    if "STIMSIM_CACHE" not in os.environ or (own and os.environ["STIMSIM_CACHE"] == own
                                             and os.environ.get("PYTEST_XDIST_WORKER")):
        import tempfile

        _OWN_CACHE.append(tempfile.mkdtemp(prefix="stimsim-test-cache-"))
        os.environ["STIMSIM_CACHE"] = os.environ["STIMSIM_TEST_CACHE"] = _OWN_CACHE[0]


def pytest_unconfigure(config):
    import shutil

    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


def shared_file(rel: str) -> Path:
    """A file from ../shared/data; skip outside CI when missing, fail under CI=true."""
    path = SHARED / rel
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"reference data missing under CI: {path}")
        pytest.skip(f"reference data not available: {path}")
    return path


@pytest.fixture(scope="session")
def sphere3_mesh():
    from stimsim.mesh import read_mesh
    from stimsim.simulation import resolve_head

    mesh, _ = read_mesh(resolve_head("sphere"))
    return mesh


@pytest.fixture(scope="session")
def sphere_tms_model(sphere3_mesh):
    """A TMSModel on sphere3 (brain 1 S/m, skull 0.01, scalp 1) with the Magstim figure-8 at 80 A/us,
    solved by a direct factorisation, so reciprocity identities hold to rounding.  Shared: do not
    change it (building cortical modes on it is fine)."""
    from stimsim.protocol import validate_protocol
    from stimsim.tms import TMSModel

    p = validate_protocol({"kind": "tms", "head": "sphere", "conductivities": {3: 1.0, 4: 0.01, 5: 1.0},
                           "coil": {"file": "Magstim_70mm_Fig8.ccd"},
                           "placement": {"center": [0, 0, 95], "direction": [0, 1, 0]},
                           "stimulator": {"didt_A_per_us": 80.0}})
    return TMSModel(p, mesh=sphere3_mesh, backend="splu")


@pytest.fixture(scope="session")
def magstim_ccd(tmp_path_factory) -> Path:
    """The Magstim 70 mm figure-8 .ccd shipped in the package (gzipped there), as a plain file."""
    import gzip
    from importlib import resources

    src = resources.files("stimsim") / "data" / "coils" / "Magstim_70mm_Fig8.ccd.gz"
    path = tmp_path_factory.mktemp("coil") / "Magstim_70mm_Fig8.ccd"
    path.write_bytes(gzip.decompress(src.read_bytes()))
    return path


@pytest.fixture(scope="session")
def fine_sphere_mesh():
    """A 3-layer sphere (85/90/95 mm) meshed at 4.5 mm by gmsh (~170k tets)."""
    pytest.importorskip("gmsh")
    from stimsim.mesh.sphere import make_sphere_mesh

    return make_sphere_mesh((85.0, 90.0, 95.0), element_size_mm=4.5)


@pytest.fixture(scope="session")
def large_sphere_mesh():
    """The ~665k-tet 3-layer sphere of the acceptance criteria (gmsh, 2.8 mm elements)."""
    pytest.importorskip("gmsh")
    from stimsim.mesh.sphere import make_sphere_mesh

    return make_sphere_mesh((85.0, 90.0, 95.0), element_size_mm=2.8)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_data():
    """``shared_data("meshes/sphere3.msh")`` -> Path, with the skip/fail policy of :func:`shared_file`."""
    return shared_file
