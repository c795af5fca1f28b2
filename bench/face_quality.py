"""Face detection measured against hand-checked truth: the original's HOG recipe, ours with HOG,
ours with YuNet, and what each YuNet filter buys and costs; then whether YuNet's calibrated boxes
give the encodings HOG's boxes give, and how fast each is on a library mix at equal CPU.

    .venv/bin/python bench/face_quality.py [--sides 1280,1600] [--skip-mix] [--fit-calibration]

Sections (all in one run, one thread, photos one after another; CPU s = process_time):
1. truth: recall, precision, recall per tag, false faces on no-face photos, CPU s per photo, for
   both reconstructions of the original (thumbnail and LANCZOS resize), ours with HOG, ours with
   YuNet (the engine as configured, per long side), and YuNet filter variants scored from the same
   candidates (their CPU column is the candidate pass plus what the filter adds).
2. calibration: encodings of faces both detectors find, YuNet's calibrated box against HOG's box
   on the same image (the calibration alone) and the whole pipelines against each other; on the
   photos the constants were fitted on (detect/) and on others (people/, exif/, faces/). Beside
   them the noise floor: how far HOG's own encoding moves when its box moves half a HOG cell.
   --fit-calibration refits the constants first and prints them.
3. people: same/different-person decisions at 0.6 on faces/people, HOG vs YuNet encodings.
4. mix: photos per CPU second on a library-like mix (bench/face_api.build_mix: half no-face,
   8-12 MP) for the thumbnail reconstruction, ours with HOG and ours with YuNet (per --sides).
5. profile: where the YuNet path's CPU goes per photo of the same mix, stage by stage (decode,
   resize, YuNet's passes, the second look, landmarks + ResNet, the debug JPEG the API writes).
6. runtimes: CPU per call of each network under PHOTO_FACE_RUNTIME=native (yuface's YuNet,
   dlib's ResNet) and onnxruntime (the same weights rebuilt: face_api/networks/yunet_onnx.py,
   face_api/networks/resnet.py), and the resident memory each rebuilt network adds to a process.
   (The truth and mix sections measure the engine as the environment sets it: run them again
   with PHOTO_FACE_RUNTIME=native for the whole pipeline on the native code.)
7. resample: YuNet's pass image made the previous way (Pillow's draft decode and BICUBIC resize,
   as HOG's passes) and by face_api/passimage.py with each DCT scaling (M/8 or 1/2^k) and resize
   kernel: recall and precision on the truth, faces of the thumbnail reconstruction found on the
   mix, how far the encodings move (against the previous decode and the reconstruction's, beside
   the noise floor) and the pass image's CPU.

CPU-heavy (minutes): on a shared machine run it under `flock` on the machine's bench lock. The
truth and the photos are the shared development set; never point it at the held-out eval photos.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import groundtruth as gt  # noqa: E402  (puts the repository first on sys.path)
from bench import group_photos  # noqa: E402
from face_api import engine, passimage  # noqa: E402
from face_api.boxes import trim as trim_box  # noqa: E402
from face_api.detectors import calibration, filters, hog, yunet  # noqa: E402
from face_api.imaging import open_photo  # noqa: E402
from face_api.settings import Settings  # noqa: E402

MAX_PIXELS = 200_000_000
THRESHOLD = 0.6  # same person below this distance, as the workers' face_match_threshold


def settings(**overrides) -> Settings:
    return Settings(debug_images=False, face_threads=1, **overrides)


def load(data: bytes):
    return open_photo(data, MAX_PIXELS, draft=Settings().face_draft_decode)  # as the engine


# ------------------------------------------------------------------ 1. truth

def _between(photo: gt.PhotoTruth, result: gt.PhotoResult) -> int:
    """False boxes covering parts of two true faces: boxes drawn between neighbours."""
    return sum(group_photos.between_faces(photo, result.found.boxes[i]) for i in result.false)


class Candidates:
    """YuNet's raw candidates of both passes and its second looks per truth photo at one long
    side, computed once, so that filter and merge variants are scored on the same candidates
    with their own CPU cost."""

    def __init__(self, truth, side: int, large_face_side: int):
        self.side, self.photos = side, {}
        for name, photo in truth.items():
            started = time.process_time()
            source = load(photo.path.read_bytes())
            img = passimage.pass_image(source, side)  # as the engine makes it
            main, large, factor = yunet.passes(img, large_face_side)
            pass_cpu = time.process_time() - started
            looks, look_cpu = {}, {}
            for c in main + large:
                if c.score >= 0.5:  # every variant asks at least this
                    started = time.process_time()
                    looks[id(c)] = filters.look_again(img, c, yunet.run)
                    look_cpu[id(c)] = time.process_time() - started
            self.photos[name] = (img.shape, main, large, factor, source.width / img.shape[1],
                                 looks, pass_cpu, look_cpu)

    def evaluate(self, truth, keep, looks: bool, **merge) -> gt.Evaluation:
        evaluation = gt.Evaluation()
        for name, photo in truth.items():
            shape, main, large, factor, scale, look, pass_cpu, look_cpu = self.photos[name]
            found = yunet.merge(main, large, factor, **merge)
            kept = [c for c in found if keep(c, look.get(id(c)))]
            cpu = pass_cpu + looks * sum(look_cpu.get(id(c), 0.0) for c in found)
            boxes = [tuple(round(v * scale) for v in calibration.hog_box(c, shape)) for c in kept]
            evaluation.photos.append(gt.score_photo(photo, boxes, cpu))
        return evaluation


def plausible_geometry(c) -> bool:
    """Landmarks in a face's order, whatever its roll: the nose between the eye line and the mouth
    line, eyes and mouth corners each side by side rather than one above the other."""
    eye1, eye2, nose, mouth1, mouth2 = np.asarray(c.landmarks, dtype=float)
    eyes, mouth = (eye1 + eye2) / 2, (mouth1 + mouth2) / 2
    down = mouth - eyes
    length = float(np.linalg.norm(down))
    if length < 1:
        return False
    down /= length
    across = np.array([down[1], -down[0]])
    along = float(np.dot(nose - eyes, down)) / length
    flat = (abs(np.dot(eye2 - eye1, down)) < abs(np.dot(eye2 - eye1, across)) + 1
            and abs(np.dot(mouth2 - mouth1, down)) < abs(np.dot(mouth2 - mouth1, across)) + 1)
    return 0.0 < along < 1.0 and flat


def _small(c, px: float = 16) -> bool:
    return c.size < px


def same_face_look(score: float):
    """The engine's second look: YuNet must find the candidate's own face (same place and size)."""
    def keep(look) -> bool:
        if look is None:
            return False
        expected, found = look
        return any(f.score >= score and filters.same_face(expected, filters.centre_and_size(f))
                   for f in found)
    return keep


def near_centre_look(score: float):
    """The second look before: any face centred within half a candidate size of its centre."""
    def keep(look) -> bool:
        if look is None:
            return False
        (ex, ey, es), found = look
        return any(f.score >= score and abs(filters.centre_and_size(f)[0] - ex) < es / 2
                   and abs(filters.centre_and_size(f)[1] - ey) < es / 2 for f in found)
    return keep


def same_box_look(score: float, min_iou: float = 0.5):
    """Alternative: the face found again must overlap the candidate's box at IoU >= 0.5 (the usual
    detection criterion for one object)."""
    def keep(look) -> bool:
        if look is None:
            return False
        (ex, ey, es), found = look
        mine = (ex - es / 2, ey - es / 2, es, es)
        return any(f.score >= score and yunet.box_iou(mine, (filters.centre_and_size(f)[0] - f.size / 2,
                   filters.centre_and_size(f)[1] - f.size / 2, f.size, f.size)) >= min_iou for f in found)
    return keep


_same, _near, _iou = same_face_look(0.7), near_centre_look(0.7), same_box_look(0.7)
BEFORE = {"by_size": False, "drop_spans": False}   # the merge before: NMS and nesting only
FILTERS = {  # name: (keep(candidate, look), uses the second look, merge options)
    "score>=0.5": (lambda c, s: c.score >= 0.5, False, {}),
    "score>=0.7": (lambda c, s: c.score >= 0.7, False, {}),
    "score>=0.8": (lambda c, s: c.score >= 0.8, False, {}),
    "score>=0.5, >=0.7 under 16 px": (lambda c, s: c.score >= (0.7 if _small(c) else 0.5), False, {}),
    "score>=0.5 + landmark geometry": (lambda c, s: c.score >= 0.5 and plausible_geometry(c), False, {}),
    "score>=0.5 + same face>=0.5": (lambda c, s: c.score >= 0.5 and same_face_look(0.5)(s), True, {}),
    "score>=0.5 + same face>=0.7 (engine)": (lambda c, s: c.score >= 0.5 and _same(s), True, {}),
    "  second look: any face near the centre": (lambda c, s: c.score >= 0.5 and _near(s), True, {}),
    "  second look: same box at IoU>=0.5": (lambda c, s: c.score >= 0.5 and _iou(s), True, {}),
    "  merge: large pass at every size": (lambda c, s: c.score >= 0.5 and _same(s), True,
                                          {"by_size": False}),
    "  merge: no span rule": (lambda c, s: c.score >= 0.5 and _same(s), True, {"drop_spans": False}),
    "  merge: neither rule": (lambda c, s: c.score >= 0.5 and _same(s), True, BEFORE),
    "before: near-centre look, old merge": (lambda c, s: c.score >= 0.5 and _near(s), True, BEFORE),
}


def photo_types(truth) -> dict[str, set[str]]:
    """The truth's photos by kind: no face, one or two faces, groups (three or more)."""
    kinds: dict[str, set[str]] = {"no face": set(), "1-2 faces": set(), "3+ faces": set()}
    for name, photo in truth.items():
        n = len(photo.faces)
        kinds["no face" if n == 0 else "1-2 faces" if n <= 2 else "3+ faces"].add(name)
    return kinds


