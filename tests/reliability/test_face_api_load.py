"""Issue 6, part 2: the face API (gunicorn, 2 workers) under 32 concurrent clients for 60 s with
a mix of face / no-face / bad inputs: no 5xx, and memory (RSS of master + workers) bounded with
no growth trend."""
from __future__ import annotations

import collections
import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.face_api import start_face_api, worker_pids
from tests.support.photos import make_sources

CLIENTS = 32
SECONDS = 60
RSS_MAX_MB = 1536                 # master + 2 workers, all together
GROWTH_MAX = 0.15                 # mean RSS of the last 20 s vs 10-30 s (after the ramp-up)


def rss_mb(pids) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass                  # a worker recycled between listing and reading
    return total / 1024


def requests_mix(sources: list[Path], root: Path) -> list:
    """(label, kwargs for client.post) covering the API's input kinds."""
    faces = [p for p in sources if p.name.startswith("face-")]
    no_face = [p for p in sources if p.name.startswith("gps-")]
    garbage = bytes(random.Random(1).getrandbits(8) for _ in range(2000))
    truncated = faces[0].read_bytes()[:3000]
    mix = []
    for p in faces:
        mix += [("face-path", "/encode", {"json": {"path": str(p)}}),
                ("face-upload", "/encode", {"files": {"image": (p.name, p.read_bytes(), "image/jpeg")}})]
    for p in no_face[:3]:
        mix.append(("noface-upload", "/encode", {"files": {"image": (p.name, p.read_bytes(), "image/jpeg")}}))
    mix += [
        ("bad-garbage", "/encode", {"files": {"image": ("x.jpg", garbage, "image/jpeg")}}),
        ("bad-truncated", "/encode", {"files": {"image": ("t.jpg", truncated, "image/jpeg")}}),
        ("bad-empty", "/encode", {"files": {"image": ("e.jpg", b"", "image/jpeg")}}),
        ("bad-escape", "/encode", {"json": {"path": str(root / ".." / ".." / "etc" / "passwd")}}),
        ("bad-missing", "/encode", {"json": {"path": str(root / "nope.jpg")}}),
        ("bad-json", "/encode", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("bad-compare", "/compare", {"json": {"encoding": [0.1] * 5, "known_encodings": "x"}}),
        ("compare", "/compare", {"json": {"encoding": [0.1] * 128, "known_encodings": [[0.2] * 128] * 3}}),
    ]
    return mix


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_face_api_32_clients_60s_no_5xx_bounded_memory(shared_testdata, tmp_path):
    root = tmp_path / "storage"
    sources = make_sources(shared_testdata, root / "src")
    url, stop = start_face_api(tmp_path / "api", [root], workers=2)
    mix = requests_mix(sources, root)
    results: list[tuple[str, int, float]] = []        # (label, status, seconds)
    rss: list[tuple[float, float]] = []               # (t, MB)
    lock = threading.Lock()
    try:
        def warm(item):
            label, path, kw = item
            with httpx.Client(timeout=120) as c:      # own connection: spread over both workers
                r = c.post(url + path, **kw)
            assert r.status_code < 500, (label, r.status_code, r.text)
        with ThreadPoolExecutor(8) as pool:           # warm both workers before measuring memory
            list(pool.map(warm, mix * 3))
        start = time.monotonic()
        end = start + SECONDS

        def client(seed: int) -> None:
            rnd = random.Random(seed)
            with httpx.Client(timeout=120) as c:
                while time.monotonic() < end:
                    label, path, kw = rnd.choice(mix)
                    t0 = time.monotonic()
                    try:
                        status = c.post(url + path, **kw).status_code
                    except httpx.HTTPError as exc:
                        status = f"error {type(exc).__name__}"
                    with lock:
                        results.append((label, status, time.monotonic() - t0))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        while time.monotonic() < end:
            rss.append((time.monotonic() - start, rss_mb({stop.pid, *worker_pids(stop.pid)})))
            time.sleep(1)
        for t in threads:
            t.join(150)
        elapsed = time.monotonic() - start
    finally:
        stop()

    statuses = collections.Counter(s for _, s, _ in results)
    by_label = collections.defaultdict(collections.Counter)
    for label, s, _ in results:
        by_label[label][s] += 1
    lat = sorted(d for _, _, d in results)
    q = statistics.quantiles(lat, n=100)
    mbs = [m for _, m in rss]
    first = statistics.mean(m for t, m in rss if 10 <= t < 30)
    last = statistics.mean(m for t, m in rss if t >= SECONDS - 20)
    print(f"\nrequests {len(results)} in {elapsed:.1f}s ({len(results) / elapsed:.1f} rps), "
          f"p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
    print(f"status counts {dict(statuses)}")
    print("by input " + json.dumps({k: dict(v) for k, v in sorted(by_label.items())}, default=str))
    print(f"RSS master+workers: min {min(mbs):.0f} MB, max {max(mbs):.0f} MB, "
          f"mean 10-30 s {first:.0f} MB, last 20 s {last:.0f} MB ({(last / first - 1) * 100:+.1f}%)")

    assert all(isinstance(s, int) and s < 500 for s in statuses), statuses
    assert all(s == 200 for lbl, c in by_label.items() if not lbl.startswith("bad") for s in c), by_label
    assert all(400 <= s < 500 for lbl, c in by_label.items() if lbl.startswith("bad") for s in c), by_label
    assert max(mbs) < RSS_MAX_MB
    assert last <= first * (1 + GROWTH_MAX)
