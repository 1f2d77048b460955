"""What a simulation returns: one typed result per modality (fields in SI units, mesh in mm).

:class:`SimulationResult` holds what every modality has (potential, E, J, conductivities, the
solver's report); :class:`TESResult` adds the placed electrodes and the currents they deliver,
:class:`TMSResult` the coil, its placement, dI/dt and the primary field dA/dt.  Results are
frozen: writers, safety checks and pictures read them, nothing changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .fem import PlacedElectrode, SolveInfo
from .mesh import Mesh


@dataclass(frozen=True, eq=False, kw_only=True)
class SimulationResult:
    """Fields of one simulation.

    Attributes
    ----------
    protocol : the validated protocol that was run
    mesh : the head mesh (mm)
    potential_V : (n,) nodal potential, V (TES: reference electrode at 0 V; TMS: one grounded node)
    E : (m, 3) element-wise electric field, V/m
    J : (m, 3) element-wise current density, A/m²
    sigma : (m,) conductivity per element, S/m
    solve_info : iterations, residual and times of the linear solve
    E_recovered : (m, 3) recovered field at element centroids, or None
    timings_s : seconds per stage
    inputs : hashes of the protocol and head file the result was computed from
    """

    protocol: object
    mesh: Mesh
    potential_V: np.ndarray
    E: np.ndarray
    J: np.ndarray
    sigma: np.ndarray
    solve_info: SolveInfo
    E_recovered: np.ndarray | None = None
    timings_s: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)

    @cached_property
    def magnE(self) -> np.ndarray:
        """|E| per element, V/m (computed once; no (m, 3) temporary)."""
        return np.sqrt(np.einsum("ij,ij->i", self.E, self.E))

    def node_fields(self) -> dict[str, np.ndarray]:
        """Nodal fields to write: the potential ``v`` (V), and what the modality adds."""
        return {"v": self.potential_V}

    def extra_element_fields(self) -> dict[str, np.ndarray]:
        """Element fields a modality writes besides E, magnE, J, magnJ and E_recovered (name -> array)."""
        return {}


@dataclass(frozen=True, eq=False, kw_only=True)
class TESResult(SimulationResult):
    """tDCS/tACS: also the placed electrodes and the current each delivers.

    Attributes
    ----------
    electrodes : electrode patches on the scalp, in protocol order
    electrode_currents_A : current each electrode delivers, recomputed from the discrete flux
        ``K v`` over its nodes (a conservation check: equals the set current to solver precision)
    skin_current_density : electrode name -> the current density entering the skin under it
        (:func:`~stimsim.fem.electrodes.skin_current_density`: mean, p95, max, rim mean, A/m²), or None
    """

    electrodes: list[PlacedElectrode] = field(default_factory=list)
    electrode_currents_A: dict = field(default_factory=dict)
    skin_current_density: dict = field(default_factory=dict)

    def electrode_potentials_V(self) -> dict[str, float]:
        return {e.name: float(self.potential_V[e.center_node]) for e in self.electrodes}


@dataclass(frozen=True, eq=False, kw_only=True)
class TMSResult(SimulationResult):
    """TMS: also the coil, its placement and the primary field.

    Attributes
    ----------
    dadt_V_per_m : (n, 3) primary field dA/dt at the nodes, V/m (E = -dA/dt - grad v)
    placement : the coil's :class:`~stimsim.coils.placement.CoilPlacement` (4x4 matrix, mm)
    coil_summary : the coil's description (name, dipoles or grid, dI/dt at 100 %)
    didt_A_per_s : the pulse's dI/dt, A/s
    program : the expanded pulse program (trains, pulses, timing)
    pulse : the pulse's shape, peak dI/dt, width and charge (:func:`stimsim.coils.waveform.pulse_summary`,
        made where the protocol's folder is known, so a measured waveform file is found)
    """

    dadt_V_per_m: np.ndarray
    placement: object
    coil_summary: dict
    didt_A_per_s: float
    program: dict = field(default_factory=dict)
    pulse: dict | None = None

    def node_fields(self) -> dict[str, np.ndarray]:
        return {"v": self.potential_V, "dAdt": self.dadt_V_per_m}

    def tms_summary(self) -> dict:
        """The summary's ``tms`` section (JSON-ready)."""
        from .coils.waveform import pulse_summary

        pl = self.placement
        return {"coil": self.coil_summary, "didt_A_per_s": self.didt_A_per_s,
                "pulse": self.pulse if self.pulse is not None else pulse_summary(self.protocol.stimulator,
                                                                                 self.didt_A_per_s),
                "placement": {"matrix": np.asarray(pl.matrix).tolist(),
                              "scalp_point_mm": np.asarray(pl.scalp_point_mm).tolist(),
                              "distance_mm": pl.distance_mm},
                "program": self.program}


