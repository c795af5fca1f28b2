"""Face detectors scored against hand-checked truth, and the two reconstructions of the original.

    from bench import groundtruth as gt
    truth = gt.load_truth()                                   # {photo name: PhotoTruth}
    thumb = gt.evaluate(gt.reconstruction("thumbnail"), truth)
    ours = gt.evaluate(gt.engine_detector(), truth)
    gt.print_table({"thumbnail": thumb, "ours": ours})
    gt.encoding_deltas(thumb, ours)                           # faces both matched to the same truth

Truth is `detect/truth.json` under the test data (PHOTO_TESTDATA, else ../shared/testdata next to
the repository): `{"photo.jpg": {"faces": [{"box": [top, right, bottom, left], "tags": [...]}],
"width", "height"}}`, boxes in pixels of the upright photo. A detection matches a true face at
IoU >= 0.3 (detectors draw boxes of different extents), one-to-one, greedily by IoU. Faces tagged
`uncertain` are optional: finding one counts for nothing, and a detection on one is not false.

A detector is any callable taking the photo's bytes and returning its faces in pixels of the
upright photo: a list of (top, right, bottom, left) boxes, a `Detections`, or anything with
`locations` (and optionally `encodings`), such as the engine's EncodeResult.

CPU seconds are time.process_time() around each call, photos one after another on one thread,
so a detector's helper threads are counted too. Never point this at the held-out eval photos.
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # run as a script: the face_api package, not bench/face_api.py
    sys.path.insert(0, str(ROOT))
from face_api.boxes import iou  # noqa: E402  (one IoU, the service's)

MATCH_IOU = 0.3
ORIGINAL_SCALES = (1200, 1600, 2000)
OPTIONAL_TAG = "uncertain"

Box = tuple[int, int, int, int]  # top, right, bottom, left


def testdata_dir() -> Path:
    return Path(os.environ.get("PHOTO_TESTDATA", ROOT.parent / "shared" / "testdata"))


# ------------------------------------------------------------------ truth

@dataclass(frozen=True)
class TrueFace:
    box: Box
    tags: tuple[str, ...]

    @property
    def optional(self) -> bool:
        return OPTIONAL_TAG in self.tags


@dataclass(frozen=True)
class PhotoTruth:
    name: str
    path: Path
    width: int
    height: int
    faces: tuple[TrueFace, ...]

    @property
    def no_face(self) -> bool:
        return not self.faces


def load_truth(directory: Path | None = None) -> dict[str, PhotoTruth]:
    directory = Path(directory or testdata_dir() / "detect")
    raw = json.loads((directory / "truth.json").read_text())
    return {
        name: PhotoTruth(
            name=name, path=directory / name, width=int(entry["width"]), height=int(entry["height"]),
            faces=tuple(TrueFace(tuple(int(v) for v in f["box"]), tuple(f.get("tags", ())))
                        for f in entry["faces"]))
        for name, entry in sorted(raw.items())
    }


# ------------------------------------------------------------------ matching

def _greedy(truth_boxes: dict[int, Box], boxes: dict[int, Box]) -> dict[int, int]:
    """{truth index: detection index}, one-to-one, highest IoU first, IoU >= MATCH_IOU."""
    pairs = sorted(((iou(t, d), ti, di) for ti, t in truth_boxes.items() for di, d in boxes.items()),
                   reverse=True)
    matched, used = {}, set()
    for score, ti, di in pairs:
        if score < MATCH_IOU:
            break
        if ti not in matched and di not in used:
            matched[ti] = di
            used.add(di)
    return matched


@dataclass
class Detections:
    boxes: list[Box]
    encodings: list[np.ndarray] | None = None
    scale: int | None = None            # the pass that found them (reconstructions, the engine)
    width: int = 0
    height: int = 0

    def as_response(self) -> dict:
        """The /encode response shape of the original server."""
        return {"encodings": [np.asarray(e).tolist() for e in (self.encodings or [])],
                "locations": [list(b) for b in self.boxes], "scale": self.scale,
                "width": self.width, "height": self.height}


def as_detections(found) -> Detections:
    if isinstance(found, Detections):
        return found
    if isinstance(found, dict) or hasattr(found, "locations"):
        get = found.get if isinstance(found, dict) else lambda key: getattr(found, key, None)
        encodings = get("encodings")
        return Detections([tuple(int(v) for v in b) for b in get("locations")],
                          [np.asarray(e) for e in encodings] if encodings is not None else None,
                          get("scale"))
    return Detections([tuple(int(v) for v in b) for b in found])


@dataclass
class PhotoResult:
    truth: PhotoTruth
    found: Detections
    matched: dict[int, int]             # truth face index -> detection index
    on_optional: set[int]               # detections on `uncertain` faces: neither right nor wrong
    cpu_seconds: float

    @property
    def false(self) -> list[int]:
        return [i for i in range(len(self.found.boxes))
                if i not in self.matched.values() and i not in self.on_optional]

    def encoding(self, face_index: int) -> np.ndarray | None:
        d = self.matched.get(face_index)
        if d is None or self.found.encodings is None:
            return None
        return self.found.encodings[d]


def score_photo(truth: PhotoTruth, found, cpu_seconds: float = 0.0) -> PhotoResult:
    found = as_detections(found)
    boxes = dict(enumerate(found.boxes))
    required = {i: f.box for i, f in enumerate(truth.faces) if not f.optional}
    matched = _greedy(required, boxes)
    rest = {i: b for i, b in boxes.items() if i not in matched.values()}
    optional = {i: f.box for i, f in enumerate(truth.faces) if f.optional}
    on_optional = set(_greedy(optional, rest).values())
    return PhotoResult(truth, found, matched, on_optional, cpu_seconds)


# ------------------------------------------------------------------ a detector's scores

@dataclass
class Evaluation:
    photos: list[PhotoResult] = field(default_factory=list)

    def _required(self):
        for p in self.photos:
            for i, face in enumerate(p.truth.faces):
                if not face.optional:
                    yield p, i, face

    @property
    def faces(self) -> int:
        return sum(1 for _ in self._required())

    @property
    def found(self) -> int:
        return sum(len(p.matched) for p in self.photos)

    @property
    def false(self) -> int:
        return sum(len(p.false) for p in self.photos)

    @property
    def recall(self) -> float:
        return self.found / self.faces if self.faces else 1.0

    @property
    def precision(self) -> float:
        counted = self.found + self.false
        return self.found / counted if counted else 1.0

    def recall_by_tag(self) -> dict[str, tuple[int, int]]:
        """{tag: (found, faces)} over the required faces."""
        out: dict[str, list[int]] = {}
        for p, i, face in self._required():
            for tag in face.tags:
                counts = out.setdefault(tag, [0, 0])
                counts[0] += i in p.matched
                counts[1] += 1
        return {tag: (c[0], c[1]) for tag, c in sorted(out.items())}

    @property
    def false_on_no_face(self) -> int:
        return sum(len(p.found.boxes) for p in self.photos if p.truth.no_face)

    @property
    def no_face_photos_with_false(self) -> tuple[int, int]:
        no_face = [p for p in self.photos if p.truth.no_face]
        return sum(1 for p in no_face if p.found.boxes), len(no_face)

    @property
    def cpu_per_photo(self) -> float:
        return sum(p.cpu_seconds for p in self.photos) / len(self.photos) if self.photos else 0.0


Detector = Callable[[bytes], object]


def evaluate(detect: Detector, truth: dict[str, PhotoTruth] | None = None) -> Evaluation:
    """Run `detect` over every truth photo (one thread, one after another) and score it."""
    truth = truth if truth is not None else load_truth()
    evaluation = Evaluation()
    for photo in truth.values():
        data = photo.path.read_bytes()
        started = time.process_time()
        found = detect(data)
        cpu = time.process_time() - started
        evaluation.photos.append(score_photo(photo, found, cpu))
    return evaluation


def encoding_deltas(a: Evaluation, b: Evaluation) -> list[float]:
    """Distances between the encodings two runs give the same true face (both matched it)."""
    other = {p.truth.name: p for p in b.photos}
    deltas = []
    for p in a.photos:
        q = other.get(p.truth.name)
        for i in p.matched if q is not None else ():
            ea, eb = p.encoding(i), q.encoding(i)
            if ea is not None and eb is not None:
                deltas.append(float(np.linalg.norm(np.asarray(ea) - np.asarray(eb))))
    return deltas


def print_table(runs: dict[str, Evaluation], tags: Sequence[str] = ("small", "profile", "child")) -> None:
    print(f"{'detector':34s} {'recall':>7s} {'precision':>9s} {'false':>5s} {'no-face fp':>10s} "
          + " ".join(f"{t:>9s}" for t in tags) + f" {'CPU s/photo':>11s}")
    for name, run in runs.items():
        by_tag = run.recall_by_tag()
        hit, total = run.no_face_photos_with_false
        cells = [f"{by_tag[t][0]:>4d}/{by_tag[t][1]:<4d}" if t in by_tag else f"{'-':>9s}" for t in tags]
        print(f"{name:34s} {run.recall:7.1%} {run.precision:9.1%} {run.false:5d} "
              f"{f'{run.false_on_no_face} on {hit}/{total}':>10s} " + " ".join(cells)
              + f" {run.cpu_per_photo:11.3f}")


# ------------------------------------------------------------------ the original, reconstructed

def _original_loop(rgb_at: Callable[[int], np.ndarray], width: int, height: int,
                   scales: Sequence[int]) -> Detections:
    """The original server's loop: HOG (upsample 1) per scale until faces are found, encodings on
    the image that found them, boxes mapped back to the photo's pixels."""
    from face_api import engine
    from face_api.detectors import hog

    boxes, img, used = [], None, None
    for scale in scales:
        img = rgb_at(scale)
        boxes = hog.face_locations(img, upsample=1)
        if boxes:
            used = scale
            break
        if max(width, height) <= scale:
            break
    encodings = engine.face_encodings(img, boxes, runtime="native") if boxes else []  # as the original
    fy, fx = height / img.shape[0], width / img.shape[1]
    located = [(round(t * fy), round(r * fx), round(b * fy), round(lf * fx)) for t, r, b, lf in boxes]
    return Detections(located, encodings, used, width, height)


