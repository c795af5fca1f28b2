"""The face detectors PHOTO_FACE_DETECTOR chooses from, and whether each can run here.

- "hog": dlib's HOG detector with the original server's scale loop (face_api/engine.py).
- "yunet": YuNet from libfacedetection through the `yuface` wheel (yunet.py), its boxes redrawn
  the way HOG draws them (calibration.py) so dlib's 5-point landmarker and ResNet encoder see
  what they were trained on, and its candidates filtered for precision (filters.py).

Both end in the same landmarks -> ResNet encodings, so encodings stay comparable.
"""
from __future__ import annotations

import importlib
import importlib.metadata

DETECTORS = ("hog", "yunet")

# yuface ships wheels for CPython 3.10 and 3.11 on Linux/Windows only (requirements.txt marker).
YUFACE = "yuface"


class DetectorUnavailable(ValueError):
    """The chosen detector cannot run in this environment; the message is one line."""


def check_available(name: str) -> None:
    """Raise DetectorUnavailable when `name` cannot run here (called when settings load)."""
    if name == "yunet":
        try:
            importlib.import_module(YUFACE)
        except ImportError as exc:
            raise DetectorUnavailable(
                f"PHOTO_FACE_DETECTOR=yunet needs the {YUFACE} package, which is not importable "
                f"here ({exc}); its wheels exist for CPython 3.10/3.11 only: "
                "use PHOTO_FACE_DETECTOR=hog or install requirements.txt on such a Python"
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
