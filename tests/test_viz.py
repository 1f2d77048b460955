"""Pictures, the HTML report and the view/report command functions.

Rendering tests run off-screen and need pyvista plus an OpenGL library (Debian: libegl1
libgl1-mesa-dri, or libosmesa6).  Outside CI they skip with the reason when either is missing;
under CI=true a missing piece is a failure.  Each rendering test checks that every plotter it
opened was closed, then closes all and collects garbage.
"""

from __future__ import annotations

import base64
import gc
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from stimsim.errors import StimsimError

IN_CI = os.environ.get("CI", "").lower() == "true"
DEMO = Path(str(resources.files("stimsim") / "data" / "demo_tdcs.yaml"))
TMS_YAML = """\
kind: tms
name: sphere-tms
head: sphere
conductivities: {3: 0.33, 4: 0.0042, 5: 0.33}
coil: {file: Magstim_70mm_Fig8.ccd}
placement: {center: [0, 0, 95], direction: [0, 1, 0], distance_mm: 4}
stimulator: {didt_A_per_us: 100}
"""


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def _need_module(name: str, hint: str):
    if importlib.util.find_spec(name) is None:
        _missing(f"{name} is not installed ({hint})")


@pytest.fixture
def pv():
    """pyvista, when it can render off-screen here; checks that the test closed its plotters."""
    _need_module("pyvista", "pip install 'stimsim[viz]'")
    from stimsim.viz import probe_rendering

    probe = probe_rendering()
    if not probe.ok:
        _missing(probe.reason)
    import pyvista
    from pyvista.plotting import plotter as _plotter

    before = set(_plotter._ALL_PLOTTERS)
    yield pyvista
    left_open = set(_plotter._ALL_PLOTTERS) - before
    pyvista.close_all()
    gc.collect()
    assert not left_open, f"{len(left_open)} plotter(s) left open"


@pytest.fixture(scope="session")
def demo_result():
    from stimsim.protocol import load_protocol
    from stimsim.simulation import simulate

    return simulate(load_protocol(DEMO))


@pytest.fixture(scope="session")
def demo_results_dir(demo_result, tmp_path_factory):
    from stimsim.results import write_results

    return write_results(demo_result, tmp_path_factory.mktemp("viz") / "demo")


def _read_png(path_or_bytes) -> np.ndarray:
    from PIL import Image

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def _saturation(img: np.ndarray) -> np.ndarray:
    f = img.astype(float) / 255
    mx, mn = f.max(axis=2), f.min(axis=2)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)


