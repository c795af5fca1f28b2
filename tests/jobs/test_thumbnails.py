"""ThumbnailProcessJob: Intervention v3 sizes/crops/padding, orientation, colour, bad input, DB row."""
from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image, ImageCms

from tests.support import image_quality
from workers import db
from workers.media import imaging, resample
from workers.jobs import Context, JobFailed
from workers.jobs import thumbnails
from workers.schema import images
from workers.settings import Settings

# --- Intervention v3 geometry, worked out by hand from Intervention v3's formulas ------------
# (input W, H, method, w, h) -> (crop x, y, w, h), scaled content size, canvas size, paste offset
T = None
GEOMETRY = [
    # the reference's worked examples
    (4000, 3000, "scale", 300, 300, (0, 0, 4000, 3000), (300, 225), (300, 225), (0, 0)),
    (4000, 3000, "scale", T, 300, (0, 0, 4000, 3000), (400, 300), (400, 300), (0, 0)),
    (4000, 3000, "cover", 300, 300, (500, 0, 3000, 3000), (300, 300), (300, 300), (0, 0)),
    (4000, 3000, "contain", 400, 300, (0, 0, 4000, 3000), (400, 300), (400, 300), (0, 0)),
    (3000, 4000, "scale", 300, 300, (0, 0, 3000, 4000), (225, 300), (225, 300), (0, 0)),
    (3000, 4000, "cover", 300, 300, (0, 500, 3000, 3000), (300, 300), (300, 300), (0, 0)),
    (3000, 4000, "contain", 400, 300, (0, 0, 3000, 4000), (225, 300), (400, 300), (87, 0)),
    (200, 100, "scale", 300, 300, (0, 0, 200, 100), (300, 150), (300, 150), (0, 0)),
    (200, 100, "scale", T, 300, (0, 0, 200, 100), (600, 300), (600, 300), (0, 0)),
    (200, 100, "cover", 300, 300, (50, 0, 100, 100), (300, 300), (300, 300), (0, 0)),
    (200, 100, "contain", 400, 300, (0, 0, 200, 100), (400, 200), (400, 300), (0, 50)),
    # landscape 600x450 (the orientation fixtures, upright)
    (600, 450, "cover", 300, 300, (75, 0, 450, 450), (300, 300), (300, 300), (0, 0)),
    (600, 450, "cover", 300, 200, (0, 25, 600, 400), (300, 200), (300, 200), (0, 0)),
    (600, 450, "scale", 1600, 1600, (0, 0, 600, 450), (1600, 1200), (1600, 1200), (0, 0)),
    (600, 450, "contain", 800, 600, (0, 0, 600, 450), (800, 600), (800, 600), (0, 0)),
    (600, 450, "contain", 400, 400, (0, 0, 600, 450), (400, 300), (400, 400), (0, 50)),
    (600, 450, "resize", 400, 400, (0, 0, 600, 450), (400, 400), (400, 400), (0, 0)),
    (600, 450, "resize", 300, T, (0, 0, 600, 450), (300, 450), (300, 450), (0, 0)),
    (600, 450, "scale", 300, T, (0, 0, 600, 450), (300, 225), (300, 225), (0, 0)),
    # portrait 450x600
    (450, 600, "cover", 300, 300, (0, 75, 450, 450), (300, 300), (300, 300), (0, 0)),
    (450, 600, "cover", 300, 200, (0, 150, 450, 300), (300, 200), (300, 200), (0, 0)),
    (450, 600, "scale", 1600, 1600, (0, 0, 450, 600), (1200, 1600), (1200, 1600), (0, 0)),
    (450, 600, "contain", 800, 600, (0, 0, 450, 600), (450, 600), (800, 600), (175, 0)),
    (450, 600, "contain", 400, 400, (0, 0, 450, 600), (300, 400), (400, 400), (50, 0)),
    (450, 600, "resize", 400, 400, (0, 0, 450, 600), (400, 400), (400, 400), (0, 0)),
    # small (Canon_40D.jpg is 100x68): everything is enlarged, odd halves round away from zero
    (100, 68, "cover", 300, 300, (16, 0, 68, 68), (300, 300), (300, 300), (0, 0)),
    (100, 68, "scale", 1600, 1600, (0, 0, 100, 68), (1600, 1088), (1600, 1088), (0, 0)),
    (100, 68, "contain", 800, 600, (0, 0, 100, 68), (800, 544), (800, 600), (0, 28)),
    (100, 68, "contain", 801, 600, (0, 0, 100, 68), (801, 545), (801, 600), (0, 27)),
    # square
    (1000, 1000, "cover", 300, 200, (0, 166, 1000, 667), (300, 200), (300, 200), (0, 0)),
    (1000, 1000, "scale", 1600, 1200, (0, 0, 1000, 1000), (1200, 1200), (1200, 1200), (0, 0)),
    (1000, 1000, "contain", 800, 600, (0, 0, 1000, 1000), (600, 600), (800, 600), (100, 0)),
    # the HEIC fixture (2566x3313): odd sizes
    (2566, 3313, "cover", 300, 300, (0, 374, 2566, 2566), (300, 300), (300, 300), (0, 0)),
    (2566, 3313, "scale", 1600, 1600, (0, 0, 2566, 3313), (1239, 1600), (1239, 1600), (0, 0)),
    # extreme aspect: proportional sides never drop below 1
    (1, 1000, "scale", 300, 300, (0, 0, 1, 1000), (1, 300), (1, 300), (0, 0)),
    (1, 1000, "cover", 300, 300, (0, 499, 1, 1), (300, 300), (300, 300), (0, 0)),
    (1, 1000, "contain", 800, 600, (0, 0, 1, 1000), (1, 600), (800, 600), (399, 0)),
]


