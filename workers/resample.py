"""The thumbnail resample: Lanczos-3 over a source box, by libvips where it can, else Pillow.

Both libraries use the same windowed-sinc kernel widened by the reduction factor, so their outputs
differ by rounding only (bench/thumbnails.py measures it: ~0.2 grey levels mean, SSIM 0.999,
against ~2.5 levels for the JPEG q75 encode itself). libvips' reduce is vectorised and ~2.5x
cheaper than Pillow's, which makes the large sizes (scale 1600x1600) affordable.

The geometry must match Pillow's to a small fraction of a pixel: a 0.2 px shift of a sharp photo
moves pixels by ~1.5 grey levels on average. Pillow maps output pixel i to source
x0 + (i + 0.5) * shrink, for any fractional box. libvips' reduce has no box: it centres its output
grid on the whole input, n = round(width / shrink) pixels starting at (width - n * shrink) / 2.
So the area handed to libvips starts at the box's (whole-pixel) left edge and is widened on the
right, by real pixels or edge copies, until that start is ~0 (see _area_width); the extra output
pixels are cropped off. Everything else goes to Pillow:
  - a left or top box edge that is not a whole pixel (a DCT-scaled cover crop at an odd offset),
  - enlargements, and reductions of >= 2 * GAP, where Pillow first box-reduces (cheap anyway),
  - modes other than L, RGB and CMYK (Pillow premultiplies alpha; libvips' reduce would not).
"""
from __future__ import annotations

import math

import pyvips
from PIL import Image

KERNEL = "lanczos3"
PILLOW_FILTER = Image.Resampling.LANCZOS
# Pillow's reducing_gap: box-reduce by an integer factor first while >= GAP source pixels per
# output pixel remain (below 2 * GAP it does nothing, which is where libvips takes over).
GAP = 2.0
VIPS_MODES = {"L": 1, "RGB": 3, "CMYK": 4}
# Largest allowed start of libvips' grid, in source pixels, and how far to widen to reach it.
MAX_GRID_OFFSET = 0.01
MAX_WIDENING = 256

# A worker process resizes one photo at a time and the pool already runs one process per core:
# libvips' own thread pool would only oversubscribe the CPUs. Its operation cache would pin
# decoded photos in memory for reuse that never comes.
pyvips.concurrency_set(1)
pyvips.cache_set_max(0)

Box = tuple[float, float, float, float]


def resample(im: Image.Image, size: tuple[int, int], box: Box) -> Image.Image:
    """`box` (x0, y0, x1, y1, fractional allowed) of `im` resampled to `size` with Lanczos-3."""
    areas = vips_areas(im, size, box)
    if areas is None:
        return im.resize(size, PILLOW_FILTER, box=box, reducing_gap=GAP)
    return _vips_reduce(im, size, box, areas)


def vips_areas(im: Image.Image, size: tuple[int, int], box: Box) -> tuple[int, int] | None:
    """(width, height) of the area libvips should reduce, or None where Pillow must do it."""
    x0, y0, x1, y1 = box
    if im.mode not in VIPS_MODES or x0 != int(x0) or y0 != int(y0):
        return None
    width = _area_width(x1 - x0, size[0])
    height = _area_width(y1 - y0, size[1])
    return None if width is None or height is None else (width, height)


def _area_width(span: float, out: int) -> int | None:
    """The smallest whole width >= `span` whose centred libvips grid (round(width / shrink)
    pixels) starts within MAX_GRID_OFFSET of the area's left edge, as Pillow's does."""
    shrink = span / out
    if not 1 <= shrink < 2 * GAP:
        return None
    for width in range(math.ceil(span), math.ceil(span) + MAX_WIDENING):
        n = math.floor(width / shrink + 0.5)                # libvips' VIPS_ROUND_UINT
        if abs(width - n * shrink) / 2 <= MAX_GRID_OFFSET:
            return width
    return None


def _vips_reduce(im: Image.Image, size: tuple[int, int], box: Box,
                 areas: tuple[int, int]) -> Image.Image:
    x0, y0, x1, y1 = box
    left, top = int(x0), int(y0)
    width, height = areas
    v = pyvips.Image.new_from_memory(im.tobytes(), im.width, im.height, VIPS_MODES[im.mode], "uchar")
    # Real pixels as far as the image goes (Pillow's kernel reads them too), edge copies beyond.
    real_w, real_h = min(width, im.width - left), min(height, im.height - top)
    if (left, top, real_w, real_h) != (0, 0, im.width, im.height):
        v = v.extract_area(left, top, real_w, real_h)
    if (real_w, real_h) != (width, height):
        v = v.embed(0, 0, width, height, extend="copy")
    v = v.reduce((x1 - x0) / size[0], (y1 - y0) / size[1], kernel=KERNEL)
    if (v.width, v.height) != size:
        v = v.crop(0, 0, *size)
    return Image.frombytes(im.mode, size, v.write_to_memory())