def print_by_type(sets: dict[str, tuple[dict, dict[str, gt.Evaluation]]]) -> None:
    """Per detector: recall / precision / false faces (of which between two faces) per photo type
    of each truth set."""
    columns = []
    for set_name, (truth, runs) in sets.items():
        for kind, names in photo_types(truth).items():
            if names:
                columns.append((f"{set_name}: {kind} ({len(names)})", truth, runs, names))
    print(f"{'detector':34s} " + " | ".join(f"{c[0]:>30s}" for c in columns))
    print(f"{'':34s} " + " | ".join(f"{'recall  prec.  false (betw.)':>30s}" for _ in columns))
    for detector in next(iter(sets.values()))[1]:
        cells = []
        for _, truth, runs, names in columns:
            part = gt.Evaluation([p for p in runs[detector].photos if p.truth.name in names])
            between = sum(_between(p.truth, p) for p in part.photos)
            recall = f"{part.recall:6.1%}" if part.faces else f"{'-':>6s}"
            cells.append(f"{recall} {part.precision:6.1%} {part.false:5d} ({between:3d})")
        print(f"{detector:34s} " + " | ".join(f"{c:>30s}" for c in cells))


def group_truth() -> dict[str, gt.PhotoTruth]:
    """The synthetic group photos (bench/group_photos.py), written as JPEGs to a temp dir."""
    return group_photos.write(group_photos.build(), Path(tempfile.mkdtemp(prefix="group-photos-")))


