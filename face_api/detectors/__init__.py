"""The face detectors PHOTO_FACE_DETECTOR chooses from, and whether each can run here.

- "yunet" (the default): YuNet from libfacedetection through the `yuface` wheel (yunet.py), its
  boxes redrawn the way HOG draws them (calibration.py) so dlib's 5-point landmarker and ResNet
  encoder see what they were trained on, and its candidates filtered for precision (filters.py).
- "hog": dlib's HOG detector with the original server's scale loop (hog.py), exactly the
  original's recipe (the parity mode).

Both end in the same landmarks -> ResNet encodings, so encodings stay comparable. `get(name)`
gives the engine a Detector: the same call for both, and what the encoding step does with its
boxes. Each detector's module is imported when it is first chosen (yunet.py needs `yuface`).
"""
from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Callable

from ..errors import DetectorUnavailable

DETECTORS = ("hog", "yunet")

# yuface ships wheels for CPython 3.10 and 3.11 on Linux/Windows only (requirements.txt marker).
YUFACE = "yuface"


__all__ = ["DETECTORS", "Detector", "DetectorUnavailable", "check_available", "describe", "get"]


@dataclass(frozen=True)
class Detector:
    # (source, settings, timings) -> (image of the pass, (top, right, bottom, left) boxes on it,
    # the scale that found them or None, the scales tried); `timings` gets "decode" and "detect".
    detect: Callable
    # (source, image, boxes, scale, settings) -> the image the faces are encoded on
    encoding_image: Callable
    # (image, box, predictor) -> dlib's 5 points for a box; None: the predictor's one fit
    landmarks: Callable | None = None


def _detection_image(source, img, boxes, scale, settings):
    return img


def get(name: str) -> Detector:
    """The detector PHOTO_FACE_DETECTOR=`name` runs."""
    if name == "yunet":
        from . import calibration, yunet

        return Detector(yunet.detect_yunet, _detection_image, calibration.landmarks)
    if name == "hog":
        from . import hog

        return Detector(hog.detect_hog, hog.encoding_image)
    raise DetectorUnavailable(f"unknown detector {name!r} (one of {', '.join(DETECTORS)})")


def check_available(name: str) -> None:
    """Raise DetectorUnavailable when `name` cannot run here (called when settings load)."""
    if name == "yunet":
        try:
            importlib.import_module(YUFACE)
        except ImportError as exc:
            raise DetectorUnavailable(
                f"PHOTO_FACE_DETECTOR=yunet (the default) needs the {YUFACE} package, which is not "
                f"importable here ({exc}): set PHOTO_FACE_DETECTOR=hog (the original's detector), "
                "or install requirements.txt on CPython 3.10/3.11, where its wheels exist"
            ) from None


def describe(name: str) -> dict:
    """Name, package and version of the detector, for /health."""
    if name == "yunet":
        return {"detector": "yunet", "detector_package": YUFACE, "detector_version": _version(YUFACE)}
    import dlib

    return {"detector": "hog", "detector_package": "dlib", "detector_version": dlib.__version__}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
