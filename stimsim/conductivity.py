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

from .errors import ProtocolError

#: tag -> (name, default conductivity in S/m)
TISSUES: dict[int, tuple[str, float]] = {
    1: ("white_matter", 0.126),
    2: ("gray_matter", 0.275),
    3: ("csf", 1.654),
    4: ("bone", 0.010),
    5: ("scalp", 0.465),
    6: ("eye_balls", 0.5),
    7: ("compact_bone", 0.008),
    8: ("spongy_bone", 0.025),
    9: ("blood", 0.6),
    10: ("muscle", 0.16),
    100: ("silicone_rubber", 29.4),
    500: ("saline", 1.0),
}

#: accepted spellings -> tag
_ALIASES = {name: tag for tag, (name, _) in TISSUES.items()}
_ALIASES.update({"wm": 1, "gm": 2, "grey_matter": 2, "skull": 4, "skin": 5, "eyes": 6, "eye": 6})


def tissue_name(tag: int) -> str:
    """Name of a volume tag (``"tag_<n>"`` when it is not a SimNIBS tissue)."""
    return TISSUES.get(int(tag), (f"tag_{int(tag)}", None))[0]


def resolve_tag(key: int | str) -> int:
    """Turn a tag number or tissue name (``"csf"``, ``"gray matter"``, ``3``, ``"3"``) into a tag."""
    if isinstance(key, bool):
        raise ProtocolError(f"conductivities: key {key!r} is not a tissue tag or name")
    if isinstance(key, int):
        return key
    text = str(key).strip().lower().replace(" ", "_").replace("-", "_")
    if text.isdigit():
        return int(text)
    if text in _ALIASES:
        return _ALIASES[text]
    close = difflib.get_close_matches(text, list(_ALIASES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ProtocolError(
        f"conductivities: unknown tissue {key!r}; use a tag number or one of {sorted(_ALIASES)}.{hint}"
    )


def conductivity_table(overrides: Mapping[int | str, float] | None = None) -> dict[int, float]:
    """Default conductivities (S/m) by tag, with ``overrides`` (by tag or tissue name) applied.

    Raises
    ------
    ProtocolError
        If an override is not a finite positive number.
    """
    table = {tag: value for tag, (_, value) in TISSUES.items()}
    for key, value in (overrides or {}).items():
        tag = resolve_tag(key)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ProtocolError(f"conductivities[{key!r}]: {value!r} is not a number (S/m)") from None
        if not math.isfinite(v) or v <= 0:
            raise ProtocolError(
                f"conductivities[{key!r}]: {value!r} S/m is not allowed; give a finite value > 0 S/m"
            )
        table[tag] = v
    return table


def element_conductivities(tet_tags: np.ndarray, table: Mapping[int, float]) -> np.ndarray:
    """Conductivity (S/m) of every tetrahedron; a clear error names tags without a value."""
    tags = np.unique(tet_tags)
    missing = [int(t) for t in tags if int(t) not in table]
    if missing:
        raise ProtocolError(
            f"conductivities: mesh tags {missing} have no conductivity; add them to the protocol's "
            f"'conductivities' mapping (S/m), e.g. {{{missing[0]}: 0.3}}"
        )
    lut = np.zeros(int(tags.max()) + 1)
    for t in tags:
        lut[int(t)] = table[int(t)]
    return lut[tet_tags]