def _assert_picture(img: np.ndarray, *, min_fraction=0.05):
    """Not blank: enough non-background pixels, many colours, and a colour bar with a viridis gradient."""
    h, w, _ = img.shape
    background = np.all(img >= 250, axis=2)
    assert 1 - background.mean() > min_fraction, "picture is (nearly) blank"
    centre = img[h // 4: 3 * h // 4, w // 4: 3 * w // 4].reshape(-1, 3)
    assert len(np.unique(centre, axis=0)) > 100, "the field shows too few colours"
    # colour bar: in the right-hand strip, the column with the most saturated pixels
    x0 = int(0.8 * w)
    strip = img[:, x0:]
    sat = _saturation(strip) > 0.3
    col = int(np.argmax(sat.sum(axis=0)))
    rows = np.flatnonzero(sat[:, col])
    assert len(rows) > 0.4 * h, f"no colour bar found (tallest coloured column {len(rows)} px of {h})"
    colours = strip[rows, col].astype(float)
    assert len(np.unique(colours, axis=0)) > 30, "colour bar has no gradient"
    luminance = colours @ np.array([0.299, 0.587, 0.114])
    corr = np.corrcoef(rows, luminance)[0, 1]
    assert corr < -0.9, f"colour bar is not a dark-to-bright (bottom-to-top) gradient (corr {corr:.2f})"


# ------------------------------------------------------------------------------------------ no VTK on import


def test_import_loads_no_vtk():
    code = ("import sys, stimsim, stimsim.viz, stimsim.report, stimsim.cli.viz; "
            "bad = [m for m in ('vtk', 'vtkmodules', 'pyvista') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ pictures


def test_png_of_the_demo_is_not_blank(pv, demo_result, tmp_path):
    from stimsim.viz import plot_field

    out = tmp_path / "top.png"
    img = plot_field(demo_result, view="top", screenshot=out, window_size=(640, 480))
    assert img.shape == (480, 640, 3)
    on_disk = _read_png(out)
    assert on_disk.shape == (480, 640, 3)
    _assert_picture(on_disk)
    # the anode (red) and cathode (blue) are drawn
    r, g, b = (on_disk[..., k].astype(int) for k in range(3))
    assert np.sum((r > 180) & (g < 90) & (b < 90)) > 20, "anode not drawn"
    assert np.sum((b > 150) & (r < 80) & (g > 90) & (g < 160)) > 20, "cathode not drawn"


def test_views_differ_and_cut_plane(pv, demo_result):
    from stimsim.viz import plot_field

    top = plot_field(demo_result, view="top", screenshot=True, window_size=(400, 300))
    left = plot_field(demo_result, view="left", screenshot=True, window_size=(400, 300))
    cut = plot_field(demo_result, cut_plane="y", threshold=0.05, roi=((0, 0, 80), 15), screenshot=True,
                     window_size=(400, 300))
    assert not np.array_equal(top, left)
    _assert_picture(cut)


def test_plotter_is_returned_without_screenshot(pv, demo_result):
    from stimsim.viz import plot_field

    pl = plot_field(demo_result, field="J", surface="scalp", view="iso")
    try:
        assert isinstance(pl, pv.Plotter)
        assert any("A/m" in t for t in pl.scalar_bars.keys())
    finally:
        pl.close()


def test_view_command_renders_a_results_folder(pv, demo_results_dir, tmp_path):
    from stimsim.cli.viz import view_command

    out = tmp_path / "fig.png"
    assert view_command(demo_results_dir, out, "magnE", "front", "z", None) == 0
    _assert_picture(_read_png(out))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_tms_picture_shows_the_coil(pv, tmp_path):
    from stimsim.protocol import load_protocol
    from stimsim.simulation import simulate
    from stimsim.viz import plot_field

    path = tmp_path / "tms.yaml"
    path.write_text(TMS_YAML)
    result = simulate(load_protocol(path))
    img = plot_field(result, view="iso", screenshot=True, window_size=(500, 400))
    _assert_picture(img)
    r, g, b = (img[..., k].astype(int) for k in range(3))
    assert np.sum((r > 200) & (g > 90) & (g < 170) & (b < 80)) > 30, "coil handle arrow not drawn"


def test_unknown_view_lists_the_names(pv, demo_result):
    from stimsim.viz import VIEWS, VizError, plot_field

    with pytest.raises(ValueError, match="view: 'sideways' is not a named view") as err:
        plot_field(demo_result, view="sideways", screenshot=True)
    assert isinstance(err.value, VizError) and isinstance(err.value, StimsimError)
    for name in VIEWS:
        assert name in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(field="B"), "field: 'B' is not a known field"),
    (dict(surface="liver"), "surface: 'liver' is not one of brain, gm, wm, scalp"),
    (dict(cut_plane="w"), "cut_plane: 'w' is not one of x, y, z"),
    (dict(field="dAdt"), "has no node field 'dAdt'"),
])
def test_bad_arguments(pv, demo_result, kwargs, match):
    from stimsim.viz import VizError, plot_field

    with pytest.raises(VizError, match=match):
        plot_field(demo_result, screenshot=True, **kwargs)


def test_nan_field_is_a_clear_error(pv, demo_result):
    from stimsim.viz import VizError, plot_field

    E = demo_result.E.copy()
    E[5] = np.nan
    with pytest.raises(VizError, match=r"'E' .* 1 non-finite \(NaN/inf\) values"):
        plot_field(replace(demo_result, E=E), screenshot=True)