@pytest.mark.parametrize("W,H,method,w,h,crop,scaled,canvas,offset", GEOMETRY)
def test_geometry_matches_intervention(W, H, method, w, h, crop, scaled, canvas, offset):
    p = imaging.plan(method, W, H, w, h)
    assert (p.crop, p.scaled, p.canvas, p.offset) == (crop, scaled, canvas, offset)


def test_php_round_is_half_away_from_zero():
    assert [imaging.php_round(x) for x in (0.5, 1.5, 2.5, -0.5, -2.5, 112.5, 2.4999)] == \
        [1, 2, 3, -1, -3, 113, 2]


# --- helpers --------------------------------------------------------------------------------------

METHOD_SIZES = [("cover", 300, 300), ("scale", 1600, 1600), ("contain", 800, 600), ("resize", 400, 400)]


def make_settings(root: Path, **kw) -> Settings:
    return Settings(storage_root=root, database_url="sqlite://", **kw)


def render(tmp_path: Path, photo: Path, sizes, **kw) -> dict[str, Image.Image]:
    """render_files straight (no DB): key -> decoded thumbnail."""
    settings = make_settings(tmp_path, **kw)
    specs = [thumbnails.Size(m, w, h) for m, w, h in sizes]
    out = thumbnails.render_files(photo, specs, settings, tmp_path / "out")
    result = {}
    for key, path in out.items():
        with Image.open(path) as im:
            im.load()
            result[key] = im
    return result


def arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float64)


# --- sizes and orientation on the real fixtures -----------------------------------------------------

@pytest.mark.parametrize("kind,upright", [("landscape", (600, 450)), ("portrait", (450, 600))])
@pytest.mark.parametrize("n", range(1, 9))
def test_orientations_come_out_upright_and_same_size(tmp_path, shared_testdata, kind, upright, n):
    folder = shared_testdata / "exif/jpg/orientation"
    got = render(tmp_path / "n", folder / f"{kind}_{n}.jpg", METHOD_SIZES)
    ref = render(tmp_path / "1", folder / f"{kind}_1.jpg", METHOD_SIZES)
    for method, w, h in METHOD_SIZES:
        key = f"{method}-{w}x{h}"
        expected = imaging.plan(method, *upright, w, h).canvas
        assert got[key].size == ref[key].size == expected, key
        a, b = arr(got[key]), arr(ref[key])
        diff = np.abs(a - b).mean()
        # 2..8 carry a "Generic RGB" profile that 1 lacks, so tones differ a little; a wrong
        # rotation or flip differs far more than any of that.
        assert diff < 12, (key, diff)
        if a.shape[0] == a.shape[1]:
            wrong = [np.abs(np.rot90(a, k) - b).mean() for k in (1, 2, 3)] + \
                    [np.abs(a[:, ::-1] - b).mean(), np.abs(a[::-1] - b).mean()]
            assert diff < min(wrong) / 2, (key, diff, wrong)


@pytest.mark.parametrize("name,W,H", [("gps/DSCN0010.jpg", 640, 480),
                                      ("Canon_40D.jpg", 100, 68),
                                      ("invalid/image01713.jpg", 49, 500),
                                      ("mobile/jolla.jpg", 3264, 2448)])
def test_output_sizes_on_real_photos(tmp_path, shared_testdata, name, W, H):
    sizes = METHOD_SIZES + [("cover", 300, 200), ("scale", None, 300), ("resize", 300, None)]
    got = render(tmp_path, shared_testdata / "exif/jpg" / name, sizes)
    for method, w, h in sizes:
        key = f"{method}-{w or ''}x{h or ''}"
        assert got[key].size == imaging.plan(method, W, H, w, h).canvas, key
        assert got[key].format == "JPEG" and got[key].mode == "RGB"


def test_contain_pads_with_white(tmp_path, shared_testdata):
    out = render(tmp_path, shared_testdata / "exif/jpg/orientation/portrait_1.jpg",
                 [("contain", 800, 600)])["contain-800x600"]
    a = arr(out)
    # image 450x600 at x=175: bands 0..174 and 625..799 are white (JPEG noise aside)
    assert a[:, :160].min() >= 250 and a[:, 640:].min() >= 250   # MCUs clear of the edge
    assert a[:, 200:600].mean() < 230          # the photo itself is there
    exact = arr(render(tmp_path / "w", shared_testdata / "exif/jpg/orientation/portrait_1.jpg",
                       [("contain", 800, 600)], thumbnail_format="webp",
                       thumbnail_quality=100)["contain-800x600"])
    assert (exact[:, :175] == 255).all() and (exact[:, 625:] == 255).all()
    assert (exact[:, 175:178] < 255).any() and (exact[:, 622:625] < 255).any()


def test_cover_crops_the_centre(tmp_path):
    # 400x200: red | green (middle 200 columns) | blue -> cover 100x100 keeps only green
    im = Image.new("RGB", (400, 200), (255, 0, 0))
    im.paste((0, 255, 0), (100, 0, 300, 200))
    im.paste((0, 0, 255), (300, 0, 400, 200))
    src = tmp_path / "bands.png"
    im.save(src)
    a = arr(render(tmp_path, src, [("cover", 100, 100)])["cover-100x100"])
    inner = a[:, 3:-3]                        # LANCZOS may bleed a pixel or two at the crop edge
    assert inner[..., 1].min() > 235 and inner[..., 0].max() < 20 and inner[..., 2].max() < 20


def test_cover_small_photo_is_enlarged(tmp_path, shared_testdata):
    out = render(tmp_path, shared_testdata / "exif/jpg/Canon_40D.jpg", [("cover", 300, 300)])
    assert out["cover-300x300"].size == (300, 300)


def _generic_rgb(shared_testdata) -> bytes:
    with Image.open(shared_testdata / "exif/jpg/orientation/landscape_2.jpg") as im:
        return im.info["icc_profile"]