@dataclass(frozen=True, eq=False, kw_only=True)
class TIResult(TESResult):
    """Temporal interference: each channel's field and the interference envelope.

    The inherited fields describe the *combined* field: ``E`` is, per element, the sum of the
    channel fields with the signs ``s_k = +-1`` that make it largest, ``|sum_k s_k E_k|`` (the peak of
    ``|sum_k E_k cos(w_k t + phi_k)|`` over time, reached when the carriers pass through those
    relative phases; an upper bound otherwise), so ``magnE`` is the peak |E| over the session and
    ``J = sigma E`` the peak current density that the safety check reads.  ``potential_V`` is the
    potential when every carrier is at its crest (``sum_k v_k``); ``E_recovered`` is None.
    ``electrodes`` holds every pad (channel order) and ``electrode_currents_A`` the current each
    delivers at its own channel's frequency.

    Attributes
    ----------
    channel_names, channel_frequencies_hz : per channel, protocol order
    channel_E : (k, m, 3) each channel's field, V/m (peak amplitude of its carrier)
    channel_potentials_V : (k, n) each channel's nodal potential amplitude, V
    channel_solve_info : one :class:`~stimsim.fem.SolveInfo` per channel (one shared set-up)
    floating_currents_A : per channel, the largest net current through a pad of another channel
        (floating at this channel's frequency: ~0, a check of the electrode model)
    cortical_normals : (m, 3) unit grey-matter normals (NaN outside grey matter), or None
    cortical_normals_note : how the normals were obtained, or why there are none
    envelope_direction : unit (3,) direction of the protocol's ``envelope_direction``, or None
    """

    channel_names: list[str]
    channel_frequencies_hz: list[float]
    channel_E: np.ndarray
    channel_potentials_V: np.ndarray
    channel_solve_info: list = field(default_factory=list)
    floating_currents_A: dict = field(default_factory=dict)
    cortical_normals: np.ndarray | None = None
    cortical_normals_note: str = ""
    envelope_direction: np.ndarray | None = None

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Index pairs (a, b), a < b, of the channels whose envelopes are reported."""
        k = len(self.channel_names)
        return [(a, b) for a in range(k) for b in range(a + 1, k)]

    def pair_label(self, a: int, b: int) -> str:
        """Suffix of a pair's field names: '' for the only pair of a two-channel protocol."""
        return "" if len(self.channel_names) == 2 else f"_{self.channel_names[a]}_{self.channel_names[b]}"

    def envelope_frequency_hz(self, a: int = 0, b: int = 1) -> float:
        return abs(self.channel_frequencies_hz[a] - self.channel_frequencies_hz[b])

    def envelope_max(self, a: int = 0, b: int = 1) -> np.ndarray:
        """(m,) largest envelope amplitude over all directions of channels a and b, V/m (Grossman 2017)."""
        return self.envelopes[(a, b)]["TImax"]

    def envelope_along(self, direction, a: int = 0, b: int = 1) -> np.ndarray:
        """(m,) envelope amplitude of channels a and b along ``direction`` ((3,) or (m, 3)), V/m."""
        from .envelope import envelope_along

        return envelope_along(self.channel_E[a], self.channel_E[b], direction)

    @cached_property
    def envelopes(self) -> dict[tuple[int, int], dict[str, np.ndarray]]:
        """Per channel pair: ``TImax`` (all directions), ``TI_normal`` (along the grey-matter normal,
        NaN elsewhere; absent without normals), ``TI_dir`` (along ``envelope_direction``, when given)."""
        from .envelope import envelope_along, max_envelope

        out = {}
        for a, b in self.pairs:
            e1, e2 = self.channel_E[a], self.channel_E[b]
            entry = {"TImax": max_envelope(e1, e2)}
            if self.cortical_normals is not None:
                entry["TI_normal"] = envelope_along(e1, e2, self.cortical_normals)
            if self.envelope_direction is not None:
                entry["TI_dir"] = envelope_along(e1, e2, self.envelope_direction)
            out[(a, b)] = entry
        return out

    def node_fields(self) -> dict[str, np.ndarray]:
        return {"v": self.potential_V, **{f"v_{n}": v for n, v in zip(self.channel_names, self.channel_potentials_V)}}

    def extra_element_fields(self) -> dict[str, np.ndarray]:
        out = {}
        for name, e in zip(self.channel_names, self.channel_E):
            out[f"E_{name}"] = e
            out[f"magnE_{name}"] = np.sqrt(np.einsum("ij,ij->i", e, e))
        for (a, b), entry in self.envelopes.items():
            for key, values in entry.items():
                out[key + self.pair_label(a, b)] = values
        return out


