"""The review page's writes, each in one transaction and only on rows still in the state the page
showed.

They write what the Laravel app's review writes on the same columns: `status` `ok` / `not_face`,
`parent_id` = the person's root face, the person's name on the root; and the grouping's own
records: `face_rejections` for every "not this person" (that face is never filed under that
person again), `matched_parent_id` cleared where a reviewer took over from the matcher, and
`suggested_group` cleared where a face left its suggested person.

Someone else may have changed the rows since the page was drawn: the Laravel app, another review
page, the automatic rematch of the face workers. So the page sends the state it showed (each
selected face's `status:parent:group`, a suggested person's membership digest, a person's name),
the action locks the rows (SQLite: BEGIN IMMEDIATE; MySQL: SELECT ... FOR UPDATE by primary key,
the order the grouping locks in), compares, and every UPDATE repeats the expected state in its
WHERE and must touch exactly the rows it meant to. Anything else raises Conflict and the whole
transaction is rolled back: nothing is overwritten."""
from __future__ import annotations

import contextlib
import unicodedata

import sqlalchemy as sa

from workers import db as dbmod
from workers.errors import PipelineError
from workers.schema import face_rejections, faces
from workers.commands.review.queries import FREE, GROUPED, ROOT, face_state, member_digest

MAX_NAME = 255


class ActionError(PipelineError):
    """The request cannot be done as asked (bad input); nothing was written."""


class Conflict(ActionError):
    """The rows changed since the page was shown; nothing was written."""


@contextlib.contextmanager
def transaction(engine: sa.Engine):
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            # take the write lock before reading: the checks below then hold until the commit
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


def clean_name(value: str | None) -> str:
    name = " ".join((value or "").split())
    if not name:
        raise ActionError("A name is needed.")
    if len(name) > MAX_NAME:
        raise ActionError(f"A name has at most {MAX_NAME} characters.")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise ActionError("A name cannot hold control characters.")
    return name


# ---------------------------------------------------------------- reading under lock

def _lock(conn: sa.Connection, ids) -> dict[int, sa.Row]:
    ids = sorted(set(ids))
    out = {}
    for start in range(0, len(ids), 1000):
        rows = conn.execute(sa.select(faces.c.id, faces.c.status, faces.c.parent_id, faces.c.suggested_group,
                                      faces.c.name)
                            .with_hint(faces, "FORCE INDEX (PRIMARY)", "mysql")
                            .where(faces.c.id.in_(ids[start:start + 1000])).order_by(faces.c.id)
                            .with_for_update()).all()
        out.update({r.id: r for r in rows})
    return out


def _describe(row: sa.Row | None) -> str:
    if row is None:
        return "deleted"
    if row.status == "not_face":
        return "marked not a face"
    if row.status == "ok":
        return "approved as a person" if row.parent_id is None else f"approved under person {row.parent_id}"
    if row.parent_id is not None:
        return f"filed under person {row.parent_id}"
    return "in another suggested person" if row.suggested_group else "unknown, in no suggested person"


def _check_states(conn: sa.Connection, expected: dict[int, str]) -> dict[int, sa.Row]:
    """Lock the faces; Conflict unless each is in the state the page showed."""
    if not expected:
        raise ActionError("No face was selected.")
    rows = _lock(conn, expected)
    changed = [i for i, state in sorted(expected.items())
               if i not in rows or face_state(rows[i].status, rows[i].parent_id, rows[i].suggested_group) != state]
    if changed:
        first = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise Conflict(f"Nothing was changed: face {first}{more} changed since the page was shown "
                       f"(it is now {_describe(rows.get(first))}). The page shows the current state.")
    return rows


def _person(conn: sa.Connection, person_id: int, shown_name: str | None, role: str = "person") -> sa.Row:
    """Lock a person's root; Conflict unless it is still a person with the name shown."""
    row = _lock(conn, [person_id]).get(person_id)
    if row is None or row.status != "ok" or row.parent_id is not None:
        raise Conflict(f"Nothing was changed: {role} {person_id} is no longer a person "
                       f"(it is now {_describe(row)}). The page shows the current state.")
    if (row.name or "") != (shown_name or ""):
        raise Conflict(f"Nothing was changed: {role} {person_id} was renamed to {row.name!r} meanwhile. "
                       "The page shows the current state.")
    return row


def _target(conn: sa.Connection, name: str) -> tuple[int | None, str]:
    """(the person called `name`, case-insensitively, and their name as written), or (None, name)."""
    found = conn.execute(sa.select(faces.c.id, faces.c.name).where(ROOT, sa.func.lower(faces.c.name) == name.lower())
                         .order_by(faces.c.id)).all()
    if len(found) > 1:
        raise ActionError(f"{len(found)} people are called {name!r} (persons {', '.join(str(r.id) for r in found)}): "
                          "merge them first, or choose another name.")
    return (found[0].id, found[0].name) if found else (None, name)


# ---------------------------------------------------------------- guarded writes

