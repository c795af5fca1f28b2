"""YuNet candidate -> the box dlib's HOG detector would draw for the same face.

dlib's 5-point landmarker was trained on HOG boxes (square, brows to below the lips), and its fit
decides the 150x150 chip the ResNet encodes, so a box of another extent moves the encoding.
YuNet's box is taller (forehead included) and, on turned heads, centred on the head rather than
the features. The HOG box is centred on YuNet's eye and mouth-corner landmarks (which follow the
face when it turns) and its side is a fixed fraction of YuNet's box size.

The three constants are medians over faces both detectors found on the shared development photos
(`bench/face_quality.py --fit-calibration` fits them and checks them on other photos).

No box pins the encoding down better than HOG pins its own: HOG's windows step by one HOG cell
(a tenth of the face) and its box is where the best window happened to fall. Moving HOG's own box
by half a cell moves its encoding by a median 0.05 and up to 0.36 (dlib's landmark trees answer
in steps, so a few pixels can flip a landmark). So `landmarks()` fits dlib's 5 points from the
calibrated box and from the box moved by half a cell each way, and averages them: the landmarks
HOG's box gives on average over where its window could have fallen, not one draw of that noise.
"""
from __future__ import annotations

import dlib
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


HALF_CELL = 0.05  # half a HOG cell (8 px of the 80 px window), in face sizes
_SHIFTS = [(dx, dy) for dx in (-HALF_CELL, 0.0, HALF_CELL) for dy in (-HALF_CELL, 0.0, HALF_CELL)]


def shifted(box, dx: float, dy: float) -> tuple[int, int, int, int]:
    """(top, right, bottom, left) moved by dx, dy face sizes."""
    top, right, bottom, left = box
    size = bottom - top
    return (round(top + dy * size), round(right + dx * size), round(bottom + dy * size),
            round(left + dx * size))


def landmarks(img: np.ndarray, box, predictor) -> dlib.full_object_detection:
    """dlib's 5 points for the face in `box`, averaged over the box and its half-cell shifts."""
    points = []
    for dx, dy in _SHIFTS:
        top, right, bottom, left = shifted(box, dx, dy)
        fitted = predictor(img, dlib.rectangle(left, top, right, bottom))
        points.append([(p.x, p.y) for p in fitted.parts()])
    mean = np.mean(points, axis=0)
    top, right, bottom, left = box
    return dlib.full_object_detection(dlib.rectangle(left, top, right, bottom),
                                      [dlib.point(int(round(x)), int(round(y))) for x, y in mean])


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