def test_icc_profile_converted_to_srgb(tmp_path, shared_testdata):
    icc = _generic_rgb(shared_testdata)       # Apple "Generic RGB" (gamma 1.8)
    src = tmp_path / "generic.png"
    Image.new("RGB", (64, 64), (128, 60, 200)).save(src, icc_profile=icc)
    expected = ImageCms.profileToProfile(Image.new("RGB", (1, 1), (128, 60, 200)),
                                         ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                         ImageCms.createProfile("sRGB")).getpixel((0, 0))
    assert expected != (128, 60, 200)
    out = render(tmp_path, src, [("resize", 32, 32)], thumbnail_format="webp", thumbnail_quality=100)
    im = out["resize-32x32"]
    assert im.getpixel((16, 16)) == expected
    assert "icc_profile" not in im.info or not im.info["icc_profile"]


def test_broken_icc_profile_is_ignored(tmp_path):
    src = tmp_path / "badicc.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(src, icc_profile=b"not a profile" * 10)
    out = render(tmp_path, src, [("scale", 32, 32)])
    assert out["scale-32x32"].size == (32, 32)


def test_alpha_flattened_on_white_for_jpeg(tmp_path):
    im = Image.new("RGBA", (100, 100), (0, 0, 0, 0))        # transparent black
    im.paste((255, 0, 0, 255), (0, 0, 50, 100))               # opaque red left half
    src = tmp_path / "alpha.png"
    im.save(src)
    a = arr(render(tmp_path, src, [("resize", 100, 100)])["resize-100x100"])
    assert a[:, 60:].min() >= 250                               # transparent -> white, not black
    assert a[:, :40, 0].min() > 230 and a[:, :40, 1].max() < 25


def test_alpha_kept_for_webp_and_contain_bands_opaque_white(tmp_path):
    src = tmp_path / "alpha.png"
    Image.new("RGBA", (100, 50), (0, 0, 0, 0)).save(src)
    im = render(tmp_path, src, [("contain", 100, 100)], thumbnail_format="webp",
                thumbnail_quality=100)["contain-100x100"]
    assert im.format == "WEBP" and im.mode == "RGBA"
    assert im.getpixel((50, 5)) == (255, 255, 255, 255)         # band
    assert im.getpixel((50, 50))[3] == 0                         # the transparent photo


def test_palette_transparency_flattened(tmp_path):
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 20, 40))
    src = tmp_path / "p.gif"
    im.save(src, transparency=0)
    a = arr(render(tmp_path, src, [("resize", 40, 40)])["resize-40x40"])
    assert a[:, 28:].min() >= 250 and a[:, :12, 0].min() > 230


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (60, 40), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100, loop=0)
    im = render(tmp_path, src, [("cover", 30, 30)])["cover-30x30"]
    r, g, b = arr(im).mean(axis=(0, 1))
    assert r > 240 and g < 15 and b < 15


def test_animated_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (60, 40), c) for c in ((0, 0, 255), (255, 0, 0))]
    src = tmp_path / "anim.webp"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    r, g, b = arr(render(tmp_path, src, [("scale", 30, 30)])["scale-30x30"]).mean(axis=(0, 1))
    assert b > 240 and r < 15


def test_sixteen_bit_greyscale_png(tmp_path):
    a = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    src = tmp_path / "g16.png"
    Image.fromarray(a).save(src)
    im = render(tmp_path, src, [("resize", 64, 64)])["resize-64x64"]
    got = arr(im)[..., 0]
    assert abs(got.mean() - (a / 256).mean()) < 3


def test_cmyk_jpeg(tmp_path):
    src = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (80, 60), (0, 255, 255, 0)).save(src)     # red in CMYK
    r, g, b = arr(render(tmp_path, src, [("scale", 40, 40)])["scale-40x40"]).mean(axis=(0, 1))
    assert r > 200 and g < 60 and b < 60


def test_gps_and_exif_not_copied_by_default(tmp_path, shared_testdata):
    src = shared_testdata / "exif/jpg/gps/DSCN0010.jpg"
    with Image.open(src) as im:
        assert im.getexif().get_ifd(0x8825)            # the fixture does have GPS
    im = render(tmp_path, src, [("cover", 300, 300)])["cover-300x300"]
    assert "exif" not in im.info and not im.getexif().get_ifd(0x8825) and len(im.getexif()) == 0


def test_keep_exif_keeps_gps_with_orientation_reset(tmp_path, shared_testdata):
    src = shared_testdata / "exif/jpg/orientation/landscape_6.jpg"
    im = render(tmp_path, src, [("scale", 300, 300)], thumbnail_keep_exif=True)["scale-300x300"]
    assert im.size == (300, 225) and im.getexif().get(0x0112) == 1
    gps = render(tmp_path / "g", shared_testdata / "exif/jpg/gps/DSCN0010.jpg",
                 [("scale", 300, 300)], thumbnail_keep_exif=True)["scale-300x300"]
    assert gps.getexif().get_ifd(0x8825)


def test_quality_setting_used(tmp_path, shared_testdata):
    src = shared_testdata / "exif/jpg/gps/DSCN0010.jpg"
    lo = render(tmp_path / "lo", src, [("scale", 600, 600)], thumbnail_quality=30)
    hi = render(tmp_path / "hi", src, [("scale", 600, 600)], thumbnail_quality=95)
    assert (tmp_path / "lo/out/scale-600x600.jpg").stat().st_size < \
        (tmp_path / "hi/out/scale-600x600.jpg").stat().st_size
    assert lo["scale-600x600"].size == hi["scale-600x600"].size == (600, 450)


# --- HEIC ----------------------------------------------------------------------------------------

