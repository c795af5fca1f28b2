"""Face detection and encoding: pure functions over RGB numpy arrays (or a lazily decoded Photo).

Same pipeline as ageitgey/face_recognition with the original server's multi-scale loop:

    for scale in scales (1200, 1600, 2000):
        img = photo scaled so its longer side is `scale` (never enlarged)
        boxes = dlib HOG frontal face detector(img, upsample=1), clamped to the image
        stop if faces were found, or if the photo is not larger than `scale`
    encodings = dlib ResNet(img, 5-point landmarks(img, box), jitters=1)   # on the same img
    locations = boxes mapped back to pixels of the (EXIF-oriented) photo

PHOTO_FACE_DETECTOR=yunet replaces the scale loop with one YuNet pass whose boxes are redrawn
like HOG's (face_api/detectors); its 5-point landmarks are averaged over the box's half-HOG-cell
shifts (detectors/calibration.py), the encodings are computed the same way.

What makes it cheaper than the original (each measured against the ground truth with
bench/groundtruth.py, and on the library mix with bench/face_api.py; settings turn them off):
- A photo is decoded for a pass at the smallest JPEG DCT size >= the pass's scale, then resized
  the way Pillow's thumbnail() does (imaging.py); encodings are computed on that image.
- A later pass scans only the HOG pyramid levels that see faces smaller than any earlier pass could
  (plus `face_rescan_overlap` levels); larger face sizes were already searched, and found nothing.
  dlib's pyramid shrinks by 5/6 per level, so 1600 after 1200 needs 2 new levels, 2000 after 1600 2.
- A middle scale is skipped when a larger one follows (`face_skip_covered_scales`): the larger
  pass sees the same face sizes and more.
- The ResNet (and YuNet) run in onnxruntime from the same weights (resnet.py, onnxgraph.py;
  PHOTO_FACE_RUNTIME): the same encodings for ~1/11 of dlib's CPU.

Thread safety: every call builds its own HOG detector (dlib releases the GIL while detecting, so
two threads use two cores); the landmark and ResNet models are shared behind a lock.

`load_models()` loads the three dlib models once per process (call it before forking to share
their pages); `encode_image(image, settings)` is the whole pipeline and is what the HTTP API
and the embedded mode of the workers call.
"""
from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import dlib
import numpy as np
from PIL import Image

from . import resnet
from .detectors import calibration
from .detectors.yunet import detect_yunet
from .imaging import REDUCING_GAP, RESAMPLE
from .memory import release_freed
from .models import ModelFiles, find_model_files
from .onnxgraph import Rebuilt


@dataclass
class Models:
    detector_bytes: bytes               # the serialized HOG detector: detector() builds one per call
    shape_predictor: object
    encoder: object                     # dlib's ResNet
    files: ModelFiles
    load_seconds: float
    encode_lock: threading.Lock = field(default_factory=threading.Lock)
    # The same ResNet run by onnxruntime (resnet.py), built on first use (prepare() builds it
    # before gunicorn forks); where it cannot be, dlib's is used.
    onnx_encoder: Rebuilt[resnet.Encoder] | None = None


_models: Models | None = None
_models_lock = threading.Lock()


def load_models() -> Models:
    """Load (once per process) the HOG detector, 5-point predictor and ResNet encoder."""
    global _models
    with _models_lock:
        if _models is None:
            started = time.monotonic()
            files = find_model_files()
            encoder = dlib.face_recognition_model_v1(str(files.face_recognition))
            _models = Models(
                detector_bytes=dlib.get_frontal_face_detector().__getstate__()[0],
                shape_predictor=dlib.shape_predictor(str(files.shape_predictor_5)),
                encoder=encoder,
                files=files,
                load_seconds=time.monotonic() - started,
                onnx_encoder=Rebuilt("face encodings", functools.partial(
                    resnet.checked_encoder, files.face_recognition, encoder)),
            )
        return _models


def prepare(settings) -> Models:
    """The models, and now (not at the first photo) the onnxruntime network `settings` use: under
    gunicorn's preload this runs once in the master and the forked workers share the result.
    Building the graph frees ~50 MB that the workers would otherwise carry: given back here."""
    models = load_models()
    if settings.face_runtime == "onnxruntime" and models.onnx_encoder is not None:
        models.onnx_encoder.get()
        release_freed()
    return models


def encoder_runtime(settings, models: Models | None = None) -> str:
    """What computes the encodings under `settings`: "onnxruntime" or "dlib"."""
    rebuilt = (models or load_models()).onnx_encoder
    return rebuilt.runtime(settings.face_runtime, "dlib") if rebuilt is not None else "dlib"


