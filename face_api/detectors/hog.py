"""dlib's HOG face detector with the original server's multi-scale loop:

    for scale in scales (1200, 1600, 2000):
        img = photo scaled so its longer side is `scale` (never enlarged)
        boxes = dlib HOG frontal face detector(img, upsample=1), clamped to the image
        stop if faces were found, or if the photo is not larger than `scale`

What makes it cheaper than the original (each measured against the ground truth with
bench/groundtruth.py; settings turn them off):
- A later pass scans only the HOG pyramid levels that see faces smaller than any earlier pass could
  (plus `face_rescan_overlap` levels); larger face sizes were already searched, and found nothing.
  dlib's pyramid shrinks by 5/6 per level, so 1600 after 1200 needs 2 new levels, 2000 after 1600 2.
- A middle scale is skipped when a larger one follows (`face_skip_covered_scales`): the larger
  pass sees the same face sizes and more.

Thread safety: every call builds its own detector from the serialized one (dlib releases the GIL
while detecting, so two threads use two cores).
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np
from PIL import Image

from ..boxes import Box, trim

_serialized: bytes | None = None
_serialized_lock = threading.Lock()


def serialized() -> bytes:
    """dlib's frontal face detector, serialized (loaded once per process: call before forking)."""
    global _serialized
    with _serialized_lock:
        if _serialized is None:
            import dlib

            _serialized = dlib.get_frontal_face_detector().__getstate__()[0]
        return _serialized


# In dlib's serialized scan_fhog_pyramid: window 80x80, max_pyramid_levels 1000, min layer 64x64
# (each integer is a length byte then little-endian bytes).
_LEVELS_FIELD = (b"\x01\x50\x01\x50", b"\x02\xe8\x03", b"\x01\x40\x01\x40")


def detector(levels: int | None = None, data: bytes | None = None):
    """A fresh HOG detector scanning every pyramid level, or only the first `levels`; `data` is
    a serialized detector (default: dlib's frontal face detector).

    Built per call from the serialized bytes (get_frontal_face_detector() is much slower): a dlib
    detector is not safe to share between threads and keeps the last image's feature pyramid, so
    a cached one per thread would pin that memory in every thread."""
    import dlib

    data = serialized() if data is None else data
    if levels is not None and levels < 1000:  # 1000 is dlib's default: every level
        head, old, tail = _LEVELS_FIELD
        pattern = head + old + tail
        if data.count(pattern) != 1:
            raise ValueError("unexpected dlib detector layout; set PHOTO_FACE_FULL_RESCAN=1")
        value = int(levels).to_bytes(4, "little").rstrip(b"\0") or b"\0"
        data = data.replace(pattern, head + bytes([len(value)]) + value + tail)
    built = dlib.fhog_object_detector.__new__(dlib.fhog_object_detector)
    built.__setstate__((data,))  # what unpickling does: dlib's own deserialize, no file
    return built


def rescan_levels(scale: int, previous_scale: int, overlap: int) -> int:
    """Pyramid levels (shrinking by 5/6 each) a pass at `scale` needs to see faces smaller than
    the pass at `previous_scale` could, plus `overlap` levels of sizes already searched."""
    new = math.ceil(math.log(scale / previous_scale) / math.log(6 / 5) - 1e-9)
    return max(1, new + overlap)


def face_locations(rgb: np.ndarray, upsample: int = 1, grey: bool = False,
                   levels: int | None = None) -> list[Box]:
    """HOG face boxes as (top, right, bottom, left), same as face_recognition.face_locations.
    `levels` limits the scan to the finest pyramid levels (the smallest faces)."""
    img = np.ascontiguousarray(rgb)
    if grey and img.ndim == 3:
        img = np.ascontiguousarray(np.asarray(Image.fromarray(img).convert("L")))
    return [trim((r.top(), r.right(), r.bottom(), r.left()), rgb.shape)
            for r in detector(levels)(img, upsample)]


def passes(long_side: int, scales: list[int], skip_covered: bool) -> list[int]:
    """Scales to try, in order. A scale >= the photo's size is the last one (larger ones would
    see the same pixels). With skip_covered, a middle scale is dropped when a larger one follows
    (its face sizes are covered by the larger pass)."""
    out = []
    for s in scales:
        out.append(s)
        if long_side <= s:
            break
    if skip_covered and len(out) > 2:
        out = [out[0], out[-1]]
    return out


def detect_hog(source, settings, timings: dict) -> tuple[np.ndarray, list[Box], int | None, list[int]]:
    """The original's scale loop: (image of the last pass, boxes on it, the scale that found
    them or None, the scales tried)."""
    tried, boxes, img, seen = [], [], None, None
    long_side = max(int(source.width), int(source.height))
    for scale in passes(long_side, list(settings.face_scales), settings.face_skip_covered_scales):
        t = time.monotonic()
        img = source.scaled(scale)
        timings["decode"] += time.monotonic() - t
        t = time.monotonic()
        effective = max(img.shape[:2])
        levels = None
        if seen is not None and not settings.face_full_rescan:
            levels = rescan_levels(effective, seen, settings.face_rescan_overlap)
        boxes = face_locations(img, settings.face_upsample, grey=settings.face_grey_hog, levels=levels)
        timings["detect"] += time.monotonic() - t
        tried.append(scale)
        seen = effective
        if boxes:
            return img, boxes, scale, tried
    return img, boxes, None, tried


def encoding_image(source, img: np.ndarray, boxes: list[Box], scale: int | None, settings) -> np.ndarray:
    """The image HOG's faces are encoded on: the detection image, unless a face on it is smaller
    than `face_full_decode_below` px and the image came from a JPEG draft: then the same scale
    from a full decode. Faces that small are magnified into the encoder's 150-px chip, where
    DCT-scaled pixels moved their encodings more than larger faces' (bench/groundtruth.py)."""
    if not boxes or scale is None or getattr(source, "decoded_in_full", True):
        return img
    if min(bottom - top for top, _, bottom, _ in boxes) >= settings.face_full_decode_below:
        return img
    return source.scaled(scale, draft=False)