def test_results_folder_without_fields(pv, tmp_path):
    from stimsim.viz import VizError, plot_field
    from stimsim.cli.viz import view_command

    (tmp_path / "empty").mkdir()
    with pytest.raises(VizError, match="has no fields.vtu or fields.msh"):
        plot_field(tmp_path / "empty")
    with pytest.raises(VizError, match="results folder not found"):
        view_command(tmp_path / "nowhere", tmp_path / "x.png", "magnE", None, None, None)
    assert not (tmp_path / "x.png").exists()


def test_rendering_probe_turns_a_crash_into_an_error(monkeypatch):
    _need_module("pyvista", "pip install 'stimsim[viz]'")
    from stimsim.viz import probe as _probe

    monkeypatch.setattr(_probe, "_PROBE_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(_probe, "_cache", {})
    probe = _probe.probe_rendering()
    assert not probe.ok
    assert "segmentation fault" in probe.reason and "libegl1" in probe.reason
    with pytest.raises(StimsimError, match="libgl1-mesa-dri"):
        _probe.require_rendering()


def test_export_html(pv, demo_result, tmp_path):
    _need_module("trame_vtk", "pip install trame-pyvista nest_asyncio2")
    from stimsim.viz import export_html

    out = export_html(demo_result, tmp_path / "scene.html", view="iso")
    text = out.read_text(encoding="utf-8", errors="replace")
    assert out.stat().st_size > 10_000 and "<html" in text.lower()


# ------------------------------------------------------------------------------------------ report


def _check_self_contained(text: str):
    """Nothing is loaded from outside the file: no scripts, every src and <link> a data: URI."""
    assert "<script" not in text.lower(), "the report must not need JavaScript"
    for value in re.findall(r'\bsrc\s*=\s*"([^"]*)"', text):
        assert value.startswith("data:"), f"external resource src={value[:60]!r}"
    for tag in re.findall(r"<link\b[^>]*>", text):
        assert 'href="data:' in tag, f"external resource {tag}"
    for value in re.findall(r'<a\b[^>]*href\s*=\s*"([^"]*)"', text):  # plain links, never loaded
        assert value.startswith(("https://doi.org/", "#")), value
    assert "url(" not in text and "@import" not in text


def test_report_is_one_self_contained_page(pv, tmp_path):
    from stimsim.report import make_report

    out = make_report(DEMO, tmp_path / "report.html", roi=((0, 0, 80), 15))
    text = out.read_text(encoding="utf-8")
    _check_self_contained(text)
    for needle in ("99.9th percentile", "peak (max)", "Focality", "50 %", "75 %", "mean normal component",
                   "Region of interest", "demo-sphere-tdcs", "anode", "Safety", "doi.org/10.", "Provenance",
                   "protocol_sha256", "head_sha256", "stimsim version"):
        assert needle in text, needle
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(pngs) == 3
    for b64 in pngs:
        _assert_picture(_read_png(base64.b64decode(b64)))
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_report_numbers(demo_result):
    from stimsim.report import dose_metrics
    from stimsim.viz import load_field_data

    d = dose_metrics(load_field_data(demo_result), roi=((0, 0, 80), 15))
    assert d["brain_tags"] == [3]
    f50, f75 = d["focality"]
    assert f50["volume_cm3"] > f75["volume_cm3"] > 0
    assert 0 < d["peak_V_per_m"] <= d["max_V_per_m"]
    roi = d["roi"]
    assert roi["volume_cm3"] > 0 and roi["mean_V_per_m"] > 0
    assert roi["mean_normal_V_per_m"] < 0  # under the anode the field points into the brain


def test_report_reuses_results_and_needs_no_pyvista_without_pictures(demo_results_dir, tmp_path):
    from stimsim.cli.viz import report_command

    out = tmp_path / "r.html"
    assert report_command(DEMO, out, demo_results_dir, pictures=False) == 0
    text = out.read_text(encoding="utf-8")
    _check_self_contained(text)
    assert "No pictures: left out on request" in text and "reused results folder" in text
    assert "<table" in text and "Focality" in text


def test_report_refuses_results_of_another_protocol(demo_results_dir, tmp_path):
    from stimsim.report import make_report

    other = tmp_path / "other.yaml"
    other.write_text(DEMO.read_text().replace("duration_min: 20", "duration_min: 10"))
    out = tmp_path / "r.html"
    with pytest.raises(StimsimError, match="different protocol"):
        make_report(other, out, results_dir=demo_results_dir, pictures=False)
    assert not out.exists()


def test_report_on_nan_fields_writes_nothing(demo_results_dir, tmp_path):
    from stimsim.mesh import read_mesh, write_msh, write_vtu
    from stimsim.report import make_report
    from stimsim.viz import VizError

    bad = tmp_path / "bad"
    shutil.copytree(demo_results_dir, bad)
    mesh, fields = read_mesh(bad / "fields.msh")
    element = dict(fields["element"])
    element["E"] = element["E"].copy()
    element["E"][:10] = np.nan
    element["magnE"] = np.linalg.norm(element["E"], axis=1)
    # both files (read_results reads fields.msh when it is there)
    write_msh(bad / "fields.msh", mesh, node_data=fields["node"], element_data=element)
    write_vtu(bad / "fields.vtu", mesh, node_data=fields["node"], element_data=element)
    out = tmp_path / "report.html"
    out.write_text("old report")
    with pytest.raises(VizError, match="non-finite"):
        make_report(DEMO, out, results_dir=bad, pictures=False)
    assert out.read_text() == "old report", "the previous report must stay untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "report.html"]


def test_report_on_a_folder_without_fields(tmp_path):
    from stimsim.report import make_report

    (tmp_path / "res").mkdir()
    with pytest.raises(StimsimError, match="no fields.vtu or fields.msh"):
        make_report(DEMO, tmp_path / "r.html", results_dir=tmp_path / "res", pictures=False)
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("text, ok", [("x", "x"), ("none", None), ("0,0,0,0,1,0", ([0, 0, 0], [0, 1, 0])),
                                      ("q", None), ("1,2", None)])
def test_parse_cut(text, ok):
    from stimsim.viz import VizError
    from stimsim.cli.viz import parse_cut

    if text in ("q", "1,2"):
        with pytest.raises(VizError, match="--cut"):
            parse_cut(text)
    else:
        assert parse_cut(text) == ok


def test_parse_roi():
    from stimsim.viz import VizError
    from stimsim.cli.viz import parse_roi

    assert parse_roi("0,0,80,15") == ([0, 0, 80], 15)
    with pytest.raises(VizError, match="--roi"):
        parse_roi("0,0,80,-1")


# ------------------------------------------------------------------------------------------ real browser


@pytest.mark.slow
def test_report_opens_in_headless_chromium(pv, tmp_path):
    browser = next((b for b in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
                    if Path(b).exists()), None)
    if browser is None:
        _missing("no Chromium (apt-get install --no-install-recommends chromium)")
    from stimsim.report import make_report

    report = make_report(DEMO, tmp_path / "report.html", roi=((0, 0, 80), 15))
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}",
           "--window-size=1200,3200", "--hide-scrollbars", f"--screenshot={shot}", report.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "net::ERR" in ln
               or "Failed to load resource" in ln]
    assert not console, "browser console errors:\n" + "\n".join(console)
    img = _read_png(shot)
    assert img.shape[1] == 1200
    assert (_saturation(img) > 0.3).mean() > 0.02, "the screenshot shows no picture"
    header_grey = np.all(img == 242, axis=2).sum()  # table header background #f2f2f2
    assert header_grey > 2000, "the screenshot shows no table"


