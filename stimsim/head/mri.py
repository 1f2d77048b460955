"""A T1 (+T2) MRI -> SimNIBS tissue tags with SAMSEG, and the subject <-> MNI affine.

Segmentation
------------
SAMSEG (Puonti, Iglesias & Van Leemput 2016, NeuroImage 143:235-249,
doi:10.1016/j.neuroimage.2016.09.011; PyPI ``samseg``, MIT) fits a probabilistic whole-head atlas
(brain structures, skull, soft tissue, eyes; shipped inside its wheel) to the image with a
contrast-adaptive Gaussian mixture, so it works on T1, T2 or both, from any scanner.
:func:`run_samseg` runs its command-line entry point in a child process (``python -m
samseg.cli.run_samseg``, ``--threads``), so its memory is returned to the system when it ends and
its peak is measured on its own.  Install: see ``pip install "stimsim[mri]"`` in the README (the
``samseg`` wheel pins numpy < 2 in its metadata only; stimsim installs it with ``--no-deps``).

Label table
-----------
:data:`SAMSEG_TISSUES` maps every label of SAMSEG's whole-head atlas
(``20Subjects_smoothing2_down2_smoothingForAffine2/compressionLookupTable.txt``, FreeSurfer
colour-table numbers) to a SimNIBS tag:

===  ==========================  ===  ===================================================
FS   structure                   tag  why
===  ==========================  ===  ===================================================
2    Left-Cerebral-White-Matter  1    WM
41   Right-Cerebral-White-Matter 1    WM
7    Left-Cerebellum-White-Matter  1  WM
46   Right-Cerebellum-White-Matter 1  WM
16   Brain-Stem                  1    mostly fibre tracts (SimNIBS charm does the same)
28   Left-VentralDC              1    ventral diencephalon, mostly white (optic tract, ...)
60   Right-VentralDC             1
77   WM-hypointensities          1    lesions within WM: WM unless given as --lesion
85   Optic-Chiasm                1    fibre tract
3    Left-Cerebral-Cortex        2    GM
42   Right-Cerebral-Cortex       2    GM
8    Left-Cerebellum-Cortex      2    GM
47   Right-Cerebellum-Cortex     2    GM
10   Left-Thalamus               2    deep grey nucleus
49   Right-Thalamus              2
11   Left-Caudate                2
50   Right-Caudate               2
12   Left-Putamen                2
51   Right-Putamen               2
13   Left-Pallidum               2
52   Right-Pallidum              2
17   Left-Hippocampus            2
53   Right-Hippocampus           2
18   Left-Amygdala               2
54   Right-Amygdala              2
26   Left-Accumbens-area         2
58   Right-Accumbens-area        2
80   non-WM-hypointensities      2    within grey structures
24   CSF                         3    extra-cerebral CSF
4    Left-Lateral-Ventricle      3    ventricles are CSF
43   Right-Lateral-Ventricle     3
5    Left-Inf-Lat-Vent           3
44   Right-Inf-Lat-Vent          3
14   3rd-Ventricle               3
15   4th-Ventricle               3
72   5th-Ventricle               3
30   Left-vessel                 3    SAMSEG models it with the CSF class (GlobalCSF_messy)
62   Right-vessel                3
31   Left-choroid-plexus         3    lies in the ventricles
63   Right-choroid-plexus        3
165  Skull                       4    bone
258  Soft_Nonbrain_Tissue        5    scalp, muscle, fat, ... (SAMSEG does not separate them)
259  Fluid_Inside_Eyes           6    eyes
0    Unknown                     0    background and air
===  ==========================  ===  ===================================================

Subject <-> MNI
---------------
SAMSEG registers its atlas affinely to the image and writes ``template.lta`` (FreeSurfer LTA,
``LINEAR_RAS_TO_RAS``): the map from its template's world coordinates (``template.nii.gz``,
source geometry of the LTA) to the subject's (destination).  stimsim composes it with one fixed
affine :data:`TEMPLATE_TO_MNI` from SAMSEG's template frame to MNI152 space:

    subject_to_mni = TEMPLATE_TO_MNI @ inv(template_to_subject)

:data:`TEMPLATE_TO_MNI` was computed once (2026-12, SAMSEG 0.4a0, ``--reg-only``, 1 mm images) as

    TEMPLATE_TO_MNI = R(MNI152 brain) @ inv(R(Colin27 brain)) @ R(Colin27 head)

where R(X) is SAMSEG's template -> X registration (``template.lta``) of image X:

* MNI152 brain: the ICBM 2009a nonlinear symmetric T1 template (Fonov et al. 2011, NeuroImage
  54:313-327, doi:10.1016/j.neuroimage.2010.07.033), brain only, whose world frame is MNI152
  (``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` in the nilearn 0.14.1 wheel);
* Colin27 brain / head: ``ch2bet.nii.gz`` / ``ch2.nii.gz`` of Debian ``mricron-data``
  1.2.20211006+dfsg-4 (Holmes et al. 1998; the same grid and frame).

Why the bridge: SAMSEG's atlas includes skull and scalp, and on a brain-only image its affine
registration shrinks the atlas: on Colin27 the brain-only registration is 8-11 % smaller per axis
than the whole-head one.  No whole-head MNI152 image ships in a PyPI wheel or Debian package, so
R(MNI152 brain) @ inv(R(Colin27 brain)) (Colin27 -> MNI152 by two brain-only registrations, whose
bias cancels) is chained with the whole-head registration of Colin27.  Check: the Colin27 T1 through
the whole chain (at 1 mm or resampled to 3 mm) gives subject -> MNI = diag(1.034, 1.025, 1.022) plus
< 1 mm of shift and < 0.6 % shear: brain-box corners move 2.3-4.2 mm (Colin27 is in MNI305-like
space; tests/test_mri.py asserts < 8 mm).  SAMSEG's nonlinear warp needs FreeSurfer's
``fsbindings`` (not on PyPI), so only the affine is available.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .._logging import logger
from ..cache import sha256_file
from ..errors import StimsimError

__all__ = ["MRIError", "SAMSEG_TISSUES", "SAMSEG_LABEL_MAP", "TEMPLATE_TO_MNI", "samseg_available",
           "samseg_version", "load_mri", "prepare_mri", "run_samseg", "samseg_tags", "read_lta",
           "subject_to_mni_affine", "tissue_volumes_cm3", "check_volumes", "sha256_file", "FAST_SAMSEG_OPTIONS",
           "INSTALL_HINT"]

INSTALL_HINT = ('pip install "stimsim[mri]" && pip install --no-deps "samseg==0.4a0" "surfa==0.6.3" '
                "(samseg's numpy<2 pin is metadata only; --no-deps keeps numpy 2)")


class MRIError(StimsimError, ValueError):
    """An MRI cannot be used (not a 3-D image, no orientation, not a head) or segmentation failed."""


#: (FreeSurfer label, structure name, SimNIBS tag): the documented table of the module docstring
SAMSEG_TISSUES: tuple[tuple[int, str, int], ...] = (
    (0, "Unknown", 0),
    (2, "Left-Cerebral-White-Matter", 1), (41, "Right-Cerebral-White-Matter", 1),
    (7, "Left-Cerebellum-White-Matter", 1), (46, "Right-Cerebellum-White-Matter", 1),
    (16, "Brain-Stem", 1), (28, "Left-VentralDC", 1), (60, "Right-VentralDC", 1),
    (77, "WM-hypointensities", 1), (85, "Optic-Chiasm", 1),
    (3, "Left-Cerebral-Cortex", 2), (42, "Right-Cerebral-Cortex", 2),
    (8, "Left-Cerebellum-Cortex", 2), (47, "Right-Cerebellum-Cortex", 2),
    (10, "Left-Thalamus", 2), (49, "Right-Thalamus", 2), (11, "Left-Caudate", 2), (50, "Right-Caudate", 2),
    (12, "Left-Putamen", 2), (51, "Right-Putamen", 2), (13, "Left-Pallidum", 2), (52, "Right-Pallidum", 2),
    (17, "Left-Hippocampus", 2), (53, "Right-Hippocampus", 2), (18, "Left-Amygdala", 2),
    (54, "Right-Amygdala", 2), (26, "Left-Accumbens-area", 2), (58, "Right-Accumbens-area", 2),
    (80, "non-WM-hypointensities", 2),
    (24, "CSF", 3), (4, "Left-Lateral-Ventricle", 3), (43, "Right-Lateral-Ventricle", 3),
    (5, "Left-Inf-Lat-Vent", 3), (44, "Right-Inf-Lat-Vent", 3), (14, "3rd-Ventricle", 3),
    (15, "4th-Ventricle", 3), (72, "5th-Ventricle", 3), (30, "Left-vessel", 3), (62, "Right-vessel", 3),
    (31, "Left-choroid-plexus", 3), (63, "Right-choroid-plexus", 3),
    (165, "Skull", 4),
    (258, "Soft_Nonbrain_Tissue", 5),
    (259, "Fluid_Inside_Eyes", 6),
)
SAMSEG_LABEL_MAP: dict[int, int] = {label: tag for label, _, tag in SAMSEG_TISSUES}

#: SAMSEG template world (mm) -> MNI152 (mm); see the module docstring for how it was computed
TEMPLATE_TO_MNI = np.array([
    [1.109183, -0.004056, -0.001209, 0.259908],
    [-0.011103, 1.040374, -0.050348, 3.086114],
    [-0.010728, 0.025465, 1.037857, -3.575770],
    [0.0, 0.0, 0.0, 1.0],
])

#: SAMSEG options for a quick, coarser segmentation (tests, previews): the coarse atlas level only
FAST_SAMSEG_OPTIONS = {"multiResolutionSpecification": [
    {"targetDownsampledVoxelSpacing": 3.0, "maximumNumberOfIterations": 20}]}

_MAX_VOXEL_MM = 2.0
_ISO_TOLERANCE = 0.05


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
def _nib():
    try:
        import nibabel
    except Exception as exc:  # pragma: no cover - depends on the environment
        raise MRIError(f"reading MRIs needs the 'nibabel' package ({exc}); {INSTALL_HINT}") from None
    return nibabel


def load_mri(path, what: str = "T1"):
    """Load and check one MRI: a readable NIfTI/MGH file, one 3-D volume, a valid orientation
    (qform or sform), finite non-constant intensities.  Returns a nibabel image (float32 data)."""
    nib = _nib()
    path = Path(path)
    if not path.is_file():
        raise MRIError(f"{what}: file not found: {path}")
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise MRIError(f"{what}: cannot read {path.name} as a NIfTI or MGH image ({exc})") from None
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise MRIError(f"{what}: need one 3-D volume, got shape {tuple(img.shape)}"
                       + (" (a 4-D series: give one volume)" if len(shape) == 4 else ""))
    if min(shape) < 8:
        raise MRIError(f"{what}: the volume {tuple(shape)} is too small to be a head MRI")
    hdr = img.header
    if hasattr(hdr, "get_sform"):  # NIfTI: one of qform/sform must be set
        codes = (int(hdr["sform_code"]), int(hdr["qform_code"]))
        if codes == (0, 0):
            raise MRIError(f"{what}: {path.name} has no valid orientation (qform_code and sform_code are 0), so "
                           "left/right and the voxel size are unknown; fix the header (e.g. the scanner's "
                           "DICOM-to-NIfTI converter, dcm2niix) and try again")
    affine = np.asarray(img.affine, float)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise MRIError(f"{what}: the image's voxel-to-world affine is singular or not finite")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise MRIError(f"{what}: cannot read the voxel data of {path.name} ({exc})") from None
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    if float(data.max()) <= float(data.min()):
        raise MRIError(f"{what}: the image is constant ({float(data.min()):g} everywhere); not an MRI")
    return nib.Nifti1Image(data, affine)


def _zooms(affine) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def _axis_aligned(affine, tol: float = 1e-4) -> bool:
    a = np.asarray(affine, float)[:3, :3]
    unit = np.abs(a / _zooms(a))
    return bool(np.allclose(unit, np.round(unit), atol=tol) and np.allclose(np.round(unit).sum(0), 1))


def _world_box(img) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in img.shape[:3]], indexing="ij")).reshape(3, -1).T
    w = corners @ img.affine[:3, :3].T + img.affine[:3, 3]
    return w.min(0), w.max(0)


def resample_onto(img, shape, affine, order: int):
    """``img`` resampled onto the grid ``(shape, affine)`` (world coordinates; 0 outside its field of view)."""
    import scipy.ndimage as ndi

    vox = np.linalg.solve(img.affine, affine)  # target voxel -> source voxel
    data = np.asarray(img.dataobj, np.float32)
    out = ndi.affine_transform(data, vox[:3, :3], vox[:3, 3], output_shape=tuple(shape), order=order,
                               mode="constant", cval=0.0)
    return _nib().Nifti1Image(out.astype(np.float32), np.asarray(affine, float))


def _iso_grid(img, voxel_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axis-aligned RAS grid of ``voxel_mm`` covering ``img``'s field of view."""
    lo, hi = _world_box(img)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / voxel_mm - 1e-6).astype(int))
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = lo + voxel_mm / 2
    return shape, affine


