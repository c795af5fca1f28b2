"""PHOTO_FACE_DETECTOR=yunet: the setting and its errors, YuNet on real photos, the box calibration
(encodings of calibrated boxes against HOG-box encodings), the bad-input corpus through a real
gunicorn service running YuNet, and the embedded mode's in-process engine honouring the setting."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dlib
import httpx
import numpy as np
import pytest
from PIL import Image

from face_api import engine
from face_api.detectors import DetectorUnavailable, calibration, check_available, filters, yunet
from face_api.detectors import hog as hog_detector
from face_api.imaging import ImageError, open_photo
from face_api.settings import Settings, SettingsError, load_settings

from tests.support.face_api import FACES, PROJECT_ROOT, TESTDATA, start_face_api
from tests.support.face_api import all_testdata_files, assert_json_4xx, post_image, synthetic_bad_inputs

pytest.importorskip("yuface", reason="yuface has wheels for CPython 3.10/3.11 only")


def photo(path):
    return open_photo(Path(path).read_bytes(), max_pixels=100_000_000, draft=False)


@pytest.fixture(scope="module")
def hog():
    return Settings(debug_images=False)


@pytest.fixture(scope="module")
def yu():
    return Settings(debug_images=False, face_detector="yunet")


# ------------------------------------------------------------------ the setting

def test_default_is_yunet(monkeypatch):
    monkeypatch.delenv("PHOTO_FACE_DETECTOR", raising=False)
    assert Settings().face_detector == "yunet"


def test_detector_name_is_normalised():
    assert Settings(face_detector=" YuNet ").face_detector == "yunet"


def test_unknown_detector_is_one_line_naming_the_variable():
    with pytest.raises(SettingsError) as caught:
        load_settings(face_detector="cnn")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("PHOTO_FACE_DETECTOR") and "'cnn'" in message and "hog, yunet" in message


def test_missing_yuface_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "yuface", None)  # what `import yuface` sees where it is absent
    with pytest.raises(DetectorUnavailable):
        check_available("yunet")
    with pytest.raises(SettingsError) as caught:
        load_settings(face_detector="yunet")
    assert "\n" not in str(caught.value) and "yuface" in str(caught.value)
    assert Settings(face_detector="hog").face_detector == "hog"  # hog does not need it


def _start_app(env: dict, block_yuface: bool = False) -> subprocess.CompletedProcess:
    code = ("import sys\n" + ("sys.modules['yuface'] = None\n" if block_yuface else "")
            + "from face_api.app import app\n")
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PHOTO_LOAD_MODELS_AT_IMPORT": "0", **env})


@pytest.mark.parametrize("env, block, words", [
    ({"PHOTO_FACE_DETECTOR": "mtcnn"}, False, ["PHOTO_FACE_DETECTOR", "mtcnn"]),
    ({"PHOTO_FACE_DETECTOR": "yunet"}, True, ["PHOTO_FACE_DETECTOR=yunet", "yuface"]),
])
def test_app_start_up_refuses_in_one_line(env, block, words):
    result = _start_app(env, block)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert all(w in lines[0] for w in words), lines[0]


# ------------------------------------------------------------------ YuNet on real photos

@pytest.mark.parametrize("name, faces", [
    ("obama.jpg", 1), ("biden.jpg", 1), ("two_people.jpg", 2), ("obama-720p.jpg", 1),
])
def test_yunet_finds_the_faces(yu, name, faces):
    result = engine.encode_image(photo(FACES / name), yu)
    assert len(result.locations) == faces
    assert len(result.encodings) == faces and all(len(e) == 128 for e in result.encodings)
    assert result.scale == yu.yunet_max_side and result.scales_tried == [yu.yunet_max_side]
    for top, right, bottom, left in result.locations:
        assert 0 <= top < bottom <= result.height and 0 <= left < right <= result.width
        assert abs((right - left) - (bottom - top)) <= 2  # HOG-like: square


@pytest.mark.parametrize("name", ["immich_prairie_falcon.jpg", "ppex_robot_magenta.jpg",
                                  "lychee_undefined-exif-tag.jpg"])
def test_yunet_no_face_photos(yu, name):
    result = engine.encode_image(photo(TESTDATA / "detect" / name), yu)
    assert result.locations == [] and result.encodings == [] and result.scale is None


def test_face_filling_the_frame_is_found(yu):
    """A face cropped to fill the frame is larger than YuNet's anchors at the main pass's size:
    the small pass finds it."""
    im = Image.open(FACES / "obama.jpg").convert("RGB")
    top, right, bottom, left = hog_detector.face_locations(np.asarray(im))[0]
    crop = np.asarray(im.crop((left - 20, top - 40, right + 20, bottom + 20)).resize((1600, 1700)))
    no_small_pass = Settings(debug_images=False, face_detector="yunet", yunet_large_face_side=0)
    found = engine.encode_image(crop, yu).locations
    assert len(found) == 1  # and not also its eyes or mouth as small faces (faces do not nest)
    face = found[0]
    assert face[2] - face[0] > 800
    without = engine.encode_image(crop, no_small_pass).locations  # what the small pass is for
    assert all(_iou(box, face) < 0.5 for box in without)


def test_response_shape_is_kept(yu, hog):
    ours = engine.encode_image(photo(FACES / "obama.jpg"), yu).as_dict()
    theirs = engine.encode_image(photo(FACES / "obama.jpg"), hog).as_dict()
    assert ours.keys() == theirs.keys() == {"encodings", "locations", "scale", "width", "height"}
    assert (ours["width"], ours["height"]) == (theirs["width"], theirs["height"])


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 200, 3), (31, 33, 3), (64, 64, 3)])
def test_tiny_and_blank_images(yu, shape):
    assert engine.encode_image(np.zeros(shape, np.uint8), yu).locations == []


@pytest.mark.parametrize("name", sorted(synthetic_bad_inputs()))
def test_bad_inputs_are_image_errors(yu, name):
    data = synthetic_bad_inputs()[name]
    with pytest.raises(ImageError):
        engine.encode_image(open_photo(data, max_pixels=40_000_000, draft=False), yu)


def test_second_opinion_confirms_a_face_and_not_a_blank():
    img = np.asarray(Image.open(FACES / "obama.jpg").convert("RGB"))
    face = yunet.run(img)[0]
    assert filters.second_opinion(img, face, yunet.run) >= 0.5
    blank = np.full_like(img, 127)
    assert filters.second_opinion(blank, face, yunet.run) == 0.0


# ------------------------------------------------------------------ calibration vs HOG boxes

CALIBRATION_PHOTOS = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "two_people.jpg",
                      "alex-lacamoire.png", "lin-manuel-miranda.png", "obama-720p.jpg"]


@pytest.fixture(scope="module")
def box_pairs():
    """(image, HOG box, calibrated YuNet box) for every face both detectors find."""
    out = []
    for name in CALIBRATION_PHOTOS:
        img = photo(FACES / name).scaled(1200)
        found = yunet.run(img)
        for box in hog_detector.face_locations(img):
            ours = [calibration.hog_box(c, img.shape) for c in found]
            best = max(ours, key=lambda b: _iou(b, box))
            assert _iou(best, box) >= 0.5, (name, box, best)
            out.append((img, box, best))
    assert len(out) >= len(CALIBRATION_PHOTOS)
    return out


def _iou(a, b):
    top, right, bottom, left = a
    top2, right2, bottom2, left2 = b
    inter = max(0, min(right, right2) - max(left, left2)) * max(0, min(bottom, bottom2) - max(top, top2))
    return inter / ((right - left) * (bottom - top) + (right2 - left2) * (bottom2 - top2) - inter)


def test_calibrated_box_encodings_match_hog_box_encodings(box_pairs):
    """YuNet's path (calibrated box, landmarks averaged over its half-cell shifts) against the
    encoding of HOG's own box on the same image."""
    distances = []
    for img, hog_box, ours in box_pairs:
        a, = engine.face_encodings(img, [hog_box])
        b, = engine.face_encodings(img, [ours], landmarks=calibration.landmarks)
        distances.append(float(np.linalg.norm(a - b)))
    assert max(distances) <= 0.1, distances
    assert float(np.median(distances)) <= 0.05, distances


