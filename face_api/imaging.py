"""Safe photo decoding: size and pixel limits, EXIF orientation, HEIC/HEIF, JPEG draft decoding.

`open_photo(source)` reads only the header; `Photo.scaled(max_side)` decodes the photo so that
its longer side (after EXIF orientation) is `max_side` (never enlarged): JPEG DCT scaling
(`Image.draft`) decodes at the smallest size >= `max_side`, then RESAMPLE resizes the rest of the
way. Every decoder failure becomes ImageError.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, PathDenied

try:  # HEIC/HEIF support
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover
    pillow_heif = None

ORIENTATION_TAG = 0x0112
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}

# The resize after decoding, picked by measurement on the ground truth (bench/groundtruth.py):
# BICUBIC with reducing_gap 2 is what Pillow's img.thumbnail() does, the usual way to shrink a
# photo. It found the same faces as LANCZOS, and its encodings stay within 0.035 of the thumbnail
# reconstruction's; LANCZOS and BICUBIC themselves differ by up to 0.175 on a few faces (the
# landmark fit is that sensitive), so no filter is close to both. BILINEAR moved encodings by 0.4.
RESAMPLE = Image.BICUBIC
REDUCING_GAP = 2.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


class Photo:
    """A photo whose header was read; decoded lazily at the scales asked for."""

    def __init__(self, data: bytes, max_pixels: int, draft: bool = True, name: str | None = None):
        if not data:
            raise ImageError("empty file", 400)
        self._data = data
        self._draft = draft
        self.name = name
        self._max_pixels = max_pixels
        self._cache: Image.Image | None = None  # last decoded (and oriented) image
        im = self._open()
        self.format = im.format
        stored_w, stored_h = im.size
        if stored_w <= 0 or stored_h <= 0:
            raise ImageError("image has no pixels")
        if stored_w * stored_h > max_pixels:
            raise ImageError(
                f"image too large: {stored_w}x{stored_h} pixels exceeds the budget of {max_pixels}", 413
            )
        try:
            self.orientation = int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
        except Exception:
            self.orientation = 1
        if self.orientation in SWAPPING_ORIENTATIONS:
            self.width, self.height = stored_h, stored_w
        else:
            self.width, self.height = stored_w, stored_h

    def _open(self) -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return Image.open(io.BytesIO(self._data))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageError(f"image too large: {_one_line(exc)}", 413) from exc
        except Exception as exc:
            raise ImageError(f"not a readable image: {_one_line(exc)}", 415) from exc

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def data(self) -> bytes:
        return self._data

    @property
    def draft(self) -> bool:
        """Whether decodes may use JPEG DCT scaling (PHOTO_FACE_DRAFT_DECODE)."""
        return self._draft

    def _decode(self, min_long_side: int, draft: bool) -> Image.Image:
        """Decode (oriented, RGB) with the longer side >= min_long_side where DCT scaling allows
        (and `draft`), else in full."""
        long_side = max(self.width, self.height)
        draft = draft and min_long_side < long_side
        cache = self._cache
        if cache is not None and max(cache.size) >= (min_long_side if draft else long_side):
            return cache
        im = self._open()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if draft and im.format == "JPEG":
                    f = min_long_side / long_side
                    w, h = im.size
                    im.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))
                im.load()
                im = ImageOps.exif_transpose(im)
                if im.mode != "RGB":
                    im = im.convert("RGB")
        except ImageError:
            raise
        except MemoryError as exc:
            raise ImageError("image too large to decode", 413) from exc
        except Exception as exc:
            raise ImageError(f"cannot decode image: {_one_line(exc)}", 422) from exc
        self._cache = im
        return im

    @property
    def decoded_in_full(self) -> bool:
        """Whether the last decode had every pixel (no DCT scaling)."""
        return self._cache is not None and self._cache.size == (self.width, self.height)

    def scaled_image(self, max_side: int, draft: bool | None = None) -> Image.Image:
        long_side = max(self.width, self.height)
        target = min(max_side, long_side)
        im = self._decode(target, self._draft if draft is None else draft)
        if max(im.size) != target:
            f = target / long_side
            size = (max(1, round(self.width * f)), max(1, round(self.height * f)))
            im = im.resize(size, RESAMPLE, reducing_gap=REDUCING_GAP)
        return im

    def scaled(self, max_side: int, draft: bool | None = None) -> np.ndarray:
        """RGB uint8 C-contiguous array, longer side = min(max_side, photo's longer side);
        `draft` (default: as opened) allows JPEG DCT scaling."""
        return np.ascontiguousarray(np.asarray(self.scaled_image(max_side, draft)))

    def full(self) -> np.ndarray:
        return self.scaled(max(self.width, self.height))


def open_photo(data: bytes, max_pixels: int, draft: bool = True, name: str | None = None) -> Photo:
    return Photo(data, max_pixels=max_pixels, draft=draft, name=name)


def read_limited(path: Path, max_bytes: int) -> bytes:
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ImageError(f"file too large: {size} bytes exceeds {max_bytes}", 413)
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def resolve_under_roots(path: str, roots: list[Path]) -> Path:
    """Resolve `path` (absolute, or relative to a root) to a real file inside one of `roots`.

    Symlinks are resolved before the check, so a link that escapes the roots is refused.
    Raises PathDenied (403) or FileNotFoundError (404).
    """
    if not path or "\x00" in path:
        raise PathDenied("invalid path")
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    candidates = [Path(path)] if os.path.isabs(path) else [r / path for r in real_roots]
    denied = False
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        if not any(real == r or r in real.parents for r in real_roots):
            denied = True  # '..', an absolute path elsewhere, or a symlink that escapes
            continue
        if real.is_file():
            return real
    if denied:
        raise PathDenied("path is outside the storage roots")
    raise FileNotFoundError("file not found under the storage roots")