# In dlib's serialized scan_fhog_pyramid: window 80x80, max_pyramid_levels 1000, min layer 64x64
# (each integer is a length byte then little-endian bytes).
_LEVELS_FIELD = (b"\x01\x50\x01\x50", b"\x02\xe8\x03", b"\x01\x40\x01\x40")


def detector(models: Models, levels: int | None = None):
    """A fresh HOG detector scanning every pyramid level, or only the first `levels`.

    Built per call from the serialized bytes (about 2 ms; get_frontal_face_detector() takes 0.5 s):
    a dlib detector is not safe to share between threads and keeps the last image's feature
    pyramid (tens of MB), so a cached one per thread would pin that memory in every thread."""
    data = models.detector_bytes
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


def models_loaded() -> bool:
    return _models is not None


# ---------------------------------------------------------------- building blocks (numpy in/out)

def _trim(rect, shape) -> tuple[int, int, int, int]:
    """dlib rectangle -> (top, right, bottom, left) clamped like face_recognition._trim_css_to_bounds."""
    return (
        max(rect.top(), 0),
        min(rect.right(), shape[1]),
        min(rect.bottom(), shape[0]),
        max(rect.left(), 0),
    )


def face_locations(rgb: np.ndarray, upsample: int = 1, models: Models | None = None,
                   grey: bool = False, levels: int | None = None) -> list[tuple[int, int, int, int]]:
    """HOG face boxes as (top, right, bottom, left), same as face_recognition.face_locations.
    `levels` limits the scan to the finest pyramid levels (the smallest faces)."""
    models = models or load_models()
    img = np.ascontiguousarray(rgb)
    if grey and img.ndim == 3:
        img = np.ascontiguousarray(np.asarray(Image.fromarray(img).convert("L")))
    return [_trim(r, rgb.shape) for r in detector(models, levels)(img, upsample)]


def face_encodings(rgb: np.ndarray, locations, jitters: int = 1, models: Models | None = None,
                   landmarks=None, runtime: str = "onnxruntime") -> list[np.ndarray]:
    """128-d encodings for the given boxes, same as face_recognition.face_encodings(model='small').
    `landmarks(img, box, predictor)` replaces dlib's one 5-point fit on the box (YuNet's path).
    `runtime` "onnxruntime" runs dlib's ResNet in onnxruntime (resnet.py) when it was built and
    jitters is 1 (dlib's jitter has its own random crops); "native" is the original's dlib call."""
    models = models or load_models()
    img = np.ascontiguousarray(rgb)
    shapes = []
    for top, right, bottom, left in locations:
        if landmarks is None:
            shapes.append(models.shape_predictor(img, dlib.rectangle(left, top, right, bottom)))
        else:
            shapes.append(landmarks(img, (top, right, bottom, left), models.shape_predictor))
    if not shapes:
        return []
    fast = (models.onnx_encoder.get() if runtime == "onnxruntime" and jitters <= 1
            and models.onnx_encoder is not None else None)
    if fast is not None:
        chips = np.stack([dlib.get_face_chip(img, s, resnet.CHIP_SIZE, resnet.CHIP_PADDING)
                          for s in shapes])
        return list(fast.encode(chips))
    with models.encode_lock:  # dlib's ResNet keeps per-call buffers: one thread at a time
        return [np.array(models.encoder.compute_face_descriptor(img, s, jitters)) for s in shapes]


def face_distance(known, candidate) -> np.ndarray:
    known = np.asarray(known, dtype=np.float64)
    if known.size == 0:
        return np.empty(0)
    return np.linalg.norm(known - np.asarray(candidate, dtype=np.float64), axis=1)


# ---------------------------------------------------------------- sources and the pipeline

class Source(Protocol):
    width: int
    height: int

    def scaled(self, max_side: int) -> np.ndarray: ...


class ArraySource:
    """Wraps an RGB array; scaled() resizes it like a Photo (imaging.RESAMPLE)."""

    def __init__(self, rgb: np.ndarray):
        rgb = np.asarray(rgb)
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, axis=-1)
        if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
            raise ValueError("expected an RGB uint8 array of shape (H, W, 3)")
        self.rgb = np.ascontiguousarray(rgb[:, :, :3])
        self.height, self.width = self.rgb.shape[:2]

    def scaled(self, max_side: int) -> np.ndarray:
        long_side = max(self.width, self.height)
        if long_side <= max_side:
            return self.rgb
        f = max_side / long_side
        size = (max(1, round(self.width * f)), max(1, round(self.height * f)))
        return np.asarray(Image.fromarray(self.rgb).resize(size, RESAMPLE, reducing_gap=REDUCING_GAP))