def test_averaged_landmarks_stay_on_the_face(box_pairs):
    """Averaging over half-cell shifts moves dlib's points by a few pixels, never off the face."""
    models = engine.load_models()
    for img, hog_box, _ in box_pairs:
        top, right, bottom, left = hog_box
        one = models.shape_predictor(img, dlib.rectangle(left, top, right, bottom))
        averaged = calibration.landmarks(img, hog_box, models.shape_predictor)
        assert averaged.num_parts == one.num_parts == 5
        assert averaged.rect == one.rect
        moved = [np.hypot(p.x - q.x, p.y - q.y) for p, q in zip(averaged.parts(), one.parts())]
        assert max(moved) <= 0.05 * (bottom - top) + 1, moved


def test_engine_encodes_yunet_faces_with_averaged_landmarks(yu):
    result = engine.encode_image(photo(FACES / "two_people.jpg"), yu)
    want = engine.face_encodings(result.detection_image, result.detection_locations,
                                 landmarks=calibration.landmarks)
    np.testing.assert_allclose(result.encodings, want, atol=1e-6)


def test_fit_recovers_the_constants(box_pairs):
    """fit() on boxes drawn by the mapping itself gives the mapping's constants back."""
    pairs = []
    for name in CALIBRATION_PHOTOS[:4]:
        img = photo(FACES / name).scaled(1200)
        c = yunet.run(img)[0]
        pairs.append((c, calibration.hog_box(c, img.shape, (0.05, -0.03, 0.9))))
    assert np.allclose(calibration.fit(pairs), (0.05, -0.03, 0.9), atol=0.02)