@dataclass(frozen=True, eq=False, kw_only=True)
class MultichannelTACSResult(TESResult):
    """tACS with several channels (``channels:`` in a tacs protocol).

    The inherited ``E`` (and ``magnE``, ``J``) is, per element, the combined field at its largest
    magnitude over time (:func:`stimsim.envelope.peak_over_period`): the peak over one period, not
    the sum of the channels' peaks.

    Attributes
    ----------
    channel_names, channel_frequencies_hz, channel_phases_deg : per channel, protocol order
    channel_E : (k, m, 3) each channel's field amplitude, V/m
    peak_phase_deg : (m,) carrier phase at which each element peaks (one common frequency), or None
    peak_method : how the peak over time was found
    floating_currents_A : per channel, the largest net current through another channel's pad (~0)
    """

    channel_names: list[str]
    channel_frequencies_hz: list[float]
    channel_phases_deg: list[float]
    channel_E: np.ndarray
    peak_phase_deg: np.ndarray | None = None
    peak_method: str = ""
    floating_currents_A: dict = field(default_factory=dict)

    def extra_element_fields(self) -> dict[str, np.ndarray]:
        out = {}
        for name, e in zip(self.channel_names, self.channel_E):
            out[f"E_{name}"] = e
            out[f"magnE_{name}"] = np.sqrt(np.einsum("ij,ij->i", e, e))
        if self.peak_phase_deg is not None:
            out["peak_phase_deg"] = self.peak_phase_deg
        return out

    def tacs_summary(self) -> dict:
        """The summary's ``tacs_channels`` section (JSON-ready)."""
        return {"channels": [{"name": n, "frequency_hz": f, "phase_deg": ph, "field": f"E_{n}",
                              "floating_pad_max_net_current_mA": self.floating_currents_A.get(n, float("nan")) * 1e3}
                             for n, f, ph in zip(self.channel_names, self.channel_frequencies_hz,
                                                 self.channel_phases_deg)],
                "peak": "E, magnE, J: the combined field at its largest magnitude over time, per element ("
                        + self.peak_method + ")",
                "peak_phase_deg": None if self.peak_phase_deg is None else
                "carrier phase (degrees) at which each element's field peaks"}


__all__ = ["SimulationResult", "TESResult", "TIResult", "TMSResult", "MultichannelTACSResult"]
