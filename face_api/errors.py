"""The face API's exceptions, under one root.

Everything this package raises on purpose is a FaceApiError, so a caller (the workers' in-process
engine, a bench) can tell "the face API refused" from a bug. Each class also derives from the
built-in type callers caught before it existed (ValueError, PermissionError, RuntimeError).
The HTTP statuses they become are chosen at the edge, in app.py.
"""
from __future__ import annotations


class FaceApiError(Exception):
    """Root of the face API's own errors."""


class SettingsError(FaceApiError, ValueError):
    """Settings that cannot work, in one line naming the variable (e.g. PHOTO_FACE_DETECTOR)."""


class DetectorUnavailable(SettingsError):
    """The chosen detector cannot run in this environment; the message is one line."""


class ImageError(FaceApiError, ValueError):
    """A photo that cannot be used; `status` is the HTTP status the API answers with."""

    def __init__(self, reason: str, status: int = 422):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class PathDenied(FaceApiError, PermissionError):
    """A `path` outside the storage roots (or not a path at all)."""


class ModelsNotFound(FaceApiError, RuntimeError):
    """The dlib model files are not installed."""


class ModelFormatError(FaceApiError, ValueError):
    """A network's weights are not in the layout its rebuild reads, or the rebuild's output
    differs from the native code's."""
