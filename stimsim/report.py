"""One self-contained HTML report of a simulation: protocol, pictures, dose table, safety, provenance.

``make_report(protocol, "report.html")`` simulates the protocol (or reuses a results folder)
and writes one HTML file with everything inside it: the pictures are base64 PNGs, the style
is inline, there is no script and nothing is fetched from the network, so the page can be
mailed, archived or opened offline.  The file appears complete or not at all (temporary
file + rename).

Dose metrics (all |E| in V/m, volumes in cm³):

* per tissue: 99.9th percentile (volume-weighted, robust to single-element spikes), maximum, mean;
* focality: brain volume where |E| >= 50 % and >= 75 % of the brain's peak, with the peak
  taken as the 99.9th percentile of |E| in the brain (SimNIBS convention);
* in an ROI (a sphere, centre and radius in mm): volume-weighted mean and 99.9th percentile of
  |E| over the brain elements whose centroids lie inside, and the area-weighted mean normal
  component E·n over the brain surface inside, n the outward normal of the brain surface
  (positive: E points out of the brain; under a tDCS anode it is negative, inward current).

Temporal interference (``kind: ti``): the same metrics and pictures of the TI envelope
(``TImax`` of the first channel pair, :func:`report_fields`) come first, then those of |E|.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import __version__
from ._logging import log_level, logger
from .conductivity import tissue_name
from .errors import StimsimError
from .protocol.io import atomic_write_text
from .simulation import protocol_sha256
from .viz.field_data import (FieldData, VizError, check_roi, face_normals, load_field_data,
                             resolve_surface_tags, surface_faces, weighted_percentile)

FOCALITY_FRACTIONS = (0.5, 0.75)


# ------------------------------------------------------------------------------------------ numbers


def brain_tags_for(data: FieldData, brain_tags=None) -> list[int]:
    """Tags counted as brain: given, else the protocol's default (sphere: 3), else WM+GM or the innermost tissue."""
    if brain_tags is not None:
        return resolve_surface_tags(data.mesh, list(brain_tags))
    if data.protocol is not None:
        from .simulation import default_brain_tags

        tags = default_brain_tags(data.protocol)
        if tags and all(t in data.mesh.tissue_tags for t in tags):
            return tags
    return resolve_surface_tags(data.mesh, "brain")


def report_fields(data: FieldData) -> list[str]:
    """The fields the report's dose tables and pictures show, the main one first: |E| (``magnE``); with a
    TI envelope (``kind: ti``), its ``TImax`` (the first channel pair's) before |E|."""
    ti = [k for k in data.modality_fields() if k == "TImax" or k.startswith("TImax_")]
    return ti[:1] + ["magnE"]


