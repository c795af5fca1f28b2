"""The review page's test tools: a processed library copied into a test's database, the
`photo-pipeline review` command as a user starts it, screenshots wide and phone-sized."""
from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from workers import db
from workers.schema import face_rejections, faces, images

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# as root in a container: no sandbox; nothing fetched, no first-run work
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PEOPLE = ("Colin_Powell", "George_W_Bush", "Vladimir_Putin", "Serena_Williams", "Venus_Williams", "Hwang_Yeji")
WIDE, NARROW = {"width": 1280, "height": 900}, {"width": 390, "height": 844}


@dataclass
class Library:
    folder: Path
    url: str
    engine: sa.Engine

    def face(self, face_id: int) -> sa.Row:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(faces).where(faces.c.id == face_id)).one()

    def faces_of(self, person_dir: str) -> list[int]:
        """Face ids found in the photos of one person's folder."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(faces.c.id).join(images, images.c.id == faces.c.image_id)
                                .where(images.c.path.like(f"{person_dir}/%")).order_by(faces.c.id)).scalars().all()

    def group_of(self, person_dir: str) -> int:
        """The suggested group holding most of one person's faces."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(faces.c.suggested_group, sa.func.count())
                                .where(faces.c.id.in_(self.faces_of(person_dir)), faces.c.suggested_group.is_not(None))
                                .group_by(faces.c.suggested_group).order_by(sa.func.count().desc())).all()
        assert rows, f"no suggested group for {person_dir}"
        return rows[0][0]

    def rejections(self) -> set[tuple[int, int]]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(face_rejections.c.face_id, face_rejections.c.person_id)).all())

    def people(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {r.name: r.id for r in conn.execute(sa.select(faces.c.id, faces.c.name).where(
                faces.c.parent_id.is_(None), faces.c.status == "ok"))}

    def write(self, face_id: int, **values) -> None:
        """Another writer (the Laravel app, the automatic rematch) changes a face."""
        with self.engine.begin() as conn:
            conn.execute(faces.update().where(faces.c.id == face_id).values(**values))


def copy_library(template: Path, folder: Path, url: str) -> Library:
    """The processed folder (photos, thumbnails) and its rows, in the database `url`."""
    shutil.copytree(template, folder)
    source = sa.create_engine(f"sqlite:///{template / '.photo-pipeline' / 'photo.db'}")
    engine = db.engine_for(url)
    with source.connect() as src, engine.begin() as dst:
        for table in (images, faces, face_rejections):
            rows = [dict(r) for r in src.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings()]
            if rows:
                dst.execute(table.insert(), rows)
    source.dispose()
    return Library(folder, url, engine)


class Server:
    """`photo-pipeline review` as a user starts it; `url` is its first stdout line's address."""

    def __init__(self, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "workers", "review", *args, "--port", "0"],
                                     cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env or review_env())
        self.first_line = self._first_line(60)
        assert self.first_line.startswith("review: http://"), (self.first_line, self.proc.stderr.read())
        self.url = self.first_line.removeprefix("review: ").strip()
        self.base = self.url.split("?")[0]

    def _first_line(self, timeout: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                return self.proc.stdout.readline()
            if self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError(f"review printed no address: {self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def review_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTO_REVIEW")}
    env.update(extra)
    return env


def screenshot(page, shots: Path, name: str) -> None:
    """The page wide and in a phone-sized window, whole pages."""
    keep = os.environ.get("PHOTO_REVIEW_SHOTS")
    for label, size in (("wide", WIDE), ("narrow", NARROW)):
        page.set_viewport_size(size)
        target = shots / f"{name}-{label}.png"
        page.screenshot(path=str(target), full_page=True)
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(target, Path(keep) / target.name)
    page.set_viewport_size(WIDE)
