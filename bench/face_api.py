"""Benchmark: /encode throughput through the real HTTP service, ours beside the original's
reconstructions at equal CPU, on a library-like mix.

    flock /work/bench.lock .venv/bin/python bench/face_api.py [--photos 32] [--rounds 2]
        [--servers thumbnail,LANCZOS,hog,yunet] [--workers CPUs] [--threads 1]

Builds a library-like mix at runtime (half no-face camera photos upscaled to 8-12 MP, half face
photos pasted on large canvases, a few with small faces) into a temp dir. Every server runs under
gunicorn with the same workers x threads (workers x threads = CPUs by default: equal CPU) and the
same concurrent clients; the servers take turns in `--rounds` interleaved rounds (the order
flips every round) and the best round of each is kept, since other processes share the machine.

Servers:
  thumbnail, LANCZOS  the original server reconstructed (bench/groundtruth.py): full decode, then
                      img.thumbnail((scale, scale)) or a LANCZOS resize per scale 1200/1600/2000,
                      HOG upsample 1, stop at the first scale with faces, encode on that image
  hog, yunet          ours (face_api.app) with PHOTO_FACE_DETECTOR=hog or yunet, served as
                      face_api/gunicorn.conf.py serves it (gthread workers that accept only while
                      a thread is free; the references keep the original's uvicorn workers, which
                      accept every connection at once). --ours-worker-class changes ours.

Then the CPU per stage (decode, resize, detect, landmarks + encodings, the debug JPEG), measured
in-process on one thread for the thumbnail reconstruction and ours with YuNet, beside the HTTP
worker CPU (the rest: HTTP, multipart, JSON). --no-stages skips it.

Columns: photos/s (wall) and x the thumbnail reconstruction; worker CPU seconds per photo (from
/proc, every worker process: robust to other load) and its ratio; p50/p95 latency; faces the
thumbnail reconstruction found that this server found too (IoU >= 0.3), extra faces, the largest
encoding distance of those matched faces; worker RSS/PSS; the load average during the round;
the CPUs the load generator itself took (it runs on the servers' CPUs: at equal CPU, photos per
worker CPU second is the throughput ratio; photos/s also pays for the client).
"""

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # the face_api package, not this file
    sys.path.insert(0, str(ROOT))
from bench import groundtruth as gt  # noqa: E402

REFERENCES = tuple(gt.RECONSTRUCTIONS)      # thumbnail, LANCZOS
OURS = ("hog", "yunet")


# ------------------------------------------------------------------ the reference server (ASGI)

def _reference_app(kind: str):
    """The original server, reconstructed: `threads` photos at a time per worker."""
    from fastapi import FastAPI, UploadFile

    app = FastAPI()
    reconstruct = gt.reconstruction(kind)
    slots = threading.BoundedSemaphore(int(os.environ.get("FACE_BENCH_THREADS", "1")))

    @app.post("/encode")
    def encode(image: UploadFile):
        with slots:
            return reconstruct(image.file.read()).as_response()

    return app


if os.environ.get("FACE_BENCH_REFERENCE") in REFERENCES:
    reference_app = _reference_app(os.environ["FACE_BENCH_REFERENCE"])


# ------------------------------------------------------------------ the photo mix