def test_results_folder_records_its_electrodes(demo_result, tmp_path):
    """A results folder is self-describing: its electrodes are read back from summary.json (here
    with protocol.yaml removed, so nothing can be placed again) and match the simulation's."""
    from stimsim.results import write_results
    from stimsim.viz import load_field_data

    folder = write_results(demo_result, tmp_path / "res")
    (folder / "protocol.yaml").unlink()
    data = load_field_data(folder)
    assert [e.name for e in data.electrodes] == [e.name for e in demo_result.electrodes]
    for got, want in zip(data.electrodes, demo_result.electrodes):
        np.testing.assert_array_equal(got.nodes, want.nodes)
        assert got.center_node == want.center_node and got.current_A == pytest.approx(want.current_A)


def test_read_results_round_trip_tms(tmp_path):
    """``read_results`` gives back what ``write_results`` wrote: the fields in full precision, the coil
    matrix, units and the protocol, so a folder can be drawn or reported without re-running anything."""
    from stimsim.protocol import validate_protocol
    from stimsim.results import read_results, write_results
    from stimsim.simulation import simulate

    protocol = validate_protocol({"kind": "tms", "head": "sphere", "coil": {"file": "Magstim_70mm_Fig8.ccd"},
                                  "stimulator": {"didt_A_per_us": 80},
                                  "placement": {"center": [0, 0, 95], "direction": [1, 0, 0]}})
    result = simulate(protocol)
    data = read_results(write_results(result, tmp_path / "tms"))
    np.testing.assert_array_equal(data.element["E"], result.E)
    np.testing.assert_array_equal(data.node["v"], result.potential_V)
    np.testing.assert_allclose(data.coil_matrix, result.placement.matrix, rtol=0, atol=1e-12)
    assert data.coil_dipoles_mm is not None and len(data.coil_dipoles_mm) > 0
    assert data.summary["units"]["E"] == "V/m" and data.protocol.kind == "tms" and not data.electrodes
    assert data.inputs["protocol_sha256"] == result.inputs["protocol_sha256"]


