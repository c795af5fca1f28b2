"""The YuNet pass image (face_api/passimage.py): a JPEG decoded at a DCT scale and resized once
has the pass's size and the photo's upright orientation, shows the same picture as the HOG
passes' decode, and everything it should not decode goes the HOG passes' way; the HOG path never
uses it. (Through the API, the debug image of a YuNet pass: tests/face_api/test_yunet.py.)"""
import io

import numpy as np
import pytest
from PIL import Image

from face_api import engine, passimage
from face_api.imaging import ImageError, open_photo
from face_api.settings import Settings


def photo(data: bytes, draft: bool = True):
    return open_photo(data, max_pixels=100_000_000, draft=draft)


def jpeg(image: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, **save)
    return out.getvalue()


def marked(width: int, height: int) -> Image.Image:
    """A picture whose orientation shows: a bright top-left quadrant, a dark rest, a gradient."""
    x = np.linspace(0, 120, width)[None, :] + np.linspace(0, 60, height)[:, None]
    rgb = np.stack([x, 200 - x, x / 2], axis=-1)
    rgb[: height // 2, : width // 2] = 250
    return Image.fromarray(rgb.astype(np.uint8))


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(image, exif=exif.tobytes())


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.parametrize("size, side, expected", [
    ((4000, 3000), 1200, (900, 1200)), ((3264, 2448), 1200, (900, 1200)),
    ((3000, 4000), 1200, (1200, 900)), ((1300, 975), 1200, (900, 1200)),
    ((1000, 750), 1200, (750, 1000)),         # never enlarged
])
def test_the_pass_image_has_the_pass_size(size, side, expected):
    img = passimage.pass_image(photo(jpeg(marked(*size))), side)
    assert img.shape == (*expected, 3) and img.dtype == np.uint8 and img.flags.c_contiguous


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    upright = marked(1600, 1200)
    stored = upright.transpose({2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180,
                                4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE, 6: Image.ROTATE_90,
                                7: Image.TRANSVERSE, 8: Image.ROTATE_270}[orientation]
                               ) if orientation != 1 else upright
    source = photo(with_orientation(stored, orientation))
    img = passimage.pass_image(source, 400)
    assert img.shape == (300, 400, 3)
    expected = np.asarray(upright.resize((400, 300), Image.BICUBIC))
    assert mean_difference(img, expected) < 3
    assert img[:150, :200].mean() > 240 > img[150:, 200:].mean()     # bright corner top-left


def test_the_same_picture_as_the_hog_decode(testdata):
    """A real photo: within a few grey levels of Photo.scaled's (resampling differs, not
    content), and identical where no resize is needed."""
    data = (testdata / "detect" / "immich_craft-beer.jpg").read_bytes()
    ours, hogs = passimage.pass_image(photo(data), 1200), photo(data).scaled(1200)
    assert ours.shape == hogs.shape == (800, 1200, 3)
    assert mean_difference(ours, hogs) < 3
    small = (testdata / "detect" / "pp_2.jpg").read_bytes()
    assert np.array_equal(passimage.pass_image(photo(small), 1200), photo(small).scaled(1200))


@pytest.mark.parametrize("kind", ["png", "cmyk", "no draft"])
def test_what_simplejpeg_should_not_decode_goes_the_hog_way(kind):
    image = marked(2400, 1800)
    if kind == "png":
        out = io.BytesIO()
        image.save(out, "PNG")
        source = photo(out.getvalue())
    elif kind == "cmyk":
        source = photo(jpeg(image.convert("CMYK")))
    else:
        source = photo(jpeg(image), draft=False)
    assert np.array_equal(passimage.pass_image(source, 1200), source.scaled(1200))


def test_a_truncated_jpeg_fails_as_the_hog_decode_does():
    data = jpeg(marked(2400, 1800))[:20_000]
    with pytest.raises(ImageError) as ours:
        passimage.pass_image(photo(data), 1200)
    with pytest.raises(ImageError) as hogs:
        photo(data).scaled(1200)
    assert (ours.value.status, ours.value.reason) == (hogs.value.status, hogs.value.reason)


def test_hog_never_uses_the_pass_image(testdata, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the HOG path made a YuNet pass image")

    monkeypatch.setattr(passimage, "pass_image", refuse)
    monkeypatch.setattr(passimage, "resize", refuse)
    data = (testdata / "detect" / "immich_craft-beer.jpg").read_bytes()
    result = engine.encode_image(photo(data), Settings(debug_images=False, face_detector="hog"))
    assert result.scales_tried


def test_yunet_encodes_on_the_pass_image(testdata):
    pytest.importorskip("yuface", reason="yuface has wheels for CPython 3.10/3.11 only")
    data = (testdata / "faces" / "obama3.jpg").read_bytes()     # 1434x2333: resized for the pass
    settings = Settings(debug_images=False, face_detector="yunet")
    result = engine.encode_image(photo(data), settings)
    assert len(result.locations) == 1 and result.detection_image.shape == (1200, 738, 3)
    expected = passimage.pass_image(photo(data), settings.yunet_max_side)
    assert np.array_equal(result.detection_image, expected)
