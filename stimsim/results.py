"""A simulation's results folder: fields.msh, fields.vtu, summary.json, protocol.yaml.

:func:`write_results` writes one (it appears complete or not at all: everything is written into
a hidden temporary folder next to the target, which is renamed into place at the end);
:func:`read_results` reads one back as a :class:`FieldData` (mesh, fields, electrodes or coil,
protocol, summary), which is what pictures and reports draw.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from ._logging import logger
from .conductivity import tissue_name
from .errors import ResultsError, StimsimError
from .mesh.model import Mesh
from .stats import weighted_percentiles
from .outputs import RESULTS_FORMAT, signals_deferred
from .protocol import save_protocol
from .simulation_result import MultichannelTACSResult, SimulationResult, TESResult, TIResult, TMSResult

PERCENTILES = (50.0, 95.0, 99.0, 99.9)


def field_statistics(values: np.ndarray, volumes: np.ndarray, tags: np.ndarray, scale=None) -> dict:
    """Per-tissue max, volume-weighted mean and percentiles of an element-wise scalar.

    ``scale`` (tag -> factor) also returns the statistics of ``factor * values`` per tissue
    (e.g. |J| = sigma |E| with sigma constant in a tissue) without sorting again.
    """
    stats, scaled = {}, {}
    for tag in np.unique(tags):
        sel = tags == tag
        v, w = values[sel], volumes[sel]
        entry = {"tag": int(tag), "volume_mm3": float(w.sum()), "max": float(v.max()),
                 "mean": float(np.average(v, weights=w))}
        for q, x in zip(PERCENTILES, weighted_percentiles(v, w, PERCENTILES)):
            entry[f"p{q:g}"] = x
        stats[tissue_name(tag)] = entry
        if scale is not None:
            f = scale[int(tag)]
            scaled[tissue_name(tag)] = {k: (x * f if k not in ("tag", "volume_mm3") else x) for k, x in entry.items()}
    return (stats, scaled) if scale is not None else stats


def ti_summary(result: TIResult) -> dict:
    """The summary's ``ti`` section: per channel |E| statistics, per channel pair the envelope
    frequency and statistics of its envelope fields (``TI_normal``: grey-matter elements only)."""
    vol, tags = result.mesh.volumes_mm3, result.mesh.tet_tags
    p = result.protocol
    channels = []
    for name, freq, e, info, c in zip(result.channel_names, result.channel_frequencies_hz, result.channel_E,
                                      result.channel_solve_info, p.channels):
        channels.append({
            "name": name, "frequency_hz": freq, "electrodes": [el.name for el in c.electrodes],
            "currents_mA": {el.name: el.current_mA for el in c.electrodes},
            "field": f"E_{name}", "solver": info.as_dict(),
            "floating_pad_max_net_current_mA": result.floating_currents_A.get(name, float("nan")) * 1e3,
            "magnE_V_per_m": field_statistics(np.sqrt(np.einsum("ij,ij->i", e, e)), vol, tags)})
    envelopes = []
    for (a, b), entry in result.envelopes.items():
        label = result.pair_label(a, b)
        item = {"channels": [result.channel_names[a], result.channel_names[b]],
                "envelope_frequency_hz": result.envelope_frequency_hz(a, b)}
        for key, values in entry.items():
            ok = np.isfinite(values)
            item[key] = {"field": key + label, "V_per_m": field_statistics(values[ok], vol[ok], tags[ok])}
        envelopes.append(item)
    return {
        "channels": channels, "envelopes": envelopes,
        "envelope_direction": None if result.envelope_direction is None else result.envelope_direction.tolist(),
        "cortical_normals": result.cortical_normals_note,
        "definitions": {
            "TImax": "largest envelope amplitude over all directions (Grossman et al. 2017, Cell 169:1029)",
            "TI_normal": "envelope amplitude along the grey-matter normal (grey-matter elements only)",
            "TI_dir": "envelope amplitude along envelope_direction",
            "E, magnE, J": "combined field at its peak over time, |sum_k +-E_k| maximised over the signs; "
                           "J = sigma E (what the brain current-density check reads)",
            "method": "one solve per channel with every pad present (floating at other channels' frequencies); "
                      "see docs/ti.md"}}


def summarize(result: SimulationResult, safety: dict | None = None) -> dict:
    """Everything a reader needs to trust and reproduce the run, as JSON-ready data.

    ``safety``: a safety report (:meth:`stimsim.safety.SafetyReport.as_dict`, e.g. of
    :func:`stimsim.safety.check_result`) to store with it; the caller composes it, so writing
    results never decides on safety by itself.
    """
    mesh = result.mesh
    vol = mesh.volumes_mm3
    p = result.protocol
    electrodes = []
    for spec, e in zip(p.electrodes if isinstance(result, TESResult) else [],
                       result.electrodes if isinstance(result, TESResult) else []):
        electrodes.append({
            "name": e.name, "shape": e.shape, "current_mA": spec.current_mA,
            "delivered_current_mA": result.electrode_currents_A.get(e.name, float("nan")) * 1e3,
            "scalp_nodes": int(len(e.nodes)),
            # the nominal area is what the safety check and the cited limits divide by; the meshed one
            # (triangles wholly under the pad) is what carries the current in the model
            "nominal_area_mm2": e.nominal_area_mm2, "meshed_area_mm2": e.area_mm2,
            "mean_current_density_A_per_m2": (e.current_density_A_per_m2 if e.nominal_area_mm2 > 0 else None),
            "meshed_mean_current_density_A_per_m2": (e.meshed_current_density_A_per_m2 if e.area_mm2 > 0 else None),
            "skin_current_density_A_per_m2": result.skin_current_density.get(e.name),
            "model": spec.model, "thickness_mm": spec.thickness_mm,
            "potential_V": float(result.potential_V[e.center_node]),
            "distance_to_scalp_mm": e.distance_mm,
            # the patch itself (0-based node indices), so a results folder is drawn without re-placing
            "center_node": int(e.center_node), "nodes": np.asarray(e.nodes).tolist(),
        })
    sigma_of = {int(t): float(result.sigma[np.argmax(mesh.tet_tags == t)]) for t in mesh.tissue_tags}
    e_stats, j_stats = field_statistics(result.magnE, vol, mesh.tet_tags, scale=sigma_of)
    summary = {
        "format": RESULTS_FORMAT,
        "stimsim_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "platform": {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()},
        "inputs": result.inputs,
        "kind": p.kind,
        "units": {"coordinates": "mm", "E": "V/m", "magnE": "V/m", "J": "A/m^2", "v": "V", "current": "mA"},
        "mesh": {"nodes": mesh.n_nodes, "tetrahedra": mesh.n_tets, "triangles": int(len(mesh.tris)),
                 "tags": mesh.tissue_tags.tolist()},
        "conductivities_S_per_m": {tissue_name(t): s for t, s in sigma_of.items()},
        "solver": result.solve_info.as_dict(),
        "timings_s": {k: round(v, 4) for k, v in result.timings_s.items()},
        "electrodes": electrodes,
        "magnE_V_per_m": e_stats,
        "magnJ_A_per_m2": j_stats,
        "percentiles": "volume-weighted over the elements of each tissue; |J| = sigma |E| per tissue",
    }
    if isinstance(result, TMSResult):
        summary["tms"] = result.tms_summary()
    if isinstance(result, MultichannelTACSResult):
        summary["tacs_channels"] = result.tacs_summary()
        summary["units"].update({"E_<channel>": "V/m (amplitude)", "peak_phase_deg": "degrees"})
    if isinstance(result, TIResult):
        summary["ti"] = ti_summary(result)
        summary["units"].update({"E_<channel>": "V/m (peak of the carrier)", "TImax": "V/m", "TI_normal": "V/m",
                                 "TI_dir": "V/m", "v_<channel>": "V"})
    if p.kind == "tms":
        summary["units"]["dAdt"] = "V/m"
        del summary["electrodes"]
    if safety is not None:
        summary["safety"] = safety
    if result.E_recovered is not None:
        summary["magnE_recovered_V_per_m"] = field_statistics(
            np.sqrt(np.einsum("ij,ij->i", result.E_recovered, result.E_recovered)), vol, mesh.tet_tags)
    return summary


def write_result_files(result: SimulationResult, folder: str | os.PathLike, *, msh_version: str = "4.1",
                       safety: dict | None = None) -> dict:
    """Write ``fields.msh``, ``fields.vtu``, ``summary.json`` and ``protocol.yaml`` into ``folder``
    (an existing, empty folder, e.g. :attr:`stimsim.outputs.ResultsFolder.path`); returns the summary.

    ``fields.msh`` is Gmsh MSH 4.1 binary by default: Gmsh, SimNIBS 4 and meshio all read it
    with its element data (meshio 5.3 cannot read element data from MSH 2.2 files that mix
    triangles and tetrahedra, meshio issue #1257); pass ``msh_version="2.2"`` for older tools.
    """
    from .mesh import write_msh, write_vtu

    tmp = Path(folder)
    t = time.perf_counter()
    element_data = {"E": result.E, "magnE": result.magnE, "J": result.J,
                    "magnJ": np.sqrt(np.einsum("ij,ij->i", result.J, result.J))}
    if result.E_recovered is not None:
        element_data["E_recovered"] = result.E_recovered
    element_data.update(result.extra_element_fields())
    node_data = result.node_fields()
    # the two mesh files are independent: write them concurrently (numpy and file I/O
    # release the GIL); the VTU is for viewing, so its data are float32, half the bytes
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        with signals_deferred():  # a signal inside submit() would leave a writer the pool never joins
            jobs = [pool.submit(write_msh, tmp / "fields.msh", result.mesh, node_data=node_data,
                                element_data=element_data, version=msh_version),
                    pool.submit(write_vtu, tmp / "fields.vtu", result.mesh, node_data=node_data,
                                element_data=element_data, dtype="float32")]
        # meanwhile, in this thread; on an exception the pool still waits for both writers, so
        # the caller's clean-up never races a thread that is still writing
        summary = summarize(result, safety)
        for job in jobs:
            job.result()
    save_protocol(result.protocol, tmp / "protocol.yaml")
    summary["timings_s"]["write_s"] = round(time.perf_counter() - t, 4)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True), encoding="utf-8")
    return summary


def results_size_estimate(result: SimulationResult) -> tuple[int, int]:
    """(total, largest file) bytes :func:`write_result_files` will write for ``result``."""
    from .outputs import estimate_results_bytes

    mesh = result.mesh
    total, largest = estimate_results_bytes(mesh.n_nodes, mesh.n_tets, len(mesh.tris),
                                            node_vectors=sum(1 for a in result.node_fields().values()
                                                             if np.ndim(a) == 2))
    # modality fields (TI: each channel's E, the envelopes): float64 in fields.msh, float32 in fields.vtu
    extra = sum(np.size(a) for a in result.extra_element_fields().values())
    extra += mesh.n_nodes * sum(1 for k, a in result.node_fields().items() if k != "v" and np.ndim(a) == 1)
    return total + int(1.15 * 12 * extra), largest + int(1.15 * 8 * extra)


def write_results(result: SimulationResult, out_dir: str | os.PathLike, *, overwrite: bool = False,
                  msh_version: str = "4.1", safety: dict | None = None) -> Path:
    """Write a results folder (see :func:`write_result_files`) that appears complete or not at all.

    Raises
    ------
    stimsim.outputs.OutputError
        If ``out_dir`` exists and ``overwrite`` is False, if it exists and was not written by
        stimsim, if it is a protected place (the current or home folder, ``/``), or if the disk
        cannot take the files.
    """
    from .outputs import ResultsFolder, check_space

    with ResultsFolder(out_dir, overwrite=overwrite) as folder:
        check_space(folder.path, *results_size_estimate(result), what="the results folder")
        write_result_files(result, folder.path, msh_version=msh_version, safety=safety)
        return folder.commit()


# ------------------------------------------------------------------------------------------ reading


#: field name -> (label, unit, location, key in the element/node data, vector?)
FIELDS = {
    "magnE": ("|E|", "V/m", "element", "E", True),
    "E": ("|E|", "V/m", "element", "E", True),
    "J": ("|J|", "A/m²", "element", "J", True),
    "magnJ": ("|J|", "A/m²", "element", "J", True),
    "E_recovered": ("|E| (recovered)", "V/m", "element", "E_recovered", True),
    "magnE_recovered": ("|E| (recovered)", "V/m", "element", "E_recovered", True),
    "v": ("potential", "V", "node", "v", False),
    "dAdt": ("|dA/dt|", "V/m", "node", "dAdt", True),
}


@dataclass(frozen=True)
class ElectrodeGlyph:
    """An electrode to draw: its scalp nodes (0-based), centre node and current (A)."""

    name: str
    current_A: float
    nodes: np.ndarray
    center_node: int


@dataclass(frozen=True, eq=False)
class FieldData:
    """Mesh + fields + sources of one simulation, as drawn by :func:`stimsim.viz.plot_field`.

    Attributes
    ----------
    mesh : Mesh (mm)
    element : dict name -> (m,) or (m, 3) array over tetrahedra (``E``, ``J``, ``E_recovered``, ``magnE``...)
    node : dict name -> (n,) or (n, 3) array over nodes (``v``, ``dAdt``)
    protocol : the validated protocol, or None when unknown
    summary : the ``summary.json`` content when read from a results folder, else None
    electrodes : electrodes to draw (tDCS/tACS)
    coil_dipoles_mm : (k, 3) coil dipole positions in the head frame (TMS), or None
    coil_matrix : (4, 4) coil-to-head matrix (TMS), or None
    origin : where the data came from (for messages)
    """

    mesh: Mesh
    element: dict
    node: dict
    protocol: object = None
    summary: dict | None = None
    electrodes: list = field(default_factory=list)
    coil_dipoles_mm: np.ndarray | None = None
    coil_matrix: np.ndarray | None = None
    origin: str = "simulation result"
    inputs: dict = field(default_factory=dict)

    #: modality fields (TI, multichannel tACS) by name: (pattern, label, unit, location, vector?, NaN by design?).
    #: A TI pair's fields carry the suffix ``_<a>_<b>`` when the protocol has more than two channels
    #: (:meth:`~stimsim.simulation_result.TIResult.pair_label`); ``TI_normal`` is NaN outside grey matter.
    MODALITY_FIELDS = (
        (r"TImax(_.+)?", "TI envelope (max over directions)", "V/m", "element", False, False),
        (r"TI_normal(_.+)?", "TI envelope (along the cortical normal)", "V/m", "element", False, True),
        (r"TI_dir(_.+)?", "TI envelope (along envelope_direction)", "V/m", "element", False, False),
        (r"magnE_(.+)", "|E| of channel", "V/m", "element", True, False),
        (r"E_(.+)", "|E| of channel", "V/m", "element", True, False),
        (r"v_(.+)", "potential of channel", "V", "node", False, False),
        (r"peak_phase_deg", "carrier phase at the peak", "deg", "element", False, False),
    )
    #: TI envelope names that, bare, stand for the only channel pair's field
    TI_FIELDS = ("TImax", "TI_normal", "TI_dir")

    def _modality_spec(self, name: str):
        """``(label, unit, location, vector, nan_by_design)`` of a modality field name, or None."""
        import re

        if name in FIELDS:
            return None
        for pattern, label, unit, loc, vector, nan_ok in self.MODALITY_FIELDS:
            m = re.fullmatch(pattern, name)
            if m:
                suffix = m.group(1) if m.groups() else None
                if suffix and not name.startswith("TI"):
                    label = f"{label} {suffix}"
                elif suffix:
                    label = f"{label} [{suffix.lstrip('_')}]"
                return label, unit, loc, vector, nan_ok
        return None

    def modality_fields(self) -> list[str]:
        """The element and node fields of a TI or multichannel tACS result (``TImax``, ``E_<channel>``...)."""
        out = []
        for loc, data in (("element", self.element), ("node", self.node)):
            for key in data:
                spec = self._modality_spec(str(key))
                if spec is not None and spec[2] == loc:
                    out.append(str(key))
        return out

    def available_fields(self) -> list[str]:
        """Field names :meth:`scalar` accepts for this result: the standard ones it has, then its modality fields."""
        out = []
        for name, (_, _, loc, key, _) in FIELDS.items():
            data = self.element if loc == "element" else self.node
            if key in data or (name in data):
                out.append(name)
        return out + self.modality_fields()

    def _resolve_modality(self, name: str):
        """``(key in the data, label, unit, location, vector, nan_by_design)`` of a modality field name."""
        spec = self._modality_spec(name)
        have = ", ".join(self.available_fields()) or "none"
        if spec is None:
            extra = self.modality_fields()
            raise ResultsError(f"field: {name!r} is not a known field; choose one of {', '.join(FIELDS)}"
                               + (f", or of this result's {', '.join(extra)}" if extra else "")
                               + f" (available here: {have})")
        label, unit, loc, vector, nan_ok = spec
        data = self.element if loc == "element" else self.node
        if name in data:
            return name, label, unit, loc, vector, nan_ok
        if name in self.TI_FIELDS:  # bare envelope name: the only channel pair's field
            pairs = [k for k in data if str(k).startswith(name + "_")]
            if len(pairs) == 1:
                return (pairs[0], *self._modality_spec(pairs[0]))
            if len(pairs) > 1:
                raise ResultsError(f"field: {name!r} is ambiguous: {self.origin} has {len(pairs)} channel pairs; "
                                   f"give the full name, one of {', '.join(pairs)}")
        raise ResultsError(f"field: {self.origin} has no {loc} field {name!r} (available: {have})")

    def scalar(self, name: str) -> tuple[np.ndarray, str, str, str]:
        """``(values, location, label, unit)`` of a field; vectors become magnitudes.

        ``name``: a standard field (:data:`FIELDS`) or a modality field (:attr:`MODALITY_FIELDS`:
        ``TImax``, ``TI_normal``, ``TI_dir`` (bare: the only channel pair's; ``TImax_<a>_<b>`` with
        several pairs), ``E_<channel>``, ``v_<channel>``, ``peak_phase_deg``).  A field that is NaN
        by design outside a tissue (``TI_normal``: grey matter only) keeps its NaN there.

        Raises
        ------
        ResultsError
            Unknown field name, a field this result does not have, an ambiguous bare TI name, or
            non-finite values (where the field should have none).
        """
        nan_ok = False
        if name in FIELDS:
            label, unit, loc, key, vector = FIELDS[name]
        else:
            key, label, unit, loc, vector, nan_ok = self._resolve_modality(name)
        data = self.element if loc == "element" else self.node
        if key in data:
            arr = np.asarray(data[key], dtype=float)
        elif name in data:
            arr = np.asarray(data[name], dtype=float)
        else:
            have = ", ".join(self.available_fields()) or "none"
            raise ResultsError(f"field: {self.origin} has no {loc} field {key!r} (available: {have})")
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if vector and arr.ndim == 2:
            arr = np.linalg.norm(arr, axis=1)
        n_expected = self.mesh.n_tets if loc == "element" else self.mesh.n_nodes
        if arr.shape[0] != n_expected:
            raise ResultsError(f"field: {key!r} in {self.origin} has {arr.shape[0]} values but the mesh has "
                           f"{n_expected} {'tetrahedra' if loc == 'element' else 'nodes'}")
        bad = ~np.isfinite(arr)
        if nan_ok and bad.all():
            raise ResultsError(f"field: {key!r} in {self.origin} has no finite value (it is defined in part of the "
                               "head only, e.g. TI_normal in grey matter)")
        if bad.any() and not nan_ok:
            raise ResultsError(f"field: {key!r} in {self.origin} has {int(bad.sum())} non-finite (NaN/inf) values out of "
                           f"{arr.size}; the simulation did not produce a usable field, rerun it")
        return arr, loc, label, unit

    def element_vectors(self, key: str = "E") -> np.ndarray:
        arr = np.asarray(self.element[key], float)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ResultsError(f"field: {key!r} in {self.origin} is not a 3-vector per element")
        if not np.all(np.isfinite(arr)):
            raise ResultsError(f"field: {key!r} in {self.origin} has non-finite (NaN/inf) values; rerun the simulation")
        return arr




def _coil_dipoles(protocol, matrix, base_dir) -> np.ndarray | None:
    try:
        from .coils import load_coil

        coil = load_coil(protocol.coil, base_dir)
        pos, _ = coil.transformed(np.asarray(matrix, float))
        return pos
    except Exception as err:  # a picture without the coil windings is still useful
        logger.warning("coil windings not drawn: %s", err)
        return None


def result_field_data(result, base_dir=None) -> FieldData:
    """The :class:`FieldData` of a simulation result in memory (what :func:`read_results` gives for its folder)."""
    element = {"E": result.E, "J": result.J}
    if result.E_recovered is not None:
        element["E_recovered"] = result.E_recovered
    node = result.node_fields()
    electrodes = [ElectrodeGlyph(e.name, float(e.current_A), np.asarray(e.nodes), int(e.center_node))
                  for e in getattr(result, "electrodes", [])]  # a TESResult's; a TMSResult has a coil
    matrix = dipoles = None
    placement = getattr(result, "placement", None)
    if placement is not None:
        matrix = np.asarray(placement.matrix, float)
        dipoles = _coil_dipoles(result.protocol, matrix, base_dir)
    return FieldData(result.mesh, element, node, result.protocol, None, electrodes, dipoles, matrix,
                     "the simulation result", dict(result.inputs))


def _electrodes_from_protocol(protocol, mesh) -> list[ElectrodeGlyph]:
    try:
        from .simulation import electrode_specs
        from .fem.electrodes import place_electrodes

        placed = place_electrodes(mesh, electrode_specs(protocol, mesh=mesh))
    except StimsimError as err:
        logger.warning("electrodes not drawn: %s", err)
        return []
    return [ElectrodeGlyph(e.name, float(e.current_A), np.asarray(e.nodes), int(e.center_node)) for e in placed]


def read_results(path: str | os.PathLike) -> FieldData:
    """Read a results folder written by :func:`write_results` (or its ``fields.vtu`` / ``fields.msh``).

    The folder describes itself: mesh and fields, ``summary.json`` (units, electrode nodes and
    currents, the coil matrix, the solver), ``protocol.yaml``; older folders without recorded
    electrode nodes get their electrodes placed again from the protocol.

    Raises
    ------
    ResultsError
        The folder does not exist, holds no fields file, or its fields file holds no field.
    """
    from .mesh import read_mesh
    from .protocol import load_protocol

    path = Path(path)
    if path.is_file():
        folder, candidates = path.parent, [path]
    elif path.is_dir():
        folder, candidates = path, [path / "fields.msh", path / "fields.vtu"]  # msh: float64, and faster to read
    else:
        raise ResultsError(f"results folder not found: {path} (make one with `stimsim run PROTOCOL --out {path}`)")
    fields_file = next((c for c in candidates if c.is_file()), None)
    if fields_file is None:
        raise ResultsError(f"results folder {folder} has no fields.vtu or fields.msh; it is not (or no longer) the "
                       "output of `stimsim run` — run the simulation again")
    mesh, fields = read_mesh(fields_file)
    element, node = dict(fields.get("element", {})), dict(fields.get("node", {}))
    if not any(k in element for k in ("E", "magnE", "J", "magnJ")):
        raise ResultsError(f"{fields_file} holds no field (no element data E, magnE, J or magnJ); it is a bare mesh, "
                       "not a stimsim result — run the simulation again")
    summary = None
    if (folder / "summary.json").is_file():
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ResultsError(f"{folder / 'summary.json'}: not valid JSON ({err})") from None
    protocol = load_protocol(folder / "protocol.yaml") if (folder / "protocol.yaml").is_file() else None
    electrodes, dipoles, matrix = [], None, None
    recorded = [e for e in (summary or {}).get("electrodes", []) if "nodes" in e]
    if recorded:  # the folder says where its electrodes were (stimsim >= this format)
        electrodes = [ElectrodeGlyph(e["name"], float(e["current_mA"]) * 1e-3, np.asarray(e["nodes"], np.int64),
                                     int(e["center_node"])) for e in recorded]
    elif protocol is not None and protocol.kind != "tms":  # older folders: place them again
        electrodes = _electrodes_from_protocol(protocol, mesh)
    placement = ((summary or {}).get("tms") or {}).get("placement")
    if protocol is not None and protocol.kind == "tms" and placement is not None:
        matrix = np.asarray(placement["matrix"], float)
        dipoles = _coil_dipoles(protocol, matrix, folder)
    return FieldData(mesh, element, node, protocol, summary, electrodes, dipoles, matrix, str(fields_file),
                     dict((summary or {}).get("inputs", {})))
