"""A busy face API worker takes no new connection: the next request waits in the listen backlog
for a free worker (gthread, worker_connections = threads) instead of queueing behind a photo in
a worker that accepted it eagerly (the original's uvicorn workers). Checked by order, not time:
one worker with one thread computes a large photo; a /health sent meanwhile is answered only
after the photo, while under uvicorn workers it is answered first."""
import io
import threading

import httpx
import pytest
from PIL import Image

from tests.support.face_api import TESTDATA, start_face_api, worker_pids
from tests.support.services import cpu_seconds


@pytest.fixture(scope="module")
def large_photo() -> bytes:
    """A 12 MP photo without a face: every HOG scale runs, about a second of work."""
    with Image.open(TESTDATA / "exif/jpg/gps/DSCN0010.jpg") as im:
        big = im.convert("RGB").resize((4000, 3000), Image.BILINEAR)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _order_of_answers(tmp_path, large_photo, worker_class: str) -> list[str]:
    # HOG's three passes on a 12 MP photo keep the one thread busy long enough to send /health
    url, stop = start_face_api(tmp_path, [tmp_path], workers=1, env={
        "FACE_API_WORKER_CLASS": worker_class, "FACE_API_THREADS": "1", "PHOTO_FACE_DETECTOR": "hog"})
    answered: list[str] = []
    try:
        worker, = worker_pids(stop.pid)
        cpu_before = cpu_seconds(worker)

        def encode():
            r = httpx.post(url + "/encode", files={"image": ("big.jpg", large_photo)}, timeout=120)
            answered.append(f"encode {r.status_code}")

        photo = threading.Thread(target=encode)
        photo.start()
        # The worker is computing once its CPU time moves (it has accepted the photo).
        while cpu_seconds(worker) - cpu_before < 0.15 and photo.is_alive():
            threading.Event().wait(0.02)
        r = httpx.get(url + "/health", timeout=120)
        answered.append(f"health {r.status_code}")
        photo.join(120)
    finally:
        stop()
    return answered


def test_a_busy_worker_leaves_the_next_request_to_a_free_one(tmp_path, large_photo):
    assert _order_of_answers(tmp_path, large_photo, "gthread") == ["encode 200", "health 200"]


def test_uvicorn_workers_take_requests_while_busy(tmp_path, large_photo):
    """The original's way, still selectable: the request is taken at once (and answered first
    here only because /health needs no engine slot)."""
    order = _order_of_answers(tmp_path, large_photo, "uvicorn.workers.UvicornWorker")
    assert order == ["health 200", "encode 200"]
