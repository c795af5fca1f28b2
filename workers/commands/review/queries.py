"""The review page's reads: one page of a list at a time, never an encoding.

A person is an approved root face (`parent_id IS NULL AND status = 'ok'`, its name on it), its
approved faces point at it (`status = 'ok'`), and the faces the grouping filed under it without a
review are `unknown` with that `parent_id`. A suggested person is the set of unknown faces
without a parent that share `suggested_group`. Every list is ordered and cut with LIMIT/OFFSET
over the (parent_id, status) and suggested_group indexes, so its cost follows the page, not the
library.

`face_state` is what a page shows of a face and an action checks again before it writes."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import sqlalchemy as sa

from workers.schema import faces, images

PAGE_SIZE = 48           # crops per page of faces
LIST_PAGE_SIZE = 24      # people or suggested people per page
GROUP_PREVIEW = 6        # crops shown for each suggested person in a list
ROOT = sa.and_(faces.c.parent_id.is_(None), faces.c.status == "ok")
FREE = sa.and_(faces.c.status == "unknown", faces.c.parent_id.is_(None))
UNGROUPED = sa.and_(FREE, faces.c.suggested_group.is_(None))
# Faces of any suggested person. Written so that only faces_review_index (suggested_group,
# status, parent_id) answers it: given `parent_id IS NULL` as such, both SQLite and MariaDB
# start from the (parent_id, status) index and then read every free face's row for its group.
GROUPED = sa.and_(faces.c.suggested_group.is_not(None), faces.c.status == "unknown",
                  sa.func.coalesce(faces.c.parent_id, 0) == 0)


def face_state(status: str, parent_id: int | None, group: int | None) -> str:
    """A face's reviewable state as the page showed it: status, person, suggested group."""
    return f"{status}:{parent_id or 0}:{group or 0}"


def member_digest(face_ids) -> str:
    """A suggested person's membership as the page showed it (every member, on every page)."""
    return hashlib.sha256(",".join(str(i) for i in sorted(face_ids)).encode()).hexdigest()[:32]


@dataclass
class Face:
    id: int
    image_id: int
    status: str
    parent_id: int | None
    group: int | None

    @property
    def state(self) -> str:
        return face_state(self.status, self.parent_id, self.group)


@dataclass
class Page:
    number: int
    total: int
    size: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def previous(self) -> int | None:
        return self.number - 1 if self.number > 1 else None

    @property
    def next(self) -> int | None:
        return self.number + 1 if self.number < self.pages else None


def page_of(number: int, total: int, size: int) -> Page:
    """Page `number` (1-based) of `total` items, clamped to the pages there are."""
    pages = max(1, math.ceil(total / size))
    return Page(min(max(1, number), pages), total, size)


FACE_COLUMNS = (faces.c.id, faces.c.image_id, faces.c.status, faces.c.parent_id, faces.c.suggested_group)


def _faces(conn: sa.Connection, where, page: Page, order=None) -> list[Face]:
    rows = conn.execute(sa.select(*FACE_COLUMNS).where(where)
                        .order_by(*(order if order is not None else (faces.c.id,)))
                        .limit(page.size).offset(page.offset)).all()
    return [Face(*r) for r in rows]


def _count(conn: sa.Connection, where) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(faces).where(where)).scalar() or 0)


# ---------------------------------------------------------------- people

@dataclass
class Person:
    id: int                      # the root face
    name: str | None
    image_id: int
    approved: int                # the root included
    filed: int                   # filed by the grouping, not reviewed yet

    @property
    def label(self) -> str:
        return self.name or f"Person {self.id}"


def _member_counts():
    """Approved and filed faces per person, from the (parent_id, status) index alone."""
    return (sa.select(faces.c.parent_id.label("person"),
                      sa.func.sum(sa.case((faces.c.status == "ok", 1), else_=0)).label("approved"),
                      sa.func.sum(sa.case((faces.c.status == "unknown", 1), else_=0)).label("filed"))
            .where(faces.c.parent_id.is_not(None)).group_by(faces.c.parent_id).subquery("m"))


def count_people(conn: sa.Connection) -> int:
    return _count(conn, ROOT)


def people(conn: sa.Connection, page: Page) -> list[Person]:
    """People, most approved faces first."""
    m = _member_counts()
    approved = (sa.func.coalesce(m.c.approved, 0) + 1).label("approved")
    rows = conn.execute(sa.select(faces.c.id, faces.c.name, faces.c.image_id, approved,
                                  sa.func.coalesce(m.c.filed, 0).label("filed"))
                        .select_from(faces.outerjoin(m, m.c.person == faces.c.id))
                        .where(ROOT).order_by(approved.desc(), faces.c.id)
                        .limit(page.size).offset(page.offset)).all()
    return [Person(r.id, r.name, r.image_id, int(r.approved), int(r.filed)) for r in rows]


def person(conn: sa.Connection, person_id: int) -> Person | None:
    root = conn.execute(sa.select(faces.c.id, faces.c.name, faces.c.image_id)
                        .where(faces.c.id == person_id, ROOT)).first()
    if root is None:
        return None
    counts = dict(conn.execute(sa.select(faces.c.status, sa.func.count())
                               .where(faces.c.parent_id == person_id).group_by(faces.c.status)).all())
    return Person(root.id, root.name, root.image_id, counts.get("ok", 0) + 1, counts.get("unknown", 0))