def _update(conn: sa.Connection, ids, where, **values) -> None:
    """UPDATE the faces `ids` that still match `where`; Conflict unless every one of them did."""
    ids = sorted(set(ids))
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        done = conn.execute(faces.update().where(faces.c.id.in_(chunk), where)
                            .values(updated_at=dbmod.now(), **values))
        if done.rowcount != len(chunk):
            raise Conflict("Nothing was changed: some faces changed while this was being saved. "
                           "The page shows the current state.")


def _expected(state: str):
    """The WHERE clause of one face's expected `status:parent:group`."""
    status, parent, group = state.split(":")
    parent, group = int(parent) or None, int(group) or None
    return sa.and_(faces.c.status == status,
                   faces.c.parent_id.is_(None) if parent is None else faces.c.parent_id == parent,
                   faces.c.suggested_group.is_(None) if group is None else faces.c.suggested_group == group)


def _update_each(conn: sa.Connection, expected: dict[int, str], **values) -> None:
    for face_id, state in sorted(expected.items()):
        _update(conn, [face_id], _expected(state), **values)


def _remember_rejections(conn: sa.Connection, pairs: list[tuple[int, int]]) -> None:
    if pairs:
        insert = (face_rejections.insert().prefix_with("IGNORE", dialect="mysql")
                  .prefix_with("OR IGNORE", dialect="sqlite"))
        now = dbmod.now()
        conn.execute(insert, [{"face_id": f, "person_id": p, "created_at": now} for f, p in pairs])


def _forget_rejections(conn: sa.Connection, face_ids, person_id: int) -> None:
    conn.execute(face_rejections.delete().where(face_rejections.c.face_id.in_(sorted(face_ids)),
                                                face_rejections.c.person_id == person_id))


APPROVED = {"status": "ok", "matched_parent_id": None, "suggested_group": None, "match_note": None}
UNFILED = {"status": "unknown", "parent_id": None, "distance": None, "matched_parent_id": None,
           "suggested_group": None, "match_note": None}
NOT_A_FACE = {"status": "not_face", "parent_id": None, "distance": None, "matched_parent_id": None,
              "suggested_group": None, "match_note": None}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _no_roots(conn: sa.Connection, rows: dict[int, sa.Row], what: str) -> None:
    """A person's root face cannot be moved while other faces point at it."""
    roots = [i for i, r in rows.items() if r.status == "ok" and r.parent_id is None]
    if not roots:
        return
    members = conn.execute(sa.select(faces.c.parent_id).where(faces.c.parent_id.in_(roots)).limit(1)).first()
    if members:
        raise ActionError(f"Face {members.parent_id} is the cover of a person with other faces: it cannot be "
                          f"{what}. Merge the person into another one, or remove its other faces first.")


def confirm(engine: sa.Engine, person_id: int, expected: dict[int, str]) -> str:
    """Filed faces of a person, approved under it."""
    with transaction(engine) as conn:
        rows = _check_states(conn, expected)
        if any(r.parent_id != person_id for r in rows.values()):
            raise ActionError("Only faces filed under this person can be confirmed here.")
        todo = {i: s for i, s in expected.items() if rows[i].status != "ok"}
        _update_each(conn, todo, **APPROVED)
    return f"Confirmed {_plural(len(todo), 'face')}."


def not_this_person(engine: sa.Engine, person_id: int, expected: dict[int, str]) -> str:
    """Faces taken away from a person (filed or approved), remembered so they never return."""
    with transaction(engine) as conn:
        rows = _check_states(conn, expected)
        if person_id in rows:
            raise ActionError(f"Face {person_id} is this person's cover: merge or rename the person instead.")
        if any(r.parent_id != person_id for r in rows.values()):
            raise ActionError("Only faces of this person can be taken away from it here.")
        _update_each(conn, expected, **UNFILED)
        _remember_rejections(conn, [(i, person_id) for i in sorted(expected)])
    return f"{_plural(len(expected), 'face')} marked not this person; they will not be filed under it again."


def not_a_face(engine: sa.Engine, expected: dict[int, str]) -> str:
    with transaction(engine) as conn:
        rows = _check_states(conn, expected)
        _no_roots(conn, rows, "marked not a face")
        _update_each(conn, expected, **NOT_A_FACE)
    return f"{_plural(len(expected), 'face')} marked not a face."


def assign(engine: sa.Engine, name: str, expected: dict[int, str]) -> str:
    """Faces given to the person called `name`; a new person when nobody is called so."""
    name = clean_name(name)
    with transaction(engine) as conn:
        rows = _check_states(conn, expected)
        _no_roots(conn, rows, "moved")
        target, name = _target(conn, name)
        ids = sorted(expected)
        if target is None:
            target, ids = ids[0], ids[1:]
            _update(conn, [target], _expected(expected[target]), parent_id=None, distance=None,
                    name=name, **APPROVED)
            created = True
        else:
            created = False
        moved = {i: expected[i] for i in ids if i != target}
        _update_each(conn, moved, parent_id=target, distance=None, **APPROVED)
        _forget_rejections(conn, expected, target)     # a reviewer's own choice overrides an old "not"
    total = len(moved) + created
    return f"{_plural(total, 'face')} given to {name}" + (" (a new person)." if created else ".")