# ------------------------------------------------------------------------------------------ temporal interference

TI_YAML = """\
kind: ti
name: sphere-ti
head: sphere
duration_min: 20
envelope_direction: [0, 0, 1]
channels:
  - frequency_hz: 2000
    electrodes:
      - {name: a1, position: [67.2, 0, 67.2], current_mA: 1.0, shape: disc, diameter_mm: 20}
      - {name: b1, position: [67.2, 0, -67.2], current_mA: -1.0, shape: disc, diameter_mm: 20}
  - frequency_hz: 2010
    electrodes:
      - {name: a2, position: [-67.2, 0, 67.2], current_mA: 1.0, shape: disc, diameter_mm: 20}
      - {name: b2, position: [-67.2, 0, -67.2], current_mA: -1.0, shape: disc, diameter_mm: 20}
"""


@pytest.fixture(scope="session")
def ti_protocol_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ti") / "ti.yaml"
    path.write_text(TI_YAML)
    return path


@pytest.fixture(scope="session")
def ti_sphere_result(ti_protocol_path):
    from stimsim.protocol import load_protocol
    from stimsim.simulation import simulate

    return simulate(load_protocol(ti_protocol_path))


@pytest.fixture(scope="session")
def ti_results_dir(ti_sphere_result, tmp_path_factory):
    from stimsim.results import write_results

    return write_results(ti_sphere_result, tmp_path_factory.mktemp("ti_res") / "ti")


def _with_fields(data, **element):
    """A copy of a FieldData with element fields added (or replaced)."""
    return replace(data, element={**data.element, **element})


def test_ti_fields_of_a_results_folder_and_a_result(ti_sphere_result, ti_results_dir):
    from stimsim.results import read_results
    from stimsim.viz import load_field_data

    folder = read_results(ti_results_dir)
    values, loc, label, unit = folder.scalar("TImax")
    np.testing.assert_array_equal(values, ti_sphere_result.envelope_max())
    assert (loc, unit) == ("element", "V/m") and label == "TI envelope (max over directions)"
    np.testing.assert_array_equal(folder.scalar("TI_dir")[0], ti_sphere_result.envelopes[(0, 1)]["TI_dir"])
    np.testing.assert_allclose(folder.scalar("E_ch2")[0], np.linalg.norm(ti_sphere_result.channel_E[1], axis=1),
                               rtol=1e-12)
    have = folder.available_fields()
    assert {"magnE", "J", "v", "TImax", "TI_dir", "E_ch1", "E_ch2", "v_ch1"} <= set(have), have
    assert "TI_normal" not in have  # the sphere has no grey matter, so no cortical normals
    in_memory = load_field_data(ti_sphere_result)
    np.testing.assert_array_equal(in_memory.scalar("TImax")[0], values)
    assert set(have) <= set(in_memory.available_fields()) | {"magnE_ch1", "magnE_ch2", "magnE", "magnJ"}


