"""Face crops and photo views, cut on demand from the library's photos and cached on disk.

A face's box (`faces.location`, [top, right, bottom, left]) is in pixels of the photo after its
EXIF orientation, which is how the face API reports it. A crop is the box with a margin, made
square, at one of a few sizes; a view is the whole photo at a screen size, for the photo page.
JPEGs are decoded at the smallest DCT scale that still gives the pixels needed.

The cache lives in `<thumbnails>/faces/` beside the library's thumbnails; a file's name carries a
digest of what it was cut from (photo path, box, file size and time), so a moved box or a
replaced photo gets a new file. Only `images.path` of a face or photo row is ever opened, and only
under the storage root: nothing from the request reaches the filesystem."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from workers.errors import PipelineError

CROP_SIZES = (96, 160, 320)
VIEW_SIDE = 1600           # the photo page's image, longer side
MARGIN = 0.35              # around the box, per side, as a share of the box's side
QUALITY = 85
ORIENTATION_TAG = 0x0112
SWAPPING = {5, 6, 7, 8}


class Unavailable(PipelineError):
    """The photo cannot be read or decoded: answered as 404."""


@dataclass
class Photos:
    """The library's photos (under `root`) and the crop cache (`cache`, None: no cache)."""
    root: Path
    cache: Path | None
    max_pixels: int = 120_000_000

    def path(self, relative: str) -> Path:
        """images.path resolved under the storage root; Unavailable when it escapes it or is gone."""
        root = self.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise Unavailable(relative)
        return path

    # ---------------------------------------------------------------- crops

    def crop(self, relative: str, location, size: int) -> bytes | Path:
        """A face crop as a cached file, or as bytes when the cache cannot be written."""
        if size not in CROP_SIZES:
            raise Unavailable(f"size {size}")
        box = parse_box(location)
        if box is None:
            raise Unavailable("no box")
        path = self.path(relative)
        key = _digest(path, relative, box)
        return self._cached(f"{size}/{key}.jpg", lambda: render_crop(path, box, size, self.max_pixels))

    def view(self, relative: str) -> bytes | Path:
        path = self.path(relative)
        key = _digest(path, relative, None)
        return self._cached(f"photos/{key}.jpg", lambda: render_view(path, VIEW_SIDE, self.max_pixels))

    def oriented_size(self, relative: str) -> tuple[int, int]:
        path = self.path(relative)
        try:
            with Image.open(path) as im:
                return oriented_size(im)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise Unavailable(str(exc)) from None

    def _cached(self, name: str, render) -> bytes | Path:
        if self.cache is not None:
            target = self.cache / name
            if target.is_file():
                return target
        data = render()
        if self.cache is not None:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, target)      # readers see a whole file or none
                return target
            except OSError:
                pass                         # a read-only library still shows its faces
        return data


def _digest(path: Path, relative: str, box) -> str:
    st = path.stat()
    text = json.dumps([relative, box, st.st_size, st.st_mtime_ns])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def parse_box(value) -> tuple[int, int, int, int] | None:
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        top, right, bottom, left = (int(v) for v in value)
        if right > left and bottom > top:
            return top, right, bottom, left
    return None


def oriented_size(im: Image.Image) -> tuple[int, int]:
    orientation = int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
    w, h = im.size
    return (h, w) if orientation in SWAPPING else (w, h)


def _open(path: Path, max_pixels: int, min_scale: float) -> tuple[Image.Image, float]:
    """The photo decoded and oriented, at least `min_scale` of its full size; (image, scale)."""
    try:
        im = Image.open(path)
        w, h = im.size
        if w * h > max_pixels:
            raise Unavailable(f"{w}x{h} pixels is over the limit")
        full = oriented_size(im)
        scale = min(1.0, max(min_scale, 1e-3))
        im.draft("RGB", (max(1, int(w * scale + 1)), max(1, int(h * scale + 1))))
        im = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise Unavailable(str(exc)) from None
    return im, im.width / full[0]


def render_crop(path: Path, box, size: int, max_pixels: int) -> bytes:
    top, right, bottom, left = box
    side = max(right - left, bottom - top) * (1 + 2 * MARGIN)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    im, scale = _open(path, max_pixels, size / side)
    half = side * scale / 2
    region = tuple(round(v) for v in (cx * scale - half, cy * scale - half, cx * scale + half, cy * scale + half))
    # outside the photo (a face at its edge) the crop is padded with a neutral grey
    canvas = Image.new("RGB", (region[2] - region[0], region[3] - region[1]), (128, 128, 128))
    inside = (max(0, region[0]), max(0, region[1]), min(im.width, region[2]), min(im.height, region[3]))
    if inside[2] > inside[0] and inside[3] > inside[1]:
        canvas.paste(im.crop(inside), (inside[0] - region[0], inside[1] - region[1]))
    return _jpeg(canvas.resize((size, size), Image.LANCZOS))


def render_view(path: Path, max_side: int, max_pixels: int) -> bytes:
    with Image.open(path) as probe:
        long_side = max(oriented_size(probe))
    im, _ = _open(path, max_pixels, max_side / long_side)
    im.thumbnail((max_side, max_side), Image.LANCZOS)
    return _jpeg(im)


def _jpeg(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()
