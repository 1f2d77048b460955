"""T1 -> head folder (stimsim.head.mri, .cleanup, .subject, .folder; stimsim.cli.head).

Tests that need SAMSEG or ../shared data skip outside CI and fail under CI=true."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from stimsim.head.cleanup import check_tissues, clean_tissues, inferior_axis  # noqa: E402
from stimsim.head.mri import (SAMSEG_LABEL_MAP, SAMSEG_TISSUES, MRIError, prepare_mri, read_lta,  # noqa: E402
                              subject_to_mni_affine)
from stimsim.cli.head import head_command, segment_command  # noqa: E402

COLIN = "heads/colin27/ch2.nii.gz"
COLIN_LABELS = "heads/colin27/labels.nii.gz"


def need_samseg():
    if importlib.util.find_spec("samseg") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("SAMSEG is not installed under CI: .ci/run must `pip install --no-deps samseg surfa`")
        pytest.skip("SAMSEG not installed (pip install --no-deps samseg surfa; see README)")


# ------------------------------------------------------------------------------------------------
# synthetic heads
# ------------------------------------------------------------------------------------------------
def ball_head(n=60, scale=1.0):
    """Nested balls: scalp r<27, bone <24, CSF <21, GM <19, WM <14 (voxels, 1 mm; radii x ``scale``)."""
    g = np.indices((n, n, n)).astype(float) - n / 2 + 0.5
    r = np.sqrt((g ** 2).sum(0))
    tags = np.zeros((n, n, n), np.uint8)
    for radius, tag in ((27, 5), (24, 4), (21, 3), (19, 2), (14, 1)):
        tags[r < radius * scale] = tag
    return tags, g, r


def test_ball_head_is_clean():
    tags, _, _ = ball_head()
    chk = check_tissues(tags)
    assert set(chk["pieces"].values()) == {1}
    assert not any(chk["contacts"].values())
    out, aff, rep = clean_tissues(tags, np.eye(4))
    assert np.array_equal(out, tags) and rep["nesting_changed_voxels"] == 0 and rep["neck_slices_added"] == 0


def test_cleanup_fills_holes_and_removes_specks():
    tags, g, r = ball_head()
    bad = tags.copy()
    bad[30, 30, 30] = 0                  # a hole in WM
    bad[29:31, 20, 30] = 3               # a speck of CSF in WM
    bad[3:5, 30, 30] = 1                 # a speck of WM in the scalp
    assert check_tissues(bad)["pieces"][1] == 2
    out, _, rep = clean_tissues(bad, np.eye(4))
    assert out[30, 30, 30] == 1 and (out[29:31, 20, 30] == 1).all() and (out[3:5, 30, 30] == 5).all()
    assert rep["holes_filled_voxels"] == 1 and rep["specks_voxels"][1] == 2
    assert set(check_tissues(out)["pieces"].values()) == {1}


def test_cleanup_keeps_large_pieces_and_cavities():
    """A deep grey nucleus (a separate GM piece >= 1 cm^3) stays; a large enclosed air cavity stays;
    a small one is filled."""
    tags, g, r = ball_head(90, scale=1.6)  # WM r < 22.4
    nucleus = (np.abs(g[0]) < 6) & (np.abs(g[1]) < 6) & (np.abs(g[2] - 8) < 6) & (r < 16)
    tags[nucleus] = 2  # inside WM, ~1.5 cm^3 at 1 mm
    sinus = (np.abs(g[0]) < 6) & (np.abs(g[1]) < 6) & (np.abs(g[2] + 10) < 6)  # 12^3 voxels of air in WM
    tags[sinus] = 0
    tags[45, 45, 45 + 40] = 0  # a one-voxel hole in the scalp (r = 40 is scalp)
    assert tags[45, 45, 45 + 41] == 5
    out, _, rep = clean_tissues(tags, np.eye(4), min_piece_mm3=1000)
    assert (out[nucleus] == 2).all()
    assert (out[sinus] == 0).all() and out[45, 45, 85] == 5
    # with a larger threshold the nucleus is a speck and becomes WM
    out2, _, _ = clean_tissues(tags, np.eye(4), min_piece_mm3=5000)
    assert (out2[nucleus] == 1).all()


def test_cleanup_closes_csf_and_bone_layers():
    """Grey matter reaching through CSF and bone to the scalp, and CSF touching the scalp."""
    tags, g, r = ball_head()
    bad = tags.copy()
    finger = (r < 25.5) & (r >= 14) & (g[0] > 10) & (np.abs(g[1]) < 3) & (np.abs(g[2]) < 3)
    bad[finger] = 2
    gap = (r >= 20) & (r < 24.5) & (g[0] < -10) & (np.abs(g[1]) < 3) & (np.abs(g[2]) < 3)
    bad[gap] = 3  # CSF through the bone
    before = check_tissues(bad)["contacts"]
    assert before["brain-scalp"] > 0 and before["brain-bone"] > 0 and before["csf-scalp"] > 0
    out, _, rep = clean_tissues(bad, np.eye(4))
    after = check_tissues(out)["contacts"]
    assert not any(after.values()), after
    # bone at least one voxel thick between CSF and scalp: no CSF voxel has a scalp face-neighbour
    csf = out == 3
    for ax in range(3):
        for s in (1, -1):
            assert not (csf & (np.roll(out, s, axis=ax) == 5)).any()
    # white matter untouched, the change is local
    assert np.array_equal(out == 1, tags == 1)
    assert rep["nesting_changed_voxels"] < 0.01 * (tags > 0).sum()


def test_cleanup_eyes_inside_scalp():
    tags, g, r = ball_head()
    eye = ((g[0]) ** 2 + (g[1] - 24) ** 2 + (g[2] - 5) ** 2) < 16  # pokes out of the scalp
    tags[eye & (tags != 4) & (tags != 3) & (tags != 2) & (tags != 1)] = 6
    tags[eye & (r >= 26)] = 6
    tags[eye & (r >= 27) & (r < 28)] = 6
    assert check_tissues(tags)["contacts"]["eyes-outside"] > 0
    out, _, rep = clean_tissues(tags, np.eye(4))
    assert check_tissues(out)["contacts"]["eyes-outside"] == 0 and rep["eyes_to_scalp_voxels"] > 0
    assert (out == 6).sum() > 0


@pytest.mark.parametrize("flip", [False, True])
def test_cleanup_cut_off_lower_head(flip):
    """A scan cut through the brain gets a neck: the volume grows downward and the brain is closed."""
    tags, _, _ = ball_head()
    cut = tags[:, :, 22:].copy()  # the lowest slice goes through WM
    affine = np.eye(4)
    affine[:3, 3] = [-30, -30, -8]
    if flip:  # the same head stored with z pointing down (the lowest slice is the last one)
        cut = cut[:, :, ::-1].copy()
        affine[2, 2] = -1
        affine[2, 3] = -8 + cut.shape[2] - 1
    assert inferior_axis(affine) == (2, 1 if flip else 0)
    assert check_tissues(cut)["contacts"]["brain-outside"] > 0
    out, aff, rep = clean_tissues(cut, affine, neck_mm=10)
    assert rep["cut_off_below"] and rep["neck_slices_added"] == 10 and out.shape[2] == cut.shape[2] + 10
    assert not any(check_tissues(out)["contacts"].values())
    # the original voxels keep their world position
    low = np.array([10, 10, 0 if not flip else cut.shape[2] - 1, 1.0])
    k = 10 if not flip else 0
    idx = (10, 10, int(low[2]) + k)
    assert np.allclose((affine @ low)[:3], (aff @ np.array([*idx, 1.0]))[:3])
    # a head cut through the scalp only is not extended
    scalp_cut = tags[:, :, 2:].copy()
    _, _, rep2 = clean_tissues(scalp_cut, np.eye(4))
    assert not rep2["cut_off_below"] and rep2["neck_slices_added"] == 0


def test_cleanup_rejects_unknown_tags():
    with pytest.raises(ValueError, match="not SimNIBS tags"):
        clean_tissues(np.full((5, 5, 5), 9, np.uint8), np.eye(4))


# ------------------------------------------------------------------------------------------------
# the label table and transforms
# ------------------------------------------------------------------------------------------------
def test_label_table():
    labels = [row[0] for row in SAMSEG_TISSUES]
    assert len(labels) == len(set(labels)) == 44
    assert set(SAMSEG_LABEL_MAP.values()) == {0, 1, 2, 3, 4, 5, 6}
    expect = {2: 1, 41: 1, 16: 1, 3: 2, 42: 2, 8: 2, 10: 2, 49: 2, 11: 2, 12: 2, 13: 2, 17: 2, 18: 2, 26: 2,
              24: 3, 4: 3, 43: 3, 14: 3, 15: 3, 165: 4, 258: 5, 259: 6, 0: 0}
    assert {k: SAMSEG_LABEL_MAP[k] for k in expect} == expect


def test_label_table_covers_the_samseg_atlas():
    need_samseg()
    import samseg

    lut = Path(samseg.__file__).parent / "atlas" / "20Subjects_smoothing2_down2_smoothingForAffine2" / \
        "compressionLookupTable.txt"
    rows = [ln.split() for ln in lut.read_text().splitlines() if ln.strip()]
    atlas = {int(r[0]): r[2] for r in rows}
    table = {label: name for label, name, _ in SAMSEG_TISSUES}
    assert atlas == table


def _lta(path, kind, mat, src, dst):
    def geo(g):
        shape, vs, m, c = g
        return (f"valid = 1\nfilename = none\nvolume = {' '.join(map(str, shape))}\n"
                f"voxelsize = {' '.join(map(str, vs))}\n"
                + "".join(f"{n} = {' '.join(map(str, m[:, i]))}\n" for i, n in enumerate(("xras", "yras", "zras")))
                + f"cras = {' '.join(map(str, c))}\n")
    text = (f"type      = {kind} # test\nnxforms   = 1\nmean      = 0 0 0\nsigma     = 1\n1 4 4\n"
            + "\n".join(" ".join(f"{v:.12g}" for v in row) for row in mat)
            + "\nsrc volume info\n" + geo(src) + "dst volume info\n" + geo(dst))
    Path(path).write_text(text)


def test_read_lta_ras_and_vox(tmp_path):
    rng = np.random.default_rng(0)
    ras = np.eye(4)
    ras[:3, :3] += 0.05 * rng.standard_normal((3, 3))
    ras[:3, 3] = [3.0, -4.0, 5.0]
    src = ((181, 217, 181), (1.0, 1.0, 1.0), np.diag([-1.0, 1.0, 1.0]), (-0.5, -17.5, 18.5))
    dst = ((61, 73, 61), (3.0, 3.0, 3.0), np.eye(3), (1.5, -15.5, 20.5))
    _lta(tmp_path / "r.lta", 1, ras, src, dst)
    assert np.allclose(read_lta(tmp_path / "r.lta"), ras)

    def v2r(g):
        shape, vs, m, c = g
        a = np.eye(4)
        a[:3, :3] = m * np.array(vs)
        a[:3, 3] = np.array(c) - a[:3, :3] @ (np.array(shape) / 2)
        return a
    vox = np.linalg.inv(v2r(dst)) @ ras @ v2r(src)
    _lta(tmp_path / "v.lta", 0, vox, src, dst)
    assert np.allclose(read_lta(tmp_path / "v.lta"), ras)
    assert np.allclose(subject_to_mni_affine(tmp_path / "r.lta"),
                       __import__("stimsim.head.mri", fromlist=["x"]).TEMPLATE_TO_MNI @ np.linalg.inv(ras))
    (tmp_path / "bad.lta").write_text("type = 7\n")
    with pytest.raises(MRIError, match="not a linear"):
        read_lta(tmp_path / "bad.lta")


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def _save(path, data, affine=None, *, qform=True):
    img = nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine)
    if not qform:
        img.set_sform(None, code=0)
        img.set_qform(None, code=0)
    nib.save(img, str(path))
    return path


def _phantom(n=40):
    g = np.indices((n, n, n)).astype(float) - n / 2
    return np.where(np.sqrt((g ** 2).sum(0)) < n / 2 - 3, 100.0, 0.0) + 1.0


def test_prepare_resamples_anisotropic_and_oblique(tmp_path):
    aff = np.diag([1.0, 1.0, 2.5, 1.0])
    prep = prepare_mri(_save(tmp_path / "a.nii.gz", _phantom()[:, :, ::3], aff))
    assert prep["resampled"] and any("non-isotropic" in w for w in prep["warnings"])
    assert np.allclose(np.linalg.norm(prep["t1"].affine[:3, :3], axis=0), 1.0)
    assert any("larger than 2 mm" in w for w in prep["warnings"])
    c, s = np.cos(0.2), np.sin(0.2)
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    prep = prepare_mri(_save(tmp_path / "o.nii.gz", _phantom(), rot))
    assert prep["resampled"] and any("oblique" in w for w in prep["warnings"])
    prep = prepare_mri(_save(tmp_path / "ok.nii.gz", _phantom()))
    assert not prep["resampled"] and not prep["warnings"]


def _run_head(capsys, *args, **kw):
    code = head_command(*args, **kw)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("case", ["missing", "4d", "no_orientation", "constant", "t2_elsewhere", "lesion_grid",
                                  "not_nifti", "neck_negative", "neck_nan", "neck_huge"])
def test_bad_input_one_error_line_nothing_written(tmp_path, capsys, case):
    t1 = _save(tmp_path / "t1.nii.gz", _phantom())
    kw = {}
    if case == "missing":
        t1 = tmp_path / "nope.nii.gz"
    elif case == "4d":
        t1 = _save(tmp_path / "t1_4d.nii.gz", np.stack([_phantom()] * 3, axis=-1))
    elif case == "no_orientation":
        t1 = _save(tmp_path / "t1_noq.nii.gz", _phantom(), qform=False)
    elif case == "constant":
        t1 = _save(tmp_path / "t1_c.nii.gz", np.ones((30, 30, 30)))
    elif case == "t2_elsewhere":
        far = np.eye(4)
        far[:3, 3] = [500, 0, 0]
        kw["t2"] = _save(tmp_path / "t2.nii.gz", _phantom(), far)
    elif case == "lesion_grid":
        kw["lesion"] = _save(tmp_path / "lesion.nii.gz", np.ones((20, 20, 20)))
    elif case == "not_nifti":
        t1 = tmp_path / "t1.txt"
        t1.write_text("hello")
    elif case.startswith("neck_"):
        kw["neck_mm"] = {"neck_negative": -5.0, "neck_nan": float("nan"), "neck_huge": 1e4}[case]
    out = tmp_path / "subj"
    code, err = _run_head(capsys, t1, out, quiet=True, **kw)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if case.startswith("neck_"):
        assert "--neck-mm" in lines[0], err
    assert not out.exists()


def test_out_rules(tmp_path, capsys):
    t1 = _save(tmp_path / "t1.nii.gz", _phantom())
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, err = _run_head(capsys, t1, foreign, quiet=True, overwrite=True)
    assert code == 2 and "not a head folder" in err
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    code, err = _run_head(capsys, t1, tmp_path / "t1.nii.gz", quiet=True)
    assert code == 2 and "not a head folder" in err


def test_segment_command_bad_output_name(tmp_path, capsys):
    t1 = _save(tmp_path / "t1.nii.gz", _phantom())
    assert segment_command(t1, tmp_path / "labels.msh", quiet=True) == 2
    assert capsys.readouterr().err.startswith("error: --out")
    assert segment_command(t1, tmp_path / "labels.nii.gz", neck_mm=-1.0, quiet=True) == 2
    assert capsys.readouterr().err.startswith("error: --neck-mm")
    assert not (tmp_path / "labels.nii.gz").exists()


def test_cleanup_options_checked_and_defaults_dropped():
    """The clean-up options of the Python API: checked (one StimsimError naming the option), and an
    explicit default is the same cache key as no option."""
    from stimsim.errors import StimsimError
    from stimsim.head.cleanup import NECK_MM
    from stimsim.head.subject import _cleanup_options

    assert _cleanup_options(None) == {} and _cleanup_options({"neck_mm": NECK_MM}) == {}
    assert _cleanup_options({"neck_mm": 0}) == {"neck_mm": 0.0}
    for bad in ({"neck_mm": float("inf")}, {"neck_mm": -1}, {"neck_mm": "x"}, {"neck": 5}):
        with pytest.raises(StimsimError, match="neck"):
            _cleanup_options(bad)
    with pytest.raises(StimsimError, match="neck_mm"):
        clean_tissues(np.zeros((5, 5, 5), np.uint8), np.eye(4), neck_mm=float("nan"))


def _fake_seg(tmp_path, volumes_cm3):
    """A SAMSEG-like seg.mgz: concentric shells with the given tissue volumes (1 mm voxels)."""
    n = 200
    g = np.indices((n, n, n), dtype=np.float32) - n / 2
    r = np.sqrt((g ** 2).sum(0))
    seg = np.zeros((n, n, n), np.int32)
    labels = [(258, volumes_cm3[5]), (165, volumes_cm3[4]), (24, volumes_cm3[3]), (3, volumes_cm3[2]),
              (2, volumes_cm3[1])]
    total = sum(v for _, v in labels)
    for label, v in labels:
        radius = (3 * total * 1000 / (4 * np.pi)) ** (1 / 3)
        seg[r < radius] = label
        total -= v
    nib.save(nib.MGHImage(seg, np.eye(4)), str(tmp_path / "seg.mgz"))
    _lta(tmp_path / "template.lta", 1, np.eye(4), ((181, 217, 181), (1, 1, 1), np.eye(3), (0, 0, 0)),
         ((n, n, n), (1, 1, 1), np.eye(3), (0, 0, 0)))
    return tmp_path / "seg.mgz", tmp_path / "template.lta"


def test_implausible_volumes_name_the_tissue(tmp_path):
    from stimsim.head.subject import _tissues

    seg, lta = _fake_seg(tmp_path, {1: 450, 2: 40, 3: 200, 4: 500, 5: 800})
    with pytest.raises(MRIError, match="grey matter volume 40 cm"):
        _tissues(seg, lta, whole_head=True, cleanup=None)
    seg, lta = _fake_seg(tmp_path, {1: 450, 2: 600, 3: 200, 4: 5, 5: 20})
    with pytest.raises(MRIError, match="brain-only"):
        _tissues(seg, lta, whole_head=True, cleanup=None)
    res = _tissues(seg, lta, whole_head=None, cleanup=None)  # `stimsim segment`: brain-only is fine
    assert not res.whole_head and set(res.volumes_cm3) <= {1, 2, 3}


# ------------------------------------------------------------------------------------------------
# the whole chain on Colin27 at 3 mm (SAMSEG, fast mode)
# ------------------------------------------------------------------------------------------------
def _resample_like(src_path, ref_img, order):
    from nibabel.processing import resample_from_to

    return resample_from_to(nib.load(str(src_path)), ref_img, order=order)


def dice(a, b):
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _dice_table(labels_img, ref_img, grid_img):
    from stimsim.head.labels import LABEL_MAPS, apply_label_map

    ours = np.asarray(_resample_like_img(labels_img, grid_img).dataobj).astype(np.int64)
    ours[ours == 6] = 5  # the reference has no eyes
    ref = apply_label_map(np.asarray(ref_img.dataobj).astype(np.int64), LABEL_MAPS["colin27"])
    return {t: dice(ours == t, ref == t) for t in range(1, 6)}


def _resample_like_img(img, ref_img):
    from nibabel.processing import resample_from_to

    return resample_from_to(img, ref_img, order=0)


@pytest.fixture(scope="module")
def colin_3mm(tmp_path_factory, shared_data):
    from nibabel.processing import resample_from_to, resample_to_output

    need_samseg()
    t1 = nib.load(str(shared_data(COLIN)))
    small = resample_to_output(t1, voxel_sizes=3.0, order=1)
    ref = resample_from_to(nib.load(str(shared_data(COLIN_LABELS))), small, order=0)
    d = tmp_path_factory.mktemp("colin3")
    nib.save(small, str(d / "t1_3mm.nii.gz"))
    return d, d / "t1_3mm.nii.gz", small, ref


@pytest.fixture(scope="module")
def colin_head(colin_3mm):
    import time

    d, t1, _, _ = colin_3mm
    t0 = time.perf_counter()
    code = head_command(t1, d / "subj", fast=True, element_size_mm=12.0, quiet=True)
    return code, d / "subj", time.perf_counter() - t0


def test_head_folder_from_colin27_3mm(colin_head, colin_3mm):
    from stimsim.head.folder import HEAD_FORMAT, is_head_folder, read_head_folder

    code, subj, elapsed = colin_head
    assert code == 0
    assert is_head_folder(subj)
    info = json.loads((subj / "head.json").read_text())
    assert info["format"] == HEAD_FORMAT and info["versions"]["samseg"]
    assert len(info["inputs"]["t1"]["sha256"]) == 64
    for stage in ("prepare", "segment", "tissues", "mesh", "positions", "qc"):
        assert info["stages"][stage]["time_s"] >= 0 and info["stages"][stage]["peak_rss_mb"] > 0
    assert any("larger than 2 mm" in w for w in info["warnings"])
    assert info["cleanup"]["cut_off_below"]  # Colin27's field of view cuts through the brain stem
    assert not any(info["cleanup"]["check"]["contacts"].values())
    head = read_head_folder(subj)
    assert (subj / "qc.png").read_bytes()[:4] == b"\x89PNG"
    from stimsim.outputs import written_by_stimsim

    assert written_by_stimsim(subj / "qc.png")
    from stimsim.mesh import read_mesh

    mesh, _ = read_mesh(head.mesh_path)
    assert set(np.unique(mesh.tet_tags)) >= {1, 2, 3, 4, 5}
    # the mesh's shape report: the poorly shaped tetrahedra counted and listed (worst first, in the mesh)
    from stimsim.mesh.checks import element_quality

    shape = info["stages"]["mesh"]["mesh_info"]["shape"]
    e = element_quality(mesh)
    assert shape["poor_count"] == int(np.sum((e["min_dihedral_deg"] < 5) | (e["radius_ratio"] < 0.1)))
    assert shape["min_dihedral_deg"] == pytest.approx(float(e["min_dihedral_deg"].min()), abs=1e-6)
    assert all(0 <= p["tet"] < mesh.n_tets for p in shape["poor"])


def test_colin27_3mm_dice(colin_head, colin_3mm):
    code, subj, _ = colin_head
    assert code == 0
    _, _, small, ref = colin_3mm
    d = _dice_table(nib.load(str(subj / "labels.nii.gz")), ref, small)
    # SAMSEG fast mode at 3 mm, after clean-up (measured: WM 0.83, GM 0.78, CSF 0.60, bone 0.72, scalp 0.92)
    limits = {1: 0.78, 2: 0.72, 3: 0.50, 4: 0.65, 5: 0.88}
    print("Dice (3 mm, fast):", {t: round(v, 3) for t, v in d.items()})
    assert all(d[t] >= limits[t] for t in limits), d


def test_colin27_mni_affine_is_near_identity(colin_head):
    """Colin27 is in MNI space: subject -> MNI must be close to the identity."""
    from stimsim.head.folder import read_head_folder

    code, subj, _ = colin_head
    assert code == 0
    head = read_head_folder(subj)
    box = np.array(np.meshgrid([-70, 70], [-100, 70], [-50, 80], indexing="ij")).reshape(3, -1).T
    moved = np.linalg.norm(head.subject_to_mni(box) - box, axis=1)
    assert moved.max() < 8.0, moved
    back = head.mni_to_subject(head.subject_to_mni(box))
    assert np.allclose(back, box)


def test_colin27_positions(colin_head):
    """C3 / Fp2 within 10 mm of the positions shipped with the Colin27 head, every position on the scalp."""
    from stimsim.head.eeg import head_positions
    from stimsim.head.folder import read_head_folder

    code, subj, _ = colin_head
    assert code == 0
    pos = read_head_folder(subj).positions
    shipped = head_positions("colin27")
    assert len(pos) >= 340 and {"LPA", "RPA", "Nz", "C3", "Fp2", "Cz"} <= set(pos)
    for name in ("C3", "Fp2", "Cz", "Oz"):
        assert np.linalg.norm(pos[name] - shipped[name]) < 10.0, name


def test_rerun_resumes_from_cache(colin_head, colin_3mm, capsys):
    code, subj, first = colin_head
    assert code == 0
    capsys.readouterr()
    assert head_command(colin_3mm[1], subj, fast=True, element_size_mm=12.0) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert head_command(colin_3mm[1], subj, fast=True, element_size_mm=12.0, overwrite=True) == 0
    err = capsys.readouterr().err
    assert "segment from cache" in err and "mesh from cache" in err
    info = json.loads((subj / "head.json").read_text())
    assert info["stages"]["segment"]["cached"] and info["total_time_s"] < first


def test_neck_option_reuses_segmentation(colin_head, colin_3mm, tmp_path, capsys):
    """--neck-mm 0: the head ends where the scan does (no slices added), from the cached segmentation."""
    code, subj, _ = colin_head
    assert code == 0
    first = json.loads((subj / "head.json").read_text())
    added = first["cleanup"]["neck_slices_added"]
    assert added == int(np.ceil(20.0 / 3.0))  # the default 20 mm at 3 mm voxels
    copy = tmp_path / "subj"
    shutil.copytree(subj, copy)
    capsys.readouterr()
    assert head_command(colin_3mm[1], copy, fast=True, element_size_mm=12.0, overwrite=True, neck_mm=0) == 0
    err = capsys.readouterr().err
    assert "segment from cache" in err and "mesh from cache" not in err
    info = json.loads((copy / "head.json").read_text())
    assert info["cleanup"]["cut_off_below"] and info["cleanup"]["neck_slices_added"] == 0
    assert info["cleanup"]["neck_mm"] == 0.0 and first["cleanup"]["neck_mm"] == 20.0  # what was asked for
    before, after = nib.load(str(subj / "labels.nii.gz")), nib.load(str(copy / "labels.nii.gz"))
    assert after.shape[2] == before.shape[2] - added
    from stimsim.mesh import read_mesh

    low = [read_mesh(d / "head.msh")[0].nodes[:, 2].min() for d in (subj, copy)]
    assert low[1] > low[0] + 0.5 * 3.0 * added, low


def test_segment_command_colin27_3mm(colin_3mm, colin_head, tmp_path, capsys, monkeypatch):
    """`stimsim segment` on the same image; SAMSEG's output is taken from the head folder's cache (the
    SAMSEG run itself is tested above), unless STIMSIM_TEST_SEGMENT=1 asks for a second run."""
    import shutil

    import stimsim.head.subject as subject

    code, subj, _ = colin_head
    assert code == 0
    if os.environ.get("STIMSIM_TEST_SEGMENT", "") != "1":
        def cached_samseg(images, out_dir, **kw):
            shutil.copytree(subj / "stimsim-cache" / "samseg", out_dir)
            return {"seg": Path(out_dir) / "seg.mgz", "lta": Path(out_dir) / "template.lta", "time_s": 0.0,
                    "peak_rss_mb": 6144.0}  # (SAMSEG's process, as run_samseg measures it)
        monkeypatch.setattr(subject, "run_samseg", cached_samseg)
    _, t1, small, ref = colin_3mm
    out = tmp_path / "labels.nii.gz"
    assert segment_command(t1, out, fast=True) == 0
    err = capsys.readouterr().err
    assert "whole head" in err
    if os.environ.get("STIMSIM_TEST_SEGMENT", "") != "1":  # the stage's memory is SAMSEG's (it said this process's)
        (line,) = [ln for ln in err.splitlines() if "segment done in" in ln]
        assert "peak memory 6.00 GB" in line, line
    d = _dice_table(nib.load(str(out)), ref, small)
    assert d[1] > 0.78 and d[2] > 0.72, d
    # an existing file that stimsim did not write is never replaced
    assert segment_command(t1, out, fast=True, quiet=True) == 2
    assert "exists" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# full resolution (slow: 10-15 min of SAMSEG)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_colin27_full_resolution(tmp_path, shared_data):
    """The issue's numbers: Dice WM >= 0.82, GM >= 0.76, bone >= 0.74, scalp >= 0.90; affine within a few mm."""
    need_samseg()
    t1 = shared_data(COLIN)
    ref = nib.load(str(shared_data(COLIN_LABELS)))
    assert head_command(t1, tmp_path / "subj", quiet=True) == 0
    d = _dice_table(nib.load(str(tmp_path / "subj" / "labels.nii.gz")), ref, nib.load(str(t1)))
    assert d[1] >= 0.82 and d[2] >= 0.76 and d[4] >= 0.74 and d[5] >= 0.90, d
    from stimsim.head.folder import read_head_folder

    head = read_head_folder(tmp_path / "subj")
    box = np.array(np.meshgrid([-70, 70], [-100, 70], [-50, 80], indexing="ij")).reshape(3, -1).T
    assert np.linalg.norm(head.subject_to_mni(box) - box, axis=1).max() < 8.0
