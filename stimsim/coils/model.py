"""TMS coils as sets of magnetic dipoles in the coil frame.

Coil frame (same axes as SimNIBS so placements move between tools): origin at the centre of
the coil's bottom face, **z pointing into the head**, **y along the handle**, x = y × z.
Dipole positions are in metres in files and in this model; moments are per ampere of coil
current (A·m² / A = m²), so the dipole moments for a current change dI/dt are
``moments * didt``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ProtocolError, check_option


class CoilError(ProtocolError):
    """A coil file or coil description is unusable."""


@dataclass(frozen=True, eq=False)
class DipoleCoil:
    """A coil model: dipole positions (m, coil frame) and moments (m² per A of coil current).

    Attributes
    ----------
    name : label
    positions_m : (k, 3)
    moments_m2 : (k, 3)
    didt_max_A_per_s : maximum dI/dt of the stimulator + coil at 100 % output, if known
    metadata : header fields from the file
    """

    name: str
    positions_m: np.ndarray
    moments_m2: np.ndarray
    didt_max_A_per_s: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "positions_m", np.ascontiguousarray(self.positions_m, float).reshape(-1, 3))
        object.__setattr__(self, "moments_m2", np.ascontiguousarray(self.moments_m2, float).reshape(-1, 3))
        if len(self.positions_m) != len(self.moments_m2) or len(self.positions_m) == 0:
            raise CoilError(f"coil {self.name!r}: needs as many dipole positions as moments (> 0)")

    @property
    def n_dipoles(self) -> int:
        return len(self.positions_m)

    def __repr__(self):
        return f"<DipoleCoil {self.name!r} | {self.n_dipoles} dipoles, dI/dt max {self.didt_max_A_per_s}>"

    def transformed(self, matrix_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dipole positions (mm, head frame) and moments (m², head frame) for a 4x4 coil-to-head matrix."""
        rot = matrix_mm[:3, :3]
        pos = self.positions_m * 1e3 @ rot.T + matrix_mm[:3, 3]
        return pos, self.moments_m2 @ rot.T

    # the interface shared with GridCoil (stimsim.coils.nifti), so callers need not know the kind

    def summary(self) -> dict:
        """JSON-ready description for a result's ``extra["coil"]``."""
        return {"name": self.name, "dipoles": self.n_dipoles, "didt_max_A_per_s": self.didt_max_A_per_s}

    def dadt(self, points_mm: np.ndarray, matrix_mm: np.ndarray, didt_A_per_s: float, *,
             precision: str = "double") -> np.ndarray:
        """dA/dt (V/m, head frame) at head points (mm) for a 4x4 coil-to-head matrix (mm)."""
        from ..fem.primary import dipole_dadt

        pos, mom = self.transformed(np.asarray(matrix_mm, float))
        return dipole_dadt(points_mm, pos, mom, didt_A_per_s, precision=precision)

    def check_outside(self, mesh, matrix_mm: np.ndarray) -> None:
        """Refuse a placement that puts windings (dipoles) inside the head."""
        check_dipoles_outside(mesh, self.transformed(np.asarray(matrix_mm, float))[0])


def check_dipoles_outside(mesh, dipole_positions_mm: np.ndarray) -> None:
    """Refuse a coil whose windings lie inside the head (below the scalp surface)."""
    from .placement import scalp_depth

    depth = scalp_depth(mesh, dipole_positions_mm)
    inside = depth < 0
    if np.any(inside):
        raise ProtocolError(
            f"placement: the coil intersects the head ({int(inside.sum())} of {len(inside)} coil dipoles lie "
            f"up to {-depth.min():.1f} mm under the scalp); increase placement.distance_mm or check the matrix"
        )


_HEADER_KEY = re.compile(r";\s*([A-Za-z_]\w*)\s*=\s*([^;]*)")


def read_ccd(path: str | Path) -> DipoleCoil:
    """Read a .ccd dipole coil file (text: header, dipole count, comment, ``x y z mx my mz`` rows).

    Header keys after the first line's text (``;dIdtmax=...;stimulator=...``) are kept in
    ``metadata``; ``dIdtmax`` (A/µs in newer files) becomes ``didt_max_A_per_s``.

    Raises
    ------
    CoilError
        For a missing, malformed or truncated file (the count line disagrees with the rows).
    """
    path = Path(path)
    if not path.is_file():
        raise CoilError(f"coil file not found: {path}")
    try:
        if path.suffix == ".gz":
            import gzip

            with gzip.open(path, "rt", encoding="utf-8") as fh:
                text = fh.read()
        else:
            text = path.read_text(encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, OSError, EOFError):
        raise CoilError(f"{path}: not a readable text .ccd coil file") from None
    lines = text.splitlines()
    if len(lines) < 4:
        raise CoilError(f"{path}: a .ccd file needs a header, a dipole count, a comment and dipole rows")
    header = lines[0]
    metadata = {k: v.strip() for k, v in _HEADER_KEY.findall(header)}
    try:
        count = int(lines[1].split()[0])
    except (ValueError, IndexError):
        raise CoilError(f"{path}: line 2 must be the number of dipoles, got {lines[1]!r}") from None
    body = " ".join(ln for ln in lines[2:] if not ln.lstrip().startswith("#"))
    try:
        values = np.array(body.split(), dtype=float)
    except ValueError:
        raise CoilError(f"{path}: dipole rows must hold 6 numbers each (x y z mx my mz)") from None
    if values.size != 6 * count:
        raise CoilError(
            f"{path}: header says {count} dipoles but the file holds {values.size / 6:g} rows of 6 numbers "
            "(truncated or malformed file)"
        )
    if not np.all(np.isfinite(values)):
        raise CoilError(f"{path}: dipole rows contain non-finite numbers")
    rows = values.reshape(count, 6)
    didt = None
    if "dIdtmax" in metadata:
        try:
            first = float(metadata["dIdtmax"].strip("[]").split(",")[0])
        except ValueError:
            raise CoilError(f"{path}: header dIdtmax={metadata['dIdtmax']!r} is not a number") from None
        didt = first * 1e6  # files give A/µs
    name = Path(header.lstrip("#").split()[0]).stem if header.lstrip("#").split() else path.stem
    name = name.removesuffix(".ccd")
    return DipoleCoil(name, rows[:, :3], rows[:, 3:], didt, metadata)