def test_heic_rotated_by_irot_is_not_rotated_twice(tmp_path):
    # 64x32 landscape with a blue top-left corner, stored with EXIF Orientation 6: pillow-heif
    # writes an irot box (and keeps the EXIF tag). Upright it is 32x64 with blue top-right.
    im = Image.new("RGB", (64, 32), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "rot.heic"
    im.save(src, exif=exif.tobytes(), quality=95)
    out = render(tmp_path, src, [("scale", 32, 64), ("cover", 20, 40)])
    a = arr(out["scale-32x64"])
    assert out["scale-32x64"].size == (32, 64) and out["cover-20x40"].size == (20, 40)
    assert a[2:12, 20:30, 2].mean() > 200 and a[2:12, 20:30, 0].mean() < 60   # blue top-right
    assert a[2:12, 2:12, 0].mean() > 200                                         # red top-left


def test_real_heic(tmp_path, shared_testdata):
    out = render(tmp_path, shared_testdata / "exif/heic/IMG_5195.HEIC", METHOD_SIZES)
    assert {k: v.size for k, v in out.items()} == {
        "cover-300x300": (300, 300), "scale-1600x1600": (1239, 1600),
        "contain-800x600": (800, 600), "resize-400x400": (400, 400)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_box_maps_upright_crops_back(orientation):
    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    upright = stored.transpose(imaging.TRANSPOSE[orientation]) if orientation > 1 else stored
    box = (3, 5, 17, 26)
    sb = imaging.stored_box(box, upright.size, orientation)
    got = stored.crop(tuple(int(v) for v in sb))
    if orientation > 1:
        got = got.transpose(imaging.TRANSPOSE[orientation])
    assert np.array_equal(np.asarray(got), np.asarray(upright.crop(box)))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_resample_then_rotate_equals_rotate_then_resample(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    upright = Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8))
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = upright.transpose(inverse.get(orientation, imaging.TRANSPOSE[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    stored.save(a, exif=exif)
    upright.save(b)
    for method, w, h in [("cover", 50, 70), ("contain", 60, 60), ("scale", 120, 40)]:
        sa_, sb_ = imaging.open_source(a, 10**9), imaging.open_source(b, 10**9)
        p = imaging.plan(method, sb_.width, sb_.height, w, h)
        assert (sa_.width, sa_.height) == (sb_.width, sb_.height)
        ra = arr(imaging.render(sa_, imaging.decode(sa_, None), p))
        rb = arr(imaging.render(sb_, imaging.decode(sb_, None), p))
        # The resample rounds (and clips Lanczos overshoot) to 8 bits between its horizontal and
        # vertical passes, so swapping the axes moves a few pixels of pure noise by up to ~25
        # levels; a 1 px geometry slip moves ~80 on average, a 1/4 px slip ~20.
        d = np.abs(ra - rb)
        assert d.max() <= 32 and d.mean() < 1, (method, d.max(), d.mean())


# --- draft decoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("method,W,H,w,h,stored,decoded", [
    # cover 300x300: 0.1 output px per source px -> 1/8 would keep only 1.25 -> 1/4
    ("cover", 4000, 3000, 300, 300, (4000, 3000), (1000, 750)),
    # scale 1600: 0.4 -> only 1/2 (the crop stays >= the output)
    ("scale", 4000, 3000, 1600, 1600, (4000, 3000), (2000, 1500)),
    ("scale", 3651, 2739, 1600, 1600, (3651, 2739), (1826, 1370)),     # odd sizes: ceil(W/2)
    ("scale", 2449, 3266, 1600, 1600, (2449, 3266), (1225, 1633)),
    # 0.53 output px per source px: a 1/2 decode would be enlarged -> full decode
    ("scale", 3000, 2250, 1600, 1600, (3000, 2250), None),
    # resize 400x400 of 4000x3000: the vertical axis (3000 -> 400, 0.133) decides -> 1/4
    ("resize", 4000, 3000, 400, 400, (4000, 3000), (1000, 750)),
    ("contain", 4000, 3000, 800, 600, (4000, 3000), (1000, 750)),
    ("cover", 600, 450, 300, 300, (600, 450), None),
    # upright 3000x4000 stored 4000x3000 (orientation 6): 1/30 -> 1/8, crop 375 >= 2 x 100
    ("cover", 3000, 4000, 100, 100, (4000, 3000), (500, 375)),
    ("cover", 3001, 4007, 100, 100, (4007, 3001), (501, 376)),
])
def test_draft_request(method, W, H, w, h, stored, decoded):
    p = imaging.plan(method, W, H, w, h)
    req = imaging.draft_request(p, stored)
    if decoded is None:
        assert req is None
        return
    with Image.open(io.BytesIO(_jpeg(*stored))) as im:        # what Pillow then decodes
        im.draft("RGB", req)
        assert im.size == decoded


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 150)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("crop", [None, (3, 5, 2452, 3266 - 3)])
def test_draft_decoding_close_to_full_decode(tmp_path, shared_testdata, crop):
    # Before encoding, the DCT-scaled render differs from a full decode by about one grey level
    # on average at most (measured 0.2-1.0; JPEG q75 itself moves pixels by ~3.5). The crop gives
    # sizes that are not multiples of 8 (2449x2433), where ceil(size/n) must not shift the box.
    path = shared_testdata / "exif/jpg/mobile/jolla.jpg"             # 3264x2448
    if crop:
        with Image.open(path) as im:
            im.crop(crop).save(tmp_path / "odd.jpg", quality=90)
        path = tmp_path / "odd.jpg"
    for method, w, h in [("cover", 300, 300), ("contain", 400, 300), ("scale", 800, 800),
                         ("resize", 200, 300)]:
        src, full_src = imaging.open_source(path, 10**9), imaging.open_source(path, 10**9)
        p = imaging.plan(method, src.width, src.height, w, h)
        request = imaging.draft_request(p, src.image.size)
        assert request is not None
        drafted = imaging.render(src, imaging.decode(src, request), p)
        full = imaging.render(full_src, imaging.decode(full_src, None), p)
        assert drafted.size == full.size
        assert np.abs(arr(drafted) - arr(full)).mean() < 1.2, method


# --- bad input (no DB) -----------------------------------------------------------------------------

def _png_header_only(w: int, h: int) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is not an image at all" * 10, "not a readable image"),
    (None, "cannot decode image"),                     # truncated JPEG
    (_png_header_only(30000, 30000), "image too large"),
    (_png_header_only(100000, 100000), "image too large"),   # above Pillow's own limit too
])
def test_bad_files_raise_image_error(tmp_path, shared_testdata, content, reason):
    src = tmp_path / "bad.jpg"
    if content is None:
        content = (shared_testdata / "exif/jpg/gps/DSCN0010.jpg").read_bytes()
        content = content[: len(content) // 2]
    src.write_bytes(content)
    with pytest.raises(imaging.ImageError, match=reason):
        render(tmp_path, src, [("cover", 300, 300)])
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_pixel_budget_setting(tmp_path, shared_testdata):
    with pytest.raises(imaging.ImageError, match="exceeds the budget of 1000"):
        render(tmp_path, shared_testdata / "exif/jpg/gps/DSCN0010.jpg", [("cover", 30, 30)],
               max_pixels=1000)


# --- the handler with a real DB -----------------------------------------------------------------------

@pytest.fixture
def job(any_db_url, tmp_path, monkeypatch):
    """run(path_in_storage, data) -> ctx after handle() committed; also inserts image rows."""
    storage = tmp_path / "storage"
    (storage / "photos").mkdir(parents=True)
    engine = db.engine_for(any_db_url)
    settings = Settings(storage_root=storage, database_url=any_db_url)

    class Job:
        root = storage

        def add(self, source: Path | None, name: str = "p.jpg", thumbs=None) -> int:
            if source is not None:
                shutil.copy(source, storage / "photos" / name)
            with engine.begin() as conn:
                return conn.execute(images.insert().values(path=f"photos/{name}",
                                                           thumbnails=thumbs)).inserted_primary_key[0]

        def run(self, data: dict, **overrides):
            s = settings.model_copy(update=overrides) if overrides else settings
            with engine.begin() as conn:
                return thumbnails.handle(Context(s, conn, engine, thumbnails.QUEUE), data)

        def row(self, image_id: int):
            with engine.connect() as conn:
                return conn.execute(sa.select(images).where(images.c.id == image_id)).one()

    return Job()


def test_handler_writes_files_and_row(job, shared_testdata):
    image_id = job.add(shared_testdata / "exif/jpg/orientation/portrait_6.jpg",
                       thumbs={"old-1x1": "thumbnails/x/old.jpg"})
    old_umask = os.umask(0o022)         # mode must not depend on the umask
    try:
        assert job.run({"image_id": image_id}) == []          # default sizes from Settings
    finally:
        os.umask(old_umask)
    row = job.row(image_id)
    assert row.thumbnails == {"old-1x1": "thumbnails/x/old.jpg",
                              "cover-300x300": f"thumbnails/{image_id}/cover-300x300.jpg",
                              "scale-1600x1600": f"thumbnails/{image_id}/scale-1600x1600.jpg"}
    assert row.thumbnails_at is not None
    d = job.root / "thumbnails" / str(image_id)
    assert stat.S_IMODE(d.stat().st_mode) == 0o775
    assert stat.S_IMODE((job.root / "thumbnails").stat().st_mode) == 0o775
    for rel in list(row.thumbnails.values())[1:]:
        assert stat.S_IMODE((job.root / rel).stat().st_mode) == 0o664
    with Image.open(job.root / row.thumbnails["scale-1600x1600"]) as im:
        assert im.size == (1200, 1600)                          # portrait, upright, enlarged


def test_handler_single_size_and_sizes_list(job, shared_testdata):
    image_id = job.add(shared_testdata / "exif/jpg/gps/DSCN0010.jpg")
    job.run({"image_id": image_id, "method": "contain", "width": "800", "height": 600})
    job.run({"image_id": str(image_id), "sizes": [{"method": "resize", "width": 100},
                                                   {"method": "scale", "height": 120}]})
    thumbs = job.row(image_id).thumbnails
    assert set(thumbs) == {"contain-800x600", "resize-100x", "scale-x120"}
    with Image.open(job.root / thumbs["resize-100x"]) as im:
        assert im.size == (100, 480)
    with Image.open(job.root / thumbs["scale-x120"]) as im:
        assert im.size == (160, 120)


def test_handler_rerun_is_idempotent(job, shared_testdata):
    image_id = job.add(shared_testdata / "exif/jpg/orientation/landscape_3.jpg")
    data = {"image_id": image_id, "method": "cover", "width": 300, "height": 300}
    job.run(data)
    first = job.row(image_id).thumbnails
    d = job.root / "thumbnails" / str(image_id)
    before = (d / "cover-300x300.jpg").read_bytes()
    job.run(data)
    assert job.row(image_id).thumbnails == first == {"cover-300x300": f"thumbnails/{image_id}/cover-300x300.jpg"}
    assert sorted(p.name for p in d.iterdir()) == ["cover-300x300.jpg"]     # no temp files left
    assert (d / "cover-300x300.jpg").read_bytes() == before


def test_handler_webp_format(job, shared_testdata):
    image_id = job.add(shared_testdata / "exif/jpg/gps/DSCN0010.jpg")
    job.run({"image_id": image_id, "method": "scale", "width": 320, "height": 320},
            thumbnail_format="webp")
    rel = job.row(image_id).thumbnails["scale-320x320"]
    assert rel.endswith(".webp")
    with Image.open(job.root / rel) as im:
        assert im.format == "WEBP" and im.size == (320, 240)


def test_handler_custom_thumbnail_root_outside_storage(job, shared_testdata, tmp_path):
    image_id = job.add(shared_testdata / "exif/jpg/Canon_40D.jpg")
    job.run({"image_id": image_id, "method": "cover", "width": 50, "height": 50},
            thumbnail_root=tmp_path / "elsewhere")
    rel = job.row(image_id).thumbnails["cover-50x50"]
    assert rel == str((tmp_path / "elsewhere" / str(image_id) / "cover-50x50.jpg").resolve())


@pytest.mark.parametrize("data,reason", [
    ({"method": "fit", "width": 300, "height": 300}, "unsupported thumbnail method 'fit'"),
    ({"method": "Cover", "width": 300, "height": 300}, "unsupported thumbnail method"),
    ({"method": None, "width": 300}, "unsupported thumbnail method"),
    ({"width": 300, "height": 300}, "unsupported thumbnail method None"),
    ({"method": "cover", "width": 300}, "needs width and height"),
    ({"method": "contain", "height": 300}, "needs width and height"),
    ({"method": "scale"}, "needs width or height"),
    ({"method": "scale", "width": 0, "height": 10}, "invalid thumbnail width 0"),
    ({"method": "scale", "width": -5}, "invalid thumbnail width -5"),
    ({"method": "scale", "width": 10001}, "invalid thumbnail width 10001"),
    ({"method": "scale", "width": "abc"}, "invalid thumbnail width 'abc'"),
    ({"method": "scale", "width": True}, "invalid thumbnail width True"),
    ({"method": "scale", "width": 10.5}, "invalid thumbnail width 10.5"),
    ({"method": "resize", "height": [1]}, "invalid thumbnail height"),
    ({"sizes": []}, "invalid thumbnail sizes"),
    ({"sizes": "cover"}, "invalid thumbnail sizes"),
    ({"sizes": [{"method": "scale", "width": 10}, {"method": "crop", "width": 10}]}, "'crop'"),
    ({"sizes": [17]}, "invalid thumbnail size 17"),
])
def test_handler_invalid_data_fails_without_writing(job, shared_testdata, data, reason):
    image_id = job.add(shared_testdata / "exif/jpg/Canon_40D.jpg")
    with pytest.raises(JobFailed, match=reason):
        job.run({"image_id": image_id, **data})
    assert not (job.root / "thumbnails").exists()
    assert job.row(image_id).thumbnails is None


def test_handler_output_pixel_budget(job, shared_testdata):
    image_id = job.add(shared_testdata / "exif/jpg/Canon_40D.jpg")
    with pytest.raises(JobFailed, match="over the budget"):
        job.run({"image_id": image_id, "method": "resize", "width": 10000, "height": 10000},
                max_pixels=50_000_000)


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "bomb", "directory", "escape"])
def test_handler_bad_files_fail(job, shared_testdata, kind):
    photos = job.root / "photos"
    if kind == "missing":
        image_id = job.add(None, "nope.jpg")
    elif kind == "directory":
        (photos / "dir.jpg").mkdir()
        image_id = job.add(None, "dir.jpg")
    elif kind == "escape":
        image_id = job.add(None, "../../etc/passwd")
    else:
        image_id = job.add(None, "bad.jpg")
        content = {"empty": b"", "corrupt": os.urandom(5000),
                   "bomb": _png_header_only(40000, 40000)}[kind]
        (photos / "bad.jpg").write_bytes(content)
    with pytest.raises(JobFailed) as err:
        job.run({"image_id": image_id})
    assert str(image_id) in str(err.value) or kind == "escape"
    assert job.row(image_id).thumbnails is None