@dataclass
class EncodeResult:
    encodings: list[list[float]]
    locations: list[list[int]]          # (top, right, bottom, left) in pixels of the photo
    scale: int | None                   # the scale whose pass found the faces
    width: int
    height: int
    scales_tried: list[int] = field(default_factory=list)
    detection_image: np.ndarray | None = None   # image of the last pass (for the debug JPEG)
    detection_locations: list[tuple[int, int, int, int]] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"encodings": self.encodings, "locations": self.locations, "scale": self.scale,
                "width": self.width, "height": self.height}


def _passes(long_side: int, scales: list[int], skip_covered: bool) -> list[int]:
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


Box = tuple[int, int, int, int]


def detect_hog(source: Source, settings, models: Models, timings: dict
               ) -> tuple[np.ndarray, list[Box], int | None, list[int]]:
    """The original's scale loop: (image of the last pass, boxes on it, the scale that found
    them or None, the scales tried)."""
    tried, boxes, img, seen = [], [], None, None
    long_side = max(int(source.width), int(source.height))
    for scale in _passes(long_side, list(settings.face_scales), settings.face_skip_covered_scales):
        t = time.monotonic()
        img = source.scaled(scale)
        timings["decode"] += time.monotonic() - t
        t = time.monotonic()
        effective = max(img.shape[:2])
        levels = None
        if seen is not None and not settings.face_full_rescan:
            levels = rescan_levels(effective, seen, settings.face_rescan_overlap)
        boxes = face_locations(img, settings.face_upsample, models, grey=settings.face_grey_hog,
                               levels=levels)
        timings["detect"] += time.monotonic() - t
        tried.append(scale)
        seen = effective
        if boxes:
            return img, boxes, scale, tried
    return img, boxes, None, tried


def _encoding_image(source: Source, img: np.ndarray, boxes: list[Box], scale: int | None,
                    full_decode_below: int) -> np.ndarray:
    """The image HOG's faces are encoded on: the detection image, unless a face on it is smaller
    than `full_decode_below` px and the image came from a JPEG draft: then the same scale from a
    full decode. Faces that small are magnified into the encoder's 150-px chip, and DCT-scaled
    pixels moved their encodings by up to 0.13 from the thumbnail reconstruction's (larger
    faces: 0.06 at most, on the library mix)."""
    if not boxes or scale is None or getattr(source, "decoded_in_full", True):
        return img
    if min(bottom - top for top, _, bottom, _ in boxes) >= full_decode_below:
        return img
    return source.scaled(scale, draft=False)


def encode_image(image, settings=None, models: Models | None = None) -> EncodeResult:
    """Detect and encode faces in an RGB array (H, W, 3) or a lazily decoded Photo."""
    if settings is None:
        from .settings import get_settings
        settings = get_settings()
    models = models or load_models()
    source = image if hasattr(image, "scaled") and hasattr(image, "width") else ArraySource(image)
    width, height = int(source.width), int(source.height)
    timings = {"decode": 0.0, "detect": 0.0, "encode": 0.0}
    landmarks = None
    if settings.face_detector == "yunet":  # PHOTO_FACE_DETECTOR: its one pass replaces HOG's loop
        img, boxes, used, tried = detect_yunet(source, settings, timings)
        enc_img, landmarks = img, calibration.landmarks
    else:
        img, boxes, used, tried = detect_hog(source, settings, models, timings)
        enc_img = _encoding_image(source, img, boxes, used, settings.face_full_decode_below)
    t = time.monotonic()
    encodings = (face_encodings(enc_img, boxes, settings.face_jitters, models, landmarks,
                                settings.face_runtime) if boxes else [])
    timings["encode"] = time.monotonic() - t
    fy, fx = height / img.shape[0], width / img.shape[1]
    locations = [[min(height, round(top * fy)), min(width, round(right * fx)),
                  min(height, round(bottom * fy)), min(width, round(left * fx))]
                 for top, right, bottom, left in boxes]
    return EncodeResult(
        encodings=[e.tolist() for e in encodings],
        locations=locations,
        scale=used,
        width=width,
        height=height,
        scales_tried=tried,
        detection_image=img,
        detection_locations=boxes,
        timings=timings,
    )
