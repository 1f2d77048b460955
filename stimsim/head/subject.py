"""A person's head from their MRI: :func:`make_head_folder` (``stimsim head``) and
:func:`segment_mri` (``stimsim segment``).

Stages of :func:`make_head_folder`, each cached in ``OUT/stimsim-cache/`` under a key that hashes
its inputs, so a rerun after a crash (or with other meshing options) resumes where it stopped:

=========  ======================================================================  ==============
stage      what                                                                    cache entry
=========  ======================================================================  ==============
prepare    check the T1 / T2 / lesion, resample to one axis-aligned isotropic grid  ``input/``
segment    SAMSEG (:func:`stimsim.head.mri.run_samseg`), a child process           ``samseg/``
tissues    label table + plausibility + clean-up (:mod:`stimsim.head.cleanup`)      ``labels.nii.gz``
mesh       :func:`stimsim.head.meshers.make_head_mesh` (lesion -> its tag)          ``head.msh``
positions  MNI 10-05 positions -> subject (affine) -> closest scalp point           (recomputed)
qc         ``qc.png``                                                              (recomputed)
=========  ======================================================================  ==============

Then the files are written to a temporary folder inside ``OUT`` and renamed into place, with
``head.json`` last (:mod:`stimsim.head.folder`).  Bad input is found before anything is written;
a later failure leaves only ``stimsim-cache/`` (when it holds a finished segmentation) or nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .._logging import logger
from ..outputs import exclusive_lock
from .cleanup import check_neck_mm, clean_tissues
from .folder import CACHE_NAME, HEAD_ENTRIES, HEAD_FORMAT, is_head_folder
from .mri import (FAST_SAMSEG_OPTIONS, INSTALL_HINT, MRIError, resample_onto, check_volumes, prepare_mri,
                  run_samseg, samseg_available, samseg_tags, samseg_version, sha256_file, subject_to_mni_affine,
                  tissue_volumes_cm3)

__all__ = ["make_head_folder", "segment_mri", "SegmentResult", "mni_positions", "STAGES"]

STAGES = ("prepare", "segment", "tissues", "mesh", "positions", "qc")
#: bump when a stage's output for the same inputs changes (invalidates that stage's cache)
_VERSIONS = {"prepare": "1", "segment": "1", "tissues": "1", "mesh": "1"}
_STIMSIM_POSITIONS = "colin27_1005.tsv"  # FieldTrip standard_1005 on Colin27, i.e. in MNI space


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------
def _rss_peak_reset() -> bool:
    try:  # Linux >= 4.0: "5" resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_peak_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for ln in fh:
                if ln.startswith("VmHWM:"):
                    return float(ln.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class _Stages:
    progress: object = None
    records: dict = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, note: str = ""):
        k = STAGES.index(name) + 1 if name in STAGES else 0
        self._say(f"[{k}/{len(STAGES)}] {name}{' (' + note + ')' if note else ''} ...")
        _rss_peak_reset()
        t0 = time.perf_counter()
        rec = {"cached": False}
        yield rec
        rec["time_s"] = round(time.perf_counter() - t0, 2)
        rec["peak_rss_mb"] = round(max(_rss_peak_mb(), rec.get("peak_rss_mb", 0.0)), 1)
        self.records[name] = rec
        self._say(f"[{k}/{len(STAGES)}] {name} {'from cache' if rec['cached'] else 'done'} in {rec['time_s']:.1f} s, "
                  f"peak memory {rec['peak_rss_mb'] / 1024:.2f} GB")

    def _say(self, text: str) -> None:
        logger.info("%s", text)
        if callable(self.progress):
            self.progress(text)


def _key(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:24]


def _stamp_ok(cache: Path, name: str, key: str, files) -> dict | None:
    try:
        rec = json.loads((cache / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if rec.get("key") != key or not all((cache / f).exists() for f in files):
        return None
    return rec


def _write_stamp(cache: Path, name: str, rec: dict) -> None:
    tmp = cache / f".{name}.json.tmp"
    tmp.write_text(json.dumps(rec, indent=1, default=_jsonable), encoding="utf-8")
    os.replace(tmp, cache / f"{name}.json")


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, label: bool = False) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, np.uint8 if label else np.float32), np.asarray(affine, float))
    img.header.set_xyzt_units("mm")
    img.set_sform(np.asarray(affine, float), code=1)
    img.set_qform(np.asarray(affine, float), code=1)
    img.header["descrip"] = b"written by stimsim"
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# segmentation
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentResult:
    """Tissue tags of one MRI and what was measured on the way."""

    tags: np.ndarray          #: uint8 SimNIBS tags on ``affine``'s grid
    affine: np.ndarray        #: voxel -> world mm
    raw_volumes_cm3: dict     #: per tag, straight from the label table
    volumes_cm3: dict         #: per tag, after the clean-up
    cleanup: dict             #: :func:`stimsim.head.cleanup.clean_tissues` report
    whole_head: bool          #: False for a brain-only image (only WM/GM/CSF labelled)
    subject_to_mni: np.ndarray  #: 4x4, subject mm -> MNI152 mm


def _cleanup_options(cleanup: dict | None) -> dict:
    """The clean-up options checked, less those equal to :func:`clean_tissues`' defaults (so that the
    cache key of an explicit default is the key of no option)."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(clean_tissues).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    opts = dict(cleanup or {})
    unknown = sorted(set(opts) - set(defaults))
    if unknown:
        raise MRIError(f"cleanup: unknown option(s) {unknown}; allowed: {sorted(defaults)}")
    if "neck_mm" in opts:
        opts["neck_mm"] = check_neck_mm(opts["neck_mm"])
    return {k: v for k, v in opts.items() if v != defaults[k]}


