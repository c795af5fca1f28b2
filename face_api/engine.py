"""Face detection and encoding: the face API's one public entry, `encode_photo`.

The HTTP routes (app.py) and the workers' in-process engine both call `encode_photo(photo,
settings)`; the workers import nothing else from face_api, so what they need besides is here too:
`load_models` / `prepare` (models loaded once per process, before forking), the settings' error
type and its one-line message, and the box IoU of the `locations` answered.

Same pipeline as ageitgey/face_recognition, with the detector PHOTO_FACE_DETECTOR picks
(detectors/: HOG with the original server's multi-scale loop, or YuNet with its boxes redrawn
like HOG's):

    img, boxes = detector(photo)                        # boxes on the image of the pass
    encodings = dlib ResNet(img, 5-point landmarks(img, box), jitters=1)
    locations = boxes mapped back to pixels of the (EXIF-oriented) photo

What makes it cheaper than the original (each measured against the ground truth with
bench/groundtruth.py, and on the library mix with bench/face_api.py; settings turn them off):
- A photo is decoded for a pass at the smallest JPEG DCT size >= the pass's scale, then resized
  the way Pillow's thumbnail() does (imaging.py) for HOG, by libvips' reduce for YuNet
  (passimage.py); encodings are computed on that image.
- HOG's later passes scan only the pyramid levels earlier ones could not (detectors/hog.py).
- The ResNet (and YuNet) run in onnxruntime from the same weights (networks/; PHOTO_FACE_RUNTIME):
  the same encodings for less CPU.

Thread safety: every call builds its own HOG detector (dlib releases the GIL while detecting, so
two threads use two cores); the landmark and ResNet models are shared behind a lock.

Importing this module loads neither dlib nor Pillow (they load with the models and the first
photo): the workers import it in the HTTP mode too, for the IoU and the settings errors.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from . import detectors
from .boxes import iou as box_iou
from .errors import FaceApiError, ImageError, SettingsError
from .memory import release_freed
from .models import ModelFiles, find_model_files
from .networks import resnet
from .networks.onnxgraph import Rebuilt
from .serve import gunicorn_command
from .settings import Settings, get_settings, settings_error_line, settings_or_exit

__all__ = [
    "encode_photo", "EncodeResult", "load_models", "prepare", "models_loaded", "encoder_runtime",
    "box_iou", "face_distance", "FaceApiError", "ImageError", "SettingsError",
    "settings_error_line", "settings_or_exit", "gunicorn_command",
]


@dataclass
class Models:
    shape_predictor: object
    encoder: object                     # dlib's ResNet
    files: ModelFiles
    load_seconds: float
    encode_lock: threading.Lock = field(default_factory=threading.Lock)
    # The same ResNet run by onnxruntime (networks/resnet.py), built on first use (prepare()
    # builds it before gunicorn forks); where it cannot be, dlib's is used.
    onnx_encoder: Rebuilt[resnet.Encoder] | None = None


_models: Models | None = None
_models_lock = threading.Lock()


def load_models() -> Models:
    """Load (once per process) the HOG detector, 5-point predictor and ResNet encoder."""
    global _models
    with _models_lock:
        if _models is None:
            import dlib

            from .detectors import hog

            started = time.monotonic()
            files = find_model_files()
            encoder = dlib.face_recognition_model_v1(str(files.face_recognition))
            hog.serialized()
            _models = Models(
                shape_predictor=dlib.shape_predictor(str(files.shape_predictor_5)),
                encoder=encoder,
                files=files,
                load_seconds=time.monotonic() - started,
                onnx_encoder=Rebuilt("face encodings", functools.partial(
                    resnet.checked_encoder, files.face_recognition, encoder)),
            )
        return _models


def prepare(settings: Settings) -> Models:
    """The models, and now (not at the first photo) the onnxruntime network `settings` use: under
    gunicorn's preload this runs once in the master and the forked workers share the result.
    Building the graph leaves freed memory the workers would otherwise carry: given back here."""
    models = load_models()
    if settings.face_runtime == "onnxruntime" and models.onnx_encoder is not None:
        models.onnx_encoder.get()
        release_freed()
    return models


def encoder_runtime(settings: Settings, models: Models | None = None) -> str:
    """What computes the encodings under `settings`: "onnxruntime" or "dlib"."""
    rebuilt = (models or load_models()).onnx_encoder
    return rebuilt.runtime(settings.face_runtime, "dlib") if rebuilt is not None else "dlib"


def models_loaded() -> bool:
    return _models is not None


# ---------------------------------------------------------------- building blocks (numpy in/out)

def face_encodings(rgb: np.ndarray, locations, jitters: int = 1, models: Models | None = None,
                   landmarks=None, runtime: str = "onnxruntime") -> list[np.ndarray]:
    """128-d encodings for the given boxes, same as face_recognition.face_encodings(model='small').
    `landmarks(img, box, predictor)` replaces dlib's one 5-point fit on the box (YuNet's path).
    `runtime` "onnxruntime" runs dlib's ResNet in onnxruntime (networks/resnet.py) when it was
    built and jitters is 1 (dlib's jitter has its own random crops); "native" is the original's
    dlib call."""
    import dlib

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
        from PIL import Image

        from .imaging import REDUCING_GAP, RESAMPLE

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


def encode_image(image, settings: Settings | None = None, models: Models | None = None) -> EncodeResult:
    """Detect and encode faces in an RGB array (H, W, 3) or a lazily decoded Photo."""
    if settings is None:
        settings = get_settings()
    models = models or load_models()
    source = image if hasattr(image, "scaled") and hasattr(image, "width") else ArraySource(image)
    width, height = int(source.width), int(source.height)
    timings = {"decode": 0.0, "detect": 0.0, "encode": 0.0}
    detector = detectors.get(settings.face_detector)
    img, boxes, used, tried = detector.detect(source, settings, timings)
    enc_img = detector.encoding_image(source, img, boxes, used, settings)
    t = time.monotonic()
    encodings = (face_encodings(enc_img, boxes, settings.face_jitters, models, detector.landmarks,
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


def encode_photo(photo: bytes | os.PathLike, settings: Settings | None = None, *,
                 name: str | None = None, admission=None) -> EncodeResult:
    """Detect and encode the faces of one photo: its file's bytes, or the file at a path (read
    within `max_upload_bytes`). `name` helps decoding (its extension); `admission` is a context
    manager held while the photo is computed (the API's bound on photos at once), not while its
    header is read. Raises ImageError for a photo that cannot be used, OSError for a file that
    cannot be read, MemoryError for one too large to compute."""
    from .imaging import open_photo, read_limited

    if settings is None:
        settings = get_settings()
    if not isinstance(photo, (bytes, bytearray, memoryview)):
        name = name or os.path.basename(photo)
        photo = read_limited(photo, settings.max_upload_bytes)
    opened = open_photo(photo, settings.max_pixels, draft=settings.face_draft_decode, name=name)
    with admission or contextlib.nullcontext():
        return encode_image(opened, settings)
