"""Start a real face API for tests (gunicorn, as face_api/gunicorn.conf.py serves it); reusable
by other test suites.

    url, stop = start_face_api(tmpdir, [storage_root], workers=2)
    ...
    stop()
"""
from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.support.services import (  # noqa: F401 - module global: tests patch it for same-port restarts
    free_port,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).parent / "gunicorn"
TESTDATA = Path(os.environ.get("PHOTO_TESTDATA", PROJECT_ROOT.parent / "shared" / "testdata"))
FACES = TESTDATA / "faces"




def start_face_api(tmpdir, storage_roots, workers: int = 2, env: dict | None = None,
                   ready_timeout: float = 60.0):
    """Start gunicorn with face_api/gunicorn.conf.py on a free port; wait for /health == 200.

    Returns (url, stop). Logs go to tmpdir/logs; debug images to tmpdir/debug.
    """
    tmpdir = Path(tmpdir)
    (tmpdir / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = dict(os.environ)
    full_env.update({
        "PHOTO_STORAGE_ROOT": ":".join(str(r) for r in storage_roots),
        "PHOTO_DEBUG_DIR": str(tmpdir / "debug"),
        "PHOTO_LOG_DIR": str(tmpdir / "logs"),
        "FACE_API_BIND": f"127.0.0.1:{port}",
        "FACE_API_WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(tmpdir / "metrics"),
        "GUNICORN_CMD_ARGS": "",
    })
    full_env.update(env or {})
    stdout = open(tmpdir / "logs" / "gunicorn.out", "ab")
    proc = subprocess.Popen(
        [str(GUNICORN), "-c", str(PROJECT_ROOT / "face_api" / "gunicorn.conf.py"), "face_api.app:app"],
        cwd=PROJECT_ROOT, env=full_env, stdout=stdout, stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def stop():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        stdout.close()

    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            stop()
            log = (tmpdir / "logs" / "gunicorn.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"face API exited with {proc.returncode}:\n{log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop()
            raise RuntimeError("face API did not become ready")
        time.sleep(0.2)
    stop.pid = proc.pid
    return url, stop


def worker_pids(master_pid: int) -> set[int]:
    pids = set()
    for task in Path(f"/proc/{master_pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.update(int(p) for p in children)
    return pids


TIMEOUT = 120


def post_image(url, data: bytes, name="photo.jpg"):
    return httpx.post(url + "/encode", files={"image": (name, data, "application/octet-stream")},
                      timeout=TIMEOUT)


def assert_json_4xx(r, *statuses):
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body["detail"], str) and "\n" not in body["detail"] and body["detail"]


def _png_with_size(width, height) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def synthetic_bad_inputs():
    obama = (FACES / "obama.jpg").read_bytes()
    return {
        "empty": b"",
        "truncated_jpeg": obama[: len(obama) // 2],
        "jpeg_header_only": obama[:600],
        "text": b"hello, I am not an image\n" * 20,
        "bomb_png": _png_with_size(60000, 60000),
        "over_budget_png": _png_with_size(8000, 6000),   # 48 MP > the 40 MP test budget
        "zero_png": _png_with_size(0, 0),
        "random": np.random.default_rng(1).bytes(5000),
    }


def all_testdata_files():
    return sorted(p for p in TESTDATA.rglob("*") if p.is_file())
