"""Engine: face_recognition's own test-suite expectations, golden distances, oracle equality."""
import importlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_api import engine
from face_api.detectors import hog
from face_api.imaging import open_photo
from face_api.settings import Settings

from tests.support.face_api import FACES

# The original's HOG recipe (the parity mode), which these tests check; YuNet is the default.
pytestmark = pytest.mark.usefixtures("original_recipe")


def load(name, mode="RGB"):
    return np.asarray(Image.open(FACES / name).convert(mode))


def photo(path):
    return open_photo(Path(path).read_bytes(), max_pixels=100_000_000)


@pytest.fixture(scope="module")
def settings():
    return Settings(debug_images=False)


@pytest.fixture(scope="module")
def enc():
    cache = {}

    def get(name):
        if name not in cache:
            img = load(name)
            boxes = hog.face_locations(img)
            assert len(boxes) == 1, (name, boxes)
            cache[name] = engine.face_encodings(img, boxes)[0]
        return cache[name]
    return get


def test_load_shapes():
    assert load("obama.jpg").shape == (1137, 910, 3)
    assert load("32bit.png").shape == (1200, 626, 3)


@pytest.mark.parametrize("name, expected", [
    ("obama.jpg", [(142, 617, 409, 349)]),
    ("obama_partial_face.jpg", [(142, 191, 365, 0)]),
    ("obama_partial_face2.jpg", [(142, 551, 409, 349)]),
    ("32bit.png", [(290, 438, 558, 171)]),
    ("obama2.jpg", [(290, 438, 558, 171)]),
    ("biden.jpg", [(241, 740, 562, 419)]),
])
def test_face_locations_match_face_recognition_suite(name, expected):
    assert hog.face_locations(load(name), upsample=1) == expected


def test_obama_encoding_values(enc):
    e = enc("obama.jpg")
    assert e.shape == (128,)
    np.testing.assert_allclose(e[:5], [-0.0914, 0.1309, 0.0131, -0.0579, 0.0163], atol=1e-4)
    assert abs(np.linalg.norm(e) - 1.387) < 0.01


@pytest.mark.parametrize("a, b, expected", [
    ("obama.jpg", "obama2.jpg", 0.3457),
    ("obama.jpg", "biden.jpg", 0.8402),
    ("obama.jpg", "obama_partial_face.jpg", 0.2528),
    ("obama.jpg", "obama_partial_face2.jpg", 0.2815),
    ("obama.jpg", "32bit.png", 0.3381),
    ("obama2.jpg", "32bit.png", 0.0380),
])
def test_golden_distances(enc, a, b, expected):
    d = engine.face_distance([enc(a)], enc(b))[0]
    assert abs(d - expected) < 1e-3


def test_face_distance_empty():
    d = engine.face_distance([], np.zeros(128))
    assert isinstance(d, np.ndarray) and len(d) == 0


def test_encode_image_native_obama(settings):
    r = engine.encode_image(photo(FACES / "obama.jpg"), settings)
    assert r.locations == [[142, 617, 409, 349]]
    assert r.scale == 1200 and r.scales_tried == [1200]
    assert (r.width, r.height) == (910, 1137)
    # the array entry point gives the same answer
    r2 = engine.encode_image(load("obama.jpg"), settings)
    assert r2.locations == r.locations
    np.testing.assert_allclose(r2.encodings, r.encodings, atol=1e-9)


def test_passes_stop_when_photo_not_larger_than_scale():
    assert hog.passes(1137, [1200, 1600, 2000], False) == [1200]
    assert hog.passes(1500, [1200, 1600, 2000], False) == [1200, 1600]
    assert hog.passes(4000, [1200, 1600, 2000], False) == [1200, 1600, 2000]
    assert hog.passes(4000, [1200, 1600, 2000], True) == [1200, 2000]