def _tissues(seg_path, lta_path, *, whole_head: bool | None, cleanup: dict | None) -> SegmentResult:
    raw, affine = samseg_tags(seg_path)
    raw_vol = tissue_volumes_cm3(raw, affine)
    brain = raw_vol.get(1, 0.0) + raw_vol.get(2, 0.0)
    outer = raw_vol.get(4, 0.0) + raw_vol.get(5, 0.0)
    looks_brain_only = outer < 0.25 * max(brain, 1.0)
    if whole_head is None:
        whole_head = not looks_brain_only
    elif whole_head and looks_brain_only:
        raise MRIError(f"the image looks brain-only (skull-stripped): bone + scalp {outer:.0f} cm^3 against brain "
                       f"{brain:.0f} cm^3; a head model needs the whole head (`stimsim segment` labels "
                       "brain-only images)")
    check_volumes(raw, affine, whole_head=whole_head)
    opts = dict(cleanup or {})
    if not whole_head:
        raw = np.where(raw <= 3, raw, 0).astype(np.uint8)
        opts.setdefault("nest", False)
        opts["neck_mm"] = 0.0  # a brain-only image has no head to close below the brain
    tags, affine2, report = clean_tissues(raw, affine, **opts)
    vol = check_volumes(tags, affine2, whole_head=whole_head)
    return SegmentResult(tags, affine2, raw_vol, vol, report, bool(whole_head), subject_to_mni_affine(lta_path))