def dose_metrics(data: FieldData, *, roi=None, brain_tags=None, field: str = "magnE") -> dict:
    """Per-tissue statistics, focality and ROI metrics of a field (default |E|; see the module docstring).

    Returns a JSON-ready dict with ``field``, ``label``, ``unit``, ``tissues`` (list), ``brain_tags``,
    ``peak_V_per_m``, ``focality`` (list of {fraction, threshold_V_per_m, volume_cm3}) and ``roi``
    (or None); ``*_V_per_m`` values are in the field's unit.  A field defined in part of the head only
    (``TI_normal``) is counted where it is defined.
    """
    from .results import field_statistics

    mesh = data.mesh
    magnE, _, label, unit = data.scalar(field)
    vol = mesh.volumes_mm3
    ok = np.isfinite(magnE)
    stats = field_statistics(magnE[ok], vol[ok], mesh.tet_tags[ok])
    tissues = [{"tissue": name, "tag": s["tag"], "volume_cm3": s["volume_mm3"] / 1e3, "p99.9": s["p99.9"],
                "max": s["max"], "mean": s["mean"]} for name, s in stats.items()]
    tags = brain_tags_for(data, brain_tags)
    brain = np.isin(mesh.tet_tags, tags) & ok
    if not brain.any():
        raise VizError(f"field {field!r} ({label}) is not defined in the brain (tags {tags})")
    peak = weighted_percentile(magnE[brain], vol[brain], 99.9)
    focality = [{"fraction": f, "threshold_V_per_m": f * peak,
                 "volume_cm3": float(vol[brain & (magnE >= f * peak)].sum() / 1e3)} for f in FOCALITY_FRACTIONS]
    out = {"field": field, "label": label, "unit": unit,
           "brain_tags": tags, "brain_tissues": [tissue_name(t) for t in tags], "peak_V_per_m": peak,
           "max_V_per_m": float(magnE[brain].max()), "tissues": tissues, "focality": focality, "roi": None}
    roi = check_roi(roi)
    if roi is not None:
        centre, radius = roi
        inside = brain & (np.linalg.norm(mesh.centroids - centre, axis=1) <= radius)
        if not inside.any():
            raise VizError(f"roi: the sphere of {radius:g} mm around {centre.tolist()} mm contains no brain element "
                           f"(brain tags {tags}); move it onto the brain")
        faces, owner = surface_faces(mesh, tags)
        normals, areas = face_normals(mesh.nodes, faces)
        fc = mesh.nodes[faces].mean(axis=1)
        on = np.linalg.norm(fc - centre, axis=1) <= radius
        en = None
        if on.any() and field in ("magnE", "E"):  # the normal component of E (a scalar envelope has none)
            e_vec = data.element_vectors("E")
            en = float(np.average(np.einsum("ij,ij->i", e_vec[owner[on]], normals[on]), weights=areas[on]))
        out["roi"] = {"centre_mm": centre.tolist(), "radius_mm": radius,
                      "volume_cm3": float(vol[inside].sum() / 1e3),
                      "mean_V_per_m": float(np.average(magnE[inside], weights=vol[inside])),
                      "p99.9_V_per_m": weighted_percentile(magnE[inside], vol[inside], 99.9),
                      "mean_normal_V_per_m": en,
                      "surface_area_mm2": float(areas[on].sum())}
    return out


# ------------------------------------------------------------------------------------------ pictures


def _auto_views(data: FieldData, tags, field: str = "magnE") -> tuple[np.ndarray, str, str, tuple]:
    """Hot spot, two named views (the one facing it, then the next best side) and a cut plane through it."""
    from .viz.render import VIEWS

    mesh = data.mesh
    magnE, _, _, _ = data.scalar(field)
    faces, owner = surface_faces(mesh, tags)
    keep = np.isfinite(magnE[owner])
    faces, owner = faces[keep], owner[keep]
    centre = mesh.nodes[np.unique(faces)].mean(axis=0)
    fv = magnE[owner]
    hot_faces = fv >= np.quantile(fv, 0.99)
    hot = mesh.nodes[faces[hot_faces]].mean(axis=(0, 1))
    d_hot = hot - centre
    d_hot = d_hot / np.linalg.norm(d_hot) if np.linalg.norm(d_hot) > 1e-9 else np.array([0.0, 0.0, 1.0])
    names = ["top", "left", "right", "front", "back"]
    dirs = {n: np.asarray(VIEWS[n][0]) for n in names}
    ranked = sorted(names, key=lambda n: -float(dirs[n] @ d_hot))
    first = ranked[0]
    second = next(n for n in ranked[1:] if abs(float(dirs[n] @ dirs[first])) < 0.5)
    axes = np.eye(3)
    score = [abs(a @ d_hot) + abs(a @ dirs[second]) for a in axes]
    normal = axes[int(np.argmin(score))]
    return hot, first, second, (hot, normal)


