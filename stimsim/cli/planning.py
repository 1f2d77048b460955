"""``stimsim leadfield`` and ``stimsim optimize tdcs|tms``: many right-hand sides, montage and coil search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..errors import StimsimError
from .common import app, brain_tags_of, fail, numbers, state, vec


def read_positions_file(path: Path) -> dict:
    """name -> (x, y, z) mm from a .tsv/.csv (name,x,y,z or SimNIBS Type,x,y,z,Name) or .elc file."""
    from ..head.eeg import read_positions

    return dict(read_positions(path))


@app.command()
def leadfield(
    head: str = typer.Argument(..., help="'sphere' or a head mesh file"),
    positions: Path = typer.Option(..., "--positions", help="electrode positions file (.tsv/.csv/.elc, mm)"),
    reference: str = typer.Option(..., "--reference", help="name of the return electrode"),
    out: Path = typer.Option(..., "--out", "-o", help="leadfield file (.npz)"),
    diameter_mm: Optional[float] = typer.Option(None, "--diameter-mm", help="disc pads (default: point electrodes)"),
    backend: str = typer.Option("auto", "--backend", help="auto (PARDISO when the optional pypardiso is "
                                "installed and the head fits, else AMG-CG), pardiso, cholmod, splu or amg"),
):
    """Field of every electrode against a reference, one set-up and many right-hand sides.

    Example: stimsim leadfield sphere --positions cap.tsv --reference REF --out lf.npz
    """
    from ..mesh import read_mesh
    from ..planning import compute_leadfield, save_leadfield
    from ..simulation import resolve_head

    from ..outputs import check_output_file

    try:
        check_output_file(out)
        if diameter_mm is not None and not diameter_mm > 0:
            raise StimsimError(f"--diameter-mm: give a pad diameter > 0 mm (got {diameter_mm})")
        mesh, _ = read_mesh(resolve_head(head, Path.cwd()))
        lf = compute_leadfield(mesh, read_positions_file(positions), reference,
                               shape="disc" if diameter_mm else "point", diameter_mm=diameter_mm,
                               backend=backend, progress=not state["quiet"])
        save_leadfield(lf, out)
    except StimsimError as err:
        fail(err)
    typer.echo(f"wrote {out}: {len(lf.names) - 1} electrodes x {lf.fields.shape[1]} elements "
               f"({lf.fields.nbytes / 2**20:.0f} MiB float32)")


optimize_app = typer.Typer(help="Optimise a tDCS montage or a TMS coil position.", no_args_is_help=True)
app.add_typer(optimize_app, name="optimize")


@optimize_app.command("tdcs")
def optimize_tdcs_cmd(
    leadfield_file: Path = typer.Option(..., "--leadfield", help="leadfield .npz from `stimsim leadfield`"),
    head: str = typer.Option(..., "--head", help="the head the leadfield was computed on"),
    target: Optional[str] = typer.Option(None, "--target", help="'x,y,z' mm in the head's frame"),
    target_mni: Optional[str] = typer.Option(None, "--target-mni", help="'x,y,z' MNI152 mm (head folders, colin27)"),
    radius: float = typer.Option(10.0, "--radius", help="target ROI radius, mm"),
    direction: str = typer.Option("normal", "--direction", help="'normal' (into the head) or 'x,y,z'"),
    max_total_mA: float = typer.Option(2.0, "--max-total-mA", help="total injected current limit, mA"),
    max_electrode_mA: float = typer.Option(1.0, "--max-electrode-mA", help="per-electrode current limit, mA"),
    max_electrodes: Optional[int] = typer.Option(None, "--max-electrodes"),
    allow_unsafe: bool = typer.Option(
        False, "--allow-unsafe", help="allow limits above the safety FAIL limits (rules.yaml) and write a montage "
                                      "that FAILs the safety check"),
    out: Path = typer.Option(..., "--out", "-o", help="protocol YAML to write"),
):
    """Maximise the mean field along a direction in a target ROI under current limits (LP, HiGHS).

    Limits above the safety checker's verified FAIL limits (per electrode, total) are an error, and so is a
    montage that FAILs `stimsim check`, unless --allow-unsafe.

    Example: stimsim optimize tdcs --leadfield lf.npz --head sphere --target 30,20,70 --out best.yaml
    """
    from ..mesh import read_mesh
    from ..planning import load_leadfield, montage_protocol, optimize_tdcs
    from ..planning.leadfield import mesh_sha256
    from ..planning.optimize import check_current_limits, check_montage
    from ..protocol import save_protocol, validate_protocol
    from ..simulation import resolve_head

    from ..outputs import check_output_file

    try:
        check_output_file(out)
        if not (np.isfinite(radius) and radius > 0):
            raise StimsimError(f"--radius: give a target ROI radius > 0 mm (got {radius})")
        notices = check_current_limits(max_total_mA, max_electrode_mA, allow_unsafe=allow_unsafe)  # before any work
        lf = load_leadfield(leadfield_file)
        mesh, _ = read_mesh(resolve_head(head, Path.cwd()))
        if mesh_sha256(mesh) != lf.mesh_sha256:
            raise StimsimError(f"{leadfield_file} was computed on another mesh than {head!r}")
        d = direction if direction == "normal" else vec(direction, "--direction")
        sol = optimize_tdcs(lf, mesh, target_point(target, target_mni, head, Path.cwd()), radius, d,
                            max_total_mA=max_total_mA,
                            max_electrode_mA=max_electrode_mA, max_electrodes=max_electrodes,
                            tags=brain_tags_of(head), allow_unsafe=allow_unsafe)
        montage = validate_protocol(montage_protocol(sol, lf, head))
        report = check_montage(montage, allow_unsafe=allow_unsafe)  # a FAIL is an error unless --allow-unsafe
        save_protocol(montage, out)
    except StimsimError as err:
        fail(err)
    for notice in notices:
        typer.echo(f"warning: {notice}", err=True)
    typer.echo(f"wrote {out}: mean field {sol.target_field_V_per_m:.4g} V/m in the target; currents (mA) "
               + ", ".join(f"{n} {i:+.3f}" for n, i in sol.currents_mA.items()))
    typer.echo(f"safety check of {out}: {report.summary} (details: stimsim check {out})")


@optimize_app.command("tms")
def optimize_tms_cmd(
    protocol: str = typer.Argument(..., help="TMS protocol file or library id (head, coil, stimulator)"),
    target: Optional[str] = typer.Option(None, "--target", help="'x,y,z' mm in the head's frame"),
    target_mni: Optional[str] = typer.Option(None, "--target-mni", help="'x,y,z' MNI152 mm (head folders, colin27)"),
    grid_radius: Optional[float] = typer.Option(None, "--grid-radius", help="coil centres within this distance of "
                                                "the target's scalp point, mm [default: 30; A-field grid coils 20]"),
    grid_step: Optional[float] = typer.Option(None, "--grid-step", help="spacing of the coil centres, mm "
                                              "[default: 1; A-field grid coils 2]"),
    angles: Optional[int] = typer.Option(None, "--angles", help="handle directions over 360 degrees "
                                         "[default: 360, 1 degree steps; A-field grid coils 36]"),
    direction: Optional[str] = typer.Option(
        None, "--direction", help="maximise E along 'normal' (into the head) or 'x,y,z' instead of |E|"),
    radius: float = typer.Option(5.0, "--radius", help="target ROI radius, mm"),
    field_step: float = typer.Option(2.0, "--field-step", help="spacing of the effective-field grid, mm"),
    distance: Optional[float] = typer.Option(None, "--distance", help="scalp-to-coil distance, mm [default: the "
                                             "protocol's placement.distance_mm, else 4]"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the best placement as a protocol YAML"),
    hotspot: Optional[Path] = typer.Option(None, "--map", help="hot-spot map PNG (default with --out: "
                                           "<out>_hotspot.png beside it)"),
    export_localite: Optional[Path] = typer.Option(None, "--export-localite",
                                                   help="write the best placement as a Localite InstrumentMarker .xml"),
    export_brainsight: Optional[Path] = typer.Option(None, "--export-brainsight",
                                                     help="... as a Brainsight target .txt"),
    export_ant: Optional[Path] = typer.Option(None, "--export-ant", help="... as an ANT Visor 2 .mrk"),
    nav_t1: Optional[Path] = typer.Option(None, "--nav-t1", help="the T1 NIfTI the navigator loads (its "
                                          "qform/sform frame the exported positions; docs/neuronavigation.md)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON instead of a table"),
):
    """Search coil centres x handle directions around a target by reciprocity; report the best placement.

    Every placement's ROI-mean E comes from one effective field computed after three adjoint
    solves (docs/tms_search.md): the defaults search ~2,800 centres x 360 directions (about a
    million placements).  Example: stimsim optimize tms tms.yaml --target-mni -37,-21,58 --out best.yaml
    """
    from ..protocol.library import resolve_protocol_argument
    from ..planning import plot_hotspot, search_tms
    from ..protocol import save_protocol
    from ..tms import TMSModel

    from ..outputs import check_output_file

    try:
        # arguments first, before any file is read (the defaults of a dipole coil stand in for those not given)
        check_search_grid(30.0 if grid_radius is None else grid_radius, 1.0 if grid_step is None else grid_step,
                          360 if angles is None else angles)
        if not (np.isfinite(radius) and radius > 0):
            raise StimsimError(f"--radius: give a target ROI radius > 0 mm (got {radius})")
        if not (np.isfinite(field_step) and 0.5 <= field_step <= 10):
            raise StimsimError(f"--field-step: give a spacing between 0.5 and 10 mm (got {field_step})")
        if distance is not None and not (np.isfinite(distance) and 0 <= distance <= 50):
            raise StimsimError(f"--distance: give a scalp-to-coil distance between 0 and 50 mm (got {distance})")
        if out is not None:
            check_output_file(out)
            if hotspot is None:
                hotspot = out.with_name(out.stem + "_hotspot.png")
        if hotspot is not None:
            check_output_file(hotspot, option="--map")
        exports = [(system, path) for system, path in (("localite", export_localite), ("brainsight", export_brainsight),
                                                       ("ant", export_ant)) if path is not None]
        for system, path in exports:
            check_output_file(path, option=f"--export-{system}")
        outputs = [x.resolve() for x in [out, hotspot] + [path for _, path in exports] if x is not None]
        if len(set(outputs)) < len(outputs):
            raise StimsimError("--out, --map and --export-*: give each output its own file name")
        nav_img = None
        if nav_t1 is not None:
            from ..coils.neuronav import load_t1

            nav_img = load_t1(nav_t1, "--nav-t1")
        # the defaults fit a dipole coil (~1M placements); a grid coil is scored node by node (~20 ms each)
        p, base_dir = resolve_protocol_argument(protocol)
        if p.kind != "tms":
            raise StimsimError(f"{protocol}: kind is {p.kind!r}; optimize tms needs a TMS protocol")
        from ..coils import load_coil

        dipoles = hasattr(load_coil(p.coil, base_dir), "positions_m")
        grid_radius = (30.0 if dipoles else 20.0) if grid_radius is None else grid_radius
        grid_step = (1.0 if dipoles else 2.0) if grid_step is None else grid_step
        angles = (360 if dipoles else 36) if angles is None else angles
        check_search_grid(grid_radius, grid_step, angles)
        from ..planning.tms_search import MAX_GRID_COIL_PLACEMENTS, plane_grid

        n_placements = len(plane_grid(grid_radius, grid_step)) * angles
        if not dipoles and n_placements > MAX_GRID_COIL_PLACEMENTS:
            raise StimsimError(f"--grid-radius/--grid-step/--angles: {n_placements:,} placements, but an A-field grid "
                               f"coil is scored at every node (~20 ms each; limit {MAX_GRID_COIL_PLACEMENTS:,}): use "
                               "a larger --grid-step, a smaller --grid-radius or fewer --angles")
        if distance is None:
            from ..tms import DEFAULT_COIL_DISTANCE_MM

            distance = p.placement.distance_mm if p.placement.distance_mm is not None else DEFAULT_COIL_DISTANCE_MM
        model = TMSModel(p, base_dir=base_dir)
        res = search_tms(model, target_point(target, target_mni, p.head, base_dir), grid_radius_mm=grid_radius,
                         grid_step_mm=grid_step, angles=angles, roi_radius_mm=radius, field_step_mm=field_step,
                         distance_mm=distance,
                         progress=not state["quiet"], tags=brain_tags_of(p.head),
                         direction=None if direction is None else
                         direction if direction == "normal" else vec(direction, "--direction"))
        if hotspot is not None:
            plot_hotspot(res, hotspot)
        if exports:
            from ..coils.neuronav import export_placement

            for system, path in exports:
                export_placement(res.matrix, path, system=system, t1_affine=nav_img, name="stimsim optimum")
        if out is not None:
            # the placement is the matrix alone (not beside a centre, a distance or a navigator file)
            save_protocol(p.model_copy(update={"placement": type(p.placement)(matrix=res.matrix.tolist())}), out)
    except StimsimError as err:
        fail(err)
    found = dict(res.summary(), roi_radius_mm=radius)
    if as_json:
        typer.echo(json.dumps(found, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    tm = res.timings_s
    seconds = sum(tm.values())
    table = Table(title=f"best of {res.evaluated:,} coil placements ({res.objective}, ROI radius {radius:g} mm)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row(f"objective: {res.objective} (V/m), exact by reciprocity", f"{res.objective_V_per_m:.4g}")
    table.add_row("the same from a full FEM solve (V/m)", f"{res.fem_objective_V_per_m:.4g}")
    table.add_row("mean |E| in the ROI, full solve (V/m)", f"{res.roi_mean_magnE_V_per_m:.4g}")
    table.add_row("coil centre on the scalp (mm)", ", ".join(f"{x:.1f}" for x in res.center_mm))
    table.add_row("handle direction", ", ".join(f"{x:.3f}" for x in res.direction))
    table.add_row("placements searched", f"{len(res.positions.frames):,} centres x {len(res.angles_rad)} directions")
    table.add_row("time: adjoint / effective field / search / refine + full solve (s)",
                  f"{tm['adjoint_s']:.1f} / {tm['field_grid_s']:.1f} / {tm['score_s']:.1f} / "
                  f"{tm['refine_s'] + tm['full_solve_s']:.1f}")
    table.add_row("placements per second (whole search)", f"{res.evaluated / max(seconds, 1e-9):,.0f}")
    Console().print(table)
    if hotspot is not None:
        typer.echo(f"wrote {hotspot} (hot-spot map)")
    for system, path in exports:
        typer.echo(f"wrote {path} (best placement for the {system} navigator)")
    if out is not None:
        typer.echo(f"wrote {out} (placement as its 4x4 matrix)")


@optimize_app.command("ti")
def optimize_ti_cmd(
    leadfield_file: Path = typer.Option(..., "--leadfield", help="leadfield .npz from `stimsim leadfield`"),
    head: str = typer.Option(..., "--head", help="the head the leadfield was computed on"),
    target: Optional[str] = typer.Option(None, "--target", help="'x,y,z' mm in the head's frame"),
    target_mni: Optional[str] = typer.Option(None, "--target-mni", help="'x,y,z' MNI152 mm (head folders, colin27)"),
    radius: float = typer.Option(10.0, "--radius", help="target ROI radius, mm"),
    total_mA: float = typer.Option(2.0, "--total-mA", help="sum of the two channels' peak currents, mA"),
    objective: str = typer.Option("focality", "--objective", help="focality (target / rest of the brain, among "
                                  "montages reaching half the strongest target envelope) or target"),
    frequencies: str = typer.Option("2000,2010", "--frequencies", help="the two carrier frequencies, Hz"),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", help="electrode not to use (repeatable)"),
    avoid: Optional[list[str]] = typer.Option(
        None, "--avoid", help="'x,y,z,r' head mm: a brain sphere where the envelope must stay low (repeatable)"),
    avoid_mni: Optional[list[str]] = typer.Option(
        None, "--avoid-mni", help="'x,y,z,r': an avoid region centred at MNI152 mm, radius r head mm (repeatable)"),
    avoid_max_ratio: float = typer.Option(
        0.5, "--avoid-max-ratio", help="most an avoid region's mean envelope may be, as a fraction of the target's"),
    allow_unsafe: bool = typer.Option(False, "--allow-unsafe", help="allow currents above the verified limits"),
    out: Path = typer.Option(..., "--out", "-o", help="kind: ti protocol YAML to write"),
):
    """Two electrode pairs and their currents that maximise the TI envelope in a target (exhaustive search).

    With --avoid, only montages whose mean envelope in every avoid region is at most --avoid-max-ratio
    times the target's are kept.

    Example: stimsim optimize ti --leadfield lf.npz --head colin27 --target-mni -38,-20,50 --out ti.yaml
    """
    from ..mesh import read_mesh
    from ..outputs import check_output_file
    from ..planning import load_leadfield
    from ..planning.leadfield import mesh_sha256
    from ..planning.optimize import check_current_limits, check_montage
    from ..planning.ti_search import search_ti, ti_protocol
    from ..protocol import save_protocol, validate_protocol
    from ..simulation import resolve_head

    try:
        check_output_file(out)
        if not (np.isfinite(radius) and radius > 0):
            raise StimsimError(f"--radius: give a target ROI radius > 0 mm (got {radius})")
        freqs = numbers(frequencies)
        if len(freqs) != 2:
            raise StimsimError(f"--frequencies: give two carrier frequencies 'f1,f2' in Hz, got {frequencies!r}")
        regions = {"--avoid": [numbers(a) for a in avoid or ()], "--avoid-mni": [numbers(a) for a in avoid_mni or ()]}
        for option, texts in (("--avoid", avoid), ("--avoid-mni", avoid_mni)):
            for text, v in zip(texts or (), regions[option]):
                if len(v) != 4:
                    raise StimsimError(f"{option}: give four numbers 'x,y,z,r' in mm per region, got {text!r}")
        if regions["--avoid-mni"]:  # centres to the head's mm by its MNI transform; radii stay in head mm
            from ..head_model import mni_point_to_head

            regions["--avoid-mni"] = [[*mni_point_to_head(head, v[:3], Path.cwd(), field="--avoid-mni").tolist(), v[3]]
                                      for v in regions["--avoid-mni"]]
        avoid_regions = regions["--avoid"] + regions["--avoid-mni"]
        # each channel's electrodes carry up to the total: the per-electrode and total limits both apply
        notices = check_current_limits(total_mA, total_mA, allow_unsafe=allow_unsafe,
                                       options=("--total-mA", "--total-mA (per electrode)"))
        lf = load_leadfield(leadfield_file)
        mesh, _ = read_mesh(resolve_head(head, Path.cwd()))
        if mesh_sha256(mesh) != lf.mesh_sha256:
            raise StimsimError(f"{leadfield_file} was computed on another mesh than {head!r}")
        found = search_ti(lf, mesh, target_point(target, target_mni, head, Path.cwd()), radius, total_mA=total_mA,
                          brain_tags=brain_tags_of(head), objective=objective, exclude=exclude or (),
                          avoid=avoid_regions, avoid_max_ratio=avoid_max_ratio)
        protocol = validate_protocol(ti_protocol(found, lf, head, frequencies_hz=freqs))
        report = check_montage(protocol, allow_unsafe=allow_unsafe)
        save_protocol(protocol, out)
    except StimsimError as err:
        fail(err)
    for notice in notices:
        typer.echo(f"warning: {notice}", err=True)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"temporal interference: best of {found.candidates:,} electrode-pair pairs "
                        f"({found.seconds:.1f} s, objective {found.objective})")
    for col in ("channel", "anode", "cathode", "mA"):
        table.add_column(col, justify="right")
    for k, (a, c, i_mA) in enumerate(found.channels, 1):
        table.add_row(f"ch{k} ({freqs[k - 1]:g} Hz)", a, c, f"{i_mA:.3f}")
    Console().print(table)
    if found.avoid:
        table = Table(title=f"avoid regions (mean envelope at most {avoid_max_ratio:g} x the target's)")
        for col in ("avoid region", "centre (mm)", "radius (mm)", "mean envelope (V/m)", "/ target"):
            table.add_column(col, justify="right")
        for k, (a, v) in enumerate(zip(found.avoid, found.avoid_envelopes_V_per_m), 1):
            table.add_row(str(k), ", ".join(f"{x:.1f}" for x in a[:3]), f"{a[3]:g}", f"{v:.4g}",
                          f"{v / found.target_envelope_V_per_m:.3g}")
        Console().print(table)
    typer.echo(f"envelope (V/m): target mean {found.target_envelope_V_per_m:.4g}, rest of the brain mean "
               f"{found.outside_envelope_V_per_m:.4g} (focality {found.focality:.3g}), brain peak "
               f"{found.peak_brain_envelope_V_per_m:.4g}; safety {report.summary}; wrote {out}")


def target_point(target: str | None, target_mni: str | None, head: str, base_dir) -> list[float]:
    """The ROI centre in the head's mm: ``--target`` as given, or ``--target-mni`` mapped by the head's
    MNI transform (:func:`stimsim.head_model.mni_point_to_head`)."""
    if (target is None) == (target_mni is None):
        raise StimsimError("give the target once: --target x,y,z (head mm) or --target-mni x,y,z (MNI152 mm)")
    if target is not None:
        return vec(target, "--target")
    from ..head_model import mni_point_to_head

    return mni_point_to_head(head, vec(target_mni, "--target-mni"), base_dir, field="--target-mni").tolist()


#: most placements one grid search may evaluate (~0.17 s each): beyond that, coarsen the grid
MAX_GRID_PLACEMENTS = 20_000_000  # ~25 minutes on 2 cores (docs/tms_search.md)


def check_search_grid(radius_mm: float, step_mm: float, angles: int) -> None:
    import math

    if not (math.isfinite(radius_mm) and radius_mm >= 0):
        raise StimsimError(f"--grid-radius: give a radius >= 0 mm (got {radius_mm})")
    if not (math.isfinite(step_mm) and step_mm > 0):
        raise StimsimError(f"--grid-step: give a spacing > 0 mm (got {step_mm})")
    if angles < 1:
        raise StimsimError(f"--angles: give at least 1 handle direction (got {angles})")
    n = (2 * math.floor(radius_mm / step_mm) + 1) ** 2 * angles
    if n > MAX_GRID_PLACEMENTS:
        raise StimsimError(f"--grid-step {step_mm:g} with --grid-radius {radius_mm:g} and --angles {angles} would "
                           f"evaluate up to {n:.3g} placements (limit {MAX_GRID_PLACEMENTS:,}); use a larger "
                           "--grid-step or fewer --angles")
