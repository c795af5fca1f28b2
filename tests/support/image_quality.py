"""How far apart two renders of the same picture are: grey-level differences and SSIM.

Used by the thumbnail tests and bench/thumbnails.py to hold a faster resample to today's output,
with the JPEG's own noise (a render against its encode-decode round trip) as the yardstick.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

LUMA = np.array([0.299, 0.587, 0.114])      # ITU-R BT.601, as JPEG's own Y


@dataclass(frozen=True)
class Difference:
    mean: float         # mean |a - b| over pixels and RGB channels, in grey levels
    max: int            # largest |a - b| of any channel of any pixel
    ssim: float         # structural similarity of the luma, 1.0 = identical

    def __str__(self) -> str:
        return f"mean {self.mean:.2f} max {self.max} SSIM {self.ssim:.4f}"


def _rgb(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float64)


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Mean SSIM of the luma (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03,
    L 255), the reference's constants."""
    x, y = _rgb(a) @ LUMA, _rgb(b) @ LUMA
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(v):
        return gaussian_filter(v, 1.5, truncate=3.5)     # the 11x11 window of the paper
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def difference(a: Image.Image, b: Image.Image) -> Difference:
    if a.size != b.size:
        raise ValueError(f"sizes differ: {a.size} vs {b.size}")
    d = np.abs(_rgb(a) - _rgb(b))
    return Difference(float(d.mean()), int(d.max()), ssim(a, b))


def jpeg_round_trip(im: Image.Image, quality: int = 75) -> Image.Image:
    """`im` encoded as the thumbnails are (JPEG, 4:2:0) and decoded again."""
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def jpeg_noise(im: Image.Image, quality: int = 75) -> Difference:
    """The yardstick: what encoding `im` as a thumbnail does to it anyway."""
    return difference(im, jpeg_round_trip(im, quality))