def prepare_mri(t1, t2=None, lesion=None) -> dict:
    """Check the inputs and put them on one working grid.

    The T1's own grid is kept when it is axis-aligned (any axis order) with isotropic voxels
    (within 5 %); otherwise the T1 is resampled (trilinear) to an axis-aligned RAS grid of its
    smallest voxel size covering its field of view, and the labels are on that grid.  A T2 on
    another grid is resampled onto the working grid (they share world coordinates); one that
    covers less than half of the T1's head is an error.  A lesion mask must be on the T1's grid
    (same shape and affine); it follows the T1 when that is resampled (nearest neighbour).

    Returns ``{"t1": img, "t2": img | None, "lesion": bool array | None, "resampled": bool,
    "warnings": [...], "t1_shape", "t1_affine"}``.
    """
    warnings = []
    img = load_mri(t1, "T1")
    zooms = _zooms(img.affine)
    if zooms.max() > _MAX_VOXEL_MM:
        msg = (f"T1 voxels are {'x'.join(f'{z:.3g}' for z in zooms)} mm, larger than {_MAX_VOXEL_MM:g} mm: thin "
               "layers (CSF, skull) will be coarse; a 1 mm T1 is recommended")
        logger.warning("%s", msg)
        warnings.append(msg)
    iso = zooms.max() / zooms.min() <= 1 + _ISO_TOLERANCE
    resampled = not (iso and _axis_aligned(img.affine))
    t1_shape, t1_affine = img.shape, np.asarray(img.affine, float)
    work = img
    if resampled:
        shape, affine = _iso_grid(img, float(zooms.min()))
        why = "non-isotropic voxels" if not iso else "an oblique (rotated) voxel grid"
        msg = (f"T1 has {why} ({'x'.join(f'{z:.3g}' for z in zooms)} mm): resampled to {zooms.min():.3g} mm "
               f"isotropic, axis-aligned {shape}; labels.nii.gz is on that grid")
        logger.warning("%s", msg)
        warnings.append(msg)
        work = resample_onto(img, shape, affine, order=1)
    t2img = None
    if t2 is not None:
        t2img = load_mri(t2, "T2")
        same = t2img.shape[:3] == work.shape[:3] and np.allclose(t2img.affine, work.affine, atol=1e-3)
        if not same:
            t2img = resample_onto(t2img, work.shape[:3], work.affine, order=1)
            t1d = np.asarray(work.dataobj)
            head = t1d > np.percentile(t1d, 75) * 0.2
            lo, hi = _world_box(load_mri(t2, "T2"))
            ijk = np.argwhere(head)
            xyz = ijk @ work.affine[:3, :3].T + work.affine[:3, 3]
            covered = float(((xyz >= lo) & (xyz <= hi)).all(1).mean()) if len(xyz) else 0.0
            if covered < 0.5:
                raise MRIError(f"T2: it covers {100 * covered:.0f} % of the T1's head (world coordinates); the two "
                               "images do not overlap: give a T2 of the same subject and session, or register it "
                               "to the T1 first")
            msg = f"T2 is on another grid than the T1: resampled onto the T1 grid (covers {100 * covered:.0f} %)"
            logger.info("%s", msg)
            warnings.append(msg)
    lmask = None
    if lesion is not None:
        limg = load_mri(lesion, "lesion") if not isinstance(lesion, np.ndarray) else None
        if limg is not None:
            if limg.shape[:3] != tuple(t1_shape) or not np.allclose(limg.affine, t1_affine, atol=1e-3):
                raise MRIError(f"lesion: grid {tuple(limg.shape[:3])} with its affine differs from the T1's "
                               f"{tuple(t1_shape)}; resample the mask onto the T1 (nearest neighbour) and try again")
            ldata = np.asarray(limg.dataobj) > 0.5
        else:
            ldata = np.asarray(lesion) > 0
            if ldata.shape != tuple(t1_shape):
                raise MRIError(f"lesion: shape {ldata.shape} differs from the T1's {tuple(t1_shape)}")
        if not ldata.any():
            raise MRIError("lesion: the mask is empty (no voxel above 0.5)")
        if resampled:
            ldata = resample_onto(_nib().Nifti1Image(ldata.astype(np.float32), t1_affine), work.shape[:3],
                                   work.affine, order=0).get_fdata() > 0.5
        lmask = ldata
    return {"t1": work, "t2": t2img, "lesion": lmask, "resampled": resampled, "warnings": warnings,
            "t1_shape": tuple(int(s) for s in t1_shape), "t1_affine": t1_affine}


