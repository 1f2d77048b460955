"""``qc.png``: tissue outlines over the T1 in three planes through the brain's centre (numpy + Pillow,
no display, no matplotlib).  Left of each picture is the subject's left (neurological view)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["qc_image", "write_qc_png", "TISSUE_COLOURS"]

#: RGB outline colour per SimNIBS tag
TISSUE_COLOURS = {1: (240, 240, 240), 2: (230, 60, 60), 3: (60, 140, 255), 4: (255, 230, 0), 5: (255, 140, 0),
                  6: (0, 220, 90)}
_NAMES = {1: "WM", 2: "GM", 3: "CSF", 4: "bone", 5: "scalp", 6: "eyes"}


def _ras(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``data`` with its axes permuted / flipped to R, A, S (axis-aligned affines)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    return nio.apply_orientation(data, ornt)


def _outline(lab: np.ndarray) -> np.ndarray:
    edge = np.zeros(lab.shape, bool)
    edge[1:] |= lab[1:] != lab[:-1]
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    return edge & (lab > 0)


def _panel(t1: np.ndarray, lab: np.ndarray, scale: int) -> np.ndarray:
    """One slice: rows = image up (last axis), columns = first axis; grey T1 with coloured outlines."""
    t1 = np.kron(np.flipud(t1.T), np.ones((scale, scale)))
    lab = np.kron(np.flipud(lab.T), np.ones((scale, scale), np.uint8)).astype(np.uint8)
    grey = np.repeat(t1[..., None], 3, axis=2)
    edge = _outline(lab)
    lut = np.zeros((256, 3), np.uint8)
    for t, c in TISSUE_COLOURS.items():
        lut[t] = c
    grey[edge] = lut[lab[edge]]
    return grey


def qc_image(t1: np.ndarray, tags: np.ndarray, affine: np.ndarray, *, height: int = 320) -> np.ndarray:
    """(h, w, 3) uint8 picture: axial, coronal and sagittal slices through the centre of the brain
    (WM + GM; the head's centre if there is none) with tissue outlines; ``t1`` and ``tags`` share
    the axis-aligned grid ``affine``."""
    t1 = _ras(np.asarray(t1, np.float32), affine)
    tags = _ras(np.asarray(tags, np.uint8), affine)
    inside = t1[tags > 0] if (tags > 0).any() else t1.ravel()
    lo, hi = np.percentile(inside, [1, 99.5]) if inside.size else (0.0, 1.0)
    t1 = np.clip((t1 - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    where = np.argwhere(np.isin(tags, (1, 2)))
    if not len(where):
        where = np.argwhere(tags > 0) if (tags > 0).any() else np.argwhere(np.ones_like(tags, bool))
    c = np.round(where.mean(0)).astype(int)
    zooms = np.sort(np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0))
    scale = max(1, int(round(height / max(tags.shape))))
    del zooms
    slices = [  # (first axis -> columns, second -> rows)
        (t1[:, :, c[2]], tags[:, :, c[2]]),   # axial: x right, y up (anterior at the top)
        (t1[:, c[1], :], tags[:, c[1], :]),   # coronal: x right, z up
        (t1[c[0], :, :], tags[c[0], :, :]),   # sagittal: y right (anterior), z up
    ]
    panels = [_panel(a, b, scale) for a, b in slices]
    h = max(p.shape[0] for p in panels)
    gap = 4
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.zeros((h + 22, width, 3), np.uint8)
    x = 0
    for p in panels:
        out[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    try:  # legend line
        from PIL import Image, ImageDraw

        img = Image.fromarray(out)
        draw = ImageDraw.Draw(img)
        x = 4
        for t, name in _NAMES.items():
            draw.rectangle([x, h + 6, x + 10, h + 16], fill=TISSUE_COLOURS[t])
            draw.text((x + 14, h + 5), name, fill=(255, 255, 255))
            x += 18 + 7 * len(name) + 8
        out = np.asarray(img)
    except ImportError:  # pragma: no cover - Pillow is part of the [mri] extra
        pass
    return out


def write_qc_png(path, t1: np.ndarray, tags: np.ndarray, affine: np.ndarray) -> Path:
    """Write :func:`qc_image` as a PNG (atomically, marked as written by stimsim)."""
    from ..outputs import write_png

    return write_png(path, qc_image(t1, tags, affine))
