"""The people set for bench/face_grouping.py: every photo of ../shared/testdata/people encoded
once with the project's own engine (the embedded mode's in-process path), cached by photo hash.

    flock /work/bench.lock .venv/bin/python bench/face_grouping_data.py [--people DIR]

Each photo's faces are kept (a group photo's other faces are unlabelled faces of the library);
the person's own face is the one overlapping its box in boxes.json (IoU >= 0.3)."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# the shared data beside the main checkout, or beside a worktree under /work/wt
DEFAULT_PEOPLE = next((p for p in (REPO.parent / "shared" / "testdata" / "people",
                                   REPO.parent.parent / "shared" / "testdata" / "people") if p.exists()),
                      REPO.parent / "shared" / "testdata" / "people")
CACHE = REPO / "bench" / ".cache" / "face_grouping_encodings.json"
LABEL_IOU = 0.3
# The set's README: its East-Asian identities came from these two repositories.
EAST_ASIAN_SOURCES = ("HannahGuo/Idol-Recognition", "DisGuiser9/lab4_Assignments")


@dataclass
class Face:
    photo: str                 # "Person/3.jpg"
    person: str | None         # None: another face in the photo, not labelled
    encoding: np.ndarray
    location: list[int]


@dataclass
class PeopleSet:
    faces: list[Face]
    identities: dict[str, list[str]]     # person -> photos, most typical first
    lookalikes: list[tuple[str, str]]
    undetected: list[str]                # photos whose person's face the engine did not find
    east_asian: set[str]                 # people from the repositories the README names as such


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _encode(path: Path, detector: str | None = None) -> dict:
    from workers.faces.client import detect
    from workers.settings import Settings
    if detector is None:
        found = detect(Settings(face_engine="inprocess"), path)
    else:  # the in-process engine reads PHOTO_FACE_DETECTOR from its own settings
        from face_api import engine, imaging
        from face_api.settings import Settings as FaceSettings
        fs = FaceSettings(face_detector=detector, debug_images=False)
        photo = imaging.open_photo(path.read_bytes(), fs.max_pixels, draft=fs.face_draft_decode)
        found = engine.encode_image(photo, fs)
        return {"encodings": found.encodings, "locations": found.locations}
    return {"encodings": [e for e, _ in found], "locations": [b for _, b in found]}


def _cache_for(cache: Path, detector: str | None) -> Path:
    """Encodings of one detector (and one jitter count) per file: a photo's hash alone would mix
    HOG's and YuNet's, or plain and jittered encodings."""
    from face_api.settings import Settings as FaceSettings
    face = FaceSettings(debug_images=False)
    name = detector or face.face_detector
    jitters = f"-jitters{face.face_jitters}" if face.face_jitters > 1 else ""
    return cache.with_name(f"{cache.stem}-{name}{jitters}{cache.suffix}")


def load(people_dir: Path = DEFAULT_PEOPLE, cache: Path = CACHE, verbose: bool = False,
         detector: str | None = None) -> PeopleSet:
    """The set encoded by the in-process engine as the environment configures it, or with
    `detector` ("hog", "yunet") whatever the environment says."""
    from face_api.boxes import iou
    cache = _cache_for(cache, detector)
    identities = json.loads((people_dir / "identities.json").read_text())
    boxes = json.loads((people_dir / "boxes.json").read_text())
    lookalikes = [tuple(p) for p in json.loads((people_dir / "lookalikes.json").read_text())]
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    faces, undetected, encoded = [], [], 0
    started = time.monotonic()
    for person, photos in identities.items():
        for photo in photos:
            key = _sha(people_dir / photo)
            if key not in cached:
                cached[key] = _encode(people_dir / photo, detector)
                encoded += 1
                if verbose:
                    print(f"  encoded {photo}: {len(cached[key]['encodings'])} faces", file=sys.stderr)
            found = cached[key]
            box = boxes.get(photo, {}).get("box")
            overlaps = [iou(loc, box) if box else 0.0 for loc in found["locations"]]
            own = int(np.argmax(overlaps)) if overlaps and max(overlaps) >= LABEL_IOU else None
            if own is None:
                undetected.append(photo)
            for i, (enc, loc) in enumerate(zip(found["encodings"], found["locations"])):
                faces.append(Face(photo, person if i == own else None, np.asarray(enc), loc))
    if encoded:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(cached))
        if verbose:
            print(f"encoded {encoded} photos in {time.monotonic() - started:.0f} s", file=sys.stderr)
    sources = json.loads((people_dir / "sources.json").read_text()) if (people_dir / "sources.json").exists() else {}
    east_asian = {photo.split("/")[0] for photo, src in sources.items()
                  if src.get("source", "").split("@")[0] in EAST_ASIAN_SOURCES}
    return PeopleSet(faces, identities, lookalikes, undetected, east_asian & set(identities))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=Path, default=DEFAULT_PEOPLE)
    args = ap.parse_args()
    s = load(args.people, verbose=True)
    print(f"{len(s.faces)} faces, {sum(f.person is not None for f in s.faces)} labelled, "
          f"undetected: {s.undetected}")
