"""Protocols: validated descriptions of a stimulation session (YAML on disk)."""

from .io import load_protocol, protocol_json_schema, protocol_to_dict, save_protocol, validate_protocol
from .models import (CoilSpec, Electrode, MNIPoint, Placement, PulseProgram, SolverOptions, Stimulator, TACSChannel,
                     TESProtocol, TIChannel, TIProtocol, TMSProtocol)

__all__ = ["Electrode", "MNIPoint", "TACSChannel", "SolverOptions", "TESProtocol", "TIProtocol", "TIChannel",
           "TMSProtocol", "CoilSpec", "Placement", "Stimulator", "PulseProgram", "load_protocol", "save_protocol",
           "validate_protocol", "protocol_json_schema", "protocol_to_dict"]
