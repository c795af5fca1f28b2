"""The engine's shortcuts: JPEG draft decoding, encodings on the detection image, level-limited
later passes, skipped covered scales, and one HOG detector per thread."""
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from face_api import engine
from face_api.detectors import hog
from face_api.imaging import open_photo
from face_api.memory import IdleTrimmer
from face_api.settings import Settings

from bench.groundtruth import encoding_deltas, engine_detector, evaluate, load_truth, reconstruction
from tests.support.face_api import FACES

# The original's HOG recipe (the parity mode), which these tests check; YuNet is the default.
pytestmark = pytest.mark.usefixtures("original_recipe")


def test_rescan_levels_cover_only_new_face_sizes():
    # dlib's pyramid shrinks by 5/6: 1600 after 1200 needs 2 levels (1.2^2 > 4/3), 2000 after 1600 too
    assert hog.rescan_levels(1600, 1200, 0) == 2
    assert hog.rescan_levels(2000, 1600, 0) == 2
    assert hog.rescan_levels(2000, 1600, 1) == 3
    assert hog.rescan_levels(1300, 1200, 0) == 1
    assert hog.rescan_levels(1440, 1200, 0) == 1  # exactly one level: 1.2x
    assert hog.rescan_levels(3000, 1200, 0) == 6


def test_level_limited_detector_scans_only_small_faces():
    models = engine.load_models()
    img = np.asarray(Image.open(FACES / "obama.jpg").convert("RGB"))
    full = hog.face_locations(img)
    assert full == [(142, 617, 409, 349)]  # a 268-px face: found at a coarse level only
    assert hog.face_locations(img, levels=1000) == full
    assert hog.face_locations(img, levels=2) == []
    # the same face made small (about 45 px) is found by the finest level alone
    small = np.asarray(Image.fromarray(img).resize((155, 194), Image.LANCZOS))
    canvas = np.full((600, 800, 3), 128, np.uint8)
    canvas[200:394, 300:455] = small
    (fine,) = hog.face_locations(canvas, levels=1)
    (every,) = hog.face_locations(canvas)
    assert _iou(fine, every) >= 0.5


def _iou(a, b):
    t, r, b_, l = a
    t2, r2, b2, l2 = b
    inter = max(0, min(r, r2) - max(l, l2)) * max(0, min(b_, b2) - max(t, t2))
    return inter / ((r - l) * (b_ - t) + (r2 - l2) * (b2 - t2) - inter)


def test_detector_layout_is_checked():
    with pytest.raises(ValueError, match="FULL_RESCAN"):
        hog.detector(2, data=b"not a detector")


