"""Synthetic group photos: rows of real faces close together, with their own truth boxes.

Real group photos (rows of people, faces a little more than a face apart) are where a detector
can draw a box between two neighbouring faces. The development photos have few of them, so these
are built: faces from the people set (../shared/testdata/people, single-face photos, their
HOG-drawn boxes in `boxes.json`) cut out with some head and shoulders around them, scaled to a
face size, and pasted side by side in rows at a fixed centre-to-centre spacing on a smooth
background. Each paste is feathered (an elliptical mask), so no straight crop edge runs between
two faces.

    from bench import group_photos
    photos = group_photos.build()            # [GroupPhoto], deterministic
    photo.rgb, photo.truth                   # image, gt.PhotoTruth-like faces (HOG-style boxes)
    group_photos.write(photos, directory)    # JPEGs + truth.json in bench/groundtruth.py's format

Truth boxes are the people set's HOG boxes mapped onto the canvas, so they are drawn the way the
development truth draws them; bench/groundtruth.py scores a detector on them unchanged.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bench import groundtruth as gt

CONTEXT = 1.6          # the pasted cut-out's side in face sizes (head, some hair and collar)
FEATHER = 0.12         # mask blur radius, in cut-out sides

# (face size px, centre-to-centre spacing px): the group rows that confuse a detector are faces
# 50-70 px apart; smaller faces are packed closer relative to their size than larger ones.
ROWS = ((28, 50), (36, 56), (44, 62), (52, 70), (40, 50), (56, 70))
CANVAS = (1200, 900)    # at the detectors' main pass size, so rows keep their pixel spacing


@dataclass(frozen=True)
class Face:
    box: gt.Box          # top, right, bottom, left on the canvas (HOG-style)
    source: str          # people/<person>/<n>.jpg it was cut from


@dataclass
class GroupPhoto:
    name: str
    rgb: np.ndarray
    faces: list[Face]
    spacing: int         # centre-to-centre spacing of its rows (px)
    face_size: int

    def truth(self, path: Path) -> gt.PhotoTruth:
        return gt.PhotoTruth(self.name, path, self.rgb.shape[1], self.rgb.shape[0],
                             tuple(gt.TrueFace(f.box, ("group",)) for f in self.faces))

    def jpeg(self, quality: int = 92) -> bytes:
        import io

        out = io.BytesIO()
        Image.fromarray(self.rgb).save(out, "JPEG", quality=quality)
        return out.getvalue()


def single_faces(people: Path | None = None) -> list[tuple[str, gt.Box]]:
    """(relative path, HOG box) of the people set's photos that show exactly one face, with room
    around the face for the cut-out."""
    people = Path(people or gt.testdata_dir() / "people")
    boxes = json.loads((people / "boxes.json").read_text())
    out = []
    for rel, entry in sorted(boxes.items()):
        if entry.get("faces_in_photo") != 1:
            continue
        top, right, bottom, left = entry["box"]
        if min(bottom - top, right - left) < 60:
            continue
        out.append((rel, (top, right, bottom, left)))
    return out


def _cutout(path: Path, box: gt.Box, face_px: int) -> tuple[Image.Image, Image.Image, gt.Box]:
    """The face with its surroundings, scaled so the face box is `face_px`; its mask; the face
    box in the cut-out's pixels."""
    top, right, bottom, left = box
    size = ((right - left) * (bottom - top)) ** 0.5
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half = CONTEXT * size / 2
    img = Image.open(path).convert("RGB")
    crop = img.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
    f = face_px / size
    side = max(2, round(crop.width * f))
    crop = crop.resize((side, side), Image.LANCZOS)
    mask = Image.new("L", (side, side), 0)
    inset = side * FEATHER
    ImageDraw.Draw(mask).ellipse((inset, inset * 0.6, side - inset, side - inset * 0.3), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(side * FEATHER / 2))
    ox, oy = (cx - half) * f, (cy - half) * f
    face = (round(top * f - oy), round(right * f - ox), round(bottom * f - oy), round(left * f - ox))
    return crop, mask, face


