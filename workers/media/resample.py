"""The thumbnail resample: Lanczos-3 over a source box, by libvips where it can, else Pillow.

Both libraries use the same windowed-sinc kernel widened by the reduction factor, so their outputs
differ by rounding only, well below what the thumbnail's own JPEG encode moves (bench/thumbnails.py
measures both). libvips' reduce is vectorised and cheaper than Pillow's, which makes the large
sizes (scale 1600x1600) affordable.

The geometry must match Pillow's to a small fraction of a pixel: a fifth of a pixel's shift of a
sharp photo already moves its pixels visibly. Pillow maps output pixel i to source
x0 + (i + 0.5) * shrink for any fractional box, and its kernel reads the real pixels around the
box. libvips' reduce has no box: it centres its output grid on the whole input, n =
round(length / shrink) pixels from (length - n * shrink) / 2 on. So libvips gets an area around
the box (real pixels, edge copies beyond the photo) whose start and length put that grid on
Pillow's to within MAX_GRID_OFFSET, and the extra output pixels are cropped off (see _span).
Everything else goes to Pillow:
  - enlargements, and reductions of >= 2 * GAP, where Pillow first box-reduces (cheap anyway),
  - the rare box no area within the search limits lines up with,
  - modes other than L, RGB and CMYK (Pillow premultiplies alpha; libvips' reduce would not).
When the box is the whole image, libvips' grid is Pillow's as it stands: no area is needed (its
own edge copies are the ones the area would add), which saves a copy of the photo.

The source is a Pillow image or `Packed` pixels (a JPEG decoded by workers/media/imaging.py straight
into the tight layout libvips reads, so neither Pillow's 4-bytes-per-pixel unpacking nor the copy
out of it is paid); Pillow gets a Pillow image made from them on first use.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import pyvips
from PIL import Image

KERNEL = "lanczos3"
SUPPORT = 3                 # Lanczos-3 reads 3 output pixels' worth of source on either side
PILLOW_FILTER = Image.Resampling.LANCZOS
# Pillow's reducing_gap: box-reduce by an integer factor first while >= GAP source pixels per
# output pixel remain (below 2 * GAP it does nothing, which is where libvips takes over).
GAP = 2.0
VIPS_MODES = {"L": 1, "RGB": 3, "CMYK": 4}
# Largest allowed distance between libvips' grid and Pillow's, in source pixels, and how far the
# search for an area that achieves it goes (extra output pixels before the box; area lengths).
MAX_GRID_OFFSET = 0.01
MAX_SKIP = 16
MAX_WIDENING = 128

# A worker process resizes one photo at a time and the pool already runs one process per core:
# libvips' own thread pool would only oversubscribe the CPUs. Its operation cache would pin
# decoded photos in memory for reuse that never comes.
pyvips.concurrency_set(1)
pyvips.cache_set_max(0)

Box = tuple[float, float, float, float]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Span:
    """One axis of the area libvips reduces: source pixels start..start+length (beyond the
    photo: edge copies), of whose output the first `skip` pixels are dropped."""
    start: int
    length: int
    skip: int


class Packed:
    """Decoded 8-bit pixels, (height, width, bands) packed tightly, in mode L or RGB."""

    def __init__(self, pixels: np.ndarray, mode: str):
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != VIPS_MODES[mode]:
            raise ValueError(f"not packed {mode} pixels: {pixels.dtype} {pixels.shape}")
        self.pixels = np.ascontiguousarray(pixels)
        self.mode = mode
        self.height, self.width = pixels.shape[:2]
        self._image: Image.Image | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def image(self) -> Image.Image:
        """The same pixels as a Pillow image (made once: the sizes Pillow resamples share it)."""
        if self._image is None:
            self._image = Image.fromarray(self.pixels[:, :, 0] if self.mode == "L" else self.pixels, self.mode)
        return self._image


Decoded = Image.Image | Packed


def pillow(im: Decoded) -> Image.Image:
    """`im` as the Pillow image the Pillow resample (and anything else Pillow does) needs."""
    return im.image() if isinstance(im, Packed) else im


def resample(im: Decoded, size: tuple[int, int], box: Box) -> Image.Image:
    """`box` (x0, y0, x1, y1, fractional allowed) of `im` resampled to `size` with Lanczos-3."""
    spans = vips_spans(im, size, box)
    if spans is not None:
        try:
            return _vips_reduce(im, size, box, *spans)
        except pyvips.Error as exc:     # out of memory or the like: still make the thumbnail
            log.warning("libvips reduce failed, Pillow resamples instead: %s", " ".join(str(exc).split()))
    return pillow(im).resize(size, PILLOW_FILTER, box=box, reducing_gap=GAP)


def vips_spans(im: Decoded, size: tuple[int, int], box: Box) -> tuple[Span, Span] | None:
    """The area libvips should reduce, or None where Pillow must do it."""
    if im.mode not in VIPS_MODES:
        return None
    x0, y0, x1, y1 = box
    if box == (0, 0, im.width, im.height):
        across, down = _whole(im.width, size[0]), _whole(im.height, size[1])
    else:
        across, down = _span(x0, x1, size[0]), _span(y0, y1, size[1])
    return None if across is None or down is None else (across, down)


def _whole(length: int, out: int) -> Span | None:
    """The whole side: libvips centres round(length / shrink) = out pixels on it, which is
    Pillow's grid exactly (both start at (i + 0.5) * shrink)."""
    return Span(0, length, 0) if 1 <= length / out < 2 * GAP else None