def truth_section(truth, sides: list[int]) -> dict[str, gt.Evaluation]:
    groups = group_truth()
    detectors = {kind: gt.reconstruction(kind) for kind in gt.RECONSTRUCTIONS}
    detectors["ours, hog"] = gt.engine_detector(settings(face_detector="hog"))
    for side in sides:
        detectors[f"ours, yunet {side} (engine)"] = gt.engine_detector(
            settings(face_detector="yunet", yunet_max_side=side))
    sets = {}
    for set_name, photos in (("development", truth), ("groups", groups)):
        sets[set_name] = (photos, {name: gt.evaluate(d, photos) for name, d in detectors.items()})
    runs = sets["development"][1]
    print(f"\n## 1. truth: development {len(truth)} photos, {runs['thumbnail'].faces} faces to find, "
          f"{sum(p.no_face for p in truth.values())} without a face; synthetic groups "
          f"{len(groups)} photos, {sets['groups'][1]['thumbnail'].faces} faces; load {_load()}")
    for set_name, (_, set_runs) in sets.items():
        print(f"\n{set_name}:")
        gt.print_table(set_runs)
    print("\nper photo type: recall, precision, false faces (of them boxes between two faces)")
    print_by_type(sets)
    large = Settings().yunet_large_face_side
    print(f"\nYuNet filters and merge rules, scored on the same candidates (large-face pass at "
          f"{large}); CPU = candidate passes + the second look where used (no encodings)")
    print(f"{'variant':44s} {'development: recall  prec. false':>32s} | "
          f"{'groups: recall  prec. false betw.':>34s} | {'CPU s/photo':>11s}")
    for side in sides:
        found = {"development": Candidates(truth, side, large), "groups": Candidates(groups, side, large)}
        for name, (keep, looks, merge) in FILTERS.items():
            dev = found["development"].evaluate(truth, keep, looks, **merge)
            grp = found["groups"].evaluate(groups, keep, looks, **merge)
            between = sum(_between(p.truth, p) for p in grp.photos)
            print(f"{f'{side} {name}':44s} {dev.recall:>20.1%} {dev.precision:6.1%} {dev.false:5d} | "
                  f"{grp.recall:>20.1%} {grp.precision:6.1%} {grp.false:5d} {between:5d} | "
                  f"{dev.cpu_per_photo:11.3f}", flush=True)
    return runs