def build_mix(out: Path, n: int, seed: int = 7) -> list[Path]:
    from PIL import Image, ImageOps

    testdata = gt.testdata_dir()
    rng = random.Random(seed)
    canvases = [(4000, 3000), (3648, 2736), (3264, 2448), (4032, 3024), (3000, 4000)]
    backgrounds = sorted((testdata / "exif" / "jpg" / "gps").glob("*.jpg")) + [
        testdata / "exif/jpg/orientation/landscape_1.jpg", testdata / "exif/jpg/mobile/jolla.jpg",
        testdata / "exif/jpg/corrupted.jpg"]
    faces = [p for p in sorted((testdata / "faces").rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")
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

def _memory_mb(pid: int) -> dict:
    vals = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            vals[key] = int(rest.split()[0]) / 1024
    return vals


def _server_env(server: str, threads: int, worker_class: str | None = None) -> tuple[str, dict]:
    if server in REFERENCES:
        # PHOTO_FACE_THREADS keeps gunicorn.conf.py's post_fork from importing our app
        return "bench.face_api:reference_app", {
            "FACE_BENCH_REFERENCE": server, "FACE_BENCH_THREADS": str(threads), "PHOTO_FACE_THREADS": "1",
            "FACE_API_WORKER_CLASS": "uvicorn.workers.UvicornWorker"}    # as the original ran
    return "face_api.app:app", {"PHOTO_FACE_DETECTOR": server, "FACE_API_THREADS": str(threads),
                                "PHOTO_FACE_THREADS": str(threads),
                                **({"FACE_API_WORKER_CLASS": worker_class} if worker_class else {})}


def _multipart(data: bytes, name: str) -> tuple[bytes, dict]:
    """(body, headers) of a multipart/form-data POST with the photo as `image`."""
    import httpx

    request = httpx.Request("POST", "http://localhost/encode", files={"image": (name, data)})
    return request.read(), {"content-type": request.headers["content-type"]}


def run_server(server: str, photos: list[Path], clients: int, workers: int, threads: int, tmp: Path,
               worker_class: str | None = None) -> dict:
    import httpx
    from tests.support.face_api import free_port, worker_pids
    from tests.support.services import cpu_seconds

    app_path, env = _server_env(server, threads, worker_class)
    port = free_port()
    full_env = dict(os.environ, FACE_API_BIND=f"127.0.0.1:{port}", FACE_API_WORKERS=str(workers),
                    PHOTO_LOG_DIR=str(tmp / "logs"), PHOTO_DEBUG_DIR=str(tmp / "debug"),
                    PHOTO_STORAGE_ROOT=str(tmp), PROMETHEUS_MULTIPROC_DIR=str(tmp / f"metrics-{port}"),
                    PYTHONPATH=str(ROOT), GUNICORN_CMD_ARGS="", FACE_API_MAX_REQUESTS="0", **env)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c",
                             str(ROOT / "face_api/gunicorn.conf.py"), app_path],
                            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    # The clients share the server's CPUs: each photo's multipart body is encoded once, before
    # the round, and one connection pool serves every client thread (httpx.post would build a
    # client, and its TLS context, per photo), so the load generator takes little of the CPU the
    # servers are compared at. Its CPU during the round is measured and printed.
    bodies = [_multipart(p.read_bytes(), p.name) for p in photos]
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients + workers * threads))

    def post(body: tuple[bytes, dict]) -> dict:
        r = client.post(url + "/encode", content=body[0], headers=body[1])
        r.raise_for_status()
        return r.json()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code in (200, 404):  # references: 404
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server {server} did not start")
            time.sleep(0.3)
        with ThreadPoolExecutor(workers * threads) as pool:  # warm-up: a photo per slot
            list(pool.map(post, [bodies[1]] * (workers * threads)))
        pids = sorted(worker_pids(proc.pid))
        cpu_before = sum(cpu_seconds(p) for p in pids)
        results, latencies = {}, {}

        def one(i):
            started = time.monotonic()
            results[i] = post(bodies[i])
            latencies[i] = time.monotonic() - started

        load_before = os.getloadavg()[0]
        started, client_cpu = time.monotonic(), time.process_time()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(len(photos))))
        wall = time.monotonic() - started
        client_cpu = time.process_time() - client_cpu
        cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
        memory = [_memory_mb(p) for p in pids]
        load = (load_before + os.getloadavg()[0]) / 2
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lat = sorted(latencies.values())
    return {"wall": wall, "throughput": len(photos) / wall, "cpu_per_photo": cpu / len(photos),
            "client_cpu_per_photo": client_cpu / len(photos),
            "p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
            "results": results, "memory": memory, "load": load}


def compare(reference: dict, ours: dict, names: list[str] | None = None) -> dict:
    """Faces of the reference found by `ours` (IoU >= 0.3, one-to-one), extra faces, the
    largest encoding distance between matched faces, and those farther apart than 0.1."""
    faces = found = extra = 0
    deltas, far = [], []
    for i, ref in reference.items():
        truth = gt.PhotoTruth(str(i), Path(), ref["width"], ref["height"],
                              tuple(gt.TrueFace(tuple(b), ()) for b in ref["locations"]))
        scored = gt.score_photo(truth, ours[i])
        faces += len(ref["locations"])
        found += len(scored.matched)
        extra += len(scored.false)
        for ti, di in scored.matched.items():
            a, b = ref["encodings"][ti], ours[i]["encodings"][di]
            deltas.append(sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5)
            if deltas[-1] > 0.1:
                box, other = ref["locations"][ti], ours[i]["locations"][di]
                far.append(f"{names[i] if names else i} (face {box[2] - box[0]} px of the photo, "
                           f"box IoU {gt.iou(box, other):.2f}, scale {ref['scale']}/{ours[i]['scale']}): "
                           f"{deltas[-1]:.3f}")
    return {"faces": faces, "recall": found / faces if faces else 1.0, "extra": extra,
            "max_delta": max(deltas, default=0.0), "far": far}


