"""Thumbnail imaging: Intervention Image v3 geometry as pure functions, plus safe decoding,
rendering and encoding with Pillow.

Geometry (`plan`) mirrors IIv3 `RectangleResizer` / `Rectangle` and the Imagick modifiers
PHP `round()` (half away from zero), proportional sides
`max(1, round(...))`, centre pivots `round(w/2)`. Pixels are resampled with Lanczos-3, so
sizes, crops and padding match Intervention exactly while pixel values cannot (Imagick uses
ScaleImage). The resample itself lives in workers/media/resample.py (libvips, Pillow for the rest).

Decoding (`open_source` + `decode`): header checks first (pixel budget), JPEG DCT scaling via
`Image.draft` where it keeps the quality (see DRAFT_GAP); RGB and greyscale JPEGs are decoded by
simplejpeg (the same libjpeg-turbo, identical pixels) straight into the packed layout libvips
reads, anything it refuses by Pillow as before; EXIF orientation
applied once (never for HEIF: libheif already applied irot/imir and pillow-heif reset the EXIF
tag), first frame of animations. Every decoder failure becomes ImageError.
"""
from __future__ import annotations

import functools
import io
import math
import warnings
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import simplejpeg
from PIL import Image, ImageCms

from workers.errors import PipelineError
from workers.media.resample import Decoded, Packed, resample

try:  # HEIC/HEIF input
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover
    pillow_heif = None

METHODS = ("cover", "scale", "resize", "contain")
ORIENTATION_TAG = 0x0112
# EXIF orientation -> Pillow transpose that makes the photo upright (= ImageOps.exif_transpose).
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
             6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
SWAPS_AXES = {5, 6, 7, 8}
# JPEG DCT scaling (Image.draft) by 1/n, allowed while the decoded crop keeps >= DRAFT_GAP[n]
# pixels per output pixel, so the final LANCZOS pass always reduces. libjpeg's 1/2 and 1/4 IDCTs
# keep each block's 4x4 / 2x2 lowest frequencies (a low-pass), 1/8 keeps only the block average
# (aliases), hence its 2x margin: without it, 1/8 visibly softens and aliases foliage. Against a
# full decode each stays below what the thumbnail's JPEG encode moves (bench/thumbnails.py).
DRAFT_GAP = {2: 1.0, 4: 1.0, 8: 2.0}
WHITE = (255, 255, 255)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


class ImageError(PipelineError, ValueError):
    """A photo that cannot be turned into thumbnails (corrupt, empty, too large...)."""


# --- geometry (pure) ------------------------------------------------------------------------------

