"""Real heads: label volume -> tetrahedral mesh, label maps, EEG positions, lesions.

The names below load on first use (PEP 562): a run that only looks up EEG positions
(:mod:`stimsim.head.eeg`) does not import the meshers and SciPy's ndimage (~0.1 s).
"""

from importlib import import_module

_WHERE = {
    "LABEL_MAPS": "labels", "apply_label_map": "labels", "label_map": "labels", "read_label_map": "labels",
    "DEFAULT_ELEMENT_SIZE_MM": "meshers", "METHODS": "meshers", "cache_dir": "meshers", "make_head_mesh": "meshers",
    "quality_summary": "meshers", "resolve_method": "meshers", "tissue_connectivity": "meshers",
}

__all__ = ["LABEL_MAPS", "label_map", "read_label_map", "apply_label_map", "make_head_mesh", "quality_summary",
           "tissue_connectivity", "cache_dir", "DEFAULT_ELEMENT_SIZE_MM", "METHODS", "resolve_method"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