def test_unknown_or_ambiguous_ti_field_lists_the_available_ones(ti_sphere_result, ti_results_dir):
    from stimsim.results import read_results
    from stimsim.viz import VizError

    data = read_results(ti_results_dir)
    with pytest.raises(VizError, match="has no element field 'TImax_ch1_ch3'") as err:
        data.scalar("TImax_ch1_ch3")
    for name in ("TImax", "TI_dir", "E_ch1", "E_ch2", "magnE"):
        assert name in str(err.value)
    with pytest.raises(VizError, match="has no element field 'TI_normal'.*TImax"):
        data.scalar("TI_normal")
    with pytest.raises(VizError, match="'TIfoo' is not a known field.*TImax"):
        data.scalar("TIfoo")
    # three channels: three pairs, each with its suffix; the bare name is ambiguous
    env = ti_sphere_result.envelope_max()
    three = replace(data, element={k: v for k, v in data.element.items() if not k.startswith("TI")})
    three = _with_fields(three, TImax_ch1_ch2=env, TImax_ch1_ch3=2 * env, TImax_ch2_ch3=3 * env)
    with pytest.raises(VizError, match="'TImax' is ambiguous.*TImax_ch1_ch2, TImax_ch1_ch3, TImax_ch2_ch3"):
        three.scalar("TImax")
    np.testing.assert_array_equal(three.scalar("TImax_ch1_ch3")[0], 2 * env)
    # one pair under its full name: the bare name means it
    one = replace(three, element={k: v for k, v in three.element.items()
                                  if k not in ("TImax_ch1_ch3", "TImax_ch2_ch3")})
    np.testing.assert_array_equal(one.scalar("TImax")[0], env)


def test_nan_by_design_only_for_ti_normal(ti_results_dir):
    from stimsim.results import read_results
    from stimsim.viz import VizError

    data = read_results(ti_results_dir)
    inner = data.mesh.tet_tags == 3
    normal = np.where(inner, data.element["TImax"], np.nan)
    values = _with_fields(data, TI_normal=normal).scalar("TI_normal")[0]
    assert np.isnan(values[~inner]).all() and np.isfinite(values[inner]).all()
    bad = data.element["TImax"].copy()
    bad[3] = np.nan
    with pytest.raises(VizError, match="'TImax' .* 1 non-finite"):
        _with_fields(data, TImax=bad).scalar("TImax")
    with pytest.raises(VizError, match="no finite value"):
        _with_fields(data, TI_normal=np.full(data.mesh.n_tets, np.nan)).scalar("TI_normal")


def test_multichannel_tacs_field_names(ti_results_dir):
    from stimsim.results import read_results

    data = read_results(ti_results_dir)
    m = data.mesh.n_tets
    tacs = replace(data, element={"E": data.element["E"], "J": data.element["J"], "E_x": data.element["E_ch1"],
                                  "peak_phase_deg": np.linspace(-90, 90, m)}, node={"v": data.node["v"]})
    assert tacs.available_fields() == ["magnE", "E", "J", "magnJ", "v", "E_x", "peak_phase_deg"]
    phase, loc, label, unit = tacs.scalar("peak_phase_deg")
    assert unit == "deg" and loc == "element" and phase.min() == -90
    assert tacs.scalar("E_x")[2] == "|E| of channel x"


