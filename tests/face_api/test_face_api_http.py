"""Endpoints through a real gunicorn (2 gthread workers): encode, compare, health, metrics,
path traversal, and the bad-input corpus (every file under the testdata tree + synthetic)."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.face_api import (
    FACES, TIMEOUT, all_testdata_files, assert_json_4xx, post_image, synthetic_bad_inputs, worker_pids,
)


def test_health(face_api_url):
    r = httpx.get(face_api_url + "/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["mode"] == "cpu"
    files = body["models"]["files"]
    assert "dlib_face_recognition_resnet_model_v1.dat" in files
    assert "shape_predictor_5_face_landmarks.dat" in files
    assert body["versions"]["dlib"]
    # gunicorn's `threads` (2 by default) becomes the photos one uvicorn worker runs at once
    assert body["threads"] == 2 and body["rescan"] == "new levels + 0"
    assert body["skip_covered_scales"] is True and body["draft_decode"] is True
    assert body["encoder_runtime"] == "onnxruntime" and "encoder_fallback_reason" not in body


def test_concurrent_requests_give_the_sequential_answers(face_api_url):
    """More requests than workers x threads at once: every answer equals the one-at-a-time one."""
    names = ["obama.jpg", "biden.jpg", "obama2.jpg", "32bit.png", "obama_partial_face.jpg"]
    datas = [(FACES / n).read_bytes() for n in names]
    sequential = [post_image(face_api_url, d).json() for d in datas]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda d: post_image(face_api_url, d).json(), datas * 2))
    for want, got in zip(sequential * 2, parallel):
        assert got["locations"] == want["locations"]
        assert got["encodings"] == want["encodings"]


def test_encode_upload_obama(face_api_url):
    r = post_image(face_api_url, (FACES / "obama.jpg").read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["locations"] == [[142, 617, 409, 349]]
    assert body["scale"] == 1200 and (body["width"], body["height"]) == (910, 1137)
    assert len(body["encodings"]) == 1 and len(body["encodings"][0]) == 128
    debug = Path(body["debug_image_path"])
    assert debug.is_file() and Image.open(debug).format == "JPEG"
    assert not list(debug.parent.glob(".tmp-*"))


def test_encode_by_path_form_and_json(face_api_url, storage_roots):
    root1, root2, _ = storage_roots
    a = httpx.post(face_api_url + "/encode", data={"path": "faces/obama.jpg"}, timeout=TIMEOUT)
    b = httpx.post(face_api_url + "/encode", json={"path": str(root1 / "faces" / "obama.jpg")},
                   timeout=TIMEOUT)
    c = httpx.post(face_api_url + "/encode", json={"path": "second.jpg"}, timeout=TIMEOUT)  # 2nd root
    for r in (a, b, c):
        assert r.status_code == 200, r.text
    assert a.json()["locations"] == b.json()["locations"] == [[142, 617, 409, 349]]
    assert c.json()["locations"] == [[290, 438, 558, 171]]


@pytest.mark.parametrize("path", [
    "../outside/secret.jpg",
    "faces/../../outside/secret.jpg",
    "/etc/passwd",
    "escape.jpg",               # symlink to a file outside the roots
    "escape_dir/secret.jpg",    # symlinked directory outside the roots
])
def test_path_outside_roots_is_403(face_api_url, storage_roots, path):
    r = httpx.post(face_api_url + "/encode", json={"path": path}, timeout=TIMEOUT)
    assert_json_4xx(r, 403)
    r = httpx.post(face_api_url + "/encode", data={"path": path}, timeout=TIMEOUT)
    assert_json_4xx(r, 403)


def test_absolute_path_outside_via_dotdot_is_403(face_api_url, storage_roots):
    root1, _, outside = storage_roots
    r = httpx.post(face_api_url + "/encode", json={"path": f"{root1}/../outside/secret.jpg"})
    assert_json_4xx(r, 403)


def test_missing_path_is_404(face_api_url):
    assert_json_4xx(httpx.post(face_api_url + "/encode", json={"path": "faces/nope.jpg"}), 404)
    assert_json_4xx(httpx.post(face_api_url + "/encode", json={"path": "faces"}), 404)


@pytest.mark.parametrize("kwargs", [
    {"json": {}},
    {"json": {"path": 5}},
    {"json": {"path": ""}},
    {"json": ["faces/obama.jpg"]},
    {"content": b"{not json", "headers": {"content-type": "application/json"}},
    {"content": b"raw bytes", "headers": {"content-type": "image/jpeg"}},
    {"data": {"image": "not a file"}},
    {"data": {"other": "x"}},
    {"content": b"--xx\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=xx"}},
])
def test_encode_wrong_request_shapes(face_api_url, kwargs):
    assert_json_4xx(httpx.post(face_api_url + "/encode", timeout=TIMEOUT, **kwargs))


@pytest.mark.parametrize("name", sorted(synthetic_bad_inputs()))
def test_synthetic_bad_inputs_are_4xx(face_api_url, name):
    r = post_image(face_api_url, synthetic_bad_inputs()[name], name)
    assert_json_4xx(r)
    if "bomb" in name or "budget" in name:
        assert r.status_code == 413


def test_upload_over_size_limit_is_413(face_api_url):
    r = post_image(face_api_url, b"\xff" * (6 * 1024 * 1024))
    assert_json_4xx(r, 413)


def test_every_testdata_file(face_api_service, tmp_path):
    """Every file of the shared testdata tree, and an empty file with an odd name: 200 with a
    well-formed answer, or a 4xx JSON. No 5xx, and no worker dies."""
    url, master, _ = face_api_service
    empty = tmp_path / '"odd dir"' / 'empty.tiff"'
    empty.parent.mkdir()
    empty.touch()
    files = all_testdata_files() + [empty]
    assert len(files) >= 60
    assert any(p.suffix.upper() == ".HEIC" for p in files)
    before = worker_pids(master)

    def one(p):
        return p, post_image(url, p.read_bytes(), p.name)

    results = {}
    with ThreadPoolExecutor(4) as pool:
        for p, r in pool.map(one, files):
            results[p] = r
    for p, r in results.items():
        assert r.status_code < 500, (p, r.status_code, r.text[:200])
        if r.status_code == 200:
            body = r.json()
            assert len(body["encodings"]) == len(body["locations"])
            for t, rt, b, lf in body["locations"]:
                assert 0 <= t < b <= body["height"] and 0 <= lf < rt <= body["width"]
        else:
            assert_json_4xx(r)
    # the known-good photos decode; the empty odd-named tiff is refused
    ok = {p.name for p, r in results.items() if r.status_code == 200}
    assert {"obama.jpg", "IMG_5195.HEIC", "samplefilehub.heif", "corrupted.jpg", "jolla.jpg"} <= ok
    assert all(results[p].status_code == 400 for p in files if p.stat().st_size == 0)
    # orientation: portrait_N all come out 450x600 wide x high after EXIF orientation
    for p, r in results.items():
        if p.parent.name == "orientation":
            body = r.json()
            expect = (450, 600) if p.name.startswith("portrait") else (600, 450)
            assert (body["width"], body["height"]) == expect, p
    assert worker_pids(master) == before
    assert httpx.get(url + "/health").status_code == 200


def test_compare(face_api_url):
    a = post_image(face_api_url, (FACES / "obama.jpg").read_bytes()).json()["encodings"][0]
    b = post_image(face_api_url, (FACES / "biden.jpg").read_bytes()).json()["encodings"][0]
    r = httpx.post(face_api_url + "/compare", json={"encoding": a, "known_encodings": [a, b]})
    assert r.status_code == 200
    d = r.json()["distances"]
    assert d[0] == pytest.approx(0.0, abs=1e-9)
    assert d[1] == pytest.approx(np.linalg.norm(np.array(a) - np.array(b)), abs=1e-9)
    assert d[1] > 0.6
    r = httpx.post(face_api_url + "/compare", json={"encoding": a, "known_encodings": []})
    assert r.json() == {"distances": []}


@pytest.mark.parametrize("body", [
    {"encoding": [0.1] * 127, "known_encodings": [[0.1] * 128]},
    {"encoding": [0.1] * 128, "known_encodings": [[0.1] * 129]},
    {"encoding": [0.1] * 128},
    {"known_encodings": []},
    {"encoding": "abc", "known_encodings": []},
    {"encoding": [0.1] * 128, "known_encodings": [0.1] * 128},
    {"encoding": ["x"] * 128, "known_encodings": []},
    [],
    "text",
])
def test_compare_bad_input(face_api_url, body):
    assert_json_4xx(httpx.post(face_api_url + "/compare", json=body))


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_compare_non_finite(face_api_url, bad):
    enc = ", ".join(["0.1"] * 127 + [bad])
    raw = f'{{"encoding": [{enc}], "known_encodings": []}}'
    r = httpx.post(face_api_url + "/compare", content=raw, headers={"content-type": "application/json"})
    assert_json_4xx(r)
    raw = f'{{"encoding": [{", ".join(["0.1"] * 128)}], "known_encodings": [[{enc}]]}}'
    r = httpx.post(face_api_url + "/compare", content=raw, headers={"content-type": "application/json"})
    assert_json_4xx(r)


def test_unknown_route_and_method(face_api_url):
    assert_json_4xx(httpx.get(face_api_url + "/nope"), 404)
    assert_json_4xx(httpx.get(face_api_url + "/encode"), 405)


def test_metrics(face_api_url):
    post_image(face_api_url, (FACES / "obama.jpg").read_bytes())
    text = httpx.get(face_api_url + "/metrics").text
    assert "face_api_requests_total" in text
    assert "face_api_request_seconds_bucket" in text
    assert "face_api_faces_found_total" in text


def test_logs_written(face_api_service):
    url, _, tmp = face_api_service
    httpx.get(url + "/health")
    assert (tmp / "logs" / "face-api-error.log").exists()
    assert (tmp / "logs" / "face-api-access.log").exists()