def test_handler_missing_row_and_bad_id(job):
    with pytest.raises(JobFailed, match="does not exist"):
        job.run({"image_id": 999999})
    with pytest.raises(JobFailed, match="no valid image_id"):
        job.run({"method": "cover"})


# --- the libvips resample loses nothing against today's Pillow LANCZOS ------------------------------
# Before encoding, ours differs from Pillow's LANCZOS by rounding only: measured 0.1-0.3 grey
# levels mean, SSIM >= 0.997, where the JPEG q75 encode itself moves 2.5-5 levels (SSIM 0.88-0.98).
# A 1/4 px slip of the grid moves a sharp photo by ~1.5 levels: the bounds catch it.

def _ours_and_today(src: imaging.Source, decoded: Image.Image, p: imaging.Plan):
    ours = imaging.render(src, decoded, p)
    saved = resample.vips_spans
    resample.vips_spans = lambda *a: None
    try:
        today = imaging.render(src, decoded, p)
    finally:
        resample.vips_spans = saved
    return ours, today


def _close_to_today(path: Path, sizes, mean: float = 0.4, ssim: float = 0.995) -> list[str]:
    """Render every size ours and today's way (each from its own DCT-scaled decode, as a job
    with that one size does); assert the bounds; return the keys that libvips did (so a test
    cannot pass by never taking the fast path)."""
    by_vips = []
    for m, w, h in sizes:
        key = f"{m}-{w or ''}x{h or ''}"
        src = imaging.open_source(path, 10**9)
        with src.image:
            p = imaging.plan(m, src.width, src.height, w, h)
            decoded = imaging.decode(src, imaging.draft_request(p, src.image.size))
            ours, today = _ours_and_today(src, decoded, p)
            assert ours.size == today.size == p.canvas, key
            d, noise = image_quality.difference(today, ours), image_quality.jpeg_noise(today)
            assert d.mean < mean and d.ssim > ssim, (key, str(d))
            # ...and far inside what the thumbnail's own JPEG encode does to today's pixels
            assert d.mean < noise.mean / 5 and 1 - d.ssim < (1 - noise.ssim) / 5, (key, str(d), str(noise))
            if _took_vips(src, decoded, p):
                by_vips.append(key)
    return by_vips


