"""Benchmark: /encode throughput and latency, ours vs a reference reproducing the original server.

    .venv/bin/python bench/face_api.py [--photos 64] [--clients 2xCPUs] [--configs box,cores] [--variants]

Builds a library-like mix at runtime (half no-face camera photos upscaled to 8-12 MP, half face
photos pasted on large canvases, a few with small faces) into a temp dir, then for each gunicorn
configuration starts the reference and ours one after the other with the same workers and
clients, and prints figures side by side: throughput, p50/p95 latency, face recall vs the
reference (IoU >= 0.5), extra faces, max encoding delta of matched faces, worker memory (RSS/PSS).
Not a test; run it by hand on an otherwise idle machine.

Configurations (the reference processes one photo at a time per worker, which is what the
original's "16 workers x 2 threads = ~50% CPU" on the box says):
  box    the box's shape scaled to this machine: workers = CPUs / 2, 2 threads each (16 x 2 on 32)
  cores  workers = CPUs, 1 thread each: per-photo CPU cost only, every core busy on both sides

The reference ("original server"): PIL full decode -> RGB -> for scale in 1200/1600/2000: LANCZOS
resize of the full decode to the scale -> face_recognition.face_locations(upsample 1, hog) ->
stop when found -> face_recognition.face_encodings(img, boxes) on the same scaled image.
"""


import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TESTDATA = Path(os.environ.get("PHOTO_TESTDATA", "/work/shared/testdata"))
SCALES = [1200, 1600, 2000]


# ------------------------------------------------------------------ the reference server (ASGI)

def _reference_app():
    import numpy as np
    from fastapi import FastAPI, UploadFile
    from PIL import Image

    try:
        import face_recognition.api as fr
        face_locations, face_encodings = fr.face_locations, fr.face_encodings
    except BaseException:  # face_recognition needs pkg_resources: same calls through our building blocks
        from face_api import engine
        face_locations = lambda img, number_of_times_to_upsample, model: engine.face_locations(img, number_of_times_to_upsample)  # noqa: E731
        face_encodings = lambda img, boxes: engine.face_encodings(img, boxes)  # noqa: E731

    app = FastAPI()
    lock = threading.Lock()

    @app.post("/encode")
    def encode(image: UploadFile):
        with lock:  # one photo at a time per worker, as the original
            return _encode(image)

    def _encode(image):
        im = Image.open(image.file).convert("RGB")
        w, h = im.size
        boxes, img = [], None
        for scale in SCALES:
            f = min(1.0, scale / max(w, h))
            scaled = im if f == 1.0 else im.resize((round(w * f), round(h * f)), Image.LANCZOS)
            img = np.array(scaled)
            boxes = face_locations(img, number_of_times_to_upsample=1, model="hog")
            if boxes or max(w, h) <= scale:
                break
        encs = face_encodings(img, boxes)
        fy, fx = h / img.shape[0], w / img.shape[1]
        locs = [[round(t * fy), round(r * fx), round(b * fy), round(lf * fx)] for t, r, b, lf in boxes]
        return {"encodings": [e.tolist() for e in encs], "locations": locs,
                "scale": scale if boxes else None, "width": w, "height": h}

    return app


if os.environ.get("FACE_BENCH_REFERENCE") == "1":
    reference_app = _reference_app()


# ------------------------------------------------------------------ the photo mix

