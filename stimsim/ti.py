"""Temporal interference (TI): one head, one solve per channel, and the interference envelope.

Two carriers ``E1 cos(w1 t)`` and ``E2 cos(w2 t)`` at nearby frequencies sum to a field whose
amplitude along a direction ``n`` beats at ``|f1 - f2|`` between ``|a1| + |a2|`` and ``||a1| - |a2||``
(``a_k = E_k . n``): the envelope amplitude ``2 min(|a1|, |a2|) = ||(E1 + E2).n| - |(E1 - E2).n||``
(:func:`~stimsim.envelope.envelope_along`).  Its largest value over all directions has a closed form
(Grossman et al. 2017, Cell 169:1029, doi:10.1016/j.cell.2017.05.024),
:func:`~stimsim.envelope.max_envelope`; docs/ti.md derives both.

Electrode model: every pad of every channel is present in every channel's solve.  A pad of
another channel is an equipotential conductor that carries no net current at this channel's
frequency (its source is an ideal current source), so it floats; the channels' fields then
superpose exactly, as the leadfield's do (:mod:`stimsim.planning.leadfield`).  One electrode
system and one AMG hierarchy (or factorisation) serve every channel.

Grey-matter normals (for the envelope along the cortical normal) come from a Laplace problem on
the grey matter: ``u = 0`` where it touches white matter, ``u = 1`` where it touches anything else
(CSF), ``grad u / |grad u|`` per element points from white matter out through the cortex, the
direction of the cortical columns.  Heads without grey matter (tag 2) and white matter (tag 1),
such as the embedded sphere, have none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._logging import logger
from .envelope import envelope_along, max_envelope, peak_combined_field  # noqa: F401 (re-exported)
from .fem import ElectrodeSpec, SolveInfo, assemble_stiffness, electrode_system, element_efield, place_electrodes
from .fem.electrodes import boundary_node_areas, skin_current_density
from .fem.linear import DEFAULT_RTOL
from .head_model import HeadModel, resolve_position
from .mesh import Mesh
from .protocol import TIProtocol
from .simulation_result import TIResult

#: grey- and white-matter tags (SimNIBS numbering, :mod:`stimsim.tissues`)
GM_TAG, WM_TAG = 2, 1


# ----------------------------------------------------------------------------------------- normals


def cortical_normals(mesh: Mesh, geometry, *, gm_tag: int = GM_TAG, wm_tag: int = WM_TAG,
                     rtol: float = 1e-8) -> tuple[np.ndarray | None, str]:
    """Unit grey-matter normals per element from a Laplace problem on the grey matter (module docstring).

    Returns ``(normals, note)``: ``normals`` is (m, 3), NaN outside grey matter and where the
    gradient vanishes (a piece of grey matter touching only white matter or only CSF), or None
    with ``note`` saying why (no grey or no white matter).
    """
    from .fem import amg_cg

    tags = mesh.tet_tags
    gm = tags == gm_tag
    if not gm.any() or not np.any(tags == wm_tag):
        return None, (f"no cortical normals: the head has no grey matter (tag {gm_tag}) and white matter "
                      f"(tag {wm_tag}) to define them (tags {sorted(int(t) for t in np.unique(tags))})")
    n = mesh.n_nodes
    in_gm = np.zeros(n, bool)
    in_gm[mesh.tets[gm].ravel()] = True
    on_wm = np.zeros(n, bool)
    on_wm[mesh.tets[tags == wm_tag].ravel()] = True
    on_other = np.zeros(n, bool)
    on_other[mesh.tets[~gm & (tags != wm_tag)].ravel()] = True
    inner = in_gm & on_wm & ~on_other
    outer = in_gm & on_other & ~on_wm
    both = in_gm & on_wm & on_other  # cortex one element thick: halfway
    fixed = inner | outer | both
    u = np.zeros(n)
    u[outer] = 1.0
    u[both] = 0.5
    free = np.flatnonzero(in_gm & ~fixed)
    k = assemble_stiffness(geometry, gm.astype(float))
    if len(free):
        kff = k[free][:, free].tocsr()
        b = -(k[free] @ u)
        u[free], _ = amg_cg(rtol=rtol, maxiter=2000)(kff, b)
    g = geometry.gradient(u)
    norm = np.linalg.norm(g, axis=1)
    ok = gm & (norm > 1e-12 * max(float(norm.max()), 1e-300))
    normals = np.full((mesh.n_tets, 3), np.nan)
    normals[ok] = g[ok] / norm[ok, None]
    from_laplace = int(ok.sum())
    # elements whose four nodes are all fixed at one value (a cortex one element thick) have no
    # gradient: give them the volume-weighted mean normal of the elements around their nodes
    import scipy.sparse as sp

    m = mesh.n_tets
    incidence = sp.csr_matrix((np.ones(4 * m), (mesh.tets.ravel(), np.repeat(np.arange(m), 4))), shape=(n, m))
    vol = geometry.volumes_m3
    for _ in range(3):
        missing = gm & ~ok
        if not missing.any():
            break
        weighted = np.where(ok[:, None], normals * vol[:, None], 0.0)
        around = incidence.T[missing] @ (incidence @ weighted)
        length = np.linalg.norm(around, axis=1)
        good = length > 0
        idx = np.flatnonzero(missing)[good]
        normals[idx] = around[good] / length[good, None]
        ok[idx] = True
    note = (f"grey-matter normals from a Laplace problem on the grey matter (u = 0 at white matter, 1 at CSF) in "
            f"{from_laplace} of {int(gm.sum())} grey-matter elements, the mean normal around their nodes in "
            f"{int(ok.sum()) - from_laplace}, none in {int((gm & ~ok).sum())}")
    return normals, note


# ----------------------------------------------------------------------------------------- solve


def ti_electrode_specs(protocol: TIProtocol, base_dir: Path | None = None, mesh: Mesh | None = None
                       ) -> list[ElectrodeSpec]:
    """Every channel's electrodes (channel order) with positions resolved to mm on the head."""
    specs = []
    for c, channel in enumerate(protocol.channels):
        for k, e in enumerate(channel.electrodes):
            pos = resolve_position(e.position, protocol, mesh, base_dir, f"channels[{c}].electrodes[{k}].position")
            specs.append(ElectrodeSpec(e.name, pos, e.current_A, e.shape, e.diameter_mm, e.size_mm, e.direction))
    return specs


