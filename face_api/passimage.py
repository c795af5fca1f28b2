"""The image a YuNet pass runs on: the photo decoded by libjpeg-turbo at a DCT scale, then one
resize by libvips.

A JPEG is decoded scaled by the DCT to the smallest size still at least the pass's (EIGHTHS: any
M/8, else only 1/2, 1/4, 1/8 as Pillow's draft()), straight into packed RGB by simplejpeg, then
resized the rest of the way in the stored orientation (KERNEL); EXIF orientation is applied to the
small result. The large-face pass's smaller image is resized the same way (resize()).
Pillow's BICUBIC resize with reducing_gap, which the HOG passes keep, costs about as
much as the decode; libvips' vectorised reduce a fraction of it.

What is not an RGB or greyscale JPEG (PNG, HEIC, CMYK), whatever simplejpeg refuses (it is
strict: a truncated or corrupt file too), and photos opened without draft decoding go through
Photo.scaled(), so bad files fail exactly as before. HOG's passes never come here: they keep the
original's decode.
"""
from __future__ import annotations

import numpy as np
import pyvips
import simplejpeg
from PIL import Image

from .imaging import Photo

# Picked by bench/face_quality.py --sections resample: the cheapest way that finds the same
# faces on the truth photos, with encodings as close to Pillow's BICUBIC decode's as half a HOG
# cell moves HOG's own. M/8 scales cost the same to decode as 1/2^k and leave less to resize, but
# moved a face at the score threshold and encodings more; libvips' linear reduce on a whole image
# samples on Pillow's grid, its kernel widened by the reduction.
KERNEL = "linear"
EIGHTHS = False
KERNELS = {  # name: libvips kernel, or a Pillow filter
    "linear": "linear", "cubic": "cubic", "lanczos3": "lanczos3",
    "pillow-bilinear": Image.BILINEAR, "pillow-bicubic": Image.BICUBIC,
    "pillow-box": Image.BOX, "nearest": Image.NEAREST,
}
JPEG_COLORSPACES = ("YCbCr", "Gray", "RGB")  # what libjpeg-turbo turns into RGB as Pillow does

# One photo per engine thread, and gunicorn's workers x threads is the core budget: libvips' own
# thread pool would only oversubscribe the cores; its cache would keep pixels nobody reuses.
pyvips.concurrency_set(1)
pyvips.cache_set_max(0)

_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def pass_image(source, max_side: int, kernel: str | None = None, eighths: bool | None = None
               ) -> np.ndarray:
    """RGB uint8 C-contiguous array whose longer side (upright) is min(max_side, the photo's);
    `source` is a Photo or anything with `scaled(max_side)`. `eighths` False limits the DCT
    scaling to Pillow's 1/2, 1/4, 1/8."""
    if isinstance(source, Photo):
        pixels = _jpeg_pass(source, max_side, kernel or KERNEL, EIGHTHS if eighths is None else eighths)
        if pixels is not None:
            return pixels
    return source.scaled(max_side)


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is min(max_side, longer side), as Photo.scaled."""
    long_side = max(width, height)
    if long_side <= max_side:
        return width, height
    f = max_side / long_side
    return max(1, round(width * f)), max(1, round(height * f))


def _jpeg_pass(photo: Photo, max_side: int, kernel: str, eighths: bool) -> np.ndarray | None:
    decoded = decode_scaled(photo, max_side, eighths)
    if decoded is None:
        return None
    return fitted(*decoded, photo.orientation, kernel)


def fitted(pixels: np.ndarray, stored_target: tuple[int, int], orientation: int,
           kernel: str | None = None) -> np.ndarray:
    """Decoded pixels (stored orientation) resized to `stored_target`, then turned upright."""
    if (pixels.shape[1], pixels.shape[0]) != stored_target:
        pixels = resize(pixels, stored_target, kernel)
    transpose = _TRANSPOSE.get(orientation)
    if transpose is not None:
        pixels = np.asarray(Image.fromarray(pixels).transpose(transpose))
    return np.ascontiguousarray(pixels)


def decode_scaled(photo: Photo, max_side: int, eighths: bool
                  ) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(RGB pixels in the stored orientation at the DCT scale, the (width, height) they are to be
    resized to), or None when simplejpeg should not or cannot decode the photo."""
    if photo.format != "JPEG" or not photo.draft:
        return None
    data = photo.data
    try:
        stored_h, stored_w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in JPEG_COLORSPACES:
            return None
        w, h = target_size(photo.width, photo.height, max_side)
        swapped = (stored_w, stored_h) != (photo.width, photo.height)
        stored_target = (h, w) if swapped else (w, h)
        at_least = stored_target if eighths else _halved(stored_w, stored_h, stored_target)
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True,
                                        min_width=at_least[0], min_height=at_least[1])
    except (ValueError, OSError):
        return None
    return pixels, stored_target


def _halved(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """The smallest of (width, height) / 2**k, k <= 3, still at least `target`."""
    k = 0
    while k < 3 and -(-width // 2 ** (k + 1)) >= target[0] and -(-height // 2 ** (k + 1)) >= target[1]:
        k += 1
    return -(-width // 2 ** k), -(-height // 2 ** k)


def resize(pixels: np.ndarray, size: tuple[int, int], kernel: str | None = None) -> np.ndarray:
    """RGB uint8 (height, width, 3) resized to `size` (width, height) with KERNELS[kernel]
    (default KERNEL)."""
    how = KERNELS[kernel or KERNEL]
    if not isinstance(how, str):
        return np.asarray(Image.fromarray(pixels).resize(size, how))
    height, width = pixels.shape[:2]
    pixels = np.ascontiguousarray(pixels)
    image = pyvips.Image.new_from_memory(pixels.data, width, height, 3, "uchar")
    out = image.resize(size[0] / width, vscale=size[1] / height, kernel=how)
    if (out.width, out.height) != size:  # libvips rounds its output size: crop or pad by one
        out = out.embed(0, 0, size[0], size[1], extend="copy")
    return np.ndarray(buffer=out.write_to_memory(), dtype=np.uint8, shape=(size[1], size[0], 3))