def remove_from_group(engine: sa.Engine, group_id: int, expected: dict[int, str]) -> str:
    with transaction(engine) as conn:
        rows = _check_states(conn, expected)
        if any(r.suggested_group != group_id for r in rows.values()):
            raise ActionError("Only faces of this suggested person can be removed from it here.")
        _update_each(conn, expected, suggested_group=None)
    return f"{_plural(len(expected), 'face')} removed from the suggested person."


def _group_members(conn: sa.Connection, group_id: int, digest: str) -> list[int]:
    members = conn.execute(sa.select(faces.c.id).where(GROUPED, faces.c.suggested_group == group_id)).scalars().all()
    rows = _lock(conn, members)
    members = [i for i, r in rows.items() if r.status == "unknown" and r.parent_id is None
               and r.suggested_group == group_id]
    if not members or member_digest(members) != digest:
        raise Conflict("Nothing was changed: this suggested person changed since the page was shown "
                       "(its faces were filed, reviewed or regrouped meanwhile). The page shows the current state.")
    return members


def name_group(engine: sa.Engine, group_id: int, digest: str, left_out: set[int], name: str | None = None,
               person_id: int | None = None, person_name: str | None = None) -> str:
    """A suggested person becomes a person: a new one called `name` (or the existing one of that
    name), or the existing person `person_id`. Faces `left_out` stay unknown, out of the group,
    and are remembered as not that person."""
    name = clean_name(name) if person_id is None else None
    with transaction(engine) as conn:
        members = _group_members(conn, group_id, digest)
        if not left_out <= set(members):
            raise Conflict("Nothing was changed: a face left out is no longer in this suggested person. "
                           "The page shows the current state.")
        chosen = [i for i in sorted(members) if i not in left_out]
        if not chosen:
            raise ActionError("Every face was left out: nothing to name.")
        in_group = sa.and_(FREE, faces.c.suggested_group == group_id)
        if person_id is not None:
            target, created, name = person_id, False, _person(conn, person_id, person_name).name or f"Person {person_id}"
        else:
            (target, name), created = _target(conn, name), False
            if target is None:
                target = group_id if group_id in chosen else chosen[0]
                _update(conn, [target], in_group, parent_id=None, distance=None, name=name, **APPROVED)
                created = True
        _update(conn, [i for i in chosen if i != target], in_group, parent_id=target, distance=None, **APPROVED)
        _update(conn, left_out, in_group, suggested_group=None)
        _remember_rejections(conn, [(i, target) for i in sorted(left_out)])
        _forget_rejections(conn, chosen, target)
    said = f"{_plural(len(chosen), 'face')} named {name}" + (" (a new person)" if created else "")
    if left_out:
        said += f"; {_plural(len(left_out), 'face')} left out, remembered as not {name}"
    return said + "."


def rename(engine: sa.Engine, person_id: int, shown_name: str | None, new_name: str) -> str:
    new_name = clean_name(new_name)
    with transaction(engine) as conn:
        _person(conn, person_id, shown_name)
        _update(conn, [person_id], ROOT, name=new_name)
    return f"Renamed to {new_name}."


def merge(engine: sa.Engine, source_id: int, source_name: str | None, target_name: str) -> str:
    """Person `source` becomes part of the person called `target_name`: its faces (root
    included) point at the target's root, and what was rejected from one is rejected from the
    merged person."""
    target_name = clean_name(target_name)
    with transaction(engine) as conn:
        _person(conn, source_id, source_name)
        target_id, _ = _target(conn, target_name)
        if target_id is None:
            raise ActionError(f"Nobody is called {target_name!r}: rename this person instead.")
        if target_id == source_id:
            raise ActionError("A person cannot be merged into itself.")
        target = _lock(conn, [target_id])[target_id]       # found by name just now: its state is current
        moved = conn.execute(faces.update().where(faces.c.parent_id == source_id)
                             .values(parent_id=target_id, updated_at=dbmod.now())).rowcount
        conn.execute(faces.update().where(faces.c.matched_parent_id == source_id)
                     .values(matched_parent_id=target_id))
        _update(conn, [source_id], ROOT, parent_id=target_id, name=None)
        rejected = conn.execute(sa.select(face_rejections.c.face_id)
                                .where(face_rejections.c.person_id == source_id)).scalars().all()
        _remember_rejections(conn, [(f, target_id) for f in rejected])
        conn.execute(face_rejections.delete().where(face_rejections.c.person_id == source_id))
    return (f"Merged {source_name or f'Person {source_id}'} into {target.name} "
            f"({_plural(moved + 1, 'face')} moved).")