def _pictures(data: FieldData, tags, roi, fields=("magnE",), *, window_size=(820, 620)) -> list[dict]:
    """Three pictures of the main field (two views and a cut through its hot spot), one of each other field."""
    from .viz.render import plot_field, png_bytes

    hot, first, second, cut = _auto_views(data, tags, fields[0])
    axis = "xyz"[int(np.argmax(np.abs(cut[1])))]
    specs = []
    for k, name in enumerate(fields):
        values, _, label, _ = data.scalar(name)
        faces, owner = surface_faces(data.mesh, tags)
        keep = np.isfinite(values[owner])
        clim = (0.0, weighted_percentile(values[owner][keep], face_normals(data.mesh.nodes, faces[keep])[1], 99.9))
        specs.append((name, clim, dict(view=first), f"{label} on the brain surface, {first} view"))
        if k == 0:
            specs += [(name, clim, dict(view=second), f"{label} on the brain surface, {second} view"),
                      (name, clim, dict(cut_plane=cut),
                       f"{label} on a cut plane ({axis} = {cut[0]['xyz'.index(axis)]:.1f} mm, through the "
                       "hot spot) and the brain surface behind it")]
    out = []
    for name, clim, kwargs, caption in specs:
        t = time.perf_counter()
        img = plot_field(data, field=name, surface=tags, roi=roi, clim=clim, screenshot=True,
                         window_size=window_size, **kwargs)
        out.append({"caption": caption, "png": png_bytes(img)})
        logger.info("rendered %r in %.2f s", caption, time.perf_counter() - t)
    return out