def test_view_ti_envelope_through_the_cli(pv, ti_results_dir, tmp_path):
    from typer.testing import CliRunner

    from stimsim.cli import app

    out = tmp_path / "ti.png"
    res = CliRunner().invoke(app, ["-q", "view", str(ti_results_dir), "--out", str(out), "--field", "TImax",
                                   "--view", "front", "--cut", "y"])
    assert res.exit_code == 0, res.output
    img = _read_png(out)
    _assert_picture(img)
    # the envelope is not |E|: the two pictures differ
    magn = tmp_path / "magnE.png"
    res = CliRunner().invoke(app, ["-q", "view", str(ti_results_dir), "--out", str(magn), "--view", "front",
                                   "--cut", "y"])
    assert res.exit_code == 0, res.output
    assert not np.array_equal(img, _read_png(magn))
    bad = CliRunner().invoke(app, ["-q", "view", str(ti_results_dir), "--out", str(tmp_path / "x.png"),
                                   "--field", "TImax_ch1_ch9"])
    assert bad.exit_code == 2 and "TImax_ch1_ch9" in bad.output and "TI_dir" in bad.output, bad.output
    assert not (tmp_path / "x.png").exists()


def test_ti_normal_is_drawn_where_it_is_defined(pv, ti_sphere_result):
    """A field NaN by design outside a tissue is drawn on the rest (surface and cut), not refused."""
    from stimsim.viz import VizError, load_field_data, plot_field

    data = load_field_data(ti_sphere_result)
    inner = data.mesh.tet_tags == 3
    data = _with_fields(data, TI_normal=np.where(inner, data.element["TImax"], np.nan))
    img = plot_field(data, field="TI_normal", cut_plane="y", screenshot=True, window_size=(500, 400))
    _assert_picture(img)
    with pytest.raises(VizError, match="not defined on this surface"):
        plot_field(data, field="TI_normal", surface="scalp", screenshot=True)


def test_report_of_a_ti_protocol_shows_the_envelope(pv, ti_protocol_path, ti_results_dir, tmp_path):
    from typer.testing import CliRunner

    from stimsim.cli import app

    out = tmp_path / "ti.html"
    res = CliRunner().invoke(app, ["-q", "report", str(ti_protocol_path), "--out", str(out),
                                   "--results", str(ti_results_dir), "--roi", "0,0,80,15"])
    assert res.exit_code == 0, res.output
    text = out.read_text(encoding="utf-8")
    _check_self_contained(text)
    label = "TI envelope (max over directions)"
    assert f"{label} per tissue (V/m)" in text and "|E| per tissue (V/m)" in text
    assert text.index(f"{label} per tissue") < text.index("|E| per tissue")  # the envelope first
    assert f"mean {label} (V/m)" in text and "mean normal component" in text
    figures = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', text)
    assert [c.split(" on ")[0] for c, _ in figures] == [label] * 3 + ["|E|"], [c for c, _ in figures]
    for _, b64 in figures:
        _assert_picture(_read_png(base64.b64decode(b64)))


def test_ti_dose_numbers(ti_sphere_result, ti_protocol_path, ti_results_dir, tmp_path):
    from stimsim.cli.viz import report_command
    from stimsim.report import dose_metrics, report_fields
    from stimsim.viz import load_field_data

    data = load_field_data(ti_sphere_result)
    assert report_fields(data) == ["TImax", "magnE"]
    ti = dose_metrics(data, field="TImax", roi=((0, 0, 80), 15))
    e = dose_metrics(data, roi=((0, 0, 80), 15))
    assert ti["label"] == "TI envelope (max over directions)" and e["label"] == "|E|"
    # the envelope is at most twice the weaker channel, so below the combined field's peak
    assert 0 < ti["peak_V_per_m"] < e["peak_V_per_m"]
    assert ti["roi"]["mean_normal_V_per_m"] is None and e["roi"]["mean_normal_V_per_m"] is not None
    out = tmp_path / "r.html"
    assert report_command(ti_protocol_path, out, ti_results_dir, pictures=False) == 0
    text = out.read_text(encoding="utf-8")
    assert "TI envelope (max over directions) per tissue (V/m)" in text and "No pictures" in text