# ------------------------------------------------------------------ 2. calibration

def _photos_beside_truth() -> list[Path]:
    """Photos not in detect/ that have faces: people/ (LFW crops, group photos), faces/, exif/."""
    root = gt.testdata_dir()
    found = []
    for folder in ("people", "faces", "exif"):
        found += sorted(p for p in (root / folder).rglob("*")
                        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and "invalid" not in p.parts)
    return found


def box_pairs(paths, scale: int = gt.ORIGINAL_SCALES[0]):
    """Per photo: the image at `scale` and (YuNet candidate, HOG box) pairs of the same face."""
    engine.load_models()
    for path in paths:
        try:
            img = load(path.read_bytes()).scaled(scale)
        except Exception:  # the exif/ corpus has broken files on purpose
            continue
        hog_boxes = hog.face_locations(img, 1)
        kept = [c for c in yunet.candidates(img, 0)
                if filters.keep(img, c, 0.5, 0.5, yunet.run)]
        pairs = []
        for box in hog_boxes:
            best = max(kept, key=lambda c: gt.iou(calibration.hog_box(c, img.shape), box), default=None)
            if best is not None and gt.iou(calibration.hog_box(best, img.shape), box) >= gt.MATCH_IOU:
                pairs.append((best, box))
        yield path, img, pairs


def yunets_own_box(c, shape) -> tuple[int, int, int, int]:
    """YuNet's box as it draws it (taller than wide, forehead included), clamped."""
    x, y, w, h = c.box
    return trim_box((round(y), round(x + w), round(y + h), round(x)), shape)


def encoding_distances(pairs_by_photo, box_of, landmarks=None) -> tuple[list[float], list[float]]:
    """Distances HOG box vs `box_of(candidate, shape)` encodings on the same image (landmarks as
    engine.face_encodings takes them); box IoUs."""
    distances, ious = [], []
    for _, img, pairs in pairs_by_photo:
        if not pairs:
            continue
        hog_boxes = [box for _, box in pairs]
        ours = [box_of(c, img.shape) for c, _ in pairs]
        a, b = engine.face_encodings(img, hog_boxes), engine.face_encodings(img, ours, landmarks=landmarks)
        distances += [float(np.linalg.norm(x - y)) for x, y in zip(a, b)]
        ious += [gt.iou(x, y) for x, y in zip(hog_boxes, ours)]
    return distances, ious


def hog_noise_floor(pairs_by_photo) -> list[float]:
    """Per face: how far HOG's own encoding moves when its box moves by half a HOG cell (median of
    the four directions), i.e. had its sliding window fallen half a step elsewhere."""
    h = calibration.HALF_CELL
    floor = []
    for _, img, pairs in pairs_by_photo:
        for _, box in pairs:
            moved = [calibration.shifted(box, dx, dy) for dx, dy in ((h, 0), (-h, 0), (0, h), (0, -h))]
            base, *others = engine.face_encodings(img, [box] + moved)
            floor.append(float(np.median([np.linalg.norm(base - o) for o in others])))
    return floor


def _summary(values: list[float]) -> str:
    if not values:
        return "none"
    return (f"n={len(values)} median {statistics.median(values):.3f} p90 "
            f"{np.percentile(values, 90):.3f} max {max(values):.3f}")


