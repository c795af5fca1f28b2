"""Face boxes: (top, right, bottom, left) in pixels, the order face_recognition and the API's
`locations` use. IoU, containment and trimming to an image are written here once.

YuNet's raw candidates come as (x, y, width, height); the `xywh_` functions take them as they
are, so no conversion rounds their float coordinates before a threshold is compared.
"""
from __future__ import annotations

from typing import Sequence

Box = tuple[int, int, int, int]


def _iou(aw, ah, bw, bh, iw, ih) -> float:
    """IoU from the two boxes' sides and their intersection's sides."""
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (top, right, bottom, left) boxes; 0 when they do not meet."""
    t1, r1, b1, l1 = a
    t2, r2, b2, l2 = b
    return _iou(r1 - l1, b1 - t1, r2 - l2, b2 - t2,
                min(r1, r2) - max(l1, l2), min(b1, b2) - max(t1, t2))


def xywh_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return _iou(aw, ah, bw, bh, min(ax + aw, bx + bw) - max(ax, bx), min(ay + ah, by + bh) - max(ay, by))


def xywh_inside(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of box a's area inside box b, both (x, y, width, height)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    return max(0.0, iw) * max(0.0, ih) / max(aw * ah, 1e-9)


def trim(box: Sequence[int], shape: Sequence[int]) -> Box:
    """The box clamped to an image of `shape` (height, width, ...), as
    face_recognition._trim_css_to_bounds does."""
    top, right, bottom, left = box
    return (max(top, 0), min(right, shape[1]), min(bottom, shape[0]), max(left, 0))