def _spiral_dipoles(loop_radii_m, center_xy, z_m: float, sign: float, max_width_m: float):
    """Discretise concentric flat loops (one current each) into z-directed dipoles.

    A planar loop of current I equals a sheet of z-dipoles covering its disc with moment
    density I per unit area, so a set of loops equals one sheet whose density at radius
    rho is the number of loops enclosing rho.  The sheet is cut into annuli at every loop
    radius (and no wider than ``max_width_m``) and each annulus into patches ~as long as
    wide; each dipole carries its patch's area times the enclosing-loop count.
    """
    radii = np.sort(np.asarray(loop_radii_m, float))
    edges = [0.0]
    for r in radii:
        n = max(1, int(math.ceil((r - edges[-1]) / max_width_m)))
        edges.extend(np.linspace(edges[-1], r, n + 1)[1:])
    edges = np.array(edges)
    pos, mom = [], []
    for r0, r1 in zip(edges[:-1], edges[1:]):
        if r1 <= r0:
            continue
        weight = np.count_nonzero(radii >= r1 - 1e-12)
        rm = 0.5 * (r0 + r1)
        n = max(1, int(math.ceil(2 * math.pi * rm / (r1 - r0))))
        phi = (np.arange(n) + 0.5) * 2 * math.pi / n
        area = math.pi * (r1**2 - r0**2) / n
        pos.append(np.column_stack([center_xy[0] + rm * np.cos(phi), center_xy[1] + rm * np.sin(phi),
                                    np.full(n, z_m)]))
        mom.append(np.tile([0.0, 0.0, sign * weight * area], (n, 1)))
    return np.vstack(pos), np.vstack(mom)


def make_coil(kind: str, *, outer_diameter_mm: float = 70.0, inner_diameter_mm: float | None = None,
              turns: int = 9, winding_depth_mm: float = 5.0, rings: int = 12,
              didt_max_A_per_us: float | None = None) -> DipoleCoil:
    """Parametric circular or figure-8 coil built from its winding geometry.

    The windings are concentric flat loops, discretised into z-directed magnetic dipoles
    (exact far field; the near field converges as ``rings`` grows).  A figure-8 has two such
    wings side by side along x with opposite current, touching at the origin, so the
    windings run along y (the handle) at the centre, and so does the peak field under it.

    Parameters
    ----------
    kind : "circular" or "figure8"
    outer_diameter_mm : outer diameter of the windings (of each wing for a figure-8)
    inner_diameter_mm : inner diameter (default: 40 % of the outer one)
    turns : windings per wing
    winding_depth_mm : distance of the winding plane above the coil's bottom face
    """
    check_option("coil.type", kind, ("circular", "figure8"), error=CoilError)
    if outer_diameter_mm <= 0 or turns < 1 or rings < 1 or winding_depth_mm < 0:
        raise CoilError("coil: outer_diameter_mm > 0, turns >= 1, rings >= 1 and winding_depth_mm >= 0 are needed")
    r_out = outer_diameter_mm * 1e-3 / 2
    r_in = (inner_diameter_mm if inner_diameter_mm is not None else 0.4 * outer_diameter_mm) * 1e-3 / 2
    if not 0 < r_in <= r_out:
        raise CoilError("coil: inner_diameter_mm must be > 0 and <= outer_diameter_mm")
    z = -winding_depth_mm * 1e-3  # windings sit above the bottom face: negative z (z points into the head)
    radii = np.linspace(r_in, r_out, turns) if turns > 1 else np.array([0.5 * (r_in + r_out)])
    # wing signs as in the shipped Magstim .ccd model (left wing moments along -z), so that
    # parametric and file coils give the same E direction for the same placement
    wings = [((0.0, 0.0), 1.0)] if kind == "circular" else [((-r_out, 0.0), -1.0), ((r_out, 0.0), 1.0)]
    pos, mom = [], []
    for center, sign in wings:
        p, m = _spiral_dipoles(radii, center, z, sign, r_out / rings)
        pos.append(p)
        mom.append(m)
    didt = didt_max_A_per_us * 1e6 if didt_max_A_per_us is not None else None
    name = f"{kind}_{outer_diameter_mm:g}mm_{turns}turns"
    return DipoleCoil(name, np.vstack(pos), np.vstack(mom), didt,
                      {"type": kind, "outer_diameter_mm": outer_diameter_mm, "turns": turns})