def _took_vips(src: imaging.Source, decoded: Image.Image, p: imaging.Plan) -> bool:
    calls = []
    saved = resample._vips_reduce
    resample._vips_reduce = lambda *a: calls.append(a) or saved(*a)
    try:
        imaging.render(src, decoded, p)
    finally:
        resample._vips_reduce = saved
    return bool(calls)


BIG_SIZES = METHOD_SIZES + [("cover", 300, 200), ("scale", None, 300), ("resize", 1000, None)]


@pytest.mark.parametrize("name", ["exif/jpg/mobile/jolla.jpg",                  # 3264x2448
                                  "detect/recognize_food_casey-lee.jpg",        # 2667x4000
                                  "detect/lychee_undefined-exif-tag.jpg"])      # 3059x2083, odd
def test_fast_resample_matches_today_on_real_photos(shared_testdata, name):
    by_vips = _close_to_today(shared_testdata / name, BIG_SIZES)
    # Pillow keeps the >= 4x reductions and the rare box no libvips area lines up with
    # (a shrink a hair off a small fraction, e.g. 666.75 -> 400 px: 1.6669)
    assert "scale-1600x1600" in by_vips and len(by_vips) >= len(BIG_SIZES) // 2, by_vips


@pytest.mark.parametrize("W,H", [(4000, 3000), (3651, 2739), (2449, 3266), (4032, 3024),
                                 (3999, 2667), (6000, 4000)])