def approved_faces(conn: sa.Connection, person_id: int, page: Page) -> list[Face]:
    """The person's approved faces, the root (its cover) first."""
    where = sa.or_(sa.and_(faces.c.id == person_id, ROOT),
                   sa.and_(faces.c.parent_id == person_id, faces.c.status == "ok"))
    return _faces(conn, where, page, order=(faces.c.parent_id.is_not(None), faces.c.id))


def filed_faces(conn: sa.Connection, person_id: int, page: Page) -> list[Face]:
    return _faces(conn, sa.and_(faces.c.parent_id == person_id, faces.c.status == "unknown"), page)


def names(conn: sa.Connection) -> list[tuple[int, str]]:
    """(root id, name) of every named person, by name: the completion list of name fields."""
    return [(r.id, r.name) for r in conn.execute(
        sa.select(faces.c.id, faces.c.name).where(ROOT, faces.c.name.is_not(None), faces.c.name != "")
        .order_by(faces.c.name, faces.c.id))]


# ---------------------------------------------------------------- suggested people

@dataclass
class Group:
    id: int                      # the representative face
    size: int
    photos: int
    preview: list[int] = field(default_factory=list)


def count_groups(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count(sa.distinct(faces.c.suggested_group))).where(GROUPED))
               .scalar() or 0)


def groups(conn: sa.Connection, page: Page) -> list[Group]:
    """Suggested people, largest first, each with a few of its faces (the representative first)."""
    size = sa.func.count().label("size")
    rows = conn.execute(sa.select(faces.c.suggested_group, size).where(GROUPED)
                        .group_by(faces.c.suggested_group).order_by(size.desc(), faces.c.suggested_group)
                        .limit(page.size).offset(page.offset)).all()
    out = {r.suggested_group: Group(r.suggested_group, r.size, 0) for r in rows}
    if out:
        members = conn.execute(sa.select(faces.c.id, faces.c.suggested_group, faces.c.image_id)
                               .where(GROUPED, faces.c.suggested_group.in_(list(out)))
                               .order_by(faces.c.id)).all()
        photos: dict[int, set[int]] = {}
        for face_id, gid, image_id in members:
            g = out[gid]
            photos.setdefault(gid, set()).add(image_id)
            if face_id == gid:
                g.preview.insert(0, face_id)
            elif len(g.preview) < GROUP_PREVIEW:
                g.preview.append(face_id)
        for gid, g in out.items():
            g.photos = len(photos.get(gid, ()))
            del g.preview[GROUP_PREVIEW:]
    return list(out.values())


def group(conn: sa.Connection, group_id: int) -> tuple[Group, str] | None:
    """One suggested person and the digest of its membership, or None when it has no member."""
    rows = conn.execute(sa.select(faces.c.id, faces.c.image_id)
                        .where(GROUPED, faces.c.suggested_group == group_id)).all()
    if not rows:
        return None
    return (Group(group_id, len(rows), len({r.image_id for r in rows})),
            member_digest(r.id for r in rows))


def group_faces(conn: sa.Connection, group_id: int, page: Page) -> list[Face]:
    """The members, the representative first."""
    return _faces(conn, sa.and_(GROUPED, faces.c.suggested_group == group_id), page,
                  order=(faces.c.id != group_id, faces.c.id))


# ---------------------------------------------------------------- unknown faces

def count_unknown(conn: sa.Connection) -> int:
    return _count(conn, UNGROUPED)


def unknown_faces(conn: sa.Connection, page: Page) -> list[Face]:
    return _faces(conn, UNGROUPED, page)


# ---------------------------------------------------------------- one face, one photo

@dataclass
class CropSource:
    face_id: int
    path: str                    # images.path, relative to the storage root
    location: object             # [top, right, bottom, left] as stored


def crop_source(conn: sa.Connection, face_id: int) -> CropSource | None:
    row = conn.execute(sa.select(faces.c.id, faces.c.location, images.c.path)
                       .select_from(faces.join(images, images.c.id == faces.c.image_id))
                       .where(faces.c.id == face_id)).first()
    return CropSource(row.id, row.path, row.location) if row else None


def image_path(conn: sa.Connection, image_id: int) -> str | None:
    return conn.execute(sa.select(images.c.path).where(images.c.id == image_id)).scalar()


@dataclass
class PhotoFace:
    id: int
    status: str
    location: object
    person_id: int | None        # the person it is filed or approved under (a root: itself)
    person_name: str | None

    @property
    def label(self) -> str:
        if self.status == "not_face":
            return "not a face"
        if self.person_id is None:
            return "unknown"
        name = self.person_name or f"Person {self.person_id}"
        return name if self.status == "ok" else f"{name}?"


def photo_faces(conn: sa.Connection, image_id: int) -> list[PhotoFace]:
    person = faces.alias("person")
    rows = conn.execute(sa.select(faces.c.id, faces.c.status, faces.c.location, faces.c.parent_id,
                                  person.c.name.label("person_name"), faces.c.name)
                        .select_from(faces.outerjoin(person, person.c.id == faces.c.parent_id))
                        .where(faces.c.image_id == image_id).order_by(faces.c.face_index, faces.c.id)).all()
    out = []
    for r in rows:
        is_root = r.parent_id is None and r.status == "ok"
        out.append(PhotoFace(r.id, r.status, r.location, r.id if is_root else r.parent_id,
                             r.name if is_root else r.person_name))
    return out


def totals(conn: sa.Connection) -> dict[str, int]:
    return {"people": count_people(conn), "groups": count_groups(conn), "unknown": count_unknown(conn)}