# ------------------------------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #ccc;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem 0;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.5rem;max-width:48%;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85rem;color:#444}
.PASS{background:#e3f4e3}.WARN{background:#fff3cd}.FAIL{background:#f8d7da;font-weight:bold}
.NOT_CHECKED{background:#e7eef6}
.verdict{font-size:1.1rem;padding:.3rem .6rem;display:inline-block;border-radius:4px}
.note{color:#555;font-size:.88rem}pre{background:#f7f7f7;padding:.6rem;overflow-x:auto;font-size:.85rem}
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(x, fmt="{:.4g}") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return fmt.format(x)


def _linkify(text: str) -> str:
    """Escape, then turn doi:10.xxx into a link (a link, not a loaded resource)."""
    out = _e(text)
    return re.sub(r"doi:(10\.[^\s,;()<>&]+[^\s,;()<>&.])",
                  lambda m: f'<a href="https://doi.org/{m.group(1)}">doi:{m.group(1)}</a>', out)


def _table(header, rows, num_cols=()) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in header)
    body = []
    for row in rows:
        cells = []
        for k, c in enumerate(row):
            cls = ' class="num"' if k in num_cols else ""
            cells.append(f"<td{cls}>{c}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(d: dict) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            val = _kv_table(v)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            keys = list(dict.fromkeys(k2 for x in v for k2 in x))
            val = _table(keys, [[_e(json.dumps(x.get(k2)) if isinstance(x.get(k2), (list, dict))
                                    else x.get(k2)) for k2 in keys] for x in v])
        elif isinstance(v, (list, tuple)):
            val = _e(json.dumps(v))
        else:
            val = _e(v)
        rows.append(f"<tr><th>{_e(k)}</th><td>{val}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _safety_html(safety: dict | None) -> str:
    if not safety:
        return '<p class="note">No safety check available.</p>'
    verdict = safety.get("verdict", "?")
    counts = safety.get("counts", {})
    summary = safety.get("summary", verdict)  # "PASS (3 not checked)"; NOT_CHECKED rows are not in the verdict
    count_text = ", ".join(f"{_e(k.replace('_', ' '))} {_e(v)}" for k, v in counts.items())
    head = f'<p><span class="verdict {_e(verdict)}">Overall: {_e(summary)}</span> ({count_text})</p>'
    rows = []
    for r in safety.get("results", []):
        value = "–" if r.get("value") is None else f"{r['value']:.4g}" + (f" {r['unit']}" if r.get("unit") else "")
        rule = _e(r.get("rule_id")) + (f" [{_e(r['subject'])}]" if r.get("subject") else "") + \
            (" (note)" if r.get("kind") == "note" else "")
        status = r.get("verdict")
        reason = r.get("reason") or ""
        if r.get("how_to_check"):
            reason += f" — to check: {r['how_to_check']}"
        rows.append([rule, _e(r.get("description")), _e(value), _e(r.get("limit_text") or "–"),
                     f'<span class="{_e(status)}">{_e(str(status).replace("_", " "))}</span>', _e(reason),
                     _linkify(r.get("citation") or "")])
    table = _table(["rule", "what", "value", "limit", "verdict", "reason", "citation"], rows)
    note = "" if safety.get("fields_checked") else \
        '<p class="note">Field-based rules were not run (no computed fields).</p>'
    return head + table + note + f'<p class="note">{_e(safety.get("disclaimer", ""))}</p>'


def _dose_html(dose) -> str:
    """The dose section: one set of tables per field (a dict from :func:`dose_metrics`, or a list of them)."""
    if isinstance(dose, (list, tuple)):
        return "".join(_dose_html(d) for d in dose)
    label, unit = dose.get("label", "|E|"), dose.get("unit", "V/m")
    rows = [[_e(t["tissue"]), _e(t["tag"]), _num(t["volume_cm3"], "{:.1f}"), _num(t["p99.9"]), _num(t["max"]),
             _num(t["mean"])] for t in dose["tissues"]]
    parts = [f"<h3>{_e(label)} per tissue ({_e(unit)})</h3>",
             _table(["tissue", "tag", "volume (cm³)", "99.9th percentile", "peak (max)", "mean"], rows,
                    num_cols=(2, 3, 4, 5))]
    brain = ", ".join(f"{n}, tag {t}" for n, t in zip(dose["brain_tissues"], dose["brain_tags"]))
    frows = [[f"{int(f['fraction'] * 100)} %", _num(f["threshold_V_per_m"]), _num(f["volume_cm3"], "{:.2f}")]
             for f in dose["focality"]]
    parts += [f"<h3>Focality of {_e(label)} in the brain (counted as brain: {_e(brain)})</h3>",
              f'<p class="note">Peak = 99.9th percentile of {_e(label)} in the brain = {_num(dose["peak_V_per_m"])} '
              f'{_e(unit)} (maximum {_num(dose["max_V_per_m"])} {_e(unit)}). Focality = brain volume at or above a '
              'fraction of it.</p>',
              _table(["fraction of peak", f"threshold ({unit})", "volume (cm³)"], frows, num_cols=(1, 2))]
    roi = dose.get("roi")
    if roi is None:
        parts.append('<h3>Region of interest</h3><p class="note">No ROI given (pass roi=(centre_mm, radius_mm) '
                     'or --roi x,y,z,r).</p>')
    else:
        rrows = [["centre (mm)", _e(", ".join(f"{c:.1f}" for c in roi["centre_mm"]))],
                 ["radius (mm)", _num(roi["radius_mm"], "{:.1f}")],
                 ["brain volume inside (cm³)", _num(roi["volume_cm3"], "{:.2f}")],
                 [f"mean {_e(label)} ({_e(unit)})", _num(roi["mean_V_per_m"])],
                 [f"99.9th percentile {_e(label)} ({_e(unit)})", _num(roi["p99.9_V_per_m"])]]
        normal = dose.get("field", "magnE") in ("magnE", "E")  # a scalar envelope has no normal component
        if normal:
            rrows.append(["mean normal component E·n (V/m)", _num(roi["mean_normal_V_per_m"])])
        rrows.append(["brain surface inside (mm²)", _num(roi["surface_area_mm2"], "{:.0f}")])
        parts += [f"<h3>Region of interest ({_e(label)})</h3>", _table(["quantity", "value"], rrows, num_cols=(1,)),
                  f'<p class="note">Mean {_e(label)} weighted by volume over brain elements with centroids inside '
                  'the sphere' + ('; E·n weighted by area over the brain surface inside, n pointing out of the brain '
                                  '(negative: the field points into the brain)' if normal else '') + '.</p>']
    return "".join(parts)


def _protocol_html(protocol) -> str:
    from .protocol import protocol_to_dict

    d = protocol_to_dict(protocol)
    parts = []
    electrodes = d.pop("electrodes", None)
    solver = d.pop("solver", None)
    parts.append(_kv_table(d))
    if electrodes:
        keys = list(dict.fromkeys(k for e in electrodes for k in e))
        parts.append("<h3>Electrodes</h3>" + _table(keys, [[_e(json.dumps(e.get(k)) if isinstance(e.get(k), list)
                                                                else e.get(k)) for k in keys] for e in electrodes]))
    if solver:
        parts.append("<h3>Solver options</h3>" + _kv_table(solver))
    import yaml

    parts.append("<details><summary>protocol YAML</summary><pre>"
                 + _e(yaml.safe_dump(protocol_to_dict(protocol), sort_keys=False)) + "</pre></details>")
    return "".join(parts)


def render_html(*, protocol, dose: dict | list[dict], safety: dict | None, pictures: list[dict], picture_note: str,
                provenance: dict, title: str) -> str:
    """The report page as a string (no external resources); ``dose``: one :func:`dose_metrics` dict or a
    list of them (one per reported field, main first)."""
    figs = "".join(
        f'<figure><img alt="{_e(p["caption"])}" src="data:image/png;base64,'
        f'{base64.b64encode(p["png"]).decode("ascii")}"><figcaption>{_e(p["caption"])}</figcaption></figure>'
        for p in pictures)
    if not figs:
        figs = f'<p class="note">No pictures: {_e(picture_note)}</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="stimsim {_e(__version__)}">
<link rel="icon" href="data:,">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="note">stimsim report, {_e(provenance.get("report_created"))}. Decision support for planning; not a
clinical approval.</p>
<h2 id="protocol">Protocol</h2>
{_protocol_html(protocol)}
<h2 id="pictures">Pictures</h2>
{figs}
<h2 id="dose">Dose</h2>
{_dose_html(dose)}
<h2 id="safety">Safety</h2>
{_safety_html(safety)}
<h2 id="provenance">Provenance</h2>
{_kv_table(provenance)}
</body></html>
"""


# ------------------------------------------------------------------------------------------ entry point


def make_report(protocol, out_html, *, results_dir=None, roi=None, brain_tags=None, pictures: bool | None = None,
                overwrite: bool = True, verbose=None) -> Path:
    """Simulate (or reuse a results folder) and write one self-contained HTML report.

    Parameters
    ----------
    protocol : str | Path | TESProtocol | TMSProtocol
        A protocol YAML file or a validated protocol.
    out_html : str | Path
        The HTML file to write (atomically: complete or not at all).
    results_dir : str | Path, optional
        An existing results folder (``stimsim run --out``) to reuse instead of simulating; its
        protocol must be the same (checked by hash).  A folder that does not exist yet is
        created with the simulation's results.
    roi : (centre_mm, radius_mm), optional
        A spherical region of interest for the ROI table (and drawn in the pictures).
    brain_tags : list of int, optional
        Tissues counted as brain (default: the embedded sphere's inner ball, else WM + GM).
    pictures : bool | None, default: None
        None: include pictures when off-screen rendering works here (otherwise a note says why);
        True: require them (raise if rendering is impossible); False: leave them out.
    overwrite : bool, default: True
        Replace an existing ``out_html``.

    Returns
    -------
    Path of the written report.

    Raises
    ------
    StimsimError
        Bad protocol, a results folder without fields or from another protocol, a NaN field, an
        ROI outside the brain, or pictures=True on a machine that cannot render.
    """
    with log_level(verbose):
        return _make_report(protocol, out_html, results_dir=results_dir, roi=roi, brain_tags=brain_tags,
                            pictures=pictures, overwrite=overwrite)


def _make_report(protocol, out_html, *, results_dir, roi, brain_tags, pictures, overwrite) -> Path:
    from .protocol import load_protocol

    t_all = time.perf_counter()
    out_html = Path(out_html)
    if out_html.exists() and not overwrite:
        raise StimsimError(f"report {out_html} already exists; choose another --out or allow overwriting")
    base_dir = None
    if isinstance(protocol, (str, os.PathLike)):
        base_dir = Path(protocol).resolve().parent
        protocol = load_protocol(protocol)
    if not hasattr(protocol, "kind"):
        raise StimsimError(f"protocol: expected a protocol file or a validated protocol, got {type(protocol).__name__}")
    roi = check_roi(roi)

    summary = None
    if results_dir is not None and Path(results_dir).exists():
        t = time.perf_counter()
        data = load_field_data(results_dir)
        summary = data.summary
        given = (summary or {}).get("inputs", {}).get("protocol_sha256")
        if given is not None and given != protocol_sha256(protocol):
            raise StimsimError(f"results folder {results_dir} was computed from a different protocol "
                               f"(protocol hash {given[:12]}… vs {protocol_sha256(protocol)[:12]}…); rerun "
                               "`stimsim run` or omit the results folder to simulate again")
        data = FieldData(data.mesh, data.element, data.node, protocol, summary, data.electrodes,
                         data.coil_dipoles_mm, data.coil_matrix, data.origin, data.inputs)
        logger.info("reusing %s (read in %.2f s)", results_dir, time.perf_counter() - t)
        source = f"reused results folder {results_dir}"
    else:
        from .results import summarize, write_results
        from .simulation import simulate

        t = time.perf_counter()
        result = simulate(protocol, base_dir=base_dir)
        logger.info("simulated in %.2f s", time.perf_counter() - t)
        from .safety import check_result

        safety = check_result(result).as_dict()
        if results_dir is not None:
            write_results(result, results_dir, safety=safety)
            summary = json.loads((Path(results_dir) / "summary.json").read_text(encoding="utf-8"))
            source = f"simulated; results written to {results_dir}"
        else:
            summary = summarize(result, safety)
            source = "simulated for this report"
        data = load_field_data(result, base_dir=base_dir)
        data = FieldData(data.mesh, data.element, data.node, protocol, summary, data.electrodes,
                         data.coil_dipoles_mm, data.coil_matrix, data.origin, data.inputs)

    shown = report_fields(data)
    doses = [dose_metrics(data, roi=roi, brain_tags=brain_tags, field=f) for f in shown]
    dose = doses[0]
    safety = (summary or {}).get("safety")
    if safety is None:
        from .safety import check

        fields = SimpleNamespace(mesh=data.mesh, J=data.element_vectors("J")) if "J" in data.element else None
        safety = check(protocol, fields, brain_tags=dose["brain_tags"]).as_dict()

    pics, note = [], ""
    if pictures is not False:
        from .viz.probe import probe_rendering

        probe = probe_rendering()
        if probe.ok:
            t = time.perf_counter()
            pics = _pictures(data, dose["brain_tags"], roi, shown)
            logger.info("pictures rendered in %.2f s", time.perf_counter() - t)
        elif pictures:
            raise StimsimError(probe.reason)
        else:
            note = probe.reason
            logger.warning("report without pictures: %s", note)
    else:
        note = "left out on request"

    summ = summary or {}
    provenance = {
        "stimsim version (report)": __version__,
        "stimsim version (simulation)": summ.get("stimsim_version", __version__),
        "simulation created": summ.get("created", "now"),
        "report_created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fields": source,
        "inputs": data.inputs or summ.get("inputs", {}),
        "mesh": summ.get("mesh") or {"nodes": data.mesh.n_nodes, "tetrahedra": data.mesh.n_tets,
                                     "tags": data.mesh.tissue_tags.tolist()},
        "solver": summ.get("solver", {}),
        "platform": summ.get("platform", {}),
    }
    title = f"stimsim report: {protocol.name or protocol.kind} ({protocol.kind}, head {protocol.head})"
    text = render_html(protocol=protocol, dose=doses, safety=safety, pictures=pics, picture_note=note,
                       provenance=provenance, title=title)
    atomic_write_text(out_html, text)
    logger.info("wrote %s (%.0f kB) in %.2f s", out_html, len(text) / 1e3, time.perf_counter() - t_all)
    return out_html


__all__ = ["make_report", "dose_metrics", "report_fields", "render_html", "brain_tags_for", "FOCALITY_FRACTIONS"]
