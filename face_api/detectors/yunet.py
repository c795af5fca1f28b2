"""YuNet (libfacedetection, through the `yuface` wheel): face candidates, then HOG-like boxes.

One pass on the photo scaled to `yunet_max_side` finds faces from ~10 px up to a few hundred px;
a second, small pass (`yunet_large_face_side`) finds faces that fill the frame, which are larger
than YuNet's biggest anchors at the main size. Candidates of both passes are merged (each pass
answers for the face sizes it sees best; no box may lie across two faces), filtered for
precision (filters.py) and redrawn the way dlib's HOG detector draws boxes (calibration.py), so
the 5-point landmarker and the ResNet encoder downstream see the boxes they were trained on.

The network runs in onnxruntime (networks/yunet_onnx.py: the same weights, read from yuface's
library, the same rows out, less CPU) unless PHOTO_FACE_RUNTIME=native, or unless that
graph does not reproduce yuface's rows on a test image at first use: then yuface's own code runs.

Threads: the engine runs `face_threads` photos at once per worker, one core each, and gunicorn's
workers x threads is the core budget. So every YuNet call gets one thread: onnxruntime's session
has one, and yuface's OpenMP is set to one per calling thread (libgomp would otherwise start one
per core in every worker, and its spinning threads fight the other workers for the cores).
onnxruntime releases the GIL while computing; yuface's call holds it.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from .. import passimage
from ..boxes import xywh_inside as _inside
from ..boxes import xywh_iou as box_iou
from ..networks import yunet_onnx
from ..networks.onnxgraph import Rebuilt
from . import calibration, filters

MIN_SCORE_FLOOR = 0.3  # libfacedetection answers from ~0.2; nothing this weak is ever kept


@dataclass(frozen=True)
class Candidate:
    """One YuNet detection in pixels of the image it is expressed in."""
    score: float                 # 0..1
    box: tuple[float, float, float, float]   # x, y, width, height as YuNet draws it
    landmarks: np.ndarray        # (5, 2) x, y: eye, eye, nose tip, mouth corner, mouth corner
    #                              (in each pair the one on the image's left first)

    def scaled(self, factor: float) -> "Candidate":
        x, y, w, h = self.box
        return Candidate(self.score, (x * factor, y * factor, w * factor, h * factor),
                         self.landmarks * factor)

    @property
    def size(self) -> float:
        """Face size in pixels: the geometric mean of YuNet's box sides."""
        return float(np.sqrt(max(self.box[2], 1) * max(self.box[3], 1)))


_runtime_lock = threading.Lock()
_runtime = None