# ------------------------------------------------------------------ CPU per stage

STAGES = ("decode", "resize", "detect", "landmarks + encodings", "debug JPEG")


def stage_profile(server: str, photos: list[Path]) -> dict[str, float]:
    """In-process CPU seconds per photo of each stage, one thread, photos one after another:
    the thumbnail reconstruction as bench/groundtruth.py runs it, or ours with YuNet as
    detect_yunet and face_api/app.py run it (the pass image, YuNet's passes with the large-face
    pass's resize and the second look, the averaged landmarks and ResNet, the debug JPEG)."""
    import io

    import numpy as np
    from PIL import Image, ImageOps

    from face_api import engine, passimage
    from face_api.detectors import calibration, filters, hog, yunet
    from face_api.imaging import open_photo
    from face_api.settings import Settings

    engine.load_models()
    s = Settings(debug_images=False, face_threads=1, face_detector="yunet")
    totals = dict.fromkeys(STAGES, 0.0)

    def timed(stage, fn, *args):
        started = time.process_time()
        out = fn(*args)
        totals[stage] += time.process_time() - started
        return out

    for path in photos:
        data = path.read_bytes()
        if server == "thumbnail":
            im = timed("decode", lambda: ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
            for scale in gt.ORIGINAL_SCALES:
                copy = timed("resize", lambda: im.copy())
                timed("resize", copy.thumbnail, (scale, scale))
                img = timed("resize", np.asarray, copy)
                boxes = timed("detect", hog.face_locations, img, 1)
                if boxes or max(im.size) <= scale:
                    break
            if boxes:
                timed("landmarks + encodings", engine.face_encodings, img, boxes, 1, None, None, "native")
        elif server == "yunet":
            photo = timed("decode", open_photo, data, s.max_pixels)
            decoded = timed("decode", passimage.decode_scaled, photo, s.yunet_max_side, passimage.EIGHTHS)
            img = timed("resize", passimage.fitted, *decoded, photo.orientation)
            started = time.process_time()
            found = yunet.candidates(img, s.yunet_large_face_side, 1, s.face_runtime)
            kept = [c for c in found if filters.keep(img, c, s.yunet_min_score, s.yunet_confirm_score,
                                                     yunet.run)]
            boxes = [calibration.hog_box(c, img.shape) for c in kept]
            totals["detect"] += time.process_time() - started
            if boxes:
                timed("landmarks + encodings", engine.face_encodings, img, boxes, 1, None,
                      calibration.landmarks, s.face_runtime)
            timed("debug JPEG", lambda: Image.fromarray(img).save(io.BytesIO(), "JPEG", quality=85))
        else:
            raise ValueError(f"no stage profile for {server}")
    return {stage: seconds / len(photos) for stage, seconds in totals.items()}


def print_stages(best: dict[str, dict], photos: list[Path]) -> None:
    servers = [s for s in ("thumbnail", "yunet") if s in best]
    for s in servers:  # warm: the networks are built, and onnxruntime sizes its buffers, at first use
        stage_profile(s, photos[:2])
    profiles = {s: stage_profile(s, photos) for s in servers}
    print(f"\nCPU s/photo per stage (in-process, one thread; the rest is the HTTP worker's CPU "
          f"above minus the stages: HTTP, multipart, JSON, hashing); load {os.getloadavg()[0]:.1f}")
    print(f"{'stage':24s} " + " ".join(f"{s:>10s}" for s in servers)
          + ("   x" if len(servers) == 2 else ""))
    rows = {stage: [profiles[s][stage] for s in servers] for stage in STAGES}
    rows["HTTP and the rest"] = [best[s]["cpu_per_photo"] - sum(profiles[s].values()) for s in servers]
    rows["HTTP worker CPU"] = [best[s]["cpu_per_photo"] for s in servers]
    for stage, values in rows.items():
        ratio = (f" {values[0] / values[1]:6.1f}" if len(values) == 2 and values[1] > 0.0005
                 and values[0] > 0 else "")
        print(f"{stage:24s} " + " ".join(f"{v:10.4f}" for v in values) + ratio)


def main():
    cpus = os.cpu_count() or 2
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--servers", default="thumbnail,hog", help="from thumbnail,LANCZOS,hog,yunet")
    ap.add_argument("--workers", type=int, default=cpus)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clients", type=int, default=2 * cpus)
    ap.add_argument("--ours-worker-class", help="gunicorn worker class for ours (default: the config's)")
    ap.add_argument("--no-stages", action="store_true", help="skip the in-process CPU per stage")
    args = ap.parse_args()
    servers = args.servers.split(",")
    if "thumbnail" not in servers:
        servers.insert(0, "thumbnail")  # the yardstick
    unknown = set(servers) - set(REFERENCES) - set(OURS)
    if unknown:
        raise SystemExit(f"unknown servers: {sorted(unknown)}")
    tmp = Path(tempfile.mkdtemp(prefix="face-bench-"))
    photos = build_mix(tmp / "photos", args.photos)
    from PIL import Image
    sizes = [Image.open(p).size for p in photos]
    print(f"{len(photos)} photos ({sum('noface' in p.name for p in photos)} without a face), "
          f"{min(w * h for w, h in sizes) / 1e6:.1f}-{max(w * h for w, h in sizes) / 1e6:.1f} MP; "
          f"{args.workers} gunicorn workers x {args.threads} threads on every server, {args.clients} "
          f"concurrent clients, {cpus} CPUs; {args.rounds} interleaved rounds, best kept", flush=True)
    best: dict[str, dict] = {}
    for round_no in range(args.rounds):
        for server in (servers if round_no % 2 == 0 else servers[::-1]):
            r = run_server(server, photos, args.clients, args.workers, args.threads, tmp,
                           args.ours_worker_class)
            print(f"  round {round_no + 1} {server:10s} {r['throughput']:6.3f} photos/s, "
                  f"{r['cpu_per_photo']:6.3f} worker CPU s/photo, clients {r['client_cpu_per_photo']:.4f} CPU "
                  f"s/photo, load {r['load']:.1f}", flush=True)
            if server not in best or r["throughput"] > best[server]["throughput"]:
                best[server] = r
    ref = best["thumbnail"]
    print(f"\n{'server':10s} {'photos/s':>8s} {'x thumb':>7s} {'CPU s/ph':>8s} {'x thumb':>7s} "
          f"{'p50 s':>6s} {'p95 s':>6s} {'recall':>7s} {'extra':>5s} {'max d':>6s} "
          f"{'RSS/PSS MB':>11s} {'load':>5s} {'client CPU':>10s}")
    for server in servers:
        r = best[server]
        c = compare(ref["results"], r["results"])
        rss = statistics.mean(m["Rss"] for m in r["memory"])
        pss = statistics.mean(m["Pss"] for m in r["memory"])
        print(f"{server:10s} {r['throughput']:8.3f} {r['throughput'] / ref['throughput']:7.2f} "
              f"{r['cpu_per_photo']:8.3f} {ref['cpu_per_photo'] / r['cpu_per_photo']:7.2f} "
              f"{r['p50']:6.2f} {r['p95']:6.2f} {c['recall']:7.1%} {c['extra']:5d} {c['max_delta']:6.3f} "
              f"{rss:5.0f}/{pss:<5.0f} {r['load']:5.1f} {r['client_cpu_per_photo'] * r['throughput']:6.2f} CPU")
    names = [p.name for p in photos]
    for server in servers[1:]:
        for line in compare(ref["results"], best[server]["results"], names)["far"]:
            print(f"  {server}: encoding moved > 0.1 from the thumbnail reconstruction's: {line}")
    if not args.no_stages:
        print_stages(best, photos)
    no_face = sum(len(r["locations"]) for i, r in ref["results"].items() if "noface" in photos[i].name)
    print(f"\nthe thumbnail reconstruction found {compare(ref['results'], ref['results'])['faces']} faces "
          f"({no_face} on the no-face photos); photos and debug images in {tmp}")


if __name__ == "__main__":
    main()
