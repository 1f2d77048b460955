"""Multichannel tACS: several electrode groups driven at their own frequencies and phases.

Each channel is solved once on one electrode system holding every pad (the other channels' pads
float: :func:`stimsim.ti.solve_channels`), so the channels superpose exactly; the combined field
``sum_k E_k cos(2 pi f_k t + phi_k)`` is then evaluated at its peak over time per element
(:func:`stimsim.envelope.peak_over_period`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ._logging import logger
from .envelope import peak_over_period
from .fem import SolveInfo, electrode_system, place_electrodes
from .fem.linear import DEFAULT_RTOL
from .head_model import HeadModel
from .protocol import TESProtocol
from .simulation_result import MultichannelTACSResult
from .ti import solve_channels


def solve_multichannel_tacs(protocol: TESProtocol, head: HeadModel, specs, base_dir: Path | None = None
                            ) -> MultichannelTACSResult:
    """A tacs protocol with ``channels`` on a prepared head (``specs``: its placed-electrode requests)."""
    mesh, sigma, timings = head.mesh, head.sigma, dict(head.timings)
    t = time.perf_counter()
    placed = on_skin = place_electrodes(mesh, specs)
    skin = head
    head, placed = head.with_electrode_layers(on_skin, protocol.electrodes, protocol.conductivities)
    mesh, sigma = head.mesh, head.sigma
    system = electrode_system(head.stiffness, placed)
    channel_index = {n: i for i, c in enumerate(protocol.channels) for n in c.electrodes}
    channel_of = np.array([channel_index[e.name] for e in placed])
    timings["electrodes_s"] = time.perf_counter() - t
    names = [c.name for c in protocol.channels]
    sol = solve_channels(head, system, placed, channel_of, names, protocol.solver, DEFAULT_RTOL["tacs"],
                         skin=(skin, on_skin))
    timings["setup_s"], timings["solve_s"] = sol.setup_s, sum(i.solve_s for i in sol.infos)
    t = time.perf_counter()
    channel_E = np.stack(sol.fields)
    freqs = [float(c.frequency_hz) for c in protocol.channels]
    phases = [float(c.phase_deg) for c in protocol.channels]
    peak, phase_map, method = peak_over_period(channel_E, freqs, phases)
    timings["fields_s"] = sol.fields_s + time.perf_counter() - t
    logger.info("multichannel tACS (%s): peak |E| %.3g V/m", method, float(np.linalg.norm(peak, axis=1).max()))
    combined = SolveInfo(sol.infos[0].method, sum(i.iterations for i in sol.infos),
                         max(i.residual for i in sol.infos), sol.setup_s, timings["solve_s"])
    # the nodal potential written is the sum of the channel amplitudes (in phase): a reference only
    return MultichannelTACSResult(
        protocol=protocol, mesh=mesh, potential_V=np.sum(sol.potentials, axis=0), E=peak, J=sigma[:, None] * peak,
        sigma=sigma, solve_info=combined, E_recovered=None, timings_s=timings, inputs=head.inputs,
        electrodes=placed, electrode_currents_A=sol.delivered, skin_current_density=sol.skin_density,
        channel_names=names, channel_frequencies_hz=freqs,
        channel_phases_deg=phases, channel_E=channel_E, peak_phase_deg=phase_map, peak_method=method,
        floating_currents_A=sol.floating)


__all__ = ["solve_multichannel_tacs"]
