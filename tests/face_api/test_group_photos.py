"""YuNet in group photos: rows of real faces close together (bench/group_photos.py) give exactly
one box per face through the real engine; the rules that make it so, each on its own."""
import numpy as np
import pytest

from bench import group_photos
from bench import groundtruth as gt
from face_api import engine
from face_api.detectors import filters, yunet
from face_api.imaging import open_photo
from face_api.settings import Settings

pytest.importorskip("yuface", reason="yuface has wheels for CPython 3.10/3.11 only")


@pytest.fixture(scope="module")
def people(testdata):
    return testdata / "people"


def _boxes_on_faces(photo: group_photos.GroupPhoto, boxes) -> int:
    """Asserts every box lies on exactly one face and no face has two boxes; faces found."""
    truth = [f.box for f in photo.faces]
    for box in boxes:
        covers = [t for t in truth if gt.iou(t, box) >= gt.MATCH_IOU]
        assert len(covers) == 1, f"box {box} is on {len(covers)} faces"
    found = 0
    for face in truth:
        on = [b for b in boxes if gt.iou(face, b) >= gt.MATCH_IOU]
        assert len(on) <= 1, f"face {face} has {len(on)} boxes"
        found += len(on)
    return found


def _encoded(photo: group_photos.GroupPhoto, monkeypatch):
    monkeypatch.delenv("PHOTO_FACE_DETECTOR", raising=False)
    assert Settings().face_detector == "yunet"  # the default engine, as the API runs it
    return engine.encode_image(open_photo(photo.jpeg(), 100_000_000), Settings(debug_images=False))


def test_a_group_photo_gives_exactly_one_box_per_face(people, monkeypatch):
    """Twelve rows of 44 px faces 62 px apart filling a 1200x900 canvas, decoded from a JPEG."""
    pool = group_photos.single_faces(people)
    photo = group_photos.build_photo("rows.jpg", [(44, 62)] * 12, 44, pool, people)
    assert len(photo.faces) >= 80
    result = _encoded(photo, monkeypatch)
    assert _boxes_on_faces(photo, [tuple(b) for b in result.locations]) == len(photo.faces)
    assert len(result.locations) == len(photo.faces) == len(result.encodings)


@pytest.mark.parametrize("face_px, spacing", [(28, 50), (36, 56), (40, 50), (56, 70)])
def test_no_box_between_or_beside_faces_in_rows(people, face_px, spacing, monkeypatch):
    """Other sizes and spacings: no box off a face, none doubled (YuNet misses some of the
    smallest faces; that it found most shows the engine ran)."""
    pool = group_photos.single_faces(people)
    photo = group_photos.build_photo("rows.jpg", [(face_px, spacing)] * 12, face_px, pool, people)
    found = _boxes_on_faces(photo, [tuple(b) for b in _encoded(photo, monkeypatch).locations])
    assert found >= 0.5 * len(photo.faces)


def _candidate(x, y, size, score=0.9):
    landmarks = np.array([[x + 0.3 * size, y + 0.4 * size], [x + 0.7 * size, y + 0.4 * size],
                          [x + 0.5 * size, y + 0.6 * size], [x + 0.35 * size, y + 0.8 * size],
                          [x + 0.65 * size, y + 0.8 * size]])
    return yunet.Candidate(score, (x, y, size, size), landmarks)


def test_a_box_across_two_neighbours_is_dropped_and_the_neighbours_kept():
    left, right = _candidate(100, 100, 50, 0.8), _candidate(160, 100, 50, 0.8)
    between = _candidate(127, 98, 56, 0.9)       # a little larger, centred between them, best score
    kept = yunet.merge([left, right, between], [], 1.0)
    assert between not in kept and left in kept and right in kept
    row = [_candidate(100 + 60 * i, 100, 50) for i in range(5)]   # a row of faces: all kept
    assert yunet.merge(row, [], 1.0) == row


def test_the_large_face_pass_answers_only_for_large_faces():
    factor = 1200 / 320
    small = _candidate(100, 100, 60, 0.99)       # seen at 16 px by the large-face pass
    large = _candidate(300, 100, 400, 0.9)
    assert not yunet.owned_by_large_pass(small, factor) and yunet.owned_by_large_pass(large, factor)
    assert yunet.merge([], [small, large], factor) == [large]
    assert yunet.merge([small], [], factor) == [small]  # the main pass answers for it


@pytest.mark.parametrize("found, same", [
    ((64, 64, 64), True), ((70, 60, 58), True),       # YuNet's box moves a little between looks
    ((64 + 0.5 * 64, 64, 64), False),                 # a neighbour half a face away
    ((64, 64, 110), False), ((64, 64, 36), False),    # another size: not the same face
])
def test_a_second_look_confirms_only_the_same_face(found, same):
    assert filters.same_face((64, 64, 64), found) is same


def test_the_second_look_does_not_confirm_a_box_between_two_faces(people):
    """Two real faces side by side: a box drawn between them finds both when YuNet looks again,
    neither is the same face, so it is not confirmed; each face is confirmed."""
    pool = group_photos.single_faces(people)
    photo = group_photos.build_photo("pair.jpg", [(56, 70)], 3, pool, people, canvas=(300, 200))
    img = photo.rgb
    faces = sorted(yunet.run(img), key=lambda c: c.box[0])
    assert len(faces) >= 2
    for face in faces[:2]:
        assert filters.second_opinion(img, face, yunet.run) >= 0.7
    a, b = faces[0], faces[1]
    size = (a.size + b.size) / 2 * 1.1
    cx = (a.box[0] + a.box[2] / 2 + b.box[0] + b.box[2] / 2) / 2
    cy = (a.box[1] + a.box[3] / 2 + b.box[1] + b.box[3] / 2) / 2
    between = _candidate(cx - size / 2, cy - size / 2, size)
    looked = filters.look_again(img, between, yunet.run)
    assert looked is not None and looked[1], "YuNet should see the neighbours in the crop"
    assert filters.second_opinion(img, between, yunet.run) == 0.0
