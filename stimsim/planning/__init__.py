"""Planning at scale: leadfields, montage optimisation, coil search, parallel batches."""

from .batch import run_batch
from .leadfield import Leadfield, compute_leadfield, load_leadfield, save_leadfield
from .optimize import MontageSolution, montage_protocol, optimize_tdcs
from .tms_search import CoilSearchResult, plot_hotspot, search_tms

__all__ = ["Leadfield", "compute_leadfield", "save_leadfield", "load_leadfield", "optimize_tdcs",
           "montage_protocol", "MontageSolution", "search_tms", "CoilSearchResult", "plot_hotspot", "run_batch"]
