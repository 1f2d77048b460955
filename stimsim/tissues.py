"""Tissue numbering, in one place: SimNIBS volume tags and names, default conductivities, the
surface-tag offset, which tags are brain, and the nesting layers the meshers keep in order.

The numbering follows SimNIBS so that users can bring SimNIBS head meshes unchanged: volume
tags 1..N, surface tags = volume tag + 1000.  Default conductivities: see
:mod:`stimsim.conductivity` for their sources.
"""

from __future__ import annotations

import numpy as np

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

#: a surface triangle's tag is its volume's tag plus this (SimNIBS)
SURFACE_TAG_OFFSET = 1000

#: white and grey matter: what field-based rules and targets count as brain on a real head
BRAIN_TAGS = (1, 2)

#: nesting layer of each tag, outside (1) to inside (5); 0 = background.  The meshers keep layers
#: ordered (a tet of layer j touches only layers j-1..j+1 across a face), which closes the skull
#: and the CSF.  Eyes and muscle sit in the scalp layer, compact/spongy bone in the bone layer,
#: blood in the CSF layer; a tag above 10 (a lesion, a tissue of the user's) counts as brain.
LAYER_OF_TAG = {0: 0, 5: 1, 6: 1, 10: 1, 4: 2, 7: 2, 8: 2, 3: 3, 9: 3, 2: 4, 1: 5}
#: the tag that stands for a layer when a mesher has to fill a gap in it
LAYER_FILL_TAG = {1: 5, 2: 4, 3: 3, 4: 2, 5: 1}


#: accepted spellings of tissue names -> tag
TISSUE_ALIASES = {name: tag for tag, (name, _) in TISSUES.items()}
TISSUE_ALIASES.update({"wm": 1, "gm": 2, "grey_matter": 2, "skull": 4, "skin": 5, "eyes": 6, "eye": 6})


def tissue_name(tag: int) -> str:
    """Name of a volume tag (``"tag_<n>"`` when it is not a SimNIBS tissue)."""
    return TISSUES.get(int(tag), (f"tag_{int(tag)}", None))[0]


def default_brain_tags(head: str) -> list[int]:
    """Tags that stand for brain on a head: the embedded three-layer sphere's inner ball (3),
    else white and grey matter."""
    return [3] if head == "sphere" else list(BRAIN_TAGS)


def layer_lut(size: int = 256, layer_of: dict[int, int] | None = None) -> np.ndarray:
    """Tag -> nesting layer lookup table (:data:`LAYER_OF_TAG`; tags above 10 are brain, layer 4),
    with ``layer_of`` ({tag: layer}) where a mesher puts a tissue in another layer (a user's tissue
    inside the white matter or the skull)."""
    lut = np.zeros(size, np.int64)
    for tag, layer in LAYER_OF_TAG.items():
        lut[tag] = layer
    lut[11:] = 4
    for tag, layer in (layer_of or {}).items():
        if 0 < int(tag) < size:
            lut[int(tag)] = int(layer)
    return lut


__all__ = ["TISSUES", "TISSUE_ALIASES", "SURFACE_TAG_OFFSET", "BRAIN_TAGS", "LAYER_OF_TAG", "LAYER_FILL_TAG",
           "tissue_name", "default_brain_tags", "layer_lut"]
