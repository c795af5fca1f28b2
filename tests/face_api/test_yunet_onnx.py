"""YuNet run by onnxruntime (face_api/networks/yunet_onnx.py) against yuface's libfacedetection:
the same detections on real photos at 1200 px, at sides that are not multiples of 32, on the
~100 px crops of the second look, and on tiny images. (What each costs: bench/face_quality.py
--sections runtimes.)
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from face_api.networks import yunet_onnx
from tests.support.face_api import TESTDATA

pytest.importorskip("yuface", reason="yuface has wheels for CPython 3.10/3.11 only")
pytest.importorskip("onnxruntime")

DETECT = TESTDATA / "detect"


def _photos():
    return sorted(DETECT.glob("*.jpg"))


def _resized(rgb, long_side):
    h, w = rgb.shape[:2]
    f = long_side / max(h, w)
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                  Image.BILINEAR))


def images():
    """(name, RGB) pairs: every photo at 1200 px long side, some at 320 px and at odd sizes,
    ~100 px crops around the faces found (the second look's size), and tiny images."""
    from yuface.yuface import detect

    out = []
    for i, path in enumerate(_photos()):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        big = _resized(rgb, 1200)
        out.append((f"{path.name}@1200", big))
        if i % 3 == 0:
            out.append((f"{path.name}@320", _resized(rgb, 320)))
            out.append((f"{path.name}@777", _resized(rgb, 777)))
        for j, row in enumerate(detect(np.ascontiguousarray(big[:, :, ::-1]))[:3]):
            x, y, w, h = (int(v) for v in row[1:5])
            side = 90 + 7 * j + i % 11                       # 90..115 px, mostly not /32
            cx, cy = x + w // 2, y + h // 2
            crop = big[max(0, cy - side // 2):cy + side // 2 + j,
                       max(0, cx - side // 2):cx + side // 2]
            if min(crop.shape[:2]) >= 1:
                out.append((f"{path.name} crop{j} {crop.shape[1]}x{crop.shape[0]}",
                            _resized(crop, 64 * 3) if j == 2 else crop))
    rng = np.random.default_rng(1)
    for h, w in ((1, 1), (1, 40), (20, 30), (31, 33), (32, 32), (65, 47)):
        out.append((f"noise {w}x{h}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    if _photos():
        face = np.asarray(Image.open(_photos()[0]).convert("RGB"))
        out.append(("photo 20x30", _resized(face, 30)))
    out.append(("synthetic", np.ascontiguousarray(yunet_onnx._test_image()[:, :, ::-1])))
    return out


@pytest.fixture(scope="module")
def det():
    return yunet_onnx.Detector()


def agreement(pairs, det):
    """Matching statistics of onnx rows against yuface rows over (name, RGB) images."""
    from yuface.yuface import detect

    stats = {"images": 0, "yuface": 0, "onnx": 0, "identical_images": 0, "problems": [],
             "unmatched_near_floor": 0, "score": 0.0, "box": 0, "landmarks": 0}
    for name, rgb in pairs:
        theirs = np.asarray(detect(np.ascontiguousarray(rgb[:, :, ::-1])))[:, :15].astype(int)
        ours = det.run(rgb)[:, :15].astype(int)
        stats["images"] += 1
        stats["yuface"] += int(np.sum(theirs[:, 0] >= 30))
        stats["onnx"] += int(np.sum(ours[:, 0] >= 30))
        stats["identical_images"] += int(theirs.shape == ours.shape and np.all(theirs == ours))
        stats["problems"] += [f"{name}: {p}" for p in yunet_onnx.compare(ours, theirs)]
        for a, b in ((theirs, ours), (ours, theirs)):
            for row in a[a[:, 0] >= 30]:
                near = [o for o in b if yunet_onnx._row_iou(row, o) >= 0.9]
                if not near:
                    stats["unmatched_near_floor"] += 1
                    continue
                o = min(near, key=lambda o: np.abs(o[1:15] - row[1:15]).max())
                stats["score"] = max(stats["score"], abs(row[0] - o[0]) / 100)
                stats["box"] = max(stats["box"], int(np.abs(row[1:5] - o[1:5]).max()))
                stats["landmarks"] = max(stats["landmarks"], int(np.abs(row[5:15] - o[5:15]).max()))
    return stats


@pytest.fixture(scope="module")
def stats(det):
    if not _photos():
        pytest.skip(f"{DETECT} has no photos")
    return agreement(images(), det)


def test_same_detections_as_yuface(stats):
    assert stats["problems"] == []
    assert stats["yuface"] >= 100 and stats["images"] >= 80
    assert stats["score"] <= 0.02 and stats["box"] <= 2 and stats["landmarks"] <= 1.5


def test_tiny_and_blank_images(det):
    from yuface.yuface import detect

    for shape in ((1, 1, 3), (2, 3, 3), (20, 30, 3), (33, 1, 3)):
        for value in (0, 128, 255):
            rgb = np.full(shape, value, dtype=np.uint8)
            assert yunet_onnx.compare(det.run(rgb), np.asarray(detect(rgb))) == []
            assert det.run(rgb).shape[1] == 16 and det.run(rgb).dtype == np.int16


def test_check_against_yuface_and_threads(det):
    from yuface.yuface import detect

    assert det.check_against(detect) == 3               # the three drawn faces
    photo = _resized(np.asarray(Image.open(_photos()[0]).convert("RGB")), 640)
    one = det.run(photo)
    with ThreadPoolExecutor(4) as pool:
        for rows in pool.map(det.run, [photo] * 8):
            assert np.array_equal(rows, one)
