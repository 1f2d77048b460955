"""Tissue numbering and default isotropic conductivities (S/m).

The numbering follows SimNIBS so that users can bring SimNIBS head meshes unchanged:
volume tags 1..N, surface tags = volume tag + 1000.  The default values are the ones
listed in the SimNIBS documentation ("Conductivity values", SimNIBS 4), which in turn
cite Wagner et al. 2004 (IEEE TBME 51:1586, doi:10.1109/TBME.2004.827925),
Thielscher et al. 2011 (NeuroImage 54:234, doi:10.1016/j.neuroimage.2010.07.061) and
Opitz et al. 2015 (NeuroImage 109:140, doi:10.1016/j.neuroimage.2015.01.033).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping

import numpy as np

from ._logging import logger
from .errors import ProtocolError, shown
from .tissues import TISSUE_ALIASES, TISSUES, tissue_name  # noqa: F401  (tissue_name: re-exported)

#: rubber (100) and saline (500): electrode materials, added by the layered electrode model
ELECTRODE_MATERIAL_TAGS = frozenset({100, 500})

#: sanity bounds of a conductivity override, S/m.  Silver, the best conductor there is, has
#: 6.3e7 S/m; good insulators have < 1e-12 S/m, and a contrast beyond ~1e12 to tissue (~1 S/m)
#: is more than a double-precision solve resolves.  A value outside is a typing or unit mistake
#: (and 1e300 would overflow the stiffness matrix).
MIN_SIGMA, MAX_SIGMA = 1e-12, 1e8
#: tags are stored as 32-bit integers in Gmsh and VTU files
MAX_TAG = 2**31 - 1

def resolve_tag(key: int | str, field: str = "conductivities") -> int:
    """Turn a tag number or tissue name (``"csf"``, ``"gray matter"``, ``3``, ``"3"``) into a tag; an
    error names ``field``, where the key was written."""
    if isinstance(key, bool):
        raise ProtocolError(f"{field}: key {key!r} is not a tissue tag or name")
    if isinstance(key, int):
        tag = key
    else:
        text = str(key).strip().lower().replace(" ", "_").replace("-", "_")
        if text.isascii() and text.isdigit() and len(text) <= 10:
            tag = int(text)
        elif text in TISSUE_ALIASES:
            return TISSUE_ALIASES[text]
        else:
            close = difflib.get_close_matches(text[:100], list(TISSUE_ALIASES), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ProtocolError(
                f"{field}: unknown tissue {shown(key)}; use a tag number or one of "
                f"{sorted(TISSUE_ALIASES)}.{hint}"
            )
    if not 0 <= tag <= MAX_TAG:
        raise ProtocolError(f"{field}: tag {shown(key)} is not a mesh tag; tags are whole numbers from 0 to "
                            f"{MAX_TAG} (SimNIBS tissues: 1-10, 100, 500)")
    return tag


class ConductivityTable(dict):
    """``{tag: S/m}``, remembering which tags the user gave (``given``: tag -> key as written),
    so that :func:`element_conductivities` can say which of them the mesh does not have."""

    def __init__(self, *args, given: Mapping[int, int | str] | None = None):
        super().__init__(*args)
        self.given = dict(given or {})


def conductivity_table(overrides: Mapping[int | str, float] | None = None) -> ConductivityTable:
    """Default conductivities (S/m) by tag, with ``overrides`` (by tag or tissue name) applied.

    Raises
    ------
    ProtocolError
        If an override is not a finite number within [MIN_SIGMA, MAX_SIGMA] S/m, or two keys
        name the same tag ("csf" and 3).
    """
    table = ConductivityTable({tag: value for tag, (_, value) in TISSUES.items()})
    for key, value in (overrides or {}).items():
        tag = resolve_tag(key)
        if tag in table.given:
            raise ProtocolError(f"conductivities: {shown(table.given[tag])} and {shown(key)} both set tag {tag} "
                                f"({tissue_name(tag)}); give it once")
        try:
            v = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ProtocolError(f"conductivities[{shown(key)}]: {shown(value)} is not a number (S/m)") from None
        if not math.isfinite(v) or v <= 0:
            raise ProtocolError(
                f"conductivities[{shown(key)}]: {shown(value)} S/m is not allowed; give a finite value > 0 S/m"
            )
        if not MIN_SIGMA <= v <= MAX_SIGMA:
            raise ProtocolError(
                f"conductivities[{shown(key)}]: {shown(value)} S/m is outside {MIN_SIGMA:g}..{MAX_SIGMA:g} S/m "
                "(silver conducts 6.3e7 S/m, insulators < 1e-12 S/m, tissue 0.01-2 S/m); check the value and unit"
            )
        table[tag] = v
        table.given[tag] = key
    return table


def element_conductivities(tet_tags: np.ndarray, table: Mapping[int, float]) -> np.ndarray:
    """Conductivity (S/m) of every tetrahedron; a clear error names tags without a value.

    Conductivities the user gave (a :class:`ConductivityTable`'s ``given``) for tags the mesh
    does not have are logged as a warning: they are ignored, which is usually a typo or the
    wrong mesh.
    """
    tags = np.unique(tet_tags)
    missing = [int(t) for t in tags if int(t) not in table]
    if missing:
        raise ProtocolError(
            f"conductivities: mesh tags {missing} have no conductivity; add them to the protocol's "
            f"'conductivities' mapping (S/m), e.g. {{{missing[0]}: 0.3}}"
        )
    present = {int(t) for t in tags}
    # electrode materials (rubber 100, saline 500) belong to the electrode model, not the head mesh
    absent = [(tag, key) for tag, key in getattr(table, "given", {}).items()
              if tag not in present and tag not in ELECTRODE_MATERIAL_TAGS]
    if absent:
        mesh_tags = ", ".join(str(t) for t in sorted(present))
        for tag, key in absent:
            what = f"tag {tag}" if isinstance(key, int) or str(key).strip() == str(tag) else f"{shown(key)} (tag {tag})"
            logger.warning("conductivities: %s is not in the head mesh (tags %s); ignored", what, mesh_tags)
    lut = np.zeros(int(tags.max()) + 1)
    for t in tags:
        lut[int(t)] = table[int(t)]
    return lut[tet_tags]
