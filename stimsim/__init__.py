"""stimsim: plan and simulate noninvasive brain stimulation (tDCS/tACS, temporal interference, TMS).

Data flows one way: protocol -> head model -> solve -> result -> (safety, pictures, report).  ``import stimsim``
loads no VTK; plotting lives in ``stimsim.viz``.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # light top-level import: heavy modules load when first used
    if name in ("simulate", "SimulationResult"):
        from . import simulation

        return getattr(simulation, name)
    if name in ("load_protocol", "save_protocol", "validate_protocol"):
        from . import protocol

        return getattr(protocol, name)
    if name in ("read_mesh", "write_mesh", "Mesh"):
        from . import mesh

        return getattr(mesh, name)
    if name in ("write_results", "read_results"):
        from . import results

        return getattr(results, name)
    if name == "HeadModel":
        from .head_model import HeadModel

        return HeadModel
    raise AttributeError(f"module 'stimsim' has no attribute {name!r}")


__all__ = ["__version__", "simulate", "SimulationResult", "load_protocol", "save_protocol",
           "validate_protocol", "read_mesh", "write_mesh", "Mesh", "write_results",
           "read_results", "HeadModel"]