# ------------------------------------------------------------------ through HTTP, embedded mode

@pytest.fixture(scope="module")
def yunet_api(tmp_path_factory, storage_roots):
    tmp = tmp_path_factory.mktemp("face_api_yunet")
    url, stop = start_face_api(tmp, storage_roots[:2], workers=1, env={
        "PHOTO_FACE_DETECTOR": "yunet", "PHOTO_MAX_UPLOAD_BYTES": str(5 * 1024 * 1024),
        "PHOTO_MAX_PIXELS": str(40_000_000)})
    yield url
    stop()


def test_http_health_names_yunet(yunet_api):
    body = httpx.get(yunet_api + "/health").json()
    assert body["detector"] == "yunet" and body["detector_package"] == "yuface"
    assert body["detector_version"] == "2023.5.1"
    assert body["runtime"] == "onnxruntime" and body["detector_runtime"] == "onnxruntime"
    assert body["encoder_runtime"] == "onnxruntime" and "detector_fallback_reason" not in body


@pytest.mark.parametrize("name", ["two_people.jpg", "obama.jpg"])
def test_both_runtimes_find_and_encode_the_same_faces(name):
    """PHOTO_FACE_RUNTIME=native (yuface's and dlib's code) and onnxruntime: same boxes, same
    encodings to float rounding."""
    data = (FACES / name).read_bytes()
    answers = [engine.encode_image(open_photo(data, 100_000_000),
                                   Settings(face_detector="yunet", face_runtime=runtime, debug_images=False))
               for runtime in ("native", "onnxruntime")]
    assert answers[0].locations == answers[1].locations and answers[0].locations
    assert np.max(np.abs(np.array(answers[0].encodings) - np.array(answers[1].encodings))) < 1e-5


