"""Protocol models (pydantic): what a YAML protocol may say, validated at the edge.

Models are frozen and forbid unknown keys, so a typo in a YAML file fails at load with the
field's name instead of being silently ignored.  Currents are given in mA in protocols
(the unit clinicians use) and converted to A exactly once, by :attr:`Electrode.current_A`.

Every number must be finite (NaN and inf are refused everywhere) and lie within a *sanity
bound* (below): a value outside it is a typing or unit mistake, never a real set-up, and would
otherwise run to completion or overflow deep inside the solver.  The bounds are deliberately
wide, so that every human, animal and phantom study passes; whether a dose is *safe* is the
safety checker's business (:mod:`stimsim.safety`), not theirs.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator,
                      model_validator)

from ..errors import shown

# --- sanity bounds --------------------------------------------------------------------------------
# Each bound comes with its reason, which the error message repeats.

#: |electrode current|, mA.  tDCS/tACS use 0.5-4 mA, temporal interference a few mA per channel,
#: animal work less; ECT, the strongest transcranial electric stimulation there is, ~800-900 mA.
MAX_CURRENT_MA = 1000.0
_WHY_CURRENT = ("no transcranial electric stimulator delivers more (tDCS/tACS use 0.5-4 mA; ECT, the "
                "strongest, ~800-900 mA); check the unit is mA")

#: coordinates (mm, head or scanner frame).  Heads span ~200 mm and scanner frames < 1 m; a larger
#: number is a unit mistake (µm?), and its square overflows distance computations long before 1e300.
MAX_COORD_MM = 10_000.0
_WHY_COORD = "positions are in mm and no head, phantom or scanner frame reaches 10 m; check the unit is mm"

#: lengths of pads, coils, distances (mm): nothing on or around a head or phantom exceeds 1 m.
MAX_LENGTH_MM = 1000.0
_WHY_LENGTH = "no electrode, coil or distance around a head or phantom exceeds 1 m; check the unit is mm"

#: TMS dI/dt, A/µs.  dI/dt = V / L: stimulators charge to <= ~3 kV (experimental ones a few kV more)
#: and coils have >= ~1 µH, so human coils see 50-300 A/µs and small animal coils up to ~1000;
#: 10 000 A/µs is beyond any stimulator and coil, yet an entry in A/ms or A/s is still caught.
MAX_DIDT_A_PER_US = 10_000.0
_WHY_DIDT = ("dI/dt = voltage / inductance, and no stimulator (<= a few kV) and coil (>= ~1 µH) exceeds "
             "~3000 A/µs (human coils: 50-300 A/µs); check the unit is A/µs")

#: peak TMS coil current, A.  Human coils peak at 4-8 kA, seizure-therapy and small animal coils at
#: ~10-15 kA; stimulator capacitors and thyristor switches are not built for more than a few tens of kA.
MAX_PEAK_CURRENT_A = 50_000.0
_WHY_PEAK = ("TMS coils peak at 4-15 kA and stimulator switches are rated for a few tens of kA; check "
             "the unit is A")

#: pulse ringing period, µs: TMS pulses ring at 150-600 µs (controllable-pulse devices from ~10 µs);
#: shorter than 1 µs is no capacitor discharge through a coil, longer than 10 ms no magnetic pulse.
MIN_PERIOD_US, MAX_PERIOD_US = 1.0, 10_000.0
_WHY_PERIOD = "TMS pulses ring with periods of ~10-600 µs; check the unit is µs"

#: RLC damping rate, 1/µs: real discharges decay over hundreds of µs (alpha ~ 0.001-0.01 /µs);
#: 1 /µs would end the pulse within a microsecond.
MAX_DAMPING_PER_US = 1.0
_WHY_DAMPING = "a TMS pulse decays over hundreds of µs (damping ~0.001-0.01 /µs); check the unit is 1/µs"

#: tACS frequency, Hz.  tACS uses 0.5-300 Hz, kHz carriers (temporal interference) 1-100 kHz; the
#: solver is quasi-static, which radio frequencies are not, and below 1 mHz a cycle lasts 17 min.
MIN_TACS_HZ, MAX_TACS_HZ = 1e-3, 1e6
_WHY_TACS = ("tACS and temporal-interference carriers run at 0.5 Hz to ~100 kHz, and the quasi-static "
             "solver does not hold at radio frequencies")

#: TMS pulse and burst rates, Hz: stimulators recharge in milliseconds; the fastest repetitive or
#: paired-pulse rates are a few hundred Hz (1.5 ms I-wave intervals ~ 667 Hz).
MIN_RATE_HZ, MAX_RATE_HZ = 1e-3, 1000.0
_WHY_RATE = "TMS stimulators fire at most a few hundred pulses per second (pulses last 0.1-0.6 ms)"
_WHY_SLOW = "at less than 1 mHz one cycle lasts over 16 minutes; check the unit is Hz"

#: pulse counts: sessions deliver a few thousand pulses (accelerated protocols ~18 000 a day).
MAX_COUNT = 100_000
MAX_PULSES_PER_BURST = 100
MAX_TOTAL_PULSES = 1_000_000
_WHY_COUNT = "TMS sessions deliver a few thousand pulses (accelerated protocols ~18 000 a day)"

#: times, s: ramps last seconds to a minute, pulse intervals and pauses seconds to minutes.
MAX_PAUSE_S = 3600.0
_WHY_PAUSE = "ramps, pulse intervals and pauses last seconds to minutes; an hour makes separate sessions"

#: session length: 20-40 min in humans, hours in some animal work; a week is no session.
MAX_DURATION_MIN = 7 * 24 * 60.0
MAX_SESSION_S = MAX_DURATION_MIN * 60
_WHY_DURATION = "sessions last minutes to hours; check the unit (duration_min is in minutes)"
_WHY_TMS_SESSION = "TMS sessions last minutes to an hour or so; check frequency_hz, iti_s and the pulse counts"

#: courses: tens of sessions, maintenance courses hundreds; accelerated protocols up to ~10-20 a day
#: (100 a day is one every 15 minutes around the clock).
MAX_SESSIONS, MAX_SESSIONS_PER_DAY = 10_000, 100
_WHY_SESSIONS = "courses have tens to hundreds of sessions, accelerated ones up to ~10-20 a day"

#: intensity relative to a motor threshold, %: thresholds are >= ~10 % of the stimulator's output,
#: so above 1000 % of one would exceed 100 % of any stimulator.
MAX_PCT_THRESHOLD = 1000.0
_WHY_PCT = "motor thresholds are >= ~10 % of stimulator output, so 1000 % of one exceeds any stimulator"

#: phase, degrees: one cycle either way.
MAX_PHASE_DEG = 360.0
#: temporal-interference channels: published set-ups use 2 (Grossman et al. 2017) to a few pairs;
#: the peak of the combined field is a maximum over 2^(N-1) sign patterns of the N channel fields.
MAX_TI_CHANNELS = 8
_WHY_TI_CHANNELS = ("temporal interference uses 2 channels (Grossman et al. 2017) or a few pairs; the combined "
                    "peak field is searched over 2^(N-1) sign patterns")
#: electrodes per montage: high-density caps have 256-345 positions.
MAX_ELECTRODES = 1024
#: solver: CG with AMG needs tens of iterations; double precision cannot resolve rtol < ~1e-15.
MIN_RTOL, MAX_ITER = 1e-15, 1_000_000


def _fmt(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:g}"


def _bounded(lo: float | None, hi: float | None, unit: str = "", why: str = "", *, lo_open: bool = False,
             kind: type = float, why_lo: str = ""):
    """``kind`` (float or int) within [lo, hi] (``lo_open``: lo excluded).

    Refusals state the bound and why (``why`` above it, ``why_lo`` below a non-obvious lower
    bound).  Checked on the raw number (so a 400-digit integer, or 1e30 for an int field, gets
    this message rather than a parser's) and again after conversion (numbers given as strings).
    """
    u = f" {unit}" if unit else ""

    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v  # not a number: the type validation says so
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        symmetric = lo is not None and hi is not None and lo == -hi
        if hi is not None and v > hi or symmetric and v < lo:
            span = f"between {_fmt(lo)} and {_fmt(hi)}" if symmetric else f"at most {_fmt(hi)}"
            raise ValueError(f"must be {span}{u}" + (f": {why}" if why else ""))
        if lo is not None and (v <= lo if lo_open else v < lo):
            bound = f"must be {'>' if lo_open else '>='} {_fmt(lo)}{u}"
            raise ValueError(bound + (f": {why_lo}" if why_lo else ""))
        return v

    schema = {}
    if lo is not None:
        schema["exclusiveMinimum" if lo_open else "minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    return Annotated[kind, BeforeValidator(check), AfterValidator(check), Field(json_schema_extra=schema)]


def _nonzero(v):
    if v is not None and not any(x != 0 for x in v):
        raise ValueError("must not be the zero vector; give a direction such as [0, 1, 0]")
    return v


#: file paths: Linux allows 4096 bytes
MAX_PATH_CHARS = 4096


def _path_text(v: str) -> str:
    # a NUL makes the operating system's path functions raise ValueError deep inside a run
    if len(v) > MAX_PATH_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError(f"must be a file path or name of at most {MAX_PATH_CHARS} characters without "
                         "control characters")
    return v


PathText = Annotated[str, AfterValidator(_path_text)]
Coord = _bounded(-MAX_COORD_MM, MAX_COORD_MM, "mm", _WHY_COORD)
Vec3 = tuple[Coord, Coord, Coord]
Direction = Annotated[tuple[Coord, Coord, Coord], AfterValidator(_nonzero)]
Length = _bounded(0, MAX_LENGTH_MM, "mm", _WHY_LENGTH, lo_open=True)
LengthOrZero = _bounded(0, MAX_LENGTH_MM, "mm", _WHY_LENGTH)
Count = _bounded(1, MAX_COUNT, "", _WHY_COUNT, kind=int)
PauseS = _bounded(0, MAX_PAUSE_S, "s", _WHY_PAUSE)
RateHz = _bounded(MIN_RATE_HZ, MAX_RATE_HZ, "Hz", _WHY_RATE, why_lo=_WHY_SLOW)
Sessions = _bounded(1, MAX_SESSIONS, "", _WHY_SESSIONS, kind=int)
SessionsPerDay = _bounded(1, MAX_SESSIONS_PER_DAY, "", _WHY_SESSIONS, kind=int)
PctThreshold = _bounded(0, MAX_PCT_THRESHOLD, "%", _WHY_PCT, lo_open=True)
PctMSO = _bounded(0, 100, "% (of the stimulator's maximum output)", lo_open=True)


class _Model(BaseModel):
    # allow_inf_nan=False: NaN and inf are refused in every float field, nested ones included
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class MNIPoint(_Model):
    """A point in MNI152 space (mm): mapped into the head by its MNI transform (a head folder from
    ``stimsim head``, or the embedded colin27, whose frame is MNI) and moved onto its scalp."""

    mni: Vec3 = Field(description="[x, y, z] in MNI152 mm")


class Electrode(_Model):
    """One electrode: where, how big, how much current."""

    name: str = Field(min_length=1, description="label shown in outputs, e.g. 'anode' or 'C3'")
    position: Union[Vec3, str, MNIPoint] = Field(
        description="centre in mm in the head's frame [x, y, z], an EEG position name (heads with positions), "
                    "or {mni: [x, y, z]} (heads with an MNI transform)"
    )
    current_mA: _bounded(-MAX_CURRENT_MA, MAX_CURRENT_MA, "mA", _WHY_CURRENT) = Field(
        description="signed current in mA (positive = anode, into the head); "
                    "for tACS the peak amplitude")
    shape: Literal["point", "disc", "rect"] = Field("point", description="point, disc (diameter_mm) or "
                                                                          "rect (size_mm = [a, b])")
    diameter_mm: Length | None = Field(None, description="disc diameter in mm")
    size_mm: tuple[Length, Length] | None = Field(None, description="rectangle side lengths [a, b] in mm; a runs "
                                                                  "along 'direction'")
    direction: Direction | None = Field(None, description="direction of side a, projected on the scalp (default: "
                                                     "any tangent)")
    model: Literal["patch", "sponge"] = Field(
        "patch", description="patch (default): an equipotential pad on the skin; sponge: a sponge/gel layer of "
                             "thickness_mm meshed onto the skin under the pad, the rubber electrode equipotential "
                             "on top (conductivity: tag 500 'saline' in conductivities, default 1.0 S/m)")
    thickness_mm: LengthOrZero | None = Field(None, description="sponge/gel thickness in mm (modelled with "
                                                                "model: sponge, else recorded)")

    @model_validator(mode="after")
    def _shape_needs_size(self):
        if self.model == "sponge" and (self.shape == "point" or not self.thickness_mm):
            raise ValueError(f"electrode {shown(self.name)}: model 'sponge' needs a pad (shape: disc or rect) and "
                             "thickness_mm > 0, e.g. thickness_mm: 5")
        if self.shape == "disc" and self.diameter_mm is None:
            raise ValueError(f"electrode {shown(self.name)}: shape 'disc' needs diameter_mm")
        if self.shape == "rect" and self.size_mm is None:
            raise ValueError(f"electrode {shown(self.name)}: shape 'rect' needs size_mm: [a, b]")
        if self.shape == "point" and (self.diameter_mm is not None or self.size_mm is not None):
            raise ValueError(f"electrode {shown(self.name)}: a point electrode takes no diameter_mm/size_mm; "
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
    rtol: _bounded(MIN_RTOL, 1, why_lo="double precision cannot resolve a smaller relative residual") | None = Field(
        None,
        description="relative residual tolerance of CG; default 1e-10 for tDCS/tACS (electrode currents "
                    "come from K v, so conservation needs a tight residual) and 1e-6 for TMS (E changes by "
                    "<= 7.4e-7 relative against 1e-12, measured on Colin27 and the sphere)")
    maxiter: _bounded(1, MAX_ITER, "", "AMG-preconditioned CG needs tens of iterations", kind=int) = 1000
    recovery: Literal["auto", "none", "nodal_average", "spr"] = Field(
        "auto", description="also write a recovered field E_recovered: auto (nodal_average for tDCS/tACS, "
                            "spr for TMS), none, nodal_average or spr (see stimsim.solvers.fields)"
    )


class TACSChannel(_Model):
    """One tACS channel of a multichannel protocol: a group of the protocol's electrodes driven at
    one frequency and phase (their currents, peak amplitudes, sum to zero)."""

    name: str = Field(min_length=1, description="channel label")
    frequency_hz: _bounded(MIN_TACS_HZ, MAX_TACS_HZ, "Hz", _WHY_TACS, why_lo=_WHY_SLOW) = Field(
        description="this channel's frequency, Hz")
    phase_deg: _bounded(-MAX_PHASE_DEG, MAX_PHASE_DEG, "degrees", "one cycle either way") = Field(
        0.0, description="this channel's phase, degrees")
    electrodes: list[str] = Field(min_length=2, max_length=MAX_ELECTRODES,
                                  description="names of the protocol's electrodes this channel drives")


class TESProtocol(_Model):
    """Transcranial electrical stimulation session (tDCS or tACS; tACS with several channels at
    their own frequencies and phases through ``channels``)."""

    kind: Literal["tdcs", "tacs"]
    name: str | None = None
    description: str | None = None
    head: PathText = Field("sphere", description="'sphere' (embedded 3-layer sphere) or a path to a .msh/.vtu mesh")
    positions: PathText | None = Field(None, description="EEG positions file (.elc/.csv/.tsv, mm, head frame) for "
                                                    "electrode names; embedded heads bring their own")
    conductivities: dict[Union[int, str], float] | None = Field(
        None, description="S/m by tag or tissue name, overriding the SimNIBS defaults"
    )
    electrodes: list[Electrode] = Field(min_length=2, max_length=MAX_ELECTRODES)
    duration_min: _bounded(0, MAX_DURATION_MIN, "min", _WHY_DURATION, lo_open=True) | None = Field(
        None, description="stimulation duration at full current, minutes")
    ramp_up_s: PauseS = Field(30.0, description="ramp-up time in seconds")
    ramp_down_s: PauseS = Field(30.0, description="ramp-down time in seconds")
    frequency_hz: _bounded(MIN_TACS_HZ, MAX_TACS_HZ, "Hz", _WHY_TACS, why_lo=_WHY_SLOW) | None = Field(
        None, description="tACS frequency (required for tacs)")
    phase_deg: _bounded(-MAX_PHASE_DEG, MAX_PHASE_DEG, "degrees", "one cycle either way") | None = Field(
        None, description="tACS phase, degrees")
    channels: list[TACSChannel] | None = Field(
        None, min_length=2, max_length=MAX_TI_CHANNELS,
        description="multichannel tACS: groups of the electrodes (by name) with their own frequency_hz and "
                    "phase_deg (then no top-level frequency_hz)")
    sessions: Sessions | None = Field(None, description="number of sessions in the course")
    sessions_per_day: SessionsPerDay | None = None
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
        if self.channels is not None:
            if self.kind != "tacs":
                raise ValueError("channels are for kind 'tacs' (temporal interference: kind 'ti')")
            if self.frequency_hz is not None or self.phase_deg is not None:
                raise ValueError("with channels, give frequency_hz and phase_deg per channel, not at the top")
            _check_unique_names([c.name for c in self.channels], "channel names")
            by_name = {e.name: e for e in self.electrodes}
            used = [n for c in self.channels for n in c.electrodes]
            unknown = sorted(set(used) - set(by_name))
            if unknown:
                raise ValueError(f"channels name electrodes that are not in electrodes: {shown(unknown)}")
            if len(used) != len(set(used)) or set(used) != set(by_name):
                raise ValueError("every electrode must belong to exactly one channel")
            for c in self.channels:
                _check_currents([by_name[n] for n in c.electrodes], f"channel {shown(c.name)}: ")
        elif self.kind == "tacs" and self.frequency_hz is None:
            raise ValueError("kind 'tacs' needs frequency_hz (or channels)")
        if self.kind == "tdcs" and self.frequency_hz is not None:
            raise ValueError("frequency_hz is given but kind is 'tdcs'; use kind: tacs or drop frequency_hz")
        _check_currents(self.electrodes)
        _check_unique_names([e.name for e in self.electrodes])
        return self


def _check_currents(electrodes, where: str = "") -> None:
    """Currents that sum to 0 mA, not all zero; unique names (shared by tDCS/tACS and each TI channel)."""
    total = sum(e.current_mA for e in electrodes)
    scale = max(abs(e.current_mA) for e in electrodes)
    if scale == 0:
        raise ValueError(f"{where}all electrode currents are 0 mA")
    if abs(total) > 1e-9 * scale:
        raise ValueError(
            f"{where}electrode currents must sum to 0 mA, they sum to {total:g} mA; adjust the return electrode(s)"
        )


def _check_unique_names(names, what: str = "electrode names") -> None:
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{what} must be unique; {shown(dup)} appear more than once")


TIFrequency = _bounded(MIN_TACS_HZ, MAX_TACS_HZ, "Hz", _WHY_TACS, why_lo=_WHY_SLOW)


class TIChannel(_Model):
    """One temporal-interference channel: a current source driving its own electrodes at its carrier
    frequency.  Currents are peak amplitudes and sum to zero within the channel."""

    name: str = Field(min_length=1, description="channel label (default ch1, ch2, ... in protocol order)")
    frequency_hz: TIFrequency = Field(description="carrier frequency, Hz (e.g. 2000 and 2010: a 10 Hz envelope)")
    electrodes: list[Electrode] = Field(min_length=2, max_length=MAX_ELECTRODES,
                                        description="the channel's electrodes; current_mA is the peak amplitude "
                                                    "and the currents sum to 0 mA")

    @model_validator(mode="after")
    def _currents(self):
        _check_currents(self.electrodes, f"channel {shown(self.name)}: ")
        return self


class TIProtocol(_Model):
    """Temporal interference (Grossman et al. 2017): two or more channels at distinct carrier frequencies.

    Each channel is solved on its own with every pad of every channel present (pads of the other
    channels carry no net current at this channel's frequency: floating equipotential conductors),
    so the channels' fields superpose exactly.  The envelope (beat) frequency of channels a and b
    is |f_a - f_b| (:meth:`envelope_frequencies_hz`).
    """

    kind: Literal["ti"]
    name: str | None = None
    description: str | None = None
    head: PathText = Field("sphere", description="'sphere' (embedded 3-layer sphere), 'colin27' or a path to a "
                                                 ".msh/.vtu mesh or head folder")
    positions: PathText | None = Field(None, description="EEG positions file (.elc/.csv/.tsv, mm, head frame) for "
                                                    "electrode names; embedded heads bring their own")
    conductivities: dict[Union[int, str], float] | None = Field(
        None, description="S/m by tag or tissue name, overriding the SimNIBS defaults"
    )
    channels: list[TIChannel] = Field(min_length=2, max_length=MAX_TI_CHANNELS,
                                      description=f"the channels (2 to {MAX_TI_CHANNELS}), each with its "
                                                  "frequency_hz and electrodes")
    envelope_direction: Direction | None = Field(
        None, description="also report the envelope amplitude along this direction [x, y, z] (head frame)")
    duration_min: _bounded(0, MAX_DURATION_MIN, "min", _WHY_DURATION, lo_open=True) | None = Field(
        None, description="stimulation duration at full current, minutes")
    ramp_up_s: PauseS = Field(30.0, description="ramp-up time in seconds")
    ramp_down_s: PauseS = Field(30.0, description="ramp-down time in seconds")
    sessions: Sessions | None = Field(None, description="number of sessions in the course")
    sessions_per_day: SessionsPerDay | None = None
    solver: SolverOptions = SolverOptions()

    _conductivities_valid = field_validator("conductivities")(TESProtocol._conductivities_valid.__func__)

    @model_validator(mode="before")
    @classmethod
    def _default_channel_names(cls, data):
        # fill in ch1, ch2, ... so that the saved protocol names every channel
        if isinstance(data, dict) and isinstance(data.get("channels"), list):
            channels = [dict(c, name=f"ch{k + 1}") if isinstance(c, dict) and c.get("name") is None else c
                        for k, c in enumerate(data["channels"])]
            data = {**data, "channels": channels}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        _check_unique_names([c.name for c in self.channels], "channel names")
        _check_unique_names([e.name for e in self.electrodes], "electrode names (over all channels)")
        freqs = [c.frequency_hz for c in self.channels]
        for i in range(len(freqs)):
            for j in range(i):
                if freqs[i] == freqs[j]:
                    raise ValueError(
                        f"channels {shown(self.channels[j].name)} and {shown(self.channels[i].name)} both run at "
                        f"{_fmt(freqs[i])} Hz: equal carriers give no envelope; give distinct frequency_hz "
                        "(e.g. 2000 and 2010 Hz for a 10 Hz envelope), or use kind: tacs")
        return self

    @property
    def electrodes(self) -> list[Electrode]:
        """Every channel's electrodes, in channel order (what the scalp carries)."""
        return [e for c in self.channels for e in c.electrodes]

    def envelope_frequencies_hz(self) -> dict[tuple[str, str], float]:
        """Envelope (beat) frequency |f_a - f_b| of every pair of channels (a before b)."""
        ch = self.channels
        return {(a.name, b.name): abs(a.frequency_hz - b.frequency_hz)
                for i, a in enumerate(ch) for b in ch[i + 1:]}


#: a parametric coil's winding geometry when the protocol gives none (inner diameter: 40 % of the outer)
PARAMETRIC_COIL_DEFAULTS = {"outer_diameter_mm": 70.0, "inner_diameter_mm": None, "turns": 9, "winding_depth_mm": 5.0}


class CoilSpec(_Model):
    """A coil: a dipole file (.ccd, path or name of a shipped coil), a SimNIBS A-field NIfTI
    (.nii/.nii.gz, read-only) or a parametric winding model."""

    file: PathText | None = Field(None, description="path to a .ccd dipole file or a .nii/.nii.gz A-field "
                                               "file, or a shipped coil name (e.g. Magstim_70mm_Fig8.ccd)")
    type: Literal["circular", "figure8"] | None = Field(None, description="parametric coil instead of a file")
    # the winding geometry of a parametric coil (defaults filled in with `type`; a file brings its own)
    outer_diameter_mm: Length | None = None
    inner_diameter_mm: Length | None = None
    # the parametric model puts a ring of dipoles per turn; TMS coils have 5-30 turns per wing
    turns: _bounded(1, 1000, "", "TMS coils have 5-30 turns per wing, small animal coils at most a few "
                             "hundred", kind=int) | None = None
    winding_depth_mm: LengthOrZero | None = Field(None, description="winding plane above the coil's bottom face")
    didt_max_A_per_us: _bounded(0, MAX_DIDT_A_PER_US, "A/µs", _WHY_DIDT, lo_open=True) | None = Field(
        None, description="dI/dt at 100 % MSO, A/µs (overrides the file)")

    @model_validator(mode="before")
    @classmethod
    def _winding_geometry(cls, data):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("file") is not None and data.get("type") is None:
            for key, default in PARAMETRIC_COIL_DEFAULTS.items():
                if key not in data or data[key] is None:
                    continue
                # protocols written by stimsim before 0.2 carried the parametric defaults beside a file
                if key != "inner_diameter_mm" and data[key] == default:
                    del data[key]
                else:
                    raise ValueError(f"coil.{key} describes a parametric coil (coil.type); a coil file brings "
                                     f"its own geometry: remove {key}, or give type instead of file")
        elif data.get("type") is not None:
            for key, default in PARAMETRIC_COIL_DEFAULTS.items():
                if data.get(key) is None and default is not None:
                    data[key] = default
        return data

    @model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.type is None):
            raise ValueError("coil: give exactly one of 'file' or 'type' (circular | figure8)")
        return self


class Placement(_Model):
    """Coil position: scalp centre + handle direction + distance, a 4x4 coil-to-head matrix (mm), or a
    marker of a neuronavigation file (Localite XML, Brainsight .txt, ANT Visor 2 .mrk; see
    docs/neuronavigation.md)."""

    center: Union[Vec3, str, MNIPoint, None] = Field(
        None, description="scalp point [x, y, z] mm, an EEG name (heads with positions) or {mni: [x, y, z]}")
    direction: Direction | None = Field(None, description="handle (coil y) direction, projected on the scalp")
    distance_mm: LengthOrZero | None = Field(None, description="scalp-to-coil distance, mm (default 4; with "
                                                                "center+direction only: a matrix holds it)")
    matrix: list[list[Coord]] | None = Field(None, description="4x4 coil-to-head matrix (SimNIBS matsimnibs "
                                                               "convention, mm)")
    localite: PathText | None = Field(None, description="Localite TMS Navigator InstrumentMarker or "
                                                        "TriggerMarkers .xml file")
    brainsight: PathText | None = Field(None, description="Brainsight exported .txt (NIfTI:Aligned coordinates)")
    ant: PathText | None = Field(None, description="ANT Visor 2 .mrk marker file")
    marker: Union[_bounded(0, MAX_COUNT, "", "markers are numbered from 0", kind=int), str, None] = Field(
        None, description="navigator marker: index in the file (from 0) or name (needed when the file holds "
                          "several)")
    t1: PathText | None = Field(None, description="the T1 NIfTI the navigator loaded (optional: checks and maps "
                                                  "its qform/sform frames to the head's)")

    @field_validator("marker", mode="before")
    @classmethod
    def _marker_not_bool(cls, v):
        if isinstance(v, bool):
            raise ValueError("give a marker index (from 0) or a marker name, not true/false")
        return v

    @property
    def navigator(self) -> tuple[str, str] | None:
        """(system, file) of a navigator placement, else None."""
        for system in ("localite", "brainsight", "ant"):
            if getattr(self, system) is not None:
                return system, getattr(self, system)
        return None

    @model_validator(mode="after")
    def _center_or_matrix(self):
        navs = [k for k in ("localite", "brainsight", "ant") if getattr(self, k) is not None]
        if len(navs) > 1:
            raise ValueError(f"placement: give one navigator file, not {' and '.join(navs)}")
        if navs:
            others = [k for k in ("center", "direction", "distance_mm", "matrix") if getattr(self, k) is not None]
            if others:
                raise ValueError(f"placement: the {navs[0]} file holds the whole coil position; drop "
                                 f"{', '.join(others)}")
            return self
        if self.marker is not None or self.t1 is not None:
            raise ValueError("placement: marker and t1 belong to a navigator file (localite, brainsight or ant)")
        if self.matrix is not None:
            if self.center is not None or self.direction is not None or self.distance_mm is not None:
                raise ValueError("placement: give either matrix or center+direction(+distance_mm), not both")
            if len(self.matrix) != 4 or any(len(r) != 4 for r in self.matrix):
                raise ValueError("placement.matrix must be 4 rows of 4 numbers")
        elif self.center is None or self.direction is None:
            raise ValueError("placement: needs center and direction, a 4x4 matrix, or a navigator file "
                             "(localite, brainsight or ant)")
        return self


class Stimulator(_Model):
    """Coil current change rate: directly (A/µs), as % of maximum stimulator output, or from the
    pulse (peak coil current and period of an RLC discharge; see stimsim.coils.waveform)."""

    didt_A_per_us: _bounded(0, MAX_DIDT_A_PER_US, "A/µs", _WHY_DIDT, lo_open=True) | None = Field(
        None, description="dI/dt of the pulse, A/µs")
    percent_mso: PctMSO | None = Field(None, description="% of maximum stimulator output "
                                                        "(needs the coil's dI/dt max)")
    peak_current_A: _bounded(0, MAX_PEAK_CURRENT_A, "A", _WHY_PEAK, lo_open=True) | None = Field(
        None, description="peak coil current of the pulse, A")
    period_us: _bounded(MIN_PERIOD_US, MAX_PERIOD_US, "µs", _WHY_PERIOD, why_lo=_WHY_PERIOD) | None = Field(
        None, description="ringing period of the pulse, µs (e.g. 280)")
    damping_per_us: _bounded(0, MAX_DAMPING_PER_US, "1/µs", _WHY_DAMPING) = Field(
        0.0, description="exponential damping of the pulse, 1/µs")
    waveform: Literal["biphasic", "monophasic"] = Field("biphasic", description="pulse shape")
    waveform_file: PathText | None = Field(
        None, description="measured pulse: .tsv with header columns time_us and didt_A_per_us; alone its peak "
                          "dI/dt scales the field, with didt_A_per_us / percent_mso / peak_current_A its shape "
                          "is scaled to that (docs/neuronavigation.md, measured pulses)")
    model: str | None = Field(None, description="stimulator make/model (recorded)")

    @model_validator(mode="after")
    def _one(self):
        given = [self.didt_A_per_us is not None, self.percent_mso is not None, self.peak_current_A is not None]
        if self.waveform_file is not None:
            if sum(given) > 1:
                raise ValueError("stimulator: with waveform_file give at most one of didt_A_per_us, percent_mso "
                                 "or peak_current_A (the file's shape is scaled to it)")
            # values, not whether a field was set: a saved protocol writes the defaults back out
            nominal = ["period_us"] if self.period_us is not None else []
            if self.waveform != "biphasic":
                nominal.append("waveform")
            if self.damping_per_us:
                nominal.append("damping_per_us")
            if nominal:
                raise ValueError(f"stimulator: waveform_file gives the measured pulse shape; drop "
                                 f"{', '.join(nominal)} (they describe the nominal RLC shape)")
            return self
        if sum(given) != 1:
            raise ValueError("stimulator: give exactly one of didt_A_per_us, percent_mso or "
                             "peak_current_A (+ period_us)")
        if self.peak_current_A is not None and self.period_us is None:
            raise ValueError("stimulator: peak_current_A needs period_us (the pulse's ringing period)")
        if self.peak_current_A is not None:
            # dI/dt(0) = I_scale * omega >= I_peak * 2 pi / period: both fields may be plausible alone
            # and still imply an impossible dI/dt (50 kA in 1 µs), which would scale every field
            didt = self.peak_current_A * 2 * math.pi / self.period_us
            if didt > MAX_DIDT_A_PER_US:
                raise ValueError(
                    f"stimulator: peak_current_A {_fmt(self.peak_current_A)} A with period_us "
                    f"{_fmt(self.period_us)} µs means a dI/dt of at least {didt:.3g} A/µs, above "
                    f"{_fmt(MAX_DIDT_A_PER_US)} A/µs: {_WHY_DIDT}")
        return self


class PulseProgram(_Model):
    """Pulse programme: single pulses, repetitive TMS or theta burst (iTBS / cTBS / custom)."""

    type: Literal["single", "rtms", "itbs", "ctbs", "tbs"]
    intensity_pct_rmt: PctThreshold | None = Field(None, description="% of resting motor threshold")
    intensity_pct_amt: PctThreshold | None = Field(None, description="% of active motor threshold")
    intensity_pct_mso: PctMSO | None = Field(None, description="% of maximum stimulator output")
    pulses: Count | None = Field(None, description="single: number of pulses")
    interval_s: _bounded(0, MAX_PAUSE_S, "s", _WHY_PAUSE, lo_open=True) | None = Field(
        None, description="single: seconds between pulses")
    frequency_hz: RateHz | None = Field(None, description="rtms: pulse frequency within a train")
    pulses_per_train: Count | None = None
    trains: Count | None = None
    iti_s: PauseS | None = Field(None, description="inter-train interval (pause between trains), s")
    burst_frequency_hz: RateHz | None = Field(None, description="tbs: pulse frequency within a burst "
                                                               "(default 50 Hz)")
    pulses_per_burst: _bounded(1, MAX_PULSES_PER_BURST, "", "theta bursts have 3-5 pulses", kind=int) | None = \
        Field(None, description="tbs: default 3")
    burst_rate_hz: RateHz | None = Field(None, description="tbs: bursts per second (default 5 Hz, theta)")
    bursts_per_train: Count | None = Field(None, description="tbs: iTBS 10 (2 s), cTBS 200 (40 s)")

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
        totals = self.expanded()
        if totals["total_pulses"] > MAX_TOTAL_PULSES:
            raise ValueError(f"program: {totals['total_pulses']} pulses in one session; at most "
                             f"{MAX_TOTAL_PULSES} are accepted: {_WHY_COUNT}")
        if totals["session_duration_s"] > MAX_SESSION_S:
            raise ValueError(f"program: the session would last {totals['session_duration_s'] / 86400:.3g} days; "
                             f"at most {_fmt(MAX_SESSION_S / 86400)} are accepted: {_WHY_TMS_SESSION}")
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
    head: PathText = Field("sphere", description="'sphere' or a path to a .msh/.vtu mesh")
    positions: PathText | None = Field(None, description="EEG positions file for a named placement centre")
    conductivities: dict[Union[int, str], float] | None = None
    coil: CoilSpec
    placement: Placement
    stimulator: Stimulator
    program: PulseProgram = PulseProgram(type="single")
    screening: dict[str, Union[bool, str, None]] | None = Field(
        None, description="TMS screening answers, item -> yes/no (items: `stimsim check` lists them; "
                          "after Rossi et al. 2011/2021 and Keel et al. 2001)")
    sessions: Sessions | None = None
    sessions_per_day: SessionsPerDay | None = None
    solver: SolverOptions = SolverOptions()

    _conductivities_valid = field_validator("conductivities")(TESProtocol._conductivities_valid.__func__)


Protocol = Annotated[Union[TESProtocol, TIProtocol, TMSProtocol], Field(discriminator="kind")]