@pytest.mark.parametrize("skip_covered, tried", [(False, [1200, 1600, 2000]), (True, [1200, 2000])])
def test_no_face_tries_every_scale(skip_covered, tried):
    noise = np.random.default_rng(0).integers(0, 255, (1000, 2400, 3), dtype=np.uint8)
    noise[:] = noise.mean(axis=2, keepdims=True).astype(np.uint8) // 8 + 100  # flat-ish grey
    r = engine.encode_image(noise, Settings(debug_images=False, face_skip_covered_scales=skip_covered))
    assert r.scales_tried == tried and r.scale is None and r.locations == []


def test_locations_mapped_to_original_pixels(settings):
    big = Image.open(FACES / "obama.jpg").resize((1820, 2274), Image.LANCZOS)
    r = engine.encode_image(np.asarray(big), settings)
    assert r.scale == 1200 and len(r.locations) == 1
    small = engine.ArraySource(np.asarray(big)).scaled(1200)
    assert max(small.shape) == 1200
    f = 2274 / small.shape[0]
    (box,) = hog.face_locations(small)
    for got, want in zip(r.locations[0], box):
        assert abs(got - want * f) <= 1
    for got, want in zip(r.locations[0], (142 * 2, 617 * 2, 409 * 2, 349 * 2)):
        assert abs(got - want) < 60


def test_exif_orientation_applied(settings, tmp_path):
    im = Image.open(FACES / "obama.jpg")
    # store the photo rotated, with orientation 6 (rotate 90 CW to view) in EXIF
    stored = im.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    p = open_photo(buf.getvalue(), max_pixels=10**8)
    assert (p.width, p.height) == (910, 1137)
    r = engine.encode_image(p, settings)
    assert len(r.locations) == 1
    for got, want in zip(r.locations[0], (142, 617, 409, 349)):
        assert abs(got - want) <= 12


def _people():
    people = FACES / "people"
    return {d.name: sorted(d.iterdir()) for d in sorted(people.iterdir()) if d.is_dir()}


def test_people_same_and_different(settings):
    encodings = []
    for person, files in _people().items():
        for f in files:
            r = engine.encode_image(photo(f), settings)
            assert r.encodings, f"no face in {f}"
            # the largest face is the subject
            sizes = [(b - t) * (rt - lf) for t, rt, b, lf in r.locations]
            encodings.append((person, f.name, np.array(r.encodings[int(np.argmax(sizes))])))
    same = diff = 0
    for i, (pa, fa, ea) in enumerate(encodings):
        for pb, fb, eb in encodings[i + 1:]:
            d = float(np.linalg.norm(ea - eb))
            if pa == pb:
                same += 1
                assert d <= 0.6, (fa, fb, d)
            else:
                diff += 1
                assert d > 0.6, (pa, fa, pb, fb, d)
    assert same >= 4 and diff >= 20


def _oracle():
    """face_recognition.api as oracle, if importable (it needs pkg_resources)."""
    from PIL import ImageFile
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        return importlib.import_module("face_recognition.api")
    except BaseException:  # it calls quit() when face_recognition_models cannot be imported
        return None
    finally:
        # Importing it sets LOAD_TRUNCATED_IMAGES for the whole process: later tests of truncated
        # files must see Pillow's default, as production (which never imports it) does.
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg", "two_people.jpg", "32bit.png"])
def test_encodings_equal_face_recognition(name):
    fr = _oracle()
    if fr is None:
        pytest.skip("face_recognition not importable (pkg_resources missing)")
    img = fr.load_image_file(str(FACES / name))
    ours_boxes = hog.face_locations(img)
    assert ours_boxes == fr.face_locations(img, number_of_times_to_upsample=1, model="hog")
    ours = engine.face_encodings(img, ours_boxes)
    theirs = fr.face_encodings(img, ours_boxes, num_jitters=1, model="small")
    assert len(ours) == len(theirs) >= 1
    np.testing.assert_allclose(np.array(ours), np.array(theirs), atol=1e-6)


def test_models_found_without_pkg_resources():
    code = ("import sys; from face_api.engine import load_models; m = load_models(); "
            "assert 'pkg_resources' not in sys.modules; "
            "assert 'face_recognition_models' not in sys.modules; print(m.files.directory)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("models")
