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
    rtol: float = Field(1e-10, gt=0, lt=1, description="relative residual tolerance of CG")
    maxiter: int = Field(1000, gt=0)
    recovery: Literal["none", "nodal_average"] = Field(
        "nodal_average", description="also write a recovered field E_recovered (see stimsim.solvers.fields)"
    )


class TESProtocol(_Model):
    """Transcranial electrical stimulation session (tDCS or tACS)."""

    kind: Literal["tdcs", "tacs"]
    name: str | None = None
    description: str | None = None
    head: str = Field("sphere", description="'sphere' (embedded 3-layer sphere) or a path to a .msh/.vtu mesh")
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


Protocol = Annotated[Union[TESProtocol], Field(discriminator="kind")]