# ----------------------------------------------------------------------------------------------
# SAMSEG
# ----------------------------------------------------------------------------------------------
def samseg_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("samseg") is not None


def samseg_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("samseg")
    except Exception:
        return None


def run_samseg(images, out_dir, *, threads: int = 2, options: dict | None = None, log=None) -> dict:
    """Run SAMSEG on ``images`` (T1 first, then T2; files on one grid) into ``out_dir``.

    A child process (``python -m samseg.cli.run_samseg -i ... -o out_dir --threads N``), its output
    to ``out_dir/samseg.log``.  ``options``: SAMSEG's advanced options (``--options`` JSON), e.g.
    :data:`FAST_SAMSEG_OPTIONS`.  Returns ``{"seg": path, "lta": path, "time_s", "peak_rss_mb"}``
    (the child's own peak resident memory).  Raises :class:`MRIError` when SAMSEG is missing or fails.
    """
    if not samseg_available():
        raise MRIError(f"segmenting an MRI needs SAMSEG, which is not installed: {INSTALL_HINT}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "samseg.cli.run_samseg", "-o", str(out_dir), "--threads", str(int(threads))]
    for img in images:
        cmd += ["-i", str(img)]
    if options:
        opt_file = out_dir / "options.json"
        opt_file.write_text(json.dumps({"optimizationOptions": options}), encoding="utf-8")
        cmd += ["--options", str(opt_file)]
    n = str(int(threads))
    env = {**os.environ, "OMP_NUM_THREADS": n, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": n}
    log_path = out_dir / "samseg.log"
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C / SIGTERM: end the child we started, then re-raise
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except Exception:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except Exception:
                    pass
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - t0
    seg, lta = out_dir / "seg.mgz", out_dir / "template.lta"
    if proc.returncode != 0 or not seg.is_file() or not lta.is_file():
        tail = [ln.strip() for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        last = tail[-1] if tail else "(no output)"
        raise MRIError(f"SAMSEG failed (exit code {proc.returncode}): {last[:300]}; full log: {log_path}")
    return {"seg": seg, "lta": lta, "time_s": elapsed, "peak_rss_mb": usage.ru_maxrss / 1024.0}


def samseg_tags(seg_path) -> tuple[np.ndarray, np.ndarray]:
    """SAMSEG's ``seg.mgz`` -> (SimNIBS tag volume uint8, affine) with :data:`SAMSEG_LABEL_MAP`."""
    from .labels import apply_label_map

    img = _nib().load(str(seg_path))
    seg = np.asarray(img.dataobj).astype(np.int64)
    return apply_label_map(seg, SAMSEG_LABEL_MAP), np.asarray(img.affine, float)


def read_lta(path) -> np.ndarray:
    """The RAS->RAS (mm) 4x4 matrix of a FreeSurfer ``.lta`` file, source -> destination.

    ``LINEAR_RAS_TO_RAS`` (type 1) is read as is; ``LINEAR_VOX_TO_VOX`` (type 0) is converted with
    the source and destination volume geometries written in the file."""
    text = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    kind, mat, geo, section = None, None, {"src": {}, "dst": {}}, None
    i = 0
    while i < len(text):
        ln = text[i].split("#", 1)[0].strip()
        if ln.startswith("type"):
            kind = int(ln.split("=")[1])
        elif ln.startswith("1 4 4") and mat is None:
            mat = np.array([[float(v) for v in text[i + k].split()] for k in range(1, 5)])
            i += 4
        elif ln.startswith("src volume info"):
            section = "src"
        elif ln.startswith("dst volume info"):
            section = "dst"
        elif section and "=" in ln:
            key, val = (s.strip() for s in ln.split("=", 1))
            geo[section][key] = val
        i += 1
    if mat is None or mat.shape != (4, 4) or kind not in (0, 1):
        raise MRIError(f"{Path(path).name}: not a linear FreeSurfer LTA transform (type {kind})")
    if kind == 1:
        return mat

    def vox2ras(g):
        shape = np.array([float(v) for v in g["volume"].split()])
        vs = np.array([float(v) for v in g["voxelsize"].split()])
        m = np.array([[float(v) for v in g[k].split()] for k in ("xras", "yras", "zras")]).T * vs
        c = np.array([float(v) for v in g["cras"].split()])
        a = np.eye(4)
        a[:3, :3] = m
        a[:3, 3] = c - m @ (shape / 2)
        return a

    return vox2ras(geo["dst"]) @ mat @ np.linalg.inv(vox2ras(geo["src"]))


def subject_to_mni_affine(lta_path) -> np.ndarray:
    """Subject world (mm) -> MNI152 (mm) from SAMSEG's ``template.lta`` (module docstring)."""
    template_to_subject = read_lta(lta_path)
    return TEMPLATE_TO_MNI @ np.linalg.inv(template_to_subject)


# ----------------------------------------------------------------------------------------------
# plausibility
# ----------------------------------------------------------------------------------------------
#: plausible volume (cm^3) per tag of a whole-head MRI, wide enough for children and large adults
#: (adult WM ~350-600, GM ~500-800, intracranial ~1200-1700 cm^3)
_PLAUSIBLE_CM3 = {1: (80.0, 1200.0), 2: (150.0, 1500.0), 3: (20.0, 1200.0), 4: (80.0, 3000.0), 5: (80.0, 20000.0)}
_NAMES = {1: "white matter", 2: "grey matter", 3: "CSF", 4: "bone", 5: "scalp", 6: "eyes"}


def tissue_volumes_cm3(tags: np.ndarray, affine) -> dict[int, float]:
    vox = float(np.prod(_zooms(affine))) / 1000.0
    counts = np.bincount(np.asarray(tags).ravel(), minlength=7)
    return {t: float(counts[t]) * vox for t in range(1, len(counts)) if counts[t]}


def check_volumes(tags: np.ndarray, affine, *, whole_head: bool = True) -> dict[int, float]:
    """Tissue volumes (cm^3); :class:`MRIError` naming the tissue when one is implausible (a failed
    segmentation, or an image that is not a head).  ``whole_head=False`` (a brain-only image) checks
    only WM and GM."""
    vol = tissue_volumes_cm3(tags, affine)
    for t, (lo, hi) in _PLAUSIBLE_CM3.items():
        if not whole_head and t > 2:
            continue
        v = vol.get(t, 0.0)
        if not lo <= v <= hi:
            raise MRIError(f"segmentation is implausible: {_NAMES[t]} volume {v:.0f} cm^3 is outside "
                           f"{lo:.0f}-{hi:.0f} cm^3 (is this a T1/T2 MRI of a whole head? a brain-only image "
                           "can be segmented with `stimsim segment`); check qc.png / the input")
    return vol
