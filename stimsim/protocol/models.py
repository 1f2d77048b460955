"""Protocol models (pydantic): what a YAML protocol may say, validated at the edge.

Models are frozen and forbid unknown keys, so a typo in a YAML file fails at load with the
field's name instead of being silently ignored.  Currents are given in mA in protocols
(the unit clinicians use) and converted to A exactly once, by :attr:`Electrode.current_A`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Vec3 = tuple[float, float, float]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _finite(v, name):
    if v is not None and not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    return v


class Electrode(_Model):
    """One electrode: where, how big, how much current."""

    name: str = Field(min_length=1, description="label shown in outputs, e.g. 'anode' or 'C3'")
    position: Union[Vec3, str] = Field(
        description="centre in mm in the head's frame [x, y, z], or an EEG position name (heads with positions)"
    )
    current_mA: float = Field(description="signed current in mA (positive = anode, into the head); "
                                          "for tACS the peak amplitude")
    shape: Literal["point", "disc", "rect"] = Field("point", description="point, disc (diameter_mm) or "
                                                                          "rect (size_mm = [a, b])")
    diameter_mm: float | None = Field(None, gt=0, description="disc diameter in mm")
    size_mm: tuple[float, float] | None = Field(None, description="rectangle side lengths [a, b] in mm; a runs "
                                                                  "along 'direction'")
    direction: Vec3 | None = Field(None, description="direction of side a, projected on the scalp (default: "
                                                     "any tangent)")
    thickness_mm: float | None = Field(None, ge=0, description="sponge/gel thickness (recorded; not modelled)")

    @field_validator("current_mA")
    @classmethod
    def _current_finite(cls, v):
        return _finite(v, "current_mA")

    @field_validator("position")
    @classmethod
    def _position_finite(cls, v):
        if isinstance(v, tuple):
            for x in v:
                _finite(x, "position")
        return v

    @field_validator("size_mm")
    @classmethod
    def _size_positive(cls, v):
        if v is not None and (min(v) <= 0 or not all(math.isfinite(x) for x in v)):
            raise ValueError(f"size_mm must be two finite lengths > 0 mm, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _shape_needs_size(self):
        if self.shape == "disc" and self.diameter_mm is None:
            raise ValueError(f"electrode {self.name!r}: shape 'disc' needs diameter_mm")
        if self.shape == "rect" and self.size_mm is None:
            raise ValueError(f"electrode {self.name!r}: shape 'rect' needs size_mm: [a, b]")
        if self.shape == "point" and (self.diameter_mm is not None or self.size_mm is not None):
            raise ValueError(f"electrode {self.name!r}: a point electrode takes no diameter_mm/size_mm; "
                             "set shape: disc or rect")
        return self

    @property
    def current_A(self) -> float:
        """Current in ampere (the one place mA is converted)."""
        return self.current_mA * 1e-3


class SolverOptions(_Model):
    """Numerical options; the defaults suit every mesh we ship."""

    method: Literal["amg-cg", "direct"] = Field("amg-cg", description="amg-cg (default) or direct "
                                                                      "(factorise; small meshes/many solves)")
    rtol: float | None = Field(
        None, gt=0, lt=1,
        description="relative residual tolerance of CG; default 1e-10 for tDCS/tACS (electrode currents "
                    "come from K v, so conservation needs a tight residual) and 1e-6 for TMS (E changes by "
                    "<= 7.4e-7 relative against 1e-12, measured on Colin27 and the sphere)")
    maxiter: int = Field(1000, gt=0)
    recovery: Literal["auto", "none", "nodal_average", "spr"] = Field(
        "auto", description="also write a recovered field E_recovered: auto (nodal_average for tDCS/tACS, "
                            "spr for TMS), none, nodal_average or spr (see stimsim.solvers.fields)"
    )


class TESProtocol(_Model):
    """Transcranial electrical stimulation session (tDCS or tACS)."""

    kind: Literal["tdcs", "tacs"]
    name: str | None = None
    description: str | None = None
    head: str = Field("sphere", description="'sphere' (embedded 3-layer sphere) or a path to a .msh/.vtu mesh")
    positions: str | None = Field(None, description="EEG positions file (.elc/.csv/.tsv, mm, head frame) for "
                                                    "electrode names; embedded heads bring their own")
    conductivities: dict[Union[int, str], float] | None = Field(
        None, description="S/m by tag or tissue name, overriding the SimNIBS defaults"
    )
    electrodes: list[Electrode] = Field(min_length=2)
    duration_min: float | None = Field(None, gt=0, description="stimulation duration at full current, minutes")
    ramp_up_s: float = Field(30.0, ge=0, description="ramp-up time in seconds")
    ramp_down_s: float = Field(30.0, ge=0, description="ramp-down time in seconds")
    frequency_hz: float | None = Field(None, gt=0, description="tACS frequency (required for tacs)")
    phase_deg: float | None = Field(None, description="tACS phase, degrees")
    sessions: int | None = Field(None, ge=1, description="number of sessions in the course")
    sessions_per_day: int | None = Field(None, ge=1)
    solver: SolverOptions = SolverOptions()

    @field_validator("conductivities")
    @classmethod
    def _conductivities_valid(cls, v):
        if v is not None:
            from ..conductivity import conductivity_table

            conductivity_table(v)  # raises with the offending key and value
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind == "tacs" and self.frequency_hz is None:
            raise ValueError("kind 'tacs' needs frequency_hz")
        if self.kind == "tdcs" and self.frequency_hz is not None:
            raise ValueError("frequency_hz is given but kind is 'tdcs'; use kind: tacs or drop frequency_hz")
        total = sum(e.current_mA for e in self.electrodes)
        scale = max(abs(e.current_mA) for e in self.electrodes)
        if scale == 0:
            raise ValueError("all electrode currents are 0 mA")
        if abs(total) > 1e-9 * scale:
            raise ValueError(
                f"electrode currents must sum to 0 mA, they sum to {total:g} mA; adjust the return electrode(s)"
            )
        names = [e.name for e in self.electrodes]
        if len(set(names)) != len(names):
            raise ValueError(f"electrode names must be unique, got {names}")
        return self


class CoilSpec(_Model):
    """A coil: a dipole file (.ccd, path or name of a shipped coil), a SimNIBS A-field NIfTI
    (.nii/.nii.gz, read-only) or a parametric winding model."""

    file: str | None = Field(None, description="path to a .ccd dipole file or a .nii/.nii.gz A-field "
                                               "file, or a shipped coil name (e.g. Magstim_70mm_Fig8.ccd)")
    type: Literal["circular", "figure8"] | None = Field(None, description="parametric coil instead of a file")
    outer_diameter_mm: float = Field(70.0, gt=0)
    inner_diameter_mm: float | None = Field(None, gt=0)
    turns: int = Field(9, ge=1)
    winding_depth_mm: float = Field(5.0, ge=0, description="winding plane above the coil's bottom face")
    didt_max_A_per_us: float | None = Field(None, gt=0, description="dI/dt at 100 % MSO, A/µs (overrides the file)")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.type is None):
            raise ValueError("coil: give exactly one of 'file' or 'type' (circular | figure8)")
        return self


class Placement(_Model):
    """Coil position: scalp centre + handle direction + distance, or a 4x4 coil-to-head matrix (mm)."""

    center: Union[Vec3, str, None] = Field(None, description="scalp point [x, y, z] mm (or EEG name on heads "
                                                             "with positions)")
    direction: Vec3 | None = Field(None, description="handle (coil y) direction, projected on the scalp")
    distance_mm: float = Field(4.0, ge=0, description="scalp-to-coil distance, mm")
    matrix: list[list[float]] | None = Field(None, description="4x4 coil-to-head matrix (SimNIBS matsimnibs "
                                                               "convention, mm)")

    @model_validator(mode="after")
    def _center_or_matrix(self):
        if self.matrix is not None:
            if self.center is not None or self.direction is not None:
                raise ValueError("placement: give either matrix or center+direction, not both")
            if len(self.matrix) != 4 or any(len(r) != 4 for r in self.matrix):
                raise ValueError("placement.matrix must be 4 rows of 4 numbers")
        elif self.center is None or self.direction is None:
            raise ValueError("placement: needs center and direction (or a 4x4 matrix)")
        return self


class Stimulator(_Model):
    """Coil current change rate: directly (A/µs), as % of maximum stimulator output, or from the
    pulse (peak coil current and period of an RLC discharge; see stimsim.coils.waveform)."""

    didt_A_per_us: float | None = Field(None, gt=0, description="dI/dt of the pulse, A/µs")
    percent_mso: float | None = Field(None, gt=0, le=100, description="% of maximum stimulator output "
                                                                     "(needs the coil's dI/dt max)")
    peak_current_A: float | None = Field(None, gt=0, description="peak coil current of the pulse, A")
    period_us: float | None = Field(None, gt=0, description="ringing period of the pulse, µs (e.g. 280)")
    damping_per_us: float = Field(0.0, ge=0, description="exponential damping of the pulse, 1/µs")
    waveform: Literal["biphasic", "monophasic"] = Field("biphasic", description="pulse shape")
    model: str | None = Field(None, description="stimulator make/model (recorded)")

    @model_validator(mode="after")
    def _one(self):
        given = [self.didt_A_per_us is not None, self.percent_mso is not None, self.peak_current_A is not None]
        if sum(given) != 1:
            raise ValueError("stimulator: give exactly one of didt_A_per_us, percent_mso or "
                             "peak_current_A (+ period_us)")
        if self.peak_current_A is not None and self.period_us is None:
            raise ValueError("stimulator: peak_current_A needs period_us (the pulse's ringing period)")
        return self


class PulseProgram(_Model):
    """Pulse programme: single pulses, repetitive TMS or theta burst (iTBS / cTBS / custom)."""

    type: Literal["single", "rtms", "itbs", "ctbs", "tbs"]
    intensity_pct_rmt: float | None = Field(None, gt=0, description="% of resting motor threshold")
    intensity_pct_amt: float | None = Field(None, gt=0, description="% of active motor threshold")
    intensity_pct_mso: float | None = Field(None, gt=0, le=100, description="% of maximum stimulator output")
    pulses: int | None = Field(None, ge=1, description="single: number of pulses")
    interval_s: float | None = Field(None, gt=0, description="single: seconds between pulses")
    frequency_hz: float | None = Field(None, gt=0, description="rtms: pulse frequency within a train")
    pulses_per_train: int | None = Field(None, ge=1)
    trains: int | None = Field(None, ge=1)
    iti_s: float | None = Field(None, ge=0, description="inter-train interval (pause between trains), s")
    burst_frequency_hz: float | None = Field(None, gt=0, description="tbs: pulse frequency within a burst "
                                                                     "(default 50 Hz)")
    pulses_per_burst: int | None = Field(None, ge=1, description="tbs: default 3")
    burst_rate_hz: float | None = Field(None, gt=0, description="tbs: bursts per second (default 5 Hz, theta)")
    bursts_per_train: int | None = Field(None, ge=1, description="tbs: iTBS 10 (2 s), cTBS 200 (40 s)")

    @model_validator(mode="after")
    def _complete(self):
        t = self.type
        if t == "rtms":
            missing = [f for f in ("frequency_hz", "pulses_per_train") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"program type 'rtms' needs {', '.join(missing)}")
            if (self.trains or 1) > 1 and self.iti_s is None:
                raise ValueError("program: more than one train needs iti_s (inter-train interval, s)")
        if t in ("rtms", "single") and any(getattr(self, f) is not None for f in (
                "burst_frequency_hz", "pulses_per_burst", "burst_rate_hz", "bursts_per_train")):
            raise ValueError(f"program type {t!r} takes no burst_* fields; use type itbs, ctbs or tbs")
        if t == "tbs" and self.bursts_per_train is None:
            raise ValueError("program type 'tbs' needs bursts_per_train")
        if t in ("itbs", "ctbs", "tbs"):
            period = 1.0 / (self.burst_rate_hz or 5.0)
            span = ((self.pulses_per_burst or 3) - 1) / (self.burst_frequency_hz or 50.0)
            if span >= period:
                raise ValueError("program: a burst lasts longer than the burst period; lower pulses_per_burst "
                                 "or raise burst_frequency_hz")
        given = [f for f in ("intensity_pct_rmt", "intensity_pct_amt", "intensity_pct_mso") if getattr(self, f)]
        if len(given) > 1:
            raise ValueError(f"program: give one intensity, not {', '.join(given)}")
        return self

    def expanded(self) -> dict:
        """The programme with iTBS/cTBS defaults filled in and totals: pulses, train and session duration (s)."""
        t = self.type
        if t == "single":
            n = self.pulses or 1
            return {"type": t, "total_pulses": n,
                    "session_duration_s": (n - 1) * (self.interval_s or 0.0)}
        if t == "rtms":
            trains = self.trains or 1
            train_s = self.pulses_per_train / self.frequency_hz
            return {"type": t, "frequency_hz": self.frequency_hz, "pulses_per_train": self.pulses_per_train,
                    "trains": trains, "iti_s": self.iti_s or 0.0, "train_duration_s": train_s,
                    "total_pulses": self.pulses_per_train * trains,
                    "session_duration_s": trains * train_s + (trains - 1) * (self.iti_s or 0.0)}
        defaults = {"itbs": (10, 20, 8.0), "ctbs": (200, 1, 0.0), "tbs": (self.bursts_per_train, 1, 0.0)}[t]
        bursts = self.bursts_per_train or defaults[0]
        trains = self.trains or defaults[1]
        iti = self.iti_s if self.iti_s is not None else defaults[2]
        ppb = self.pulses_per_burst or 3
        rate = self.burst_rate_hz or 5.0
        train_s = bursts / rate
        return {"type": t, "burst_frequency_hz": self.burst_frequency_hz or 50.0, "pulses_per_burst": ppb,
                "burst_rate_hz": rate, "bursts_per_train": bursts, "trains": trains, "iti_s": iti,
                "train_duration_s": train_s, "total_pulses": ppb * bursts * trains,
                "session_duration_s": trains * train_s + (trains - 1) * iti}


class TMSProtocol(_Model):
    """A TMS session: head, coil, placement, stimulator output and pulse programme."""

    kind: Literal["tms"]
    name: str | None = None
    description: str | None = None
    head: str = Field("sphere", description="'sphere' or a path to a .msh/.vtu mesh")
    positions: str | None = Field(None, description="EEG positions file for a named placement centre")
    conductivities: dict[Union[int, str], float] | None = None
    coil: CoilSpec
    placement: Placement
    stimulator: Stimulator
    program: PulseProgram = PulseProgram(type="single")
    screening: dict[str, Union[bool, str, None]] | None = Field(
        None, description="TMS screening answers, item -> yes/no (items: `stimsim check` lists them; "
                          "after Rossi et al. 2011/2021 and Keel et al. 2001)")
    sessions: int | None = Field(None, ge=1)
    sessions_per_day: int | None = Field(None, ge=1)
    solver: SolverOptions = SolverOptions()

    _conductivities_valid = field_validator("conductivities")(TESProtocol._conductivities_valid.__func__)


Protocol = Annotated[Union[TESProtocol, TMSProtocol], Field(discriminator="kind")]