def calibration_section(truth, runs, fit: bool) -> None:
    print(f"\n## 2. calibration: YuNet box -> HOG-like box; load {_load()}")
    fitted_on = list(box_pairs([p.path for p in truth.values()]))
    others = list(box_pairs(_photos_beside_truth()))
    constants = (calibration.CENTRE_X, calibration.CENTRE_Y, calibration.SIDE)
    if fit:
        pairs = [pair for _, _, ps in fitted_on for pair in ps]
        refit = calibration.fit(pairs)
        print(f"fitted on {len(pairs)} faces of detect/: CENTRE_X={refit[0]:.3f} "
              f"CENTRE_Y={refit[1]:.3f} SIDE={refit[2]:.3f} (in use: {constants})")
    calibrated = lambda c, shape: calibration.hog_box(c, shape, constants)  # noqa: E731
    variants = {"calibrated box, averaged landmarks (engine)": (calibrated, calibration.landmarks),
                "calibrated box, one landmark fit": (calibrated, None),
                "YuNet's own box": (yunets_own_box, None)}
    for label, photos in (("detect/ (fitted on)", fitted_on), ("people/ faces/ exif/ (not)", others)):
        for what, (box_of, landmarks) in variants.items():
            d, ious = encoding_distances(photos, box_of, landmarks)
            print(f"{label:28s} {what:44s} distance to the HOG box's encoding: {_summary(d)}; "
                  f"box IoU median {statistics.median(ious) if ious else 0:.2f}")
        print(f"{label:28s} {'noise floor: HOG box moved half a HOG cell':44s} distance to the HOG "
              f"box's encoding: {_summary(hog_noise_floor(photos))}")
    for side_name in [n for n in runs if n.startswith("ours, yunet")]:
        for ref in gt.RECONSTRUCTIONS:
            d = gt.encoding_deltas(runs[ref], runs[side_name])
            print(f"pipelines: {side_name} vs {ref}: same true face, {_summary(d)}")
    d = gt.encoding_deltas(runs["thumbnail"], runs["LANCZOS"])
    print(f"pipelines: thumbnail vs LANCZOS (for scale): {_summary(d)}")


# ------------------------------------------------------------------ 3. people

def people_section() -> None:
    folder = gt.testdata_dir() / "faces" / "people"
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    print(f"\n## 3. people: {len(photos)} photos of {len({p.parent.name for p in photos})} people "
          f"(faces/people), decisions at {THRESHOLD}")
    encodings = {}
    for name, s in (("HOG", settings(face_detector="hog")), ("YuNet", settings(face_detector="yunet"))):
        encodings[name] = {}
        for p in photos:
            r = engine.encode_image(load(p.read_bytes()), s)
            if r.encodings:  # the largest face is the person
                sizes = [(b - t) * (rt - lf) for t, rt, b, lf in r.locations]
                encodings[name][p] = np.asarray(r.encodings[int(np.argmax(sizes))])
    both = [p for p in photos if all(p in e for e in encodings.values())]
    print("faces found: " + ", ".join(f"{k} {len(v)}/{len(photos)}" for k, v in encodings.items()))
    changed, right = [], {k: 0 for k in encodings}
    pairs = list(itertools.combinations(both, 2))
    for a, b in pairs:
        same = a.parent == b.parent
        decisions = {}
        for k, e in encodings.items():
            decisions[k] = float(np.linalg.norm(e[a] - e[b])) < THRESHOLD
            right[k] += decisions[k] == same
        if decisions["HOG"] != decisions["YuNet"]:
            changed.append((a.name, b.name))
    own = [float(np.linalg.norm(encodings["HOG"][p] - encodings["YuNet"][p])) for p in both]
    print(f"{len(pairs)} pairs: right decisions HOG {right['HOG']}, YuNet {right['YuNet']}; "
          f"changed: {len(changed)} {changed}; HOG vs YuNet encoding of the same photo: {_summary(own)}")


# ------------------------------------------------------------------ 4. mix

def mix_section(n: int, sides: list[int]) -> None:
    from bench.face_api import build_mix

    tmp = Path(tempfile.mkdtemp(prefix="face-quality-mix-"))
    photos = build_mix(tmp, n)
    datas = [p.read_bytes() for p in photos]
    detectors = {
        "thumbnail reconstruction": gt.reconstruction("thumbnail"),
        "ours, HOG": gt.engine_detector(settings(face_detector="hog")),
        **{f"ours, YuNet {side}": gt.engine_detector(settings(face_detector="yunet", yunet_max_side=side))
           for side in sides},
    }
    print(f"\n## 4. library mix in-process: {len(photos)} photos (half without a face, 8-12 MP), "
          f"one thread each, photos one after another (equal CPU); load {_load()}")
    print(f"{'detector':28s} {'CPU s/photo':>11s} {'photos/CPU s':>12s} {'x thumbnail':>11s} "
          f"{'faces on face photos':>20s} {'on no-face':>10s}")
    base = None
    for name, detect in detectors.items():
        cpu, faces, false = 0.0, 0, 0
        for p, data in zip(photos, datas):
            started = time.process_time()
            found = gt.as_detections(detect(data))
            cpu += time.process_time() - started
            if "noface" in p.name:
                false += len(found.boxes)
            else:
                faces += len(found.boxes)
        rate = len(photos) / cpu
        base = base or rate
        print(f"{name:28s} {cpu / len(photos):11.3f} {rate:12.3f} {rate / base:11.2f} "
              f"{faces:>20d} {false:>10d}", flush=True)


