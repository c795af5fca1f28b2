"""Which YuNet candidates are kept as faces: a false face costs a reviewer more than a miss.

1. The score: at least `yunet_min_score` (libfacedetection's own default is 0.5).
2. A second opinion: YuNet again on a crop around the candidate, rescaled so the face is
   CONFIRM_FACE_PX pixels, must score at least `yunet_confirm_score` (0.7: confident) on the
   same face: at the same place and of the same size (same_face()), in the crop's own pixels.
   A face near the centre is not enough: in a row of people the crop around a box drawn between
   two neighbours holds both, and either would confirm it.
   A face stays a face at another scale; a texture that happened to look like one at the
   main pass's scale (tap handles, fabric, foliage) mostly does not. About 1/30 of a main pass per
   candidate. The bench (bench/face_quality.py) prints what each filter buys and costs.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

CONFIRM_FACE_PX = 64      # face size in the second look: mid-range of YuNet's anchors
CONFIRM_CONTEXT = 1.5     # crop half-width in face sizes: room for YuNet's own box


def passes_score(candidate, min_score: float) -> bool:
    return candidate.score >= min_score


# The same face, seen again: its centre within a third of its size of the candidate's centre on
# each axis, its size within a factor of 1.5. A neighbour in a row stands at least about a face
# size from the face beside it, so from a box drawn between the two it is half a face or more.
SAME_PLACE = 1 / 3
SAME_SIZE = 1.5


def same_face(expected: tuple[float, float, float], found: tuple[float, float, float]) -> bool:
    """Whether two (centre x, centre y, size) describe the same face, in one image's pixels."""
    (ex, ey, es), (fx, fy, fs) = expected, found
    return (abs(fx - ex) <= SAME_PLACE * es and abs(fy - ey) <= SAME_PLACE * es
            and 1 / SAME_SIZE <= fs / es <= SAME_SIZE)


def look_again(img: np.ndarray, candidate, run):
    """YuNet (`run(rgb) -> candidates`) on a crop of `img` around the candidate, rescaled so the
    candidate is CONFIRM_FACE_PX pixels: (the candidate's (centre x, centre y, size) in the
    crop's pixels, what YuNet found there). None when the crop is empty."""
    x, y, w, h = candidate.box
    size = float(np.sqrt(max(w, 1) * max(h, 1)))
    cx, cy = x + w / 2, y + h / 2
    half = CONFIRM_CONTEXT * size
    left, top = int(max(0, cx - half)), int(max(0, cy - half))
    right, bottom = int(min(img.shape[1], cx + half)), int(min(img.shape[0], cy + half))
    if right - left < 2 or bottom - top < 2:
        return None
    f = CONFIRM_FACE_PX / size
    crop = Image.fromarray(img[top:bottom, left:right])
    crop = crop.resize((max(1, round(crop.width * f)), max(1, round(crop.height * f))), Image.LANCZOS)
    return ((cx - left) * f, (cy - top) * f, CONFIRM_FACE_PX), run(np.asarray(crop))


def centre_and_size(found) -> tuple[float, float, float]:
    x, y, w, h = found.box
    return x + w / 2, y + h / 2, found.size


def second_opinion(img: np.ndarray, candidate, run) -> float:
    """Best score YuNet gives the candidate's own face (same_face) when it looks again."""
    looked = look_again(img, candidate, run)
    if looked is None:
        return 0.0
    expected, found = looked
    return max((f.score for f in found if same_face(expected, centre_and_size(f))), default=0.0)


def keep(img: np.ndarray, candidate, min_score: float, confirm_score: float, run) -> bool:
    """Both filters; confirm_score 0 turns the second opinion off."""
    if not passes_score(candidate, min_score):
        return False
    return confirm_score <= 0 or second_opinion(img, candidate, run) >= confirm_score