def _background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A smooth two-colour gradient with soft blotches: a wall or a blurred crowd, no faces."""
    w, h = size
    a = np.array([rng.randint(60, 200) for _ in range(3)], dtype=np.float32)
    b = np.array([rng.randint(60, 200) for _ in range(3)], dtype=np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = (a * (1 - t) + b * t) * np.ones((1, w, 1), dtype=np.float32)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 18, (h // 40 + 1, w // 40 + 1, 3))
    blotches = np.asarray(Image.fromarray(np.clip(noise + 128, 0, 255).astype(np.uint8))
                          .resize((w, h), Image.BICUBIC), dtype=np.float32) - 128
    return Image.fromarray(np.clip(img + blotches, 0, 255).astype(np.uint8))


def build_photo(name: str, rows: list[tuple[int, int]], seed: int, faces_pool, people: Path,
                canvas: tuple[int, int] = CANVAS) -> GroupPhoto:
    """One canvas with the given rows (face px, spacing px), faces drawn from `faces_pool`."""
    rng = random.Random(seed)
    img = _background(rng, canvas)
    placed: list[Face] = []
    w, h = canvas
    y = 40
    for face_px, spacing in rows:
        row_top = y
        n = max(2, (w - 2 * spacing) // spacing)
        x0 = (w - (n - 1) * spacing) / 2
        for i in range(n):
            rel, box = faces_pool[rng.randrange(len(faces_pool))]
            crop, mask, (t, r, b, lf) = _cutout(people / rel, box, face_px)
            # centre the face box on its slot; small jitter as people never stand exactly in line
            cx = x0 + i * spacing + rng.uniform(-2, 2)
            cy = row_top + face_px + rng.uniform(-3, 3)
            ox, oy = round(cx - (lf + r) / 2), round(cy - (t + b) / 2)
            img.paste(crop, (ox, oy), mask)
            placed.append(Face((t + oy, r + ox, b + oy, lf + ox), rel))
        y = row_top + round(face_px * 2.6)
        if y + 2.2 * face_px > h:
            break
    # a later paste covers a little of the earlier one's surroundings, never its face box
    return GroupPhoto(name, np.asarray(img), placed, rows[0][1], rows[0][0])


def build(people: Path | None = None, seeds: int = 2) -> list[GroupPhoto]:
    """One photo per row kind and seed (rows of that face size and spacing filling the canvas),
    plus mixed photos with all row kinds; deterministic."""
    people = Path(people or gt.testdata_dir() / "people")
    pool = single_faces(people)
    photos = []
    for seed in range(seeds):
        for face_px, spacing in ROWS:
            photos.append(build_photo(f"group_{face_px}px_{spacing}apart_{seed}.jpg",
                                      [(face_px, spacing)] * 12, 1000 * seed + face_px, pool, people))
        mixed = list(ROWS)
        random.Random(seed).shuffle(mixed)
        photos.append(build_photo(f"group_mixed_{seed}.jpg", mixed, 7000 + seed, pool, people))
    return photos


def write(photos: list[GroupPhoto], directory: Path) -> dict[str, gt.PhotoTruth]:
    """Each photo as a JPEG beside a truth.json that bench/groundtruth.load_truth reads."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = {}
    for p in photos:
        (directory / p.name).write_bytes(p.jpeg())
        raw[p.name] = {"width": p.rgb.shape[1], "height": p.rgb.shape[0],
                       "faces": [{"box": list(f.box), "tags": ["group"]} for f in p.faces]}
    (directory / "truth.json").write_text(json.dumps(raw, indent=1))
    return gt.load_truth(directory)


def between_faces(truth: gt.PhotoTruth, box: gt.Box) -> bool:
    """A detection that covers parts of two true faces (at least a fifth of each one's box):
    the box drawn between two neighbours."""
    covered = 0
    top, right, bottom, left = box
    for face in truth.faces:
        t, r, b, lf = face.box
        inter = max(0, min(r, right) - max(lf, left)) * max(0, min(b, bottom) - max(t, top))
        covered += inter >= 0.2 * (r - lf) * (b - t)
    return covered >= 2


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", type=Path)
    args = ap.parse_args()
    written = write(build(), args.directory)
    print(f"{len(written)} photos, {sum(len(t.faces) for t in written.values())} faces -> {args.directory}")