def _canvas_photo(tmp_path, face_height_fraction=0.3, size=(4000, 3000), name="obama.jpg"):
    face = Image.open(FACES / name).convert("RGB")
    f = face_height_fraction * size[1] / face.height
    face = face.resize((round(face.width * f), round(face.height * f)), Image.LANCZOS)
    canvas = Image.new("RGB", size, (90, 110, 100))
    canvas.paste(face, (size[0] // 3, size[1] // 4))
    path = tmp_path / f"canvas-{face_height_fraction}.jpg"
    canvas.save(path, quality=92)
    return path


def test_jpeg_is_decoded_at_the_smallest_dct_size_at_least_the_scale(tmp_path):
    photo = open_photo(_canvas_photo(tmp_path, 0.3).read_bytes(), 10**8)      # 4000x3000
    assert photo.scaled(1200).shape == (900, 1200, 3)
    assert photo._cache.size == (2000, 1500)      # 1/2: the smallest DCT scale >= 1200
    assert photo.scaled(2000).shape == (1500, 2000, 3) and photo._cache.size == (2000, 1500)
    photo = open_photo(_canvas_photo(tmp_path, 0.3, size=(3000, 2250)).read_bytes(), 10**8)
    photo.scaled(1200)
    assert photo._cache.size == (1500, 1125)
    photo.scaled(1600)
    assert photo._cache.size == (3000, 2250)      # 1/2 would be smaller than 1600: full decode
    undrafted = open_photo(_canvas_photo(tmp_path, 0.3).read_bytes(), 10**8, draft=False)
    undrafted.scaled(1200)
    assert undrafted._cache.size == (4000, 3000)


def test_small_faces_on_a_drafted_image_are_encoded_on_a_full_decode(tmp_path):
    """A face below face_full_decode_below px is encoded at the same scale from a full decode
    (the thumbnail reconstruction's pixels); larger faces on the drafted detection image."""
    data = _canvas_photo(tmp_path, 0.3).read_bytes()
    photo = open_photo(data, 10**8)
    r = engine.encode_image(photo, Settings(debug_images=False, face_full_decode_below=10_000))
    assert r.scale == 1200 and photo.decoded_in_full
    full = open_photo(data, 10**8, draft=False).scaled(1200)
    np.testing.assert_allclose(r.encodings, engine.face_encodings(full, r.detection_locations), atol=1e-6)
    drafted = engine.encode_image(open_photo(data, 10**8),
                                  Settings(debug_images=False, face_full_decode_below=0))
    assert drafted.detection_locations == r.detection_locations
    assert not np.allclose(drafted.encodings, r.encodings, atol=1e-6)


@pytest.mark.parametrize("draft", [True, False])
def test_encodings_are_computed_on_the_detection_image(tmp_path, draft):
    data = _canvas_photo(tmp_path, 0.3).read_bytes()
    r = engine.encode_image(open_photo(data, 10**8, draft=draft),
                            Settings(debug_images=False, face_full_decode_below=0))
    assert r.scale == 1200 and len(r.detection_locations) == 1
    detection_image = open_photo(data, 10**8, draft=draft).scaled(1200)
    np.testing.assert_array_equal(r.detection_image, detection_image)
    want = engine.face_encodings(detection_image, r.detection_locations)
    np.testing.assert_allclose(r.encodings, want, atol=1e-6)


def test_face_at_the_photo_edge_is_found_and_encoded(tmp_path):
    face = Image.open(FACES / "obama_partial_face.jpg").convert("RGB")  # cut at the left edge
    big = face.resize((face.width * 3, face.height * 3), Image.LANCZOS)
    path = tmp_path / "edge.jpg"
    big.save(path, quality=92)
    r = engine.encode_image(open_photo(path.read_bytes(), 10**8), Settings(debug_images=False))
    assert len(r.encodings) == 1 and r.locations[0][3] == 0   # the box reaches the left edge
    (thumbnail,) = reconstruction("thumbnail")(path.read_bytes()).encodings
    assert np.linalg.norm(np.array(r.encodings[0]) - thumbnail) < 0.1


@pytest.mark.parametrize("overrides, tried, want", [
    ({}, [1200, 2000], [None, 3]),                       # 1600 skipped; 2000 scans 3 new levels
    ({"face_rescan_overlap": 1}, [1200, 2000], [None, 4]),
    ({"face_skip_covered_scales": False}, [1200, 1600, 2000], [None, 2, 2]),
    ({"face_skip_covered_scales": False, "face_rescan_overlap": 1}, [1200, 1600, 2000], [None, 3, 3]),
    ({"face_full_rescan": True}, [1200, 2000], [None, None]),    # every level, like the original
])
def test_later_passes_ask_for_the_levels_the_settings_say(monkeypatch, overrides, tried, want):
    asked = []
    real = hog.detector

    def recording(levels=None, data=None):
        asked.append(levels)
        return real(levels, data)
    monkeypatch.setattr(hog, "detector", recording)
    grey = np.full((3000, 4000, 3), 120, np.uint8)
    r = engine.encode_image(grey, Settings(debug_images=False, **overrides))
    assert r.scales_tried == tried and r.locations == []
    assert asked == want


def test_rescanned_levels_sample_face_sizes_as_densely_as_one_pyramid():
    """With no overlap, the coarsest new level of a later pass and the finest level of the
    earlier pass are less than one pyramid step (6/5) apart, for any pair of scales."""
    for previous, scale in [(1200, 1600), (1200, 2000), (1600, 2000), (1200, 1300), (1200, 1800)]:
        levels = hog.rescan_levels(scale, previous, 0)
        coarsest_new = (6 / 5) ** (levels - 1) / scale   # face size / photo size, up to a constant
        finest_earlier = 1 / previous
        assert coarsest_new < finest_earlier < coarsest_new * 6 / 5, (previous, scale)


def test_threads_give_the_same_answers():
    names = ["obama.jpg", "biden.jpg", "obama2.jpg", "32bit.png"] * 2
    imgs = [np.asarray(Image.open(FACES / n).convert("RGB")) for n in names]
    settings = Settings(debug_images=False)
    sequential = [engine.encode_image(i, settings) for i in imgs]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(lambda img: engine.encode_image(img, settings), imgs))
    for a, b in zip(sequential, parallel):
        assert a.locations == b.locations
        np.testing.assert_allclose(a.encodings, b.encodings, atol=1e-9)


def test_on_truth_photos_larger_than_the_first_scale_we_find_what_the_original_finds():
    """Draft decoding and the thumbnail-like resize, judged against hand-checked truth: on the
    truth photos with faces that need resizing, every face the thumbnail reconstruction finds is
    found, nothing false is added, and encodings stay within 0.1 of the reconstruction's."""
    truth = {name: t for name, t in load_truth().items()
             if t.faces and max(t.width, t.height) > 1200}
    assert len(truth) >= 6
    ours = evaluate(engine_detector(Settings(debug_images=False)), truth)
    original = evaluate(reconstruction("thumbnail"), truth)
    assert original.found >= 20
    assert ours.found >= original.found and ours.false <= original.false
    deltas = encoding_deltas(original, ours)
    assert len(deltas) == original.found and max(deltas) < 0.1


def test_memory_is_given_back_once_the_worker_is_idle_not_between_photos():
    trims = []
    trimmer = IdleTrimmer(delay=0.2, trim=trims.append)
    for _ in range(3):          # photo after photo: each start cancels the pending trim
        with trimmer:
            pass
    with trimmer:               # two photos overlap: the first one's end schedules nothing
        with trimmer:
            time.sleep(0.3)
        time.sleep(0.3)
        assert trims == []
    time.sleep(0.6)
    assert trims == [0] and trimmer.trims == 1


def test_memory_trim_delay_zero_trims_when_the_last_photo_ends():
    trims = []
    trimmer = IdleTrimmer(delay=0, trim=trims.append)
    with trimmer:
        with trimmer:
            pass
        assert trims == []
    assert trims == [0]