def build_mix(out: Path, n: int, seed: int = 7) -> list[Path]:
    from PIL import Image, ImageOps

    rng = random.Random(seed)
    canvases = [(4000, 3000), (3648, 2736), (3264, 2448), (4032, 3024), (3000, 4000)]
    backgrounds = sorted((TESTDATA / "exif" / "jpg" / "gps").glob("*.jpg")) + [
        TESTDATA / "exif/jpg/orientation/landscape_1.jpg", TESTDATA / "exif/jpg/mobile/jolla.jpg",
        TESTDATA / "exif/jpg/corrupted.jpg"]
    faces = [p for p in sorted((TESTDATA / "faces").rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")
             and "partial" not in p.name and "small" not in p.name and "240p" not in p.name]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        cw, ch = canvases[i % len(canvases)]
        bg = ImageOps.exif_transpose(Image.open(backgrounds[i % len(backgrounds)])).convert("RGB")
        canvas = ImageOps.fit(bg, (cw, ch), Image.BICUBIC)
        if i % 2 == 1:  # a face photo pasted on the canvas
            face = Image.open(faces[(i // 2) % len(faces)]).convert("RGB")
            # mostly large (found at the first scale), every fourth one small (needs 1600/2000)
            frac = rng.uniform(0.45, 0.8) if i % 8 != 7 else rng.uniform(0.13, 0.18)
            f = frac * ch / face.height
            face = face.resize((max(1, round(face.width * f)), max(1, round(face.height * f))), Image.LANCZOS)
            x = rng.randint(0, max(0, cw - face.width))
            y = rng.randint(0, max(0, ch - face.height))
            canvas.paste(face, (x, y))
        p = out / f"photo{i:02d}-{'face' if i % 2 else 'noface'}.jpg"
        canvas.save(p, "JPEG", quality=90)
        paths.append(p)
    return paths


# ------------------------------------------------------------------ running a server and clients

def memory(master_pid: int) -> dict:
    from tests.face_api.service import worker_pids

    def read(pid):
        vals = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            k, _, rest = line.partition(":")
            if k in ("Rss", "Pss"):
                vals[k] = int(rest.split()[0]) / 1024
        return vals
    workers = [read(p) for p in worker_pids(master_pid)]
    return {"master": read(master_pid), "workers": workers}


def run_server(app_path: str, env: dict, photos: list[Path], clients: int, workers: int, tmp: Path):
    import subprocess, signal  # noqa: E401
    import httpx
    from tests.face_api.service import free_port

    port = free_port()
    full_env = dict(os.environ, FACE_API_BIND=f"127.0.0.1:{port}", FACE_API_WORKERS=str(workers),
                    PHOTO_LOG_DIR=str(tmp / "logs"), PHOTO_DEBUG_DIR=str(tmp / "debug"),
                    PHOTO_STORAGE_ROOT=str(tmp), PROMETHEUS_MULTIPROC_DIR=str(tmp / f"metrics-{port}"),
                    PYTHONPATH=str(ROOT), GUNICORN_CMD_ARGS="", **env)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c",
                             str(ROOT / "face_api/gunicorn.conf.py"), app_path],
                            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                r = httpx.get(url + "/health", timeout=2)
                if r.status_code in (200, 404):  # the reference has no /health
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server {app_path} did not start")
            time.sleep(0.3)
        datas = [p.read_bytes() for p in photos]
        # warm-up: one request per worker
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda d: httpx.post(url + "/encode", files={"image": ("w.jpg", d)}, timeout=600),
                          [datas[0]] * workers))
        results, latencies = {}, {}

        def one(i):
            t = time.monotonic()
            r = httpx.post(url + "/encode", files={"image": (photos[i].name, datas[i])}, timeout=600)
            latencies[i] = time.monotonic() - t
            r.raise_for_status()
            results[i] = r.json()

        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(len(photos))))
        wall = time.monotonic() - started
        mem = memory(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lat = sorted(latencies.values())
    return {"wall": wall, "throughput": len(photos) / wall, "p50": statistics.median(lat),
            "p95": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], "results": results, "mem": mem}


def iou(a, b):
    t, r, btm, lf = a
    t2, r2, b2, l2 = b
    iw = max(0, min(r, r2) - max(lf, l2))
    ih = max(0, min(btm, b2) - max(t, t2))
    inter = iw * ih
    union = (r - lf) * (btm - t) + (r2 - l2) * (b2 - t2) - inter
    return inter / union if union else 0.0


