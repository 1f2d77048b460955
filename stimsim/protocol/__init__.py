"""Protocols: validated descriptions of a stimulation session (YAML on disk)."""

from .io import load_protocol, protocol_json_schema, protocol_to_dict, save_protocol, validate_protocol
from .models import Electrode, SolverOptions, TESProtocol

__all__ = ["Electrode", "SolverOptions", "TESProtocol", "load_protocol", "save_protocol",
           "validate_protocol", "protocol_json_schema", "protocol_to_dict"]
