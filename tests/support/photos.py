"""A small photo set for the reliability suite: the GPS test photos as they are (640x480, EXIF
kept) and face photos downscaled to <= 480 px, so a few hundred photo-jobs take minutes."""
from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

FACE_SOURCES = ["obama.jpg", "obama2.jpg", "biden.jpg", "two_people.jpg", "alex-lacamoire.png",
                "lin-manuel-miranda.png", "obama-240p.jpg", "obama_partial_face.jpg",
                "people/kit_harington/john1.jpeg", "people/rose_leslie/img1.jpg"]
MAX_SIDE = 480


def make_sources(testdata: Path, dest: Path) -> list[Path]:
    """Write the source photos into dest; returns their paths (GPS ones first)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in sorted((testdata / "exif" / "jpg" / "gps").glob("*.jpg")):
        out.append(Path(shutil.copy(f, dest / f"gps-{f.name}")))
    for name in FACE_SOURCES:
        with Image.open(testdata / "faces" / name) as im:
            im = im.convert("RGB")
            im.thumbnail((MAX_SIDE, MAX_SIDE))
            target = dest / ("face-" + name.replace("/", "-").rsplit(".", 1)[0] + ".jpg")
            im.save(target, quality=90)
            out.append(target)
    return out
