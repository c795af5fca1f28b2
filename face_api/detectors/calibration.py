"""YuNet candidate -> the box dlib's HOG detector would draw for the same face.

dlib's 5-point landmarker was trained on HOG boxes (square, brows to below the lips), and its fit
decides the 150x150 chip the ResNet encodes, so a box of another extent moves the encoding.
YuNet's box is taller (forehead included) and, on turned heads, centred on the head rather than
the features. The HOG box is centred on YuNet's eye and mouth-corner landmarks (which follow the
face when it turns) and its side is a fixed fraction of YuNet's box size.

The three constants are medians over faces both detectors found on the shared development photos
(`bench/face_quality.py --fit-calibration` fits them and checks them on other photos).
"""
from __future__ import annotations

import numpy as np

CENTRE_X = -0.002   # HOG centre - landmark centre, in units of YuNet's box size sqrt(w * h)
CENTRE_Y = -0.011
SIDE = 0.954        # HOG side / sqrt(w * h)

_EYES_AND_MOUTH = [0, 1, 3, 4]  # landmark rows; the nose tip moves with pitch, so left out


def anchor(candidate) -> tuple[float, float, float]:
    """(x, y, size): the landmark centre and YuNet's box size, the mapping's inputs."""
    x, y, w, h = candidate.box
    centre = np.asarray(candidate.landmarks)[_EYES_AND_MOUTH].mean(axis=0)
    return float(centre[0]), float(centre[1]), float(np.sqrt(max(w, 1) * max(h, 1)))


def hog_box(candidate, shape, constants=(CENTRE_X, CENTRE_Y, SIDE)) -> tuple[int, int, int, int]:
    """(top, right, bottom, left) in pixels of the image of `shape`, clamped to it."""
    centre_x, centre_y, side = constants
    cx, cy, size = anchor(candidate)
    cx, cy, half = cx + centre_x * size, cy + centre_y * size, side * size / 2
    height, width = shape[0], shape[1]
    return (max(0, round(cy - half)), min(width, round(cx + half)),
            min(height, round(cy + half)), max(0, round(cx - half)))


def fit(pairs) -> tuple[float, float, float]:
    """Constants from (candidate, HOG box (top, right, bottom, left)) pairs of the same face."""
    rows = []
    for candidate, (top, right, bottom, left) in pairs:
        cx, cy, size = anchor(candidate)
        rows.append(((left + right) / 2 - cx, (top + bottom) / 2 - cy,
                     np.sqrt((right - left) * (bottom - top))))
    d = np.array(rows)
    sizes = np.array([anchor(c)[2] for c, _ in pairs])
    return tuple(float(v) for v in np.median(d / sizes[:, None], axis=0))