def _load():
    """yuface's detect function and its bundled libgomp (None if it has none)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            import yuface
            from yuface.yuface import detect as c_detect

            libs = os.path.join(os.path.dirname(os.path.dirname(yuface.__file__)), "yuface.libs")
            found = sorted(glob.glob(os.path.join(libs, "libgomp*.so*")))
            # dlopen of a loaded library returns the same handle: this is yuface's own libgomp
            _runtime = (c_detect, ctypes.CDLL(found[0]) if found else None)
        return _runtime


def _checked_onnx() -> yunet_onnx.Detector:
    return yunet_onnx.checked_detector(_load()[0])


# Built in each worker at its first photo, not before gunicorn forks: the check runs yuface,
# whose libgomp threads would not survive the fork.
onnx: Rebuilt[yunet_onnx.Detector] = Rebuilt("YuNet passes", _checked_onnx)


def run(rgb: np.ndarray, threads: int = 1, runtime: str = "onnxruntime") -> list[Candidate]:
    """YuNet candidates (score >= MIN_SCORE_FLOOR) on an RGB uint8 image, best score first.
    `runtime`: "onnxruntime" (yunet_onnx.py, the same rows) or "native" (yuface's code)."""
    c_detect, gomp = _load()
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        return []
    fast = onnx.get() if runtime == "onnxruntime" else None
    if fast is not None:
        rows = fast.run(rgb)
    else:
        if gomp is not None:
            gomp.omp_set_num_threads(max(1, int(threads)))  # OpenMP keeps it per calling thread
        rows = c_detect(np.ascontiguousarray(rgb[:, :, 2::-1]))  # yuface wants BGR
    out = []
    for row in rows.astype(np.float64):
        score = row[0] / 100.0
        if score >= MIN_SCORE_FLOOR:
            out.append(Candidate(score, tuple(row[1:5]), row[5:15].reshape(5, 2)))
    return sorted(out, key=lambda c: -c.score)


def _resized(rgb: np.ndarray, long_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    f = long_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return passimage.resize(rgb, size)


def passes(img: np.ndarray, large_face_side: int, threads: int = 1, runtime: str = "onnxruntime"
           ) -> tuple[list[Candidate], list[Candidate], float]:
    """Candidates of the main pass on `img` and, when `large_face_side` is smaller than it, of a
    pass at that size (faces filling the frame) in pixels of `img`; and how many times smaller
    that second pass's image was."""
    found = run(img, threads, runtime)
    long_side = max(img.shape[:2])
    if not 0 < large_face_side < long_side * 0.75:
        return found, [], 1.0
    small = _resized(img, large_face_side)
    factor = long_side / max(small.shape[:2])
    return found, [c.scaled(factor) for c in run(small, threads, runtime)], factor


def candidates(img: np.ndarray, large_face_side: int, threads: int = 1,
               runtime: str = "onnxruntime") -> list[Candidate]:
    """Both passes' candidates merged (merge()), in pixels of `img`."""
    return merge(*passes(img, large_face_side, threads, runtime))


# YuNet's anchors span ~10 to ~256 px and it sees a face best near the middle of that range
# (filters.CONFIRM_FACE_PX uses the same size for its second look).
BEST_FACE_PX = 64


def owned_by_large_pass(candidate: Candidate, factor: float) -> bool:
    """Whether the large-face pass, whose image is `factor` times smaller than the main one,
    answers for a face of this size (in main pixels): each pass answers for the faces it sees
    nearer YuNet's best size. Below that, the main pass saw the face `factor` times larger and
    sharper; the small pass sees such faces at a few pixels, where two neighbouring faces of a
    row blur into one face-like blob (a box between them) or a face's box slides towards its
    neighbour (a second box beside the first)."""
    return candidate.size >= BEST_FACE_PX * np.sqrt(factor)


def merge(main: list[Candidate], large: list[Candidate], factor: float, by_size: bool = True,
          drop_spans: bool = True) -> list[Candidate]:
    """One list of candidates from both passes (`large` already in main pixels): the large pass
    contributes only the faces it answers for, then overlaps are suppressed best first.
    (`by_size`, `drop_spans` False: without those rules, for the bench to measure them.)"""
    kept_large = [c for c in large if not by_size or owned_by_large_pass(c, factor)]
    return _suppress_overlaps(sorted(main + kept_large, key=lambda c: -c.score), drop_spans=drop_spans)


def _suppress_overlaps(ordered: list[Candidate], max_iou: float = 0.3, drop_spans: bool = True
                       ) -> list[Candidate]:
    """Best-first non-maximum suppression; then drop candidates lying inside a much larger one
    (faces do not nest, but the parts of a face that fills the frame, its eyes or mouth, can look
    like small faces), and candidates that cover parts of two others (spans_two())."""
    kept: list[Candidate] = []
    for c in ordered:
        if all(box_iou(c.box, k.box) < max_iou for k in kept):
            kept.append(c)
    kept = [c for c in kept if not any(k.size >= 1.5 * c.size and _inside(c.box, k.box) >= 0.6
                                       for k in kept)]
    return [c for c in kept if not (drop_spans and spans_two(c, kept))]


SPAN_SHARE = 0.25  # of a neighbour's box: faces in a row touch at most at their edges


def spans_two(c: Candidate, others: list[Candidate]) -> bool:
    """A box holding a good part (SPAN_SHARE) of two other faces' boxes, each at least half its
    size, is not one face: it lies across two neighbours. Neighbouring faces overlap each other
    little (a face's own box covers its brows to its chin), so a real face never holds that much
    of two others."""
    covered = [k for k in others if k is not c and k.size >= 0.5 * c.size
               and _inside(k.box, c.box) >= SPAN_SHARE]
    return len(covered) >= 2


def detect_yunet(source, settings, timings: dict):
    """The YuNet pass of engine.encode_image: (image, HOG-like boxes on it, scale, scales tried).

    `source` is a Photo or ArraySource; boxes are (top, right, bottom, left) in pixels of image."""
    t = time.monotonic()
    img = passimage.pass_image(source, settings.yunet_max_side)
    timings["decode"] += time.monotonic() - t
    t = time.monotonic()
    found = candidates(img, settings.yunet_large_face_side, 1, settings.face_runtime)
    look = functools.partial(run, threads=1, runtime=settings.face_runtime)
    kept = [c for c in found if filters.keep(img, c, settings.yunet_min_score,
                                             settings.yunet_confirm_score, look)]
    boxes = [calibration.hog_box(c, img.shape) for c in kept]
    timings["detect"] += time.monotonic() - t
    scale = settings.yunet_max_side  # named like HOG's scales: the photo is never enlarged
    return img, boxes, (scale if boxes else None), [scale]
