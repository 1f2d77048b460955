"""Real heads: label volume -> tetrahedral mesh, label maps, EEG positions, lesions."""

from .labels import LABEL_MAPS, apply_label_map, label_map, read_label_map
from .meshers import (
    DEFAULT_ELEMENT_SIZE_MM,
    METHODS,
    cache_dir,
    make_head_mesh,
    quality_summary,
    resolve_method,
    tissue_connectivity,
)

__all__ = ["LABEL_MAPS", "label_map", "read_label_map", "apply_label_map", "make_head_mesh", "quality_summary",
           "tissue_connectivity", "cache_dir", "DEFAULT_ELEMENT_SIZE_MM", "METHODS", "resolve_method"]