# ------------------------------------------------------------------ 5. profile

def profile_section(n: int, side: int) -> None:
    """CPU seconds per photo of each stage of the YuNet path, the stages run one by one as
    detect_yunet runs them (the pass image as face_api/passimage.py makes it from a JPEG, the debug
    JPEG as face_api/app.py draws it: a quality-85 save)."""
    import io

    from PIL import Image

    from bench.face_api import build_mix

    s = settings(face_detector="yunet", yunet_max_side=side)
    photos = build_mix(Path(tempfile.mkdtemp(prefix="face-quality-profile-")), n)
    stages: dict[str, float] = {}

    def timed(stage, fn, *args):
        started = time.process_time()
        out = fn(*args)
        stages[stage] = stages.get(stage, 0.0) + time.process_time() - started
        return out

    kept_faces = 0
    for path in photos:
        source = timed("header", load, path.read_bytes())
        decoded = timed("decode (JPEG at a DCT scale)", passimage.decode_scaled, source, side,
                        passimage.EIGHTHS)
        img = timed("resize (libvips)", passimage.fitted, *decoded, source.orientation)
        main = timed(f"YuNet pass at {side}", yunet.run, img)
        large = s.yunet_large_face_side
        small = timed(f"resize for the {large} pass", yunet._resized, img, large)
        factor = max(img.shape[:2]) / max(small.shape[:2])
        larger = [c.scaled(factor) for c in timed(f"YuNet pass at {large}", yunet.run, small)]
        found = yunet.merge(main, larger, factor)
        kept = timed("filters (second look)", lambda: [
            c for c in found if filters.keep(img, c, s.yunet_min_score, s.yunet_confirm_score, yunet.run)])
        boxes = [calibration.hog_box(c, img.shape) for c in kept]
        kept_faces += len(boxes)
        timed("landmarks + ResNet", engine.face_encodings, img, boxes, 1, None, calibration.landmarks)
        timed("debug JPEG (API)", lambda: Image.fromarray(img).save(io.BytesIO(), "JPEG", quality=85))
        timed("whole engine call", lambda: engine.encode_image(load(path.read_bytes()), s))
    print(f"\n## 5. profile of the YuNet path at {side} px: {len(photos)} mix photos, "
          f"{kept_faces} faces kept; CPU s per photo; load {_load()}")
    whole = stages.pop("whole engine call")
    for stage, seconds in stages.items():
        print(f"{stage:28s} {seconds / len(photos):7.4f}  {100 * seconds / whole:5.1f} %")
    print(f"{'whole engine call':28s} {whole / len(photos):7.4f}  (stages sum to "
          f"{100 * sum(stages.values()) / whole:.0f} % with the debug JPEG)")


# ------------------------------------------------------------------ 6. runtimes

def _best_cpu(fn, *args, repeat: int = 5) -> float:
    fn(*args)  # warm: onnxruntime sizes its buffers on the first call of a shape
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        fn(*args)
        best = min(best, time.process_time() - started)
    return best


