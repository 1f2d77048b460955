import numpy as np
import pytest

from stimsim.conductivity import conductivity_table, element_conductivities
from stimsim.fem.assembly import P1Geometry, assemble_stiffness


@pytest.fixture(scope="module")
def geometry(sphere3_mesh):
    return P1Geometry.from_mesh(sphere3_mesh)


def test_gradient_of_linear_field_is_exact(sphere3_mesh, geometry):
    a = np.array([0.3, -1.2, 2.0])  # V/mm
    v = sphere3_mesh.nodes @ a
    np.testing.assert_allclose(geometry.gradient(v), np.broadcast_to(a * 1e3, (sphere3_mesh.n_tets, 3)),
                               rtol=1e-9, atol=1e-9)


def test_volumes_match_the_ball(sphere3_mesh, geometry):
    # the polyhedral ball is inscribed in the sphere: a bit smaller, within 1 %
    exact = 4 / 3 * np.pi * 0.095**3
    assert 0.99 * exact < geometry.volumes_m3.sum() < exact


def test_stiffness_energy_of_linear_field(sphere3_mesh, geometry):
    """v^T K v = sum_t sigma_t |grad v|^2 V_t for a linear v (exact for P1)."""
    table = conductivity_table({3: 1.0, 4: 0.01, 5: 1.0})
    sigma = element_conductivities(sphere3_mesh.tet_tags, table)
    k = assemble_stiffness(geometry, sigma)
    a = np.array([1.0, 2.0, -0.5])  # V/m
    v = sphere3_mesh.nodes * 1e-3 @ a
    expected = np.sum(sigma * geometry.volumes_m3) * a @ a
    assert v @ (k @ v) == pytest.approx(expected, rel=1e-10)
    # symmetric, constants in the kernel, positive semi-definite on random vectors
    assert abs(k - k.T).max() == 0
    np.testing.assert_allclose(k @ np.ones(k.shape[0]), 0, atol=1e-12 * abs(k).max())
    x = np.random.default_rng(0).normal(size=(k.shape[0], 5))
    assert np.all(np.einsum("ij,ij->j", x, k @ x) > 0)


def test_unknown_tag_gets_a_clear_error():
    from stimsim.errors import ProtocolError

    with pytest.raises(ProtocolError, match=r"tags \[42\]"):
        element_conductivities(np.array([1, 42]), conductivity_table())


def test_conductivity_by_name():
    t = conductivity_table({"CSF": 1.8, "skull": 0.02, "gray matter": 0.3})
    assert (t[3], t[4], t[2], t[1]) == (1.8, 0.02, 0.3, 0.126)


def test_boundary_faces_are_the_outer_sphere_oriented_outward(sphere3_mesh):
    f = sphere3_mesh.boundary_faces
    assert len(f) == np.count_nonzero(sphere3_mesh.tri_tags == 1005)
    p = sphere3_mesh.nodes[f]
    normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    assert np.all(np.einsum("ij,ij->i", normal, p.mean(axis=1)) > 0)
    assert np.allclose(np.linalg.norm(p, axis=2), 95, atol=1e-6)
    nodes, normals = sphere3_mesh.boundary_node_normals()
    radial = sphere3_mesh.nodes[nodes] / np.linalg.norm(sphere3_mesh.nodes[nodes], axis=1, keepdims=True)
    assert np.all(np.einsum("ij,ij->i", normals, radial) > 0.99)


def test_disconnected_head_is_refused(sphere3_mesh):
    from stimsim.errors import MeshError
    from stimsim.mesh import Mesh
    from stimsim.protocol import validate_protocol
    from stimsim.simulation import simulate

    m = sphere3_mesh
    two = Mesh(np.vstack([m.nodes, m.nodes + [300.0, 0, 0]]), np.vstack([m.tets, m.tets + m.n_nodes]),
               np.concatenate([m.tet_tags, m.tet_tags]))
    p = validate_protocol({"kind": "tdcs", "electrodes": [
        {"name": "a", "position": [0, 0, 95], "current_mA": 1}, {"name": "b", "position": [95, 0, 0], "current_mA": -1}]})
    with pytest.raises(MeshError, match="2 disconnected pieces"):
        simulate(p, mesh=two)


def test_triangle_owners_follow_the_enclosed_tissue(sphere3_mesh):
    m = sphere3_mesh
    owner = m.triangle_owner_tets()
    assert np.all(owner >= 0)
    # the owner really has the triangle as a face ...
    tri_nodes = np.sort(m.tris, axis=1)
    tet_nodes = m.tets[owner]
    assert np.all((tet_nodes[:, :, None] == tri_nodes[:, None, :]).any(axis=1))
    # ... and belongs to the tissue the surface encloses (surface tag - 1000)
    assert np.all(m.tet_tags[owner] == m.tri_tags - 1000)
