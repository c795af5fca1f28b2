"""Server time of the review page's pages on a synthetic library of 100,000 faces, beside the same
pages on a library of 300 faces (the reference: the page should open as fast on both).

    .venv/bin/python bench/review_pages.py [--faces 100000] [--runs 7] [--mariadb | --db URL]

The library: people with approved and filed faces, suggested people, ungrouped unknown faces and
not-a-face rows, each face with a 128-number encoding as the face job stores it (the pages never
read it, but it makes the rows as large as real ones). Each page is requested through the real
app (FastAPI, templates, the database) in-process; the figure is the app's own time from its
`Server-Timing` header (median of the runs, after one warm-up), without crops: they are separate
requests, cut once and then served from the cache. SQLite by default; --mariadb starts a
throwaway MariaDB (as the tests do).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers import db  # noqa: E402
from workers.commands.review.app import Library, create_app  # noqa: E402
from workers.commands.review.crops import Photos  # noqa: E402
from workers.commands.review.security import Guard  # noqa: E402
from workers.schema import faces, images  # noqa: E402

TARGET_MS = 300


def build(url: str, total: int, seed: int = 1) -> dict:
    """A library of about `total` faces; returns ids to visit."""
    rng = random.Random(seed)
    engine = db.engine_for(url)
    db.migrate(engine)
    people = max(2, total * 3 // 200)              # 1.5 % of the faces are people, ~40 faces each
    groups = max(2, total // 125)                  # suggested people of ~40 faces
    per_person, per_group = 40, 40
    n_photos = max(1, total // 2)
    now = db.now()
    with engine.begin() as conn:
        conn.execute(images.insert(), [{"path": f"photos/{i:06d}.jpg", "created_at": now} for i in range(n_photos)])
    first_image = 1
    rows: list[dict] = []
    next_id = 1

    def face(**values) -> int:
        nonlocal next_id
        enc = json.dumps([round(rng.gauss(0, 0.09), 6) for _ in range(128)])
        rows.append({"id": next_id, "image_id": first_image + rng.randrange(n_photos), "face_index": 0,
                     "encoding": enc, "location": [10, 60, 60, 10], "created_at": now, "updated_at": now,
                     "parent_id": None, "suggested_group": None, "name": None, **values})
        next_id += 1
        return next_id - 1

    roots = []
    for p in range(people):
        root = face(status="ok", name=f"Person {p:05d}")
        roots.append(root)
        for k in range(per_person - 1):
            face(status="ok" if k < 29 else "unknown", parent_id=root)
    group_ids = []
    for _ in range(groups):
        gid = next_id
        group_ids.append(gid)
        for _ in range(per_group):
            face(status="unknown", suggested_group=gid)
    while next_id <= total:
        face(status="unknown" if rng.random() < 0.9 else "not_face")
    with engine.begin() as conn:
        for start in range(0, len(rows), 2000):
            conn.execute(faces.insert(), rows[start:start + 2000])
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")
        else:
            conn.exec_driver_sql("ANALYZE TABLE faces")
    return {"person": roots[len(roots) // 2], "group": group_ids[len(group_ids) // 2], "image": first_image,
            "people_pages": max(1, people // 24), "group_pages": max(1, groups // 24),
            "unknown_pages": max(1, (total - people * per_person - groups * per_group) // 48)}


def pages(ids: dict) -> list[tuple[str, str]]:
    return [
        ("start page", "/"),
        ("suggested people, page 1", "/suggested"),
        ("suggested people, last page", f"/suggested?page={ids['group_pages']}"),
        ("one suggested person", f"/suggested/{ids['group']}"),
        ("people, page 1", "/people"),
        ("people, last page", f"/people?page={ids['people_pages']}"),
        ("one person", f"/people/{ids['person']}"),
        ("unknown faces, page 1", "/unknown"),
        ("unknown faces, last page", f"/unknown?page={ids['unknown_pages']}"),
        ("a photo", f"/photos/{ids['image']}"),
    ]


def measure(url: str, ids: dict, runs: int, photos_root: Path) -> dict[str, float]:
    from fastapi.testclient import TestClient
    library = Library(db.engine_for(url), Photos(photos_root, None), "bench")
    client = TestClient(create_app(library, Guard.for_address(None, "127.0.0.1", 80)),
                        base_url="http://127.0.0.1")
    out = {}
    for label, path in pages(ids):
        times = []
        for i in range(runs + 1):
            r = client.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            if i:
                times.append(float(r.headers["server-timing"].split("dur=")[1]))
        out[label] = statistics.median(times)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument("--reference-faces", type=int, default=300)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--db", help="a database URL to fill (must be empty); default a SQLite temp file")
    ap.add_argument("--mariadb", action="store_true", help="start a throwaway MariaDB for the run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = None
        if args.mariadb:
            from tests.support.services import MariaDB
            (tmp / "mariadb").mkdir()
            server = MariaDB(tmp / "mariadb").start()
            urls = [server.create_database("bench_big"), server.create_database("bench_small")]
        elif args.db:
            urls = [args.db, f"sqlite:///{tmp / 'small.db'}"]
        else:
            urls = [f"sqlite:///{tmp / 'big.db'}", f"sqlite:///{tmp / 'small.db'}"]
        try:
            print(f"building {args.faces} faces ...", file=sys.stderr, flush=True)
            big = measure(urls[0], build(urls[0], args.faces), args.runs, tmp)
            small = measure(urls[1], build(urls[1], args.reference_faces), args.runs, tmp)
        finally:
            if server:
                server.stop()
    kind = "MariaDB" if args.mariadb else sa.make_url(urls[0]).get_backend_name()
    print(f"review pages, server time (ms, median of {args.runs}), {kind}")
    print(f"{'page':<30} {args.faces:>10,} faces {args.reference_faces:>8,} faces   target < {TARGET_MS} ms")
    worst = 0.0
    for label in big:
        worst = max(worst, big[label])
        print(f"{label:<30} {big[label]:>16.1f} {small[label]:>14.1f}   {'ok' if big[label] < TARGET_MS else 'SLOW'}")
    print(f"slowest page: {worst:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