def _channel_solver(head: HeadModel, system, options, default_rtol: float):
    """``(setup_s, solve(b) -> (x, SolveInfo))``: the head model's solver of ``system`` (a factorisation
    for ``method: direct``, else one AMG hierarchy for CG), set up once and shared by every channel."""
    t = time.perf_counter()
    solver = head.solver(system, "auto" if options.method == "direct" else "amg",
                         rtol=options.rtol or default_rtol, maxiter=options.maxiter)
    return time.perf_counter() - t, lambda b: solver(system.matrix, b)


@dataclass(frozen=True)
class ChannelSolutions:
    """Each channel's field (V/m) and potential (V) of a multichannel electrode system."""

    fields: list
    potentials: list
    infos: list
    delivered: dict  # electrode -> current it delivers in its own channel, A
    floating: dict  # channel -> largest net current through another channel's pad, A (~0)
    setup_s: float
    fields_s: float
    skin_density: dict  # electrode -> skin current density under it in its own channel (A/m^2 statistics)


def solve_channels(head: HeadModel, system, placed, channel_of: np.ndarray, names, options,
                   default_rtol: float, skin: tuple | None = None) -> ChannelSolutions:
    """One solve per channel on one electrode system holding every pad: the channel's own pads carry
    its currents, the other pads none (floating equipotential conductors), so channels superpose
    exactly.  One solver set-up serves every channel (temporal interference, multichannel tACS).

    ``skin``: ``(head without sponges, electrodes on its skin)`` when ``head`` has sponge layers;
    the skin current density under each pad (its own channel's current) is computed on it.
    """
    setup_s, solve = _channel_solver(head, system, options, default_rtol)
    skin_head, on_skin = skin if skin is not None else (head, placed)
    node_area = boundary_node_areas(skin_head.mesh)
    fields, potentials, infos, delivered, floating, skin_density = [], [], [], {}, {}, {}
    t_fields = 0.0
    for i, name in enumerate(names):
        currents = [e.current_A if channel_of[k] == i else 0.0 for k, e in enumerate(placed)]
        x, info = solve(system.rhs(currents))
        infos.append(info)
        t1 = time.perf_counter()
        v = system.expand(x)
        potentials.append(v)
        fields.append(element_efield(head.geometry, v, head.mesh.nodes))
        flux = head.stiffness @ v
        net = {e.name: float(flux[e.nodes].sum()) for e in placed}
        delivered.update({e.name: net[e.name] for k, e in enumerate(placed) if channel_of[k] == i})
        others = [abs(net[e.name]) for k, e in enumerate(placed) if channel_of[k] != i]
        floating[name] = max(others) if others else 0.0
        skin_flux = flux if skin_head is head else skin_head.stiffness @ v[:skin_head.mesh.n_nodes]
        skin_density.update({e.name: skin_current_density(e, skin_flux, node_area)
                             for k, e in enumerate(on_skin) if channel_of[k] == i})
        t_fields += time.perf_counter() - t1
    return ChannelSolutions(fields, potentials, infos, delivered, floating, setup_s, t_fields, skin_density)