def php_round(x: float) -> int:
    """PHP round(): half away from zero, after PHP's pre-rounding to 15 significant digits."""
    return int(Decimal(f"{x:.15g}").quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _prop_width(W: int, H: int, h: int | None) -> int:      # RectangleResizer::getProportionalWidth
    return W if h is None else max(1, php_round(h * (W / H)))


def _prop_height(W: int, H: int, w: int | None) -> int:     # RectangleResizer::getProportionalHeight
    return H if w is None else max(1, php_round(w / (W / H)))


def contain_size(W: int, H: int, w: int, h: int) -> tuple[int, int]:
    """Size of W x H scaled to fit inside w x h (RectangleResizer::contain; may enlarge)."""
    rw, rh = w, _prop_height(W, H, w)
    if not (rw <= w and rh <= h):
        rw, rh = _prop_width(W, H, h), h
    return rw, rh


def scale_size(W: int, H: int, w: int | None, h: int | None) -> tuple[int, int]:
    """RectangleResizer::scale: both given -> fits inside the box; one given -> other follows."""
    if w is not None and h is not None:
        return min(_prop_width(W, H, h), w), min(_prop_height(W, H, w), h)
    if w is not None:
        return w, _prop_height(W, H, w)
    if h is not None:
        return _prop_width(W, H, h), h
    return W, H


def center_offset(outer: tuple[int, int], inner: tuple[int, int]) -> tuple[int, int]:
    """Rectangle::alignPivotTo(center): offset of `inner` centred in `outer` (may be negative)."""
    return (php_round(outer[0] / 2) - php_round(inner[0] / 2),
            php_round(outer[1] / 2) - php_round(inner[1] / 2))


@dataclass(frozen=True)
class Plan:
    """What to do to a W x H (upright) source: take `crop` (x, y, w, h), scale it to `scaled`,
    place it at `offset` on a `canvas` (w, h) filled with white."""
    crop: tuple[int, int, int, int]
    scaled: tuple[int, int]
    canvas: tuple[int, int]
    offset: tuple[int, int] = (0, 0)


def plan(method: str, W: int, H: int, w: int | None, h: int | None) -> Plan:
    full = (0, 0, W, H)
    if method == "resize":                      # each axis independently, no aspect ratio
        size = (w or W, h or H)
        return Plan(full, size, size)
    if method == "scale":
        size = scale_size(W, H, w, h)
        return Plan(full, size, size)
    if w is None or h is None:
        raise ValueError(f"{method} needs both width and height")
    if method == "cover":                       # largest w:h rectangle inside, centred, -> w x h
        cw, ch = contain_size(w, h, W, H)
        x, y = center_offset((W, H), (cw, ch))
        return Plan((x, y, cw, ch), (w, h), (w, h))
    if method == "contain":                     # fit inside, centred on a white w x h canvas
        size = contain_size(W, H, w, h)
        return Plan(full, size, (w, h), center_offset((w, h), size))
    raise ValueError(f"unsupported method {method!r}")


def draft_request(p: Plan, stored: tuple[int, int]) -> tuple[int, int] | None:
    """The size to pass to Image.draft (stored orientation) for the strongest DCT reduction 1/n
    allowed by DRAFT_GAP, or None for a full decode. The factor is a ratio, so the orientation
    does not matter."""
    f = max(p.scaled[0] / p.crop[2], p.scaled[1] / p.crop[3])    # output px per source px
    W, H = stored
    for n in (8, 4, 2):
        if n * f * DRAFT_GAP[n] > 1:
            continue                            # the decoded crop (>= 1/n of it) would be too small
        # Pillow picks the largest n with n <= min(W // w, H // h): ask for floor(size/n).
        req = (W // n, H // n)
        if min(req) >= 1 and (n == 8 or min(W // req[0], H // req[1]) < 2 * n):
            return req
    return None


# --- decoding ---------------------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


@dataclass
class Source:
    image: Image.Image          # opened, not yet decoded
    width: int                  # upright (after orientation) size: what Intervention sees
    height: int
    orientation: int            # transpose still to apply (1 = none)
    icc: bytes | None
    exif: Image.Exif | None


def open_source(path: Path, max_pixels: int) -> Source:
    """Read the header; refuse missing, empty, unreadable and over-budget files."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"file not found: {path}") from None
    except NotADirectoryError:
        raise ImageError(f"file not found: {path}") from None
    if not path.is_file():
        raise ImageError(f"not a regular file: {path}")
    if size == 0:
        raise ImageError(f"empty file: {path}")
    try:
        with warnings.catch_warnings():
            # Our own budget (max_pixels) decides; Pillow's global limit only warns below 2x.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {_one_line(exc)}") from exc
    except Exception as exc:
        raise ImageError(f"not a readable image: {_one_line(exc)}") from exc
    try:
        return _inspect(im, max_pixels)
    except BaseException:
        im.close()
        raise


def _inspect(im: Image.Image, max_pixels: int) -> Source:
    W, H = im.size
    if W <= 0 or H <= 0:
        raise ImageError("image has no pixels")
    if W * H > max_pixels:
        raise ImageError(f"image too large: {W}x{H} pixels exceeds the budget of {max_pixels}")
    try:
        exif = im.getexif()
        orientation = int(exif.get(ORIENTATION_TAG, 1) or 1)
    except Exception:
        exif, orientation = None, 1
    if im.format in ("HEIF", "AVIF") or orientation not in TRANSPOSE:
        orientation = 1         # libheif applied irot/imir already: never rotate twice
    if orientation in SWAPS_AXES:
        W, H = H, W
    return Source(im, W, H, orientation, im.info.get("icc_profile") or None, exif)


def decode(src: Source, draft: tuple[int, int] | None) -> Decoded:
    """Decode the first frame (DCT-scaled to >= `draft` for JPEG), still in the stored
    orientation (render() transposes the small result), in a mode Pillow resamples well
    (RGB, RGBA, L, LA or CMYK)."""
    im = src.image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if im.format == "JPEG":
                if draft:
                    im.draft(im.mode, draft)        # sets im.size to the DCT-scaled size
                packed = _decode_packed(im)
                if packed is not None:
                    return packed
            im.seek(0)
            im.load()
        return _resampleable(im)
    except MemoryError as exc:
        raise ImageError("image too large to decode") from exc
    except Exception as exc:
        raise ImageError(f"cannot decode image: {_one_line(exc)}") from exc


JPEG_COLORSPACES = {"RGB": "RGB", "L": "GRAY"}


def _decode_packed(im: Image.Image) -> Packed | None:
    """A JPEG (opened, maybe drafted) decoded by simplejpeg at Pillow's DCT scale, or None when
    Pillow should decode it: CMYK, or anything simplejpeg refuses (strict: a truncated or
    corrupt file too), so bad files fail exactly as before."""
    colorspace = JPEG_COLORSPACES.get(im.mode)
    if colorspace is None or getattr(im, "fp", None) is None:     # no file: loaded already
        return None
    try:
        im.fp.seek(0)
        pixels = simplejpeg.decode_jpeg(im.fp.read(), colorspace=colorspace, strict=True,
                                        min_width=im.width, min_height=im.height)
    except (ValueError, OSError):
        return None
    if pixels.shape[:2] != (im.height, im.width):     # another scale than Pillow's draft
        return None
    return Packed(pixels, im.mode)


def stored_box(box: tuple[float, float, float, float], upright: tuple[int, int], orientation: int
               ) -> tuple[float, float, float, float]:
    """A box in upright coordinates -> the same pixels in the stored (un-transposed) image, so we
    can resample first and rotate the small result instead of the whole photo."""
    x0, y0, x1, y1 = box
    w, h = upright
    return {1: (x0, y0, x1, y1),
            2: (w - x1, y0, w - x0, y1),                # mirrored
            3: (w - x1, h - y1, w - x0, h - y0),        # rotated 180
            4: (x0, h - y1, x1, h - y0),                # flipped
            5: (y0, x0, y1, x1),                        # transposed
            6: (y0, w - x1, y1, w - x0),                # stored rotated 90 CCW
            7: (h - y1, w - x1, h - y0, w - x0),        # transversed
            8: (h - y1, x0, h - y0, x1)}[orientation]   # stored rotated 90 CW


def _resampleable(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return im
    if mode in ("P", "PA"):
        return im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    if mode.startswith("I"):        # 16/32-bit greyscale: keep the top 8 bits
        return im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode in ("1", "F"):
        return im.convert("L")
    return im.convert("RGBA" if "A" in mode or "a" in mode else "RGB")


# --- rendering and encoding ---------------------------------------------------------------------

def render(src: Source, decoded: Decoded, p: Plan) -> Image.Image:
    """Apply a plan to a decoded (possibly DCT-reduced, stored-orientation) image -> upright
    RGB or RGBA in sRGB."""
    x, y, cw, ch = p.crop
    box = stored_box((x, y, x + cw, y + ch), (src.width, src.height), src.orientation)
    swap = src.orientation in SWAPS_AXES
    # DCT scaling by 1/n yields ceil(size/n) pixels, pixel i covering source [i*n, (i+1)*n):
    # map by the exact 1/n, not by the rounded-up size ratio (that drifts by up to a pixel).
    stored_w = src.height if swap else src.width
    f = 1 / round(stored_w / decoded.width) if decoded.width != stored_w else 1
    box = (box[0] * f, box[1] * f, box[2] * f, box[3] * f)
    size = p.scaled[::-1] if swap else p.scaled
    out = resample(decoded, size, box)
    if src.orientation != 1:
        out = out.transpose(TRANSPOSE[src.orientation])
    out = to_srgb(out, src.icc)
    if p.canvas != p.scaled:
        canvas = Image.new(out.mode, p.canvas, WHITE + (255,) * (out.mode == "RGBA"))
        canvas.paste(out, p.offset)
        out = canvas
    return out


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    try:
        return "srgb" in ImageCms.getProfileDescription(profile).lower()
    except ImageCms.PyCMSError:
        return False


@functools.lru_cache(maxsize=32)
def _srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The embedded profile -> sRGB transform for `mode` images, None if it is sRGB already.
    Cached: a library holds a handful of distinct profiles (a camera's, Display P3...), and
    building one costs real time, per size, every photo."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    if _is_srgb(profile):
        return None
    return ImageCms.buildTransform(profile, SRGB, mode, "RGBA" if mode == "RGBA" else "RGB")


def to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert through the embedded ICC profile to sRGB; RGB/RGBA out. A broken profile is
    ignored (the pixels are taken as sRGB) rather than failing the photo."""
    if im.mode == "LA":
        im = im.convert("RGBA")
    if icc:
        try:
            transform = _srgb_transform(icc, im.mode)
            if transform is not None:
                return ImageCms.applyTransform(im, transform)
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass
    return im if im.mode in ("RGB", "RGBA") else im.convert("RGB")


def flatten(im: Image.Image) -> Image.Image:
    """Alpha onto white (Intervention's blendingColor), for JPEG."""
    if im.mode != "RGBA":
        return im.convert("RGB") if im.mode != "RGB" else im
    bg = Image.new("RGB", im.size, WHITE)
    bg.paste(im, mask=im.getchannel("A"))
    return bg


def encode(im: Image.Image, fmt: str, quality: int, exif: Image.Exif | None = None) -> bytes:
    """JPEG (baseline, alpha flattened) or WebP (alpha kept; quality 100 = lossless, as IIv3).
    EXIF only when given, with Orientation reset to 1 so viewers do not rotate again."""
    opts: dict = {"quality": quality}
    if exif is not None and len(exif):
        exif[ORIENTATION_TAG] = 1
        blob = exif.tobytes()
        if len(blob) < 65000:                   # must fit one APP1 segment
            opts["exif"] = blob
    buf = io.BytesIO()
    if fmt == "jpeg":
        flatten(im).save(buf, "JPEG", **opts)
    elif fmt == "webp":
        im.save(buf, "WEBP", lossless=quality >= 100, **opts)
    else:
        raise ValueError(f"unsupported thumbnail format {fmt!r}")
    return buf.getvalue()