def _rss_mb() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def runtimes_section(truth) -> None:
    """Per-call CPU (best of 5, one thread) of yuface vs onnxruntime YuNet on a truth photo at
    1200x900 and 320x240, and of dlib vs onnxruntime ResNet per face on the truth photos."""
    import dlib
    from PIL import Image

    from face_api.networks import resnet, yunet_onnx
    from face_api.memory import release_freed

    models = engine.load_models()
    c_detect, gomp = yunet._load()
    if gomp is not None:
        gomp.omp_set_num_threads(1)
    release_freed()
    before = _rss_mb()
    detector = yunet_onnx.checked_detector(c_detect)
    release_freed()   # what stays, not the graph building's transient heap
    yunet_built_mb = _rss_mb() - before
    print(f"\n## 6. runtimes: CPU ms per call, best of 5, one thread; load {_load()}")
    print(f"{'network, input':34s} {'native':>8s} {'onnxruntime':>12s} {'x':>6s}")
    photo = next(iter(truth.values())).path
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    for w, h in ((1200, 900), (320, 240)):
        img = np.ascontiguousarray(np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR)))
        native = _best_cpu(c_detect, np.ascontiguousarray(img[:, :, ::-1]))
        ours = _best_cpu(detector.run, img)
        print(f"{f'YuNet, {w}x{h}':34s} {native * 1000:8.1f} {ours * 1000:12.1f} {native / ours:6.1f}")
    release_freed()
    yunet_mb = _rss_mb() - before
    before = _rss_mb()
    encoder = resnet.checked_encoder(models.files.face_recognition, models.encoder)
    release_freed()
    resnet_mb = _rss_mb() - before
    native, ours, faces = [], [], 0
    for t in list(truth.values())[:8]:
        img = np.ascontiguousarray(np.asarray(Image.open(t.path).convert("RGB")))
        for top, right, bottom, left in hog.face_locations(img, 1):
            shape = models.shape_predictor(img, dlib.rectangle(left, top, right, bottom))
            native.append(_best_cpu(models.encoder.compute_face_descriptor, img, shape, 1, repeat=2))
            chip = dlib.get_face_chip(img, shape, resnet.CHIP_SIZE, resnet.CHIP_PADDING)[None]
            ours.append(_best_cpu(encoder.encode, chip, repeat=2))
            faces += 1
    n, o = statistics.median(native), statistics.median(ours)
    print(f"{f'ResNet, one face (median of {faces})':34s} {n * 1000:8.1f} {o * 1000:12.1f} {n / o:6.1f}"
          "   (onnxruntime: the chip cut by dlib included)")
    print(f"resident memory the rebuilt networks add: YuNet {yunet_mb:.0f} MB ({yunet_built_mb:.0f} "
          f"once built, the rest its buffers after the passes above), ResNet {resnet_mb:.0f} MB")


# ------------------------------------------------------------------ 7. resample

# The pass image's decode and resample: the previous decode (Pillow's draft at 1/2, 1/4 or 1/8,
# then its BICUBIC resize with reducing_gap 2, as HOG's passes still do), and libjpeg-turbo's DCT
# scaling at any M/8 or at 1/2^k followed by each candidate kernel (face_api/passimage.py).
PREVIOUS = "previous: draft 1/2^k + Pillow BICUBIC"
RESAMPLE_VARIANTS = [PREVIOUS] + [f"{dct} + {kernel}" for dct, kernels in (
    ("M/8", ("lanczos3", "cubic", "linear", "pillow-bicubic", "pillow-bilinear", "pillow-box", "nearest")),
    ("1/2^k", ("cubic", "linear"))) for kernel in kernels]


@contextlib.contextmanager
def _pass_kernel(variant: str):
    """The engine's YuNet pass images (the main one and the large-face pass's) made the
    `variant` way while inside."""
    saved = passimage.KERNEL, passimage.EIGHTHS, passimage._jpeg_pass, yunet._resized
    if variant == PREVIOUS:
        passimage._jpeg_pass = lambda *args: None     # every photo through Photo.scaled()
        yunet._resized = _previous_resized
    else:
        dct, passimage.KERNEL = variant.split(" + ")
        passimage.EIGHTHS = dct == "M/8"
    try:
        yield
    finally:
        passimage.KERNEL, passimage.EIGHTHS, passimage._jpeg_pass, yunet._resized = saved


def _previous_resized(rgb: np.ndarray, long_side: int) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    f = long_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR, reducing_gap=2.0))