def compare(ref: dict, ours: dict) -> dict:
    import numpy as np
    ref_faces = matched = extra = 0
    max_delta = 0.0
    for i, rr in ref.items():
        orr = ours[i]
        ref_faces += len(rr["locations"])
        used = set()
        for j, rb in enumerate(rr["locations"]):
            best, best_k = 0.0, None
            for k, ob in enumerate(orr["locations"]):
                if k not in used and iou(rb, ob) > best:
                    best, best_k = iou(rb, ob), k
            if best >= 0.5:
                used.add(best_k)
                matched += 1
                d = float(np.linalg.norm(np.array(rr["encodings"][j]) - np.array(orr["encodings"][best_k])))
                max_delta = max(max_delta, d)
        extra += len(orr["locations"]) - len(used)
    return {"ref_faces": ref_faces, "recall": matched / ref_faces if ref_faces else 1.0,
            "extra": extra / ref_faces if ref_faces else float(extra), "extra_n": extra,
            "max_delta": max_delta}


CONFIGS = {  # name: (workers, threads of ours)
    "box": (max(1, (os.cpu_count() or 2) // 2), 2),
    "cores": (os.cpu_count() or 2, 1),
}


def main():
    cpus = os.cpu_count() or 2
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=64)
    ap.add_argument("--clients", type=int, default=2 * cpus)
    ap.add_argument("--configs", default="box,cores")
    ap.add_argument("--variants", action="store_true", help="also run ours with exact full rescans")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="face-bench-"))
    photos = build_mix(tmp / "photos", args.photos)
    mp = [__import__("PIL.Image").Image.open(p).size for p in photos]
    print(f"{len(photos)} photos ({sum(1 for p in photos if 'noface' in p.name)} without a face), "
          f"{min(w * h for w, h in mp) / 1e6:.1f}-{max(w * h for w, h in mp) / 1e6:.1f} MP; "
          f"{args.clients} concurrent clients, {cpus} CPUs")
    header = (f"{'server':40s} {'photos/s':>9s} {'x ref':>6s} {'p50 s':>7s} {'p95 s':>7s} "
              f"{'recall':>7s} {'extra':>6s} {'max d':>6s} {'worker RSS/PSS MB':>18s}")
    for config in args.configs.split(","):
        workers, threads = CONFIGS[config]
        runs = {"reference": run_server("bench.face_api:reference_app",
                                        {"FACE_BENCH_REFERENCE": "1", "PHOTO_FACE_THREADS": "1"},
                                        photos, args.clients, workers, tmp)}
        variants = {f"ours ({threads} thread{'s' if threads > 1 else ''}/worker)": {}}
        if args.variants:
            variants["ours, every level rescanned"] = {"PHOTO_FACE_FULL_RESCAN": "1"}
        for name, env in variants.items():
            runs[name] = run_server("face_api.app:app", {"FACE_API_THREADS": str(threads), **env},
                                    photos, args.clients, workers, tmp)
        print(f"\n[{config}] {workers} gunicorn workers; the reference runs 1 photo at a time per worker")
        print(header)
        ref = runs["reference"]
        for name, r in runs.items():
            c = compare(ref["results"], r["results"])
            w = r["mem"]["workers"]
            rss = statistics.mean(x["Rss"] for x in w) if w else 0
            pss = statistics.mean(x["Pss"] for x in w) if w else 0
            print(f"{name:40s} {r['throughput']:9.3f} {r['throughput'] / ref['throughput']:6.2f} "
                  f"{r['p50']:7.2f} {r['p95']:7.2f} {c['recall']:7.1%} {c['extra']:6.1%} "
                  f"{c['max_delta']:6.3f} {rss:8.0f}/{pss:<8.0f}", flush=True)
    # the reference's HOG false positives (mostly from its 2000 pass) count as faces to find
    fp = sum(len(r["locations"]) for i, r in ref["results"].items() if "noface" in photos[i].name)
    print(f"\nreference found {compare(ref['results'], ref['results'])['ref_faces']} faces "
          f"({fp} on the no-face photos); master RSS/PSS (ours) {runs[list(variants)[0]]['mem']['master']}")
    print(f"photos and debug images in {tmp}")


if __name__ == "__main__":
    main()