def segment_mri(t1, t2=None, *, threads: int = 2, fast: bool = False, whole_head: bool | None = None,
                work_dir=None, cleanup: dict | None = None, progress=None) -> SegmentResult:
    """Segment a T1 (and optional T2) into SimNIBS tissue tags: checks, SAMSEG, label table, clean-up.

    Parameters
    ----------
    t1, t2 : NIfTI / MGH paths (see :func:`stimsim.head.mri.prepare_mri` for what is accepted)
    threads : SAMSEG threads
    fast : SAMSEG's coarse atlas level only (:data:`~stimsim.head.mri.FAST_SAMSEG_OPTIONS`): several
        times faster, less accurate; for tests and previews
    whole_head : True requires a whole head, False labels a brain-only image (WM, GM, CSF), None decides
        from the segmentation
    work_dir : folder for SAMSEG's files (kept); default a temporary folder (removed)
    cleanup : keyword arguments for :func:`stimsim.head.cleanup.clean_tissues`
    """
    cleanup = _cleanup_options(cleanup)
    prep = prepare_mri(t1, t2)
    if not samseg_available():
        raise MRIError(f"segmenting an MRI needs SAMSEG, which is not installed: {INSTALL_HINT}")
    st = _Stages(progress)
    with tempfile.TemporaryDirectory(prefix="stimsim-segment-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        images = [work / "t1.nii.gz"]
        save_nifti(images[0], prep["t1"].get_fdata(), prep["t1"].affine)
        if prep["t2"] is not None:
            images.append(work / "t2.nii.gz")
            save_nifti(images[1], prep["t2"].get_fdata(), prep["t2"].affine)
        with st.stage("segment", "SAMSEG") as rec:
            res = run_samseg(images, work / "samseg", threads=threads, options=FAST_SAMSEG_OPTIONS if fast else None)
            rec["child_peak_rss_mb"] = round(res["peak_rss_mb"], 1)
            # (SAMSEG's process holds the memory: its peak is the stage's, as `stimsim head` says it; this
            # process's own, 0.17 GB, was said for a 6 GB segmentation)
            rec["peak_rss_mb"] = res["peak_rss_mb"]
        with st.stage("tissues"):
            return _tissues(res["seg"], res["lta"], whole_head=whole_head, cleanup=cleanup)


# ----------------------------------------------------------------------------------------------
# positions
# ----------------------------------------------------------------------------------------------
def mni_positions() -> dict[str, np.ndarray]:
    """The 10-05 positions and fiducials (LPA, RPA, Nz) in MNI space that stimsim ships
    (FieldTrip ``standard_1005`` on the Colin27 MNI head, ``stimsim/data/colin27_1005.tsv``)."""
    from .eeg import read_positions

    return read_positions(Path(str(resources.files("stimsim") / "data" / _STIMSIM_POSITIONS)))


def _subject_positions(mesh, subject_to_mni: np.ndarray) -> list[tuple]:
    from .eeg import project_to_scalp

    mni = mni_positions()
    names = list(mni)
    pts = np.array([mni[n] for n in names])
    inv = np.linalg.inv(subject_to_mni)
    subj = pts @ inv[:3, :3].T + inv[:3, 3]
    on = project_to_scalp(mesh, subj)
    shift = np.linalg.norm(on - subj, axis=1)
    return [(n, *on[i], *pts[i], shift[i]) for i, n in enumerate(names)]


def _write_positions(path: Path, rows) -> None:
    lines = ["# written by stimsim: 10-05 positions from MNI space (x_mni..) -> this head (affine) -> closest scalp "
             "point (x_mm..); shift_mm = distance moved onto the scalp",
             "name\tx_mm\ty_mm\tz_mm\tx_mni\ty_mni\tz_mni\tshift_mm"]
    lines += ["\t".join([r[0]] + [f"{v:.3f}" for v in r[1:]]) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# the head folder
# ----------------------------------------------------------------------------------------------
def _check_out(out: Path, overwrite: bool) -> bool:
    """Before any work: may ``out`` be written?  Returns True if it already exists."""
    from ..outputs import OutputError, check_output_target

    check_output_target(out)
    if out.is_symlink():
        raise OutputError(f"--out {out} is a symbolic link; stimsim writes only real folders: choose another name")
    if not out.exists():
        return False
    if not out.is_dir():
        raise OutputError(f"--out {out} is an existing file, not a head folder; choose another name")
    names = {p.name for p in out.iterdir()}
    if names <= {CACHE_NAME}:  # empty, or an unfinished run: resume
        return True
    if not is_head_folder(out):
        raise OutputError(f"{out} exists and is not a head folder written by stimsim (or holds other files); "
                          "stimsim replaces only its own head folders: choose another --out")
    if not overwrite:
        raise OutputError(f"head folder {out} already exists; choose another --out or pass --overwrite "
                          f"(its {CACHE_NAME}/ is reused)")
    return True


def make_head_folder(t1, out, *, t2=None, lesion=None, lesion_tag: int = 3, threads: int = 2, fast: bool = False,
                     overwrite: bool = False, method: str = "auto", element_size_mm: float | None = None,
                     cleanup: dict | None = None, progress=None) -> dict:
    """Make a head folder (:mod:`stimsim.head.folder`) from a T1 (+ T2, + lesion mask) MRI.

    Parameters
    ----------
    t1 : T1-weighted NIfTI / MGH image of the whole head
    out : the head folder; an existing one is replaced only with ``overwrite`` and only if stimsim wrote
        it; a folder holding only ``stimsim-cache/`` (an unfinished run) is resumed
    t2 : optional T2-weighted image (resampled onto the T1 when on another grid)
    lesion : optional mask on the T1's grid; the head voxels under it get ``lesion_tag`` in the mesh
        (as ``stimsim mesh --lesion``); labels.nii.gz keeps the tissues
    threads : SAMSEG threads
    fast : SAMSEG's coarse level only (tests, previews)
    method, element_size_mm : meshing (:func:`stimsim.head.meshers.make_head_mesh`)
    cleanup : keyword arguments for :func:`stimsim.head.cleanup.clean_tissues`
    progress : callable taking one line per stage start / end

    Returns the ``head.json`` content.  Raises a :class:`~stimsim.errors.StimsimError` subclass
    (one line) for bad input or a failed stage.
    """
    from ..mesh import read_mesh
    from ..mesh import write_mesh
    from .meshers import make_head_mesh, resolve_method

    t_start = time.perf_counter()
    cleanup = _cleanup_options(cleanup)
    out = Path(out)
    existed = _check_out(out, overwrite)
    method = resolve_method(method)
    st = _Stages(progress)
    inputs = {"t1": {"path": str(t1)}}
    with st.stage("prepare") as rec:
        prep = prepare_mri(t1, t2, lesion)
        for name, p in (("t1", t1), ("t2", t2), ("lesion", lesion)):
            if p is not None and not isinstance(p, np.ndarray):
                inputs[name] = {"path": str(Path(p).resolve()), "sha256": sha256_file(p)}
        rec["resampled"] = prep["resampled"]
    if not samseg_available():
        raise MRIError(f"segmenting an MRI needs SAMSEG, which is not installed: {INSTALL_HINT}")
    key_in = _key(_VERSIONS["prepare"], inputs["t1"]["sha256"], inputs.get("t2", {}).get("sha256"))

    created_out = not existed
    cache = out / CACHE_NAME
    cache.mkdir(parents=True, exist_ok=True)
    done_segment = False
    try:
        with exclusive_lock(cache / ".lock", f"is writing {cache.parent}; wait for it to finish or choose "
                                             "another --out"):
            # ---- prepare (files)
            ipaths = [cache / "input" / "t1.nii.gz"] + ([cache / "input" / "t2.nii.gz"] if t2 is not None else [])
            if _stamp_ok(cache, "prepare", key_in, [p.relative_to(cache) for p in ipaths]) is None:
                (cache / "input").mkdir(exist_ok=True)
                save_nifti(ipaths[0], prep["t1"].get_fdata(), prep["t1"].affine)
                if t2 is not None:
                    save_nifti(ipaths[1], prep["t2"].get_fdata(), prep["t2"].affine)
                _write_stamp(cache, "prepare", {"key": key_in, **st.records["prepare"]})
            # ---- segment
            key_seg = _key(key_in, _VERSIONS["segment"], samseg_version(), fast)
            note = "SAMSEG, fast" if fast else "SAMSEG, 10-15 min for a 1 mm T1 on 2 cores"
            with st.stage("segment", note) as rec:
                old = _stamp_ok(cache, "segment", key_seg, ["samseg/seg.mgz", "samseg/template.lta"])
                if old is not None:
                    rec.update(cached=True, samseg_time_s=old.get("samseg_time_s"),
                               child_peak_rss_mb=old.get("child_peak_rss_mb"))
                else:
                    tmp = cache / "samseg.tmp"
                    shutil.rmtree(tmp, ignore_errors=True)
                    res = run_samseg(ipaths, tmp, threads=threads, options=FAST_SAMSEG_OPTIONS if fast else None)
                    shutil.rmtree(cache / "samseg", ignore_errors=True)
                    os.replace(tmp, cache / "samseg")
                    rec.update(samseg_time_s=round(res["time_s"], 1), child_peak_rss_mb=round(res["peak_rss_mb"], 1))
                    _write_stamp(cache, "segment", {"key": key_seg, **rec})
                rec["peak_rss_mb"] = max(rec.get("child_peak_rss_mb") or 0.0, 0.0)
            done_segment = True
            # ---- tissues
            key_tis = _key(key_seg, _VERSIONS["tissues"], sorted(cleanup.items()))
            with st.stage("tissues", "label table + clean-up") as rec:
                seg = _tissues(cache / "samseg" / "seg.mgz", cache / "samseg" / "template.lta", whole_head=True,
                               cleanup=cleanup)
                save_nifti(cache / "labels.nii.gz", seg.tags, seg.affine, label=True)
            # ---- mesh
            lmask = None
            if prep["lesion"] is not None:
                lmask = resample_onto(_nifti(prep["lesion"].astype(np.float32), prep["t1"].affine),
                                       seg.tags.shape, seg.affine, order=0).get_fdata() > 0.5
            # the tissue volume itself is in the key (not only the versions that made it): a change to the
            # label table or the clean-up can never reuse a mesh of other labels
            key_mesh = _key(key_tis, _VERSIONS["mesh"], method, _mesher_version(method), element_size_mm,
                            lesion_tag, inputs.get("lesion", {}).get("sha256"),
                            hashlib.sha256(seg.tags.tobytes()).hexdigest(), np.round(seg.affine, 6).tolist())
            with st.stage("mesh", f"{method} mesher") as rec:
                old = _stamp_ok(cache, "mesh", key_mesh, ["head.msh"])
                if old is not None:
                    mesh, _ = read_mesh(cache / "head.msh")
                    rec.update(cached=True, mesh_info=old.get("mesh_info"))
                else:
                    mesh, info = make_head_mesh(seg.tags, seg.affine, "simnibs", method=method,
                                                element_size_mm=element_size_mm, lesion=lmask, lesion_tag=lesion_tag,
                                                progress=False, cache=False, return_info=True)
                    write_mesh(cache / "head.msh", mesh)  # atomic
                    q = info.quality or {}
                    el = q.get("elements", {})
                    rec["mesh_info"] = {"method": info.method, "nodes": int(len(mesh.nodes)),
                                        "tetrahedra": int(len(mesh.tets)),
                                        "element_size_mm": element_size_mm,
                                        # the shape report: tets below 5 deg / radius ratio 0.1, worst first
                                        "shape": {"min_dihedral_deg": q.get("min_dihedral_deg"),
                                                  "radius_ratio_min": (q.get("radius_ratio") or {}).get("min"),
                                                  "poor_count": el.get("poor_count"),
                                                  "poor": el.get("poor", [])}}
                    _write_stamp(cache, "mesh", {"key": key_mesh, **rec})
            # ---- positions
            with st.stage("positions", "MNI 10-05 -> scalp"):
                rows = _subject_positions(mesh, seg.subject_to_mni)
            # ---- qc + publish
            with st.stage("qc", "qc.png"):
                from .qc import write_qc_png

                t1img = prep["t1"]
                t1_on_labels = resample_onto(t1img, seg.tags.shape, seg.affine, order=1).get_fdata()
                stage_dir = Path(tempfile.mkdtemp(prefix=".stimsim-head-", suffix=".tmp", dir=out))
                try:
                    write_qc_png(stage_dir / "qc.png", t1_on_labels, seg.tags, seg.affine)
                    _write_positions(stage_dir / "positions.tsv", rows)
                    shutil.copyfile(cache / "labels.nii.gz", stage_dir / "labels.nii.gz")
                    shutil.copyfile(cache / "head.msh", stage_dir / "head.msh")
                    m = seg.subject_to_mni
                    (stage_dir / "subject_to_mni.txt").write_text(
                        "# written by stimsim: subject (mm) -> MNI152 (mm) affine, x_mni = A @ [x, y, z, 1]\n"
                        + "\n".join(" ".join(f"{v:.8g}" for v in row) for row in m) + "\n", encoding="utf-8")
                    info = _head_json(inputs, prep, seg, st.records, mesh, fast, threads, method, lesion_tag,
                                      time.perf_counter() - t_start)
                    (out / "head.json").unlink(missing_ok=True)  # the folder is incomplete from here on
                    for name in ("qc.png", "positions.tsv", "labels.nii.gz", "head.msh", "subject_to_mni.txt"):
                        os.replace(stage_dir / name, out / name)
                    info["stages"] = st.records  # qc's record is closed below; written again then
                finally:
                    shutil.rmtree(stage_dir, ignore_errors=True)
            info["stages"] = st.records
            info["total_time_s"] = round(time.perf_counter() - t_start, 1)
            tmp = out / ".head.json.tmp"
            tmp.write_text(json.dumps(info, indent=1, default=_jsonable) + "\n", encoding="utf-8")
            os.replace(tmp, out / "head.json")
    except BaseException:
        if created_out and not done_segment:  # nothing worth resuming: leave nothing
            shutil.rmtree(out, ignore_errors=True)
        else:
            for p in out.glob(".stimsim-head-*.tmp"):
                shutil.rmtree(p, ignore_errors=True)
        raise
    assert set(p.name for p in out.iterdir()) <= HEAD_ENTRIES
    return info


def _nifti(data, affine):
    import nibabel as nib

    return nib.Nifti1Image(np.asarray(data, np.float32), np.asarray(affine, float))


def _mesher_version(method: str) -> str:
    """The mesher's own version and defaults, so a head folder's cached mesh follows mesher upgrades."""
    if method != "surface":
        from .meshers.lattice import MESHER_VERSION

        return MESHER_VERSION
    from .meshers.surface import SURFACE_MESHER_VERSION, surface_defaults

    # defaults at 1 mm and the default size stand for the recipe (the key holds the size itself)
    return f"{SURFACE_MESHER_VERSION}|{sorted(surface_defaults(8.0, (1.0, 1.0, 1.0)).items())}"


def _head_json(inputs, prep, seg: SegmentResult, stages, mesh, fast, threads, method, lesion_tag, total_s) -> dict:
    from .. import __version__

    zooms = np.linalg.norm(seg.affine[:3, :3], axis=0)
    mvol = {}
    vols = mesh.volumes_mm3
    for t in np.unique(mesh.tet_tags):
        mvol[int(t)] = round(float(vols[mesh.tet_tags == t].sum()) / 1000, 2)
    return {
        "format": HEAD_FORMAT,
        "written_by": f"stimsim {__version__}",
        "versions": {"stimsim": __version__, "samseg": samseg_version(), "python": platform.python_version(),
                     "numpy": np.__version__},
        "inputs": inputs,
        "options": {"fast": bool(fast), "threads": int(threads), "mesh_method": method, "lesion_tag": int(lesion_tag)},
        "grid": {"t1_shape": list(prep["t1_shape"]), "resampled": bool(prep["resampled"]),
                 "labels_shape": list(seg.tags.shape), "voxel_mm": [round(float(z), 4) for z in zooms],
                 "labels_affine": seg.affine.tolist()},
        "warnings": list(prep["warnings"]),
        "tissue_volume_cm3": {"segmentation": {int(k): round(v, 2) for k, v in seg.raw_volumes_cm3.items()},
                              "labels": {int(k): round(v, 2) for k, v in seg.volumes_cm3.items()},
                              "mesh": mvol},
        "tags": {"1": "WM", "2": "GM", "3": "CSF", "4": "bone", "5": "scalp", "6": "eyes"},
        "cleanup": seg.cleanup,
        "mesh": {"nodes": int(len(mesh.nodes)), "tetrahedra": int(len(mesh.tets))},
        "mni": {"subject_to_mni": seg.subject_to_mni.tolist(),
                "mni_to_subject": np.linalg.inv(seg.subject_to_mni).tolist(),
                "method": "SAMSEG affine atlas registration (template.lta) composed with the fixed template->MNI152 "
                          "affine stimsim.head.mri.TEMPLATE_TO_MNI; affine only",
                "positions": "FieldTrip standard_1005 on Colin27 (MNI), mapped by mni_to_subject and moved to the "
                             "closest scalp point"},
        "total_time_s": round(total_s, 1),
    }