def resample_section(truth, n: int) -> None:
    """Per kernel: recall/precision on the truth and faces of the thumbnail reconstruction found
    on the mix (the engine's YuNet path), the encoding change against the previous decode on the
    faces both find beside the noise floor (HOG's box moved half a cell), the distance to the
    thumbnail reconstruction's (HOG) encodings, and the CPU of making the pass image."""
    from bench.face_api import build_mix, compare

    s = settings(face_detector="yunet")
    side = s.yunet_max_side
    photos = build_mix(Path(tempfile.mkdtemp(prefix="face-quality-resample-")), n)
    mix = [p.read_bytes() for p in photos]
    thumb = gt.reconstruction("thumbnail")
    thumb_truth = gt.evaluate(thumb, truth)
    thumb_mix = {i: gt.as_detections(thumb(d)).as_response() for i, d in enumerate(mix)}
    floor = hog_noise_floor(list(box_pairs([p.path for p in truth.values()])))
    print(f"\n## 7. resample of the YuNet pass image ({side} px): truth ({len(truth)} photos) and "
          f"the library mix ({len(mix)} photos); load {_load()}")
    print(f"noise floor on the truth (HOG box moved half a HOG cell): {_summary(floor)}")
    print(f"{'pass image':40s} {'recall':>7s} {'prec.':>6s} {'false':>5s} {'mix rec.':>8s} "
          f"{'mix extra':>9s} {'ms/photo mix':>12s} {'truth':>6s}  encoding vs previous (truth+mix) | "
          "vs thumbnail reconstruction (truth+mix)")
    detect = gt.engine_detector(s)
    previous = None
    for kernel in RESAMPLE_VARIANTS:
        with _pass_kernel(kernel):
            run = gt.evaluate(detect, truth)
            ours_mix = {i: engine.encode_image(load(d), s).as_dict() for i, d in enumerate(mix)}
            cpu_mix = _best_cpu(lambda: [passimage.pass_image(load(d), side) for d in mix], repeat=3)
            cpu_truth = _best_cpu(lambda: [passimage.pass_image(load(p.path.read_bytes()), side)
                                           for p in truth.values()], repeat=3)
        if previous is None:
            previous = (run, ours_mix)
        vs_previous = gt.encoding_deltas(previous[0], run) + _mix_deltas(previous[1], ours_mix)
        vs_thumb = gt.encoding_deltas(thumb_truth, run) + _mix_deltas(thumb_mix, ours_mix)
        c = compare(thumb_mix, ours_mix)
        print(f"{kernel:40s} {run.recall:7.1%} {run.precision:6.1%} {run.false:5d} {c['recall']:8.1%} "
              f"{c['extra']:9d} {1000 * cpu_mix / len(mix):12.1f} {1000 * cpu_truth / len(truth):6.1f}  "
              f"{_summary(vs_previous)} | {_summary(vs_thumb)}", flush=True)
        for line in _changed_faces(previous[0], run):
            print(f"    {line}")


def _changed_faces(a: gt.Evaluation, b: gt.Evaluation) -> list[str]:
    """Truth faces one run found and the other did not, and photos whose false faces differ."""
    other = {p.truth.name: p for p in b.photos}
    out = []
    for p in a.photos:
        q = other[p.truth.name]
        for verb, faces in (("lost", set(p.matched) - set(q.matched)),
                            ("gained", set(q.matched) - set(p.matched))):
            for i in sorted(faces):
                top, _, bottom, _ = p.truth.faces[i].box
                out.append(f"{verb} a {bottom - top} px face of {p.truth.name} "
                           f"({p.truth.width}x{p.truth.height}, {', '.join(p.truth.faces[i].tags) or '-'})")
        if len(p.false) != len(q.false):
            out.append(f"false faces on {p.truth.name}: {len(p.false)} -> {len(q.false)}")
    return out


def _mix_deltas(a: dict, b: dict) -> list[float]:
    """Encoding distances of the faces two runs on the mix both found (IoU >= 0.3, greedy)."""
    out = []
    for i, ra in a.items():
        truth = gt.PhotoTruth(str(i), Path(), ra["width"], ra["height"],
                              tuple(gt.TrueFace(tuple(box), ()) for box in ra["locations"]))
        scored = gt.score_photo(truth, b[i])
        out += [float(np.linalg.norm(np.subtract(ra["encodings"][ti], b[i]["encodings"][di])))
                for ti, di in scored.matched.items()]
    return out


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", default=str(Settings().yunet_max_side),
                    help="YuNet long sides to compare, e.g. 1280,1600")
    ap.add_argument("--fit-calibration", action="store_true")
    ap.add_argument("--skip-mix", action="store_true")
    ap.add_argument("--sections", default="truth,calibration,people,mix,profile,runtimes,resample",
                    help="which of truth,calibration,people,mix,profile,runtimes,resample to run "
                         "(calibration needs truth)")
    ap.add_argument("--mix", type=int, default=16, help="photos in the library mix")
    args = ap.parse_args()
    sides = [int(s) for s in args.sides.split(",")]
    engine.load_models()
    truth = gt.load_truth()
    sections = set(args.sections.split(",")) - ({"mix"} if args.skip_mix else set())
    if sections & {"truth", "calibration"}:
        runs = truth_section(truth, sides)
        if "calibration" in sections:
            calibration_section(truth, runs, args.fit_calibration)
    if "people" in sections:
        people_section()
    if "mix" in sections:
        mix_section(args.mix, sides)
    if "profile" in sections:
        profile_section(args.mix, sides[-1])
    if "runtimes" in sections:
        runtimes_section(truth)
    if "resample" in sections:
        resample_section(truth, args.mix)
    print(json.dumps({"done": True, "load": _load()}))


if __name__ == "__main__":
    main()