def test_fast_resample_matches_today_at_camera_and_odd_sizes(tmp_path, shared_testdata, W, H):
    # DCT scaling of odd sizes leaves a partial last pixel (box edge at W/n): libvips' centred
    # grid has to be lined up with it. The photo is a real one, resized, so it has detail.
    with Image.open(shared_testdata / "detect/immich_craft-beer.jpg") as im:
        im.convert("RGB").resize((W, H), Image.Resampling.BICUBIC).save(tmp_path / "p.jpg", quality=90)
    by_vips = _close_to_today(tmp_path / "p.jpg", METHOD_SIZES)
    assert {"scale-1600x1600", "contain-800x600"} <= set(by_vips), by_vips


@pytest.mark.parametrize("orientation", [3, 5, 6, 8])
def test_fast_resample_upright_from_every_stored_orientation(tmp_path, shared_testdata, orientation):
    with Image.open(shared_testdata / "exif/jpg/mobile/jolla.jpg") as im:
        upright = im.convert("RGB").resize((2000, 1500), Image.Resampling.LANCZOS)
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = upright.transpose(inverse.get(orientation, imaging.TRANSPOSE[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "stored.png", exif=exif, compress_level=1)   # lossless: only the
    upright.save(tmp_path / "upright.png", compress_level=1)            # pipeline differs
    sizes = [("cover", 600, 600), ("contain", 800, 600), ("resize", 700, 500)]     # all < 4x: libvips
    for method, w, h in sizes:
        a, b = imaging.open_source(tmp_path / "stored.png", 10**9), imaging.open_source(tmp_path / "upright.png", 10**9)
        p = imaging.plan(method, b.width, b.height, w, h)
        assert (a.width, a.height) == (b.width, b.height)
        d = image_quality.difference(imaging.render(a, imaging.decode(a, None), p),
                                     imaging.render(b, imaging.decode(b, None), p))
        # the passes run in the other order on the transposed photo: rounding, no slip
        assert d.mean < 0.3 and d.ssim > 0.998, (method, str(d))
    assert _close_to_today(tmp_path / "stored.png", sizes) == [f"{m}-{w}x{h}" for m, w, h in sizes]


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_fast_resample_greyscale_and_cmyk(tmp_path, shared_testdata, mode):
    with Image.open(shared_testdata / "exif/jpg/mobile/jolla.jpg") as im:
        im.convert(mode).save(tmp_path / "p.jpg", quality=90)
    with Image.open(tmp_path / "p.jpg") as im:
        assert im.mode == mode
    assert "scale-1600x1600" in _close_to_today(tmp_path / "p.jpg", METHOD_SIZES)
    out = render(tmp_path, tmp_path / "p.jpg", [("scale", 1600, 1600)])["scale-1600x1600"]
    assert out.mode == "RGB" and out.size == (1600, 1200)


def test_alpha_and_enlargements_stay_with_pillow(tmp_path):
    rgba = Image.new("RGBA", (400, 300), (10, 20, 30, 128))
    assert resample.vips_spans(rgba, (200, 150), (0, 0, 400, 300)) is None
    rgb = rgba.convert("RGB")
    assert resample.vips_spans(rgb, (200, 150), (0, 0, 400, 300)) is not None
    assert resample.vips_spans(rgb, (800, 150), (0, 0, 400, 300)) is None       # enlarged across
    assert resample.vips_spans(rgb, (50, 30), (0, 0, 400, 300)) is None         # >= 4x: box-reduce
    assert resample.vips_spans(rgb, (400, 300), (0, 0, 400, 300)) is not None   # same size


@pytest.mark.parametrize("W,H,sizes", [
    (1, 1, METHOD_SIZES),
    (1, 1000, [("scale", 300, 300), ("cover", 300, 300), ("contain", 800, 600)]),
    (5000, 3, [("scale", 1600, 1600), ("resize", 400, 400), ("cover", 300, 300)]),
    (2, 2, [("resize", 1, 1), ("scale", 1, None)]),
    (9, 7, [("scale", 5, 5), ("cover", 3, 3)]),
])
def test_tiny_and_thin_inputs(tmp_path, W, H, sizes):
    rng = np.random.default_rng(W * H)
    src = tmp_path / "tiny.png"
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(src)
    got = render(tmp_path, src, sizes)
    for method, w, h in sizes:
        assert got[f"{method}-{w or ''}x{h or ''}"].size == imaging.plan(method, W, H, w, h).canvas


def test_huge_photo(tmp_path):
    # 48 MP of smooth gradient plus grain, DCT-scaled by 1/2..1/8 depending on the size.
    W, H = 8000, 6000
    grad = np.linspace(0, 255, W, dtype=np.float32)[None, :, None] * np.ones((H, 1, 3), np.float32)
    grain = np.random.default_rng(1).normal(0, 12, (H // 4, W // 4, 3)).astype(np.float32)
    pixels = np.clip(grad + np.kron(grain, np.ones((4, 4, 1), np.float32)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "huge.jpg", quality=85)
    del pixels, grad
    by_vips = _close_to_today(tmp_path / "huge.jpg", METHOD_SIZES)
    assert "scale-1600x1600" in by_vips


def test_libvips_failure_falls_back_to_pillow(monkeypatch, caplog):
    import pyvips

    def broken(*args):
        raise pyvips.Error("out of memory")
    im = Image.fromarray(np.random.default_rng(3).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    box = (0, 0, 400, 300)
    assert resample.vips_spans(im, (200, 150), box) is not None
    monkeypatch.setattr(resample, "_vips_reduce", broken)
    out = resample.resample(im, (200, 150), box)
    assert out.tobytes() == im.resize((200, 150), Image.Resampling.LANCZOS, box=box).tobytes()
    assert "libvips reduce failed" in caplog.text


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_pixels_for_libvips_are_tobytes(mode):
    im = Image.fromarray(np.random.default_rng(1).integers(0, 255, (301, 517, 3), dtype=np.uint8))
    im = im.convert(mode)
    assert resample._pixels(im) == im.tobytes()


# --- JPEGs decoded packed for libvips (simplejpeg): the same pixels as Pillow's decode ------------

@pytest.mark.parametrize("name", ["exif/jpg/mobile/jolla.jpg",                     # 3264x2448
                                  "detect/lychee_undefined-exif-tag.jpg",          # odd sizes
                                  "exif/jpg/orientation/portrait_6.jpg"])
@pytest.mark.parametrize("n", [None, 2, 4, 8])
def test_packed_jpeg_decode_is_pillows_decode(shared_testdata, name, n):
    path = shared_testdata / name
    src = imaging.open_source(path, 10**9)
    W, H = src.image.size
    request = None if n is None else (W // n, H // n)
    decoded = imaging.decode(src, request)
    assert isinstance(decoded, resample.Packed)
    with Image.open(path) as im:
        if request:
            im.draft(im.mode, request)
        im.load()
        assert decoded.size == im.size and decoded.mode == im.mode
        assert np.array_equal(np.asarray(decoded.image()), np.asarray(im))


def test_greyscale_jpeg_decoded_packed_and_cmyk_by_pillow(tmp_path, shared_testdata):
    with Image.open(shared_testdata / "exif/jpg/mobile/jolla.jpg") as im:
        im.convert("L").save(tmp_path / "grey.jpg", quality=90)
        im.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    grey = imaging.decode(imaging.open_source(tmp_path / "grey.jpg", 10**9), (816, 612))
    assert isinstance(grey, resample.Packed) and grey.mode == "L" and grey.size == (816, 612)
    with Image.open(tmp_path / "grey.jpg") as im:
        im.draft("L", (816, 612))
        assert np.array_equal(np.asarray(grey.image()), np.asarray(im))
    cmyk = imaging.decode(imaging.open_source(tmp_path / "cmyk.jpg", 10**9), (816, 612))
    assert isinstance(cmyk, Image.Image) and cmyk.mode == "CMYK"


def test_packed_and_pillow_sources_resample_alike(shared_testdata):
    # The sizes Pillow keeps (>= 4x) read the Pillow image made from the packed pixels.
    src = imaging.open_source(shared_testdata / "exif/jpg/mobile/jolla.jpg", 10**9)
    packed = imaging.decode(src, (1632, 1224))
    im = packed.image()
    for size, box in [((1600, 1200), (0, 0, 1632, 1224)), ((300, 300), (204, 0, 1428, 1224)),
                      ((800, 600), (0.5, 0, 1631.5, 1224))]:
        assert resample.resample(packed, size, box).tobytes() == resample.resample(im, size, box).tobytes()


def test_whole_image_needs_no_area():
    # libvips' centred grid on the whole image is Pillow's: no edge copies added, nothing cropped,
    # and the same pixels as through an area found by the search.
    im = Image.fromarray(np.random.default_rng(5).integers(0, 255, (1500, 2000, 3), dtype=np.uint8))
    box = (0, 0, 2000, 1500)
    assert resample.vips_spans(im, (1600, 1200), box) == (resample.Span(0, 2000, 0), resample.Span(0, 1500, 0))
    whole = resample.resample(im, (1600, 1200), box)
    searched = resample._vips_reduce(im, (1600, 1200), box, resample._span(0, 2000, 1600),
                                     resample._span(0, 1500, 1200))
    assert whole.tobytes() == searched.tobytes()
    assert resample.vips_spans(im, (400, 300), box) is None       # >= 4x stays with Pillow


def test_jpeg_simplejpeg_refuses_is_decoded_by_pillow_as_before(tmp_path):
    # Stray bytes before a marker: libjpeg warns, Pillow decodes anyway, strict simplejpeg
    # refuses; the photo still gets its thumbnails, through Pillow.
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")
    (tmp_path / "stray.jpg").write_bytes(data[:sos] + b"\0\0\0" + data[sos:])
    decoded = imaging.decode(imaging.open_source(tmp_path / "stray.jpg", 10**9), (320, 240))
    assert isinstance(decoded, Image.Image) and decoded.size == (320, 240)
    assert render(tmp_path, tmp_path / "stray.jpg", [("scale", 300, 300)])["scale-300x300"].size == (300, 225)
