"""Label volume -> tetrahedral head mesh (``stimsim mesh``, ``stimsim head``).

One shared core (:mod:`~stimsim.head.meshers.core`: label-volume loading, label cleaning, the
cache, the checks and quality report, the world transform, :func:`make_head_mesh` choosing a
mesher) and one module per mesher: :mod:`~stimsim.head.meshers.surface` (nested smooth surfaces +
TetGen, the default) and :mod:`~stimsim.head.meshers.lattice` (BCC lattice, pip wheels only).
:mod:`~stimsim.head.meshers.topology` holds the tetrahedral topology both use.
"""

from .core import (DEFAULT_ELEMENT_SIZE_MM, MESHER_VERSION, METHODS, HeadMeshInfo, assess_quality, cache_dir,
                   check_meshable, default_element_size, expected_tags, load_label_volume, make_head_mesh,
                   make_surface_head_mesh, print_summary, quality_summary, resolve_method, tissue_connectivity,
                   volume_check)

__all__ = ["make_head_mesh", "make_surface_head_mesh", "load_label_volume", "tissue_connectivity", "quality_summary",
           "resolve_method", "check_meshable", "volume_check", "assess_quality", "expected_tags", "print_summary",
           "default_element_size", "cache_dir", "METHODS", "DEFAULT_ELEMENT_SIZE_MM", "MESHER_VERSION",
           "HeadMeshInfo"]