def solve_ti(protocol: TIProtocol, head: HeadModel, base_dir: Path | None = None) -> TIResult:
    """Temporal interference on a prepared head: one electrode system with every pad, one solve per channel."""
    t = time.perf_counter()
    skin = head  # the head without sponges: what the skin current density is computed on
    on_skin = place_electrodes(skin.mesh, ti_electrode_specs(protocol, base_dir, skin.mesh))
    head, placed = skin.with_electrode_layers(on_skin, protocol.electrodes, protocol.conductivities)
    mesh, geometry, sigma, timings = head.mesh, head.geometry, head.sigma, dict(head.timings)
    system = electrode_system(head.stiffness, placed)
    channel_of = np.concatenate([np.full(len(c.electrodes), i) for i, c in enumerate(protocol.channels)])
    timings["electrodes_s"] = time.perf_counter() - t

    channels = solve_channels(head, system, placed, channel_of, [c.name for c in protocol.channels],
                              protocol.solver, DEFAULT_RTOL["ti"], skin=(skin, on_skin))
    fields, potentials, infos = channels.fields, channels.potentials, channels.infos
    delivered, floating, setup_s, t_fields = channels.delivered, channels.floating, channels.setup_s, channels.fields_s
    for channel, info, e in zip(protocol.channels, infos, fields):
        logger.info("TI channel %s (%g Hz): %d iterations, peak |E| %.3g V/m", channel.name, channel.frequency_hz,
                    info.iterations, float(np.linalg.norm(e, axis=1).max()))
    timings["setup_s"] = setup_s
    timings["solve_s"] = sum(i.solve_s for i in infos)

    t = time.perf_counter()
    channel_E = np.stack(fields)
    e_peak = peak_combined_field(channel_E)
    normals, note = cortical_normals(mesh, geometry)
    timings["normals_s"] = time.perf_counter() - t
    timings["fields_s"] = t_fields + timings["normals_s"]
    direction = None
    if protocol.envelope_direction is not None:
        direction = np.asarray(protocol.envelope_direction, float)
        direction = direction / np.linalg.norm(direction)
    combined = SolveInfo(infos[0].method, sum(i.iterations for i in infos), max(i.residual for i in infos),
                         setup_s, timings["solve_s"])
    return TIResult(protocol=protocol, mesh=mesh, potential_V=np.sum(potentials, axis=0), E=e_peak,
                    J=sigma[:, None] * e_peak, sigma=sigma, solve_info=combined, E_recovered=None,
                    timings_s=timings, inputs=head.inputs, electrodes=placed, electrode_currents_A=delivered,
                    skin_current_density=channels.skin_density,
                    channel_names=[c.name for c in protocol.channels],
                    channel_frequencies_hz=[float(c.frequency_hz) for c in protocol.channels],
                    channel_E=channel_E, channel_potentials_V=np.stack(potentials), channel_solve_info=infos,
                    floating_currents_A=floating, cortical_normals=normals, cortical_normals_note=note,
                    envelope_direction=direction)


def run_ti(protocol: TIProtocol, base_dir: Path | None = None, mesh: Mesh | None = None) -> TIResult:
    """Read and assemble the protocol's head, then :func:`solve_ti`."""
    return solve_ti(protocol, HeadModel.from_protocol(protocol, base_dir, mesh), base_dir)


__all__ = ["max_envelope", "envelope_along", "peak_combined_field", "cortical_normals", "ti_electrode_specs",
           "solve_ti", "run_ti"]