def test_a_yunet_graph_that_cannot_be_built_falls_back_to_yuface(monkeypatch):
    from face_api.networks import yunet_onnx

    def refuse(self, path=None):
        raise yunet_onnx.ModelFormatError("another libfacedetection")

    from face_api.networks.onnxgraph import Rebuilt

    monkeypatch.setattr(yunet, "onnx", Rebuilt("YuNet passes", yunet._checked_onnx))
    monkeypatch.setattr(yunet_onnx.Detector, "__init__", refuse)
    img = np.asarray(Image.open(FACES / "obama.jpg").convert("RGB"))
    found = yunet.run(img)
    assert len(found) == 1 and yunet.onnx.runtime("onnxruntime", "yuface") == "yuface"
    assert "another libfacedetection" in yunet.onnx.problem


def test_http_encode_with_yunet(yunet_api):
    r = post_image(yunet_api, (FACES / "two_people.jpg").read_bytes(), "two_people.jpg")
    assert r.status_code == 200
    body = r.json()
    assert len(body["locations"]) == len(body["encodings"]) == 2
    assert set(body) == {"encodings", "locations", "scale", "width", "height", "debug_image_path"}


def test_http_debug_image_of_a_yunet_pass(yunet_api):
    """The debug JPEG is the pass image (the photo at 1200 px) with the returned boxes drawn."""
    r = post_image(yunet_api, (FACES / "obama3.jpg").read_bytes(), "obama3.jpg")
    assert r.status_code == 200
    body = r.json()
    debug = Image.open(body["debug_image_path"]).convert("RGB")
    assert debug.size == (738, 1200) and len(body["locations"]) == 1
    f = 1200 / body["height"]
    top, right, bottom, left = (round(v * f) for v in body["locations"][0])
    edge = np.asarray(debug)[top:bottom, max(0, left - 1):left + 2].reshape(-1, 3).astype(int)
    red = (edge[:, 0] > 180) & (edge[:, 1] < 90) & (edge[:, 2] < 90)
    assert red.mean() > 0.8


@pytest.mark.parametrize("name", sorted(synthetic_bad_inputs()))
def test_http_bad_inputs_with_yunet(yunet_api, name):
    assert_json_4xx(post_image(yunet_api, synthetic_bad_inputs()[name], name))


def test_http_every_testdata_file_with_yunet(yunet_api):
    """Every file of the shared testdata tree: 200 with boxes inside the photo, or a 4xx."""
    files = all_testdata_files()

    def one(p):
        return p, post_image(yunet_api, p.read_bytes(), p.name)

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(one, files))
    assert not {p: r.text[:200] for p, r in results.items() if r.status_code >= 500}
    answered = {p: r.json() for p, r in results.items() if r.status_code == 200}
    assert {"obama.jpg", "IMG_5195.HEIC", "jolla.jpg"} <= {p.name for p in answered}
    assert all(_boxes_inside(body) for body in answered.values())
    for r in results.values():
        if r.status_code != 200:
            assert_json_4xx(r)
    assert httpx.get(yunet_api + "/health").status_code == 200


def _boxes_inside(body) -> bool:
    return len(body["encodings"]) == len(body["locations"]) and all(
        0 <= t < b <= body["height"] and 0 <= lf < rt <= body["width"]
        for t, rt, b, lf in body["locations"])


def test_embedded_mode_honours_the_setting(monkeypatch):
    """workers' in-process engine (PHOTO_FACE_ENGINE=inprocess) reads the same PHOTO_ setting."""
    from face_api.settings import get_settings
    from workers.faces import client

    monkeypatch.setenv("PHOTO_FACE_DETECTOR", "yunet")
    get_settings.cache_clear()
    try:
        result = client._encode_inprocess(FACES / "two_people.jpg")
    finally:
        get_settings.cache_clear()
    assert result["scale"] == Settings(face_detector="yunet").yunet_max_side
    assert len(result["locations"]) == 2


def test_yunet_runs_one_openmp_thread_per_engine_thread():
    """Never libgomp's default of one thread per core in every worker."""
    import threading

    seen = []

    def one():
        yunet.run(np.zeros((64, 64, 3), np.uint8), runtime="native")
        seen.append(yunet._load()[1].omp_get_max_threads())

    worker = threading.Thread(target=one)
    worker.start()
    worker.join()
    assert seen == [1]