@functools.lru_cache(maxsize=4096)     # ~1 ms of search; a library repeats its few geometries
def _span(lo: float, hi: float, out: int) -> Span | None:
    """An area around lo..hi whose centred libvips grid lands on lo + (i + 0.5) * shrink."""
    shrink = (hi - lo) / out
    if not 1 <= shrink < 2 * GAP:
        return None
    margin = SUPPORT * shrink                   # the real pixels Pillow's kernel reads outside
    first_skip = math.ceil(SUPPORT)
    for skip in range(first_skip, first_skip + MAX_SKIP):
        grid = lo - skip * shrink                # where libvips' grid must start
        for start in (math.floor(grid), math.ceil(grid)):
            # The grid starts (length - n * shrink) / 2 after `start`, with n = round(length /
            # shrink): within a quarter pixel of it, on either side.
            shortest = math.ceil(hi + margin - start)
            for length in range(shortest, shortest + MAX_WIDENING):
                n = math.floor(length / shrink + 0.5)          # libvips' VIPS_ROUND_UINT
                if abs(start + (length - n * shrink) / 2 - grid) <= MAX_GRID_OFFSET:
                    return Span(start, length, skip)
    return None


def _vips_reduce(im: Decoded, size: tuple[int, int], box: Box, across: Span, down: Span
                 ) -> Image.Image:
    x0, y0, x1, y1 = box
    pixels = im.pixels.data if isinstance(im, Packed) else _pixels(im)
    v = pyvips.Image.new_from_memory(pixels, im.width, im.height, VIPS_MODES[im.mode], "uchar")
    # The part of the area inside the photo, then edge copies around it up to the whole area.
    left, top = max(0, across.start), max(0, down.start)
    right = min(im.width, across.start + across.length)
    bottom = min(im.height, down.start + down.length)
    if (left, top, right, bottom) != (0, 0, im.width, im.height):
        v = v.extract_area(left, top, right - left, bottom - top)
    if (right - left, bottom - top) != (across.length, down.length):
        v = v.embed(left - across.start, top - down.start, across.length, down.length,
                    extend="copy")
    v = v.reduce((x1 - x0) / size[0], (y1 - y0) / size[1], kernel=KERNEL)
    if (v.width, v.height) != size:
        v = v.crop(across.skip, down.skip, *size)
    out = Image.new(im.mode, size, None)    # uninitialised: Image.frombytes would zero it first
    out.frombytes(v.write_to_memory())
    return out


def _pixels(im: Image.Image) -> bytes:
    """im.tobytes() in one encoder call. Pillow's own loop takes 64 KB at a time and joins the
    pieces, several times slower for a decoded photo."""
    size = im.width * im.height * VIPS_MODES[im.mode]
    encoder = Image._getencoder(im.mode, "raw", im.mode)
    try:
        encoder.setimage(im.im, (0, 0, *im.size))
        _, status, data = encoder.encode(size + 1)
    finally:
        encoder.cleanup()
    return data if status == 1 and len(data) == size else im.tobytes()     # 1: all encoded
