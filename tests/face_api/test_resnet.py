"""dlib's face ResNet run by onnxruntime (face_api/networks/resnet.py) against dlib's own, on real faces."""
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from face_api import engine
from face_api.detectors import hog
from face_api.imaging import open_photo
from face_api.networks import resnet
from face_api.networks.onnxgraph import Rebuilt
from face_api.settings import Settings

from tests.support.face_api import FACES

PEOPLE = FACES / "people"


def _people_photos(limit=12):
    return sorted(p for p in PEOPLE.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]


@pytest.fixture(scope="module")
def models():
    return engine.load_models()


def test_the_onnx_network_is_built_and_checked_on_first_use(models):
    assert models.onnx_encoder.get() is not None and models.onnx_encoder.problem is None
    assert engine.encoder_runtime(Settings(debug_images=False), models) == "onnxruntime"
    assert engine.encoder_runtime(Settings(debug_images=False, face_runtime="native"), models) == "dlib"


def test_encodings_equal_dlibs_on_real_faces(models):
    """Same boxes, same landmarks, both runtimes: the encodings agree to float rounding."""
    compared = 0
    for path in _people_photos():
        img = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
        boxes = hog.face_locations(img, 1)
        ours = engine.face_encodings(img, boxes, 1, models, runtime="onnxruntime")
        theirs = engine.face_encodings(img, boxes, 1, models, runtime="native")
        for a, b in zip(ours, theirs):
            assert np.max(np.abs(a - b)) < 1e-5
            compared += 1
    assert compared >= 8


def test_the_whole_pipeline_gives_the_same_answer_under_both_runtimes(models):
    data = (FACES / "obama.jpg").read_bytes()
    fast = engine.encode_image(open_photo(data, 100_000_000), Settings(debug_images=False), models)
    slow = engine.encode_image(open_photo(data, 100_000_000),
                               Settings(debug_images=False, face_runtime="native"), models)
    assert fast.locations == slow.locations and len(fast.encodings) == 1
    assert np.max(np.abs(np.array(fast.encodings) - np.array(slow.encodings))) < 1e-5


def test_jitters_keep_dlibs_call(models):
    """dlib jitters with its own random crops: more than one jitter is dlib's computation."""
    class NotToBeCalled:
        def encode(self, chips):
            raise AssertionError("onnxruntime used for a jittered encoding")

    img = np.asarray(Image.open(FACES / "obama.jpg").convert("RGB"))
    boxes = hog.face_locations(img, 1)
    jittered = engine.face_encodings(img, boxes, 3, replace(models, onnx_encoder=Rebuilt("x", NotToBeCalled)))
    plain = engine.face_encodings(img, boxes, 1, models)
    assert 0 < np.linalg.norm(jittered[0] - plain[0]) < 0.3   # the same face, jittered


def test_threads_share_one_session(models):
    img = np.asarray(Image.open(FACES / "biden.jpg").convert("RGB"))
    boxes = hog.face_locations(img, 1)
    want = engine.face_encodings(img, boxes, 1, models)
    with ThreadPoolExecutor(4) as pool:
        for got in pool.map(lambda _: engine.face_encodings(img, boxes, 1, models), range(8)):
            assert np.array_equal(got[0], want[0])


def test_a_batch_equals_one_chip_at_a_time(models):
    chips = np.random.default_rng(3).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    encoder = models.onnx_encoder.get()
    batch = encoder.encode(chips)
    for chip, row in zip(chips, batch):
        assert np.max(np.abs(encoder.encode(chip[None])[0] - row)) < 1e-6


@pytest.mark.parametrize("damage", ["truncated", "not dlib", "empty"])
def test_a_damaged_model_file_falls_back_to_dlib_with_a_reason(models, tmp_path, damage):
    bad = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    shutil.copy(models.files.face_recognition, bad)
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "not dlib": b"\x01\x01\x05hello" + data,
                     "empty": b""}[damage])
    with pytest.raises(resnet.ModelFormatError):
        resnet.read_network(bad)
    rebuilt = Rebuilt("face encodings", lambda: resnet.checked_encoder(bad, models.encoder))
    assert rebuilt.get() is None
    assert "ModelFormatError" in rebuilt.problem and "\n" not in rebuilt.problem
    fallback = replace(models, onnx_encoder=rebuilt)
    assert engine.encoder_runtime(Settings(debug_images=False), fallback) == "dlib"
    img = np.asarray(Image.open(FACES / "obama.jpg").convert("RGB"))
    boxes = hog.face_locations(img, 1)
    assert len(engine.face_encodings(img, boxes, 1, fallback)) == 1   # dlib's, still answered


def test_a_network_that_does_not_reproduce_dlib_is_refused(models):
    """The load-time check: a graph with one weight changed is not used."""
    means, layers = resnet.read_network(models.files.face_recognition)
    layers[-1].params["weight"] = layers[-1].params["weight"] * 1.01
    encoder = resnet.Encoder.__new__(resnet.Encoder)
    encoder.means = np.asarray(means, dtype=np.float32)
    import onnxruntime as ort

    encoder.session = ort.InferenceSession(resnet.build_onnx(layers), providers=["CPUExecutionProvider"])
    with pytest.raises(resnet.ModelFormatError, match="differ from dlib"):
        encoder.check_against(models.encoder)