def _decode_upright(data: bytes):
    from PIL import Image, ImageOps

    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def _thumbnail(data: bytes, scales: Sequence[int]) -> Detections:
    """Pillow's usual img.thumbnail((scale, scale)) of the decoded photo (BICUBIC, reducing_gap 2)."""
    im = _decode_upright(data)

    def rgb_at(scale: int) -> np.ndarray:
        copy = im.copy()
        copy.thumbnail((scale, scale))
        return np.asarray(copy)

    return _original_loop(rgb_at, im.width, im.height, scales)


def _lanczos(data: bytes, scales: Sequence[int]) -> Detections:
    """Full decode, then a LANCZOS resize of it to each scale (never enlarged)."""
    from PIL import Image

    im = _decode_upright(data)
    w, h = im.size

    def rgb_at(scale: int) -> np.ndarray:
        f = min(1.0, scale / max(w, h))
        return np.asarray(im if f == 1.0 else im.resize((round(w * f), round(h * f)), Image.LANCZOS))

    return _original_loop(rgb_at, w, h, scales)


RECONSTRUCTIONS = {"thumbnail": _thumbnail, "LANCZOS": _lanczos}


def reconstruction(kind: str, scales: Sequence[int] = ORIGINAL_SCALES) -> Callable[[bytes], Detections]:
    """The original detector as a callable: "thumbnail" or "LANCZOS" (its resize is not known)."""
    from face_api import engine

    recipe = RECONSTRUCTIONS[kind]
    engine.load_models()  # once, before any photo is timed
    return lambda data: recipe(data, scales)


def engine_detector(settings=None) -> Callable[[bytes], object]:
    """Our face API's pipeline in-process (decode + detect + encode), with `settings` or the
    environment's (PHOTO_...)."""
    from face_api import engine
    from face_api.imaging import open_photo
    from face_api.settings import Settings

    settings = settings or Settings()
    engine.load_models()
    return lambda data: engine.encode_image(
        open_photo(data, settings.max_pixels, draft=settings.face_draft_decode), settings)


def main() -> None:
    """Score both reconstructions and the engine (as configured by PHOTO_...) on the truth."""
    truth = load_truth()
    runs = {name: evaluate(reconstruction(name), truth) for name in RECONSTRUCTIONS}
    runs["ours (engine, in-process)"] = evaluate(engine_detector(), truth)
    print(f"{len(truth)} photos, {runs['thumbnail'].faces} faces to find; load {os.getloadavg()}")
    print_table(runs)
    for name in list(runs)[2:]:
        for ref in RECONSTRUCTIONS:
            d = encoding_deltas(runs[ref], runs[name])
            print(f"{name} vs {ref}: {len(d)} faces matched by both, "
                  f"max encoding delta {max(d, default=0):.3f}")


if __name__ == "__main__":
    main()
