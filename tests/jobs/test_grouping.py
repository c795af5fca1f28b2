"""Face grouping on real SQLite and MariaDB: people as all their approved faces, no
guess between two people, one person per photo, learning from review, our own filings revisited,
the automatic rematch, suggested groups; reviewed faces are never changed.

Encodings here are synthetic points whose distances are chosen by hand (e_i = unit vector i), so
each rule is tested on its own; tests/jobs/test_faces.py runs the job on real photos."""
from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from workers import db
from workers.faces import filing, suggestions
from workers.jobs import faces as job
from workers.schema import face_rejections, faces, images
from workers.settings import Settings


def e(i: int, scale: float = 1.0) -> np.ndarray:
    v = np.zeros(128)
    v[i] = scale
    return v


def at(*parts) -> np.ndarray:
    """A point from (axis, coordinate) pairs."""
    v = np.zeros(128)
    for axis, value in parts:
        v[axis] = value
    return v


class Lib:
    """A database with helpers that write what the Laravel app would write."""

    def __init__(self, url: str, **settings):
        self.settings = Settings(database_url=url, **settings)
        self.engine = db.engine_for(url)

    def image(self) -> int:
        with self.engine.begin() as conn:
            return conn.execute(images.insert().values(path="x.jpg")).inserted_primary_key[0]

    def face(self, enc, status="unknown", parent=None, image=None, **extra) -> int:
        now = db.now()
        with self.engine.begin() as conn:
            return conn.execute(faces.insert().values(
                image_id=image or self.image(), face_index=0, encoding=[float(x) for x in enc],
                status=status, parent_id=parent, created_at=now, updated_at=now, **extra)).inserted_primary_key[0]

    def review(self, face_id, **values) -> None:
        with self.engine.begin() as conn:
            conn.execute(faces.update().where(faces.c.id == face_id).values(updated_at=db.now(), **values))

    def row(self, face_id):
        with self.engine.connect() as conn:
            return conn.execute(sa.select(faces).where(faces.c.id == face_id)).one()

    def parent(self, face_id):
        return self.row(face_id).parent_id

    def rematch(self, **overrides):
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        return filing.rematch(self.engine, settings)


@pytest.fixture
def lib(any_db_url):
    return Lib(any_db_url)


def test_a_person_is_all_their_approved_faces(any_db_url):
    lib = Lib(any_db_url)
    root = lib.face(e(0, 0.0), status="ok")
    member = lib.face(e(0, 0.5), status="ok", parent=root)       # approved under the root
    new = lib.face(e(0, 0.9))                                      # 0.9 from the root, 0.4 from the member
    assert lib.rematch(face_grouping="roots")["matched"] == 0      # the original: root only
    assert lib.parent(new) is None
    counts = lib.rematch()
    assert counts["matched"] == 1
    row = lib.row(new)
    assert row.parent_id == root and row.matched_parent_id == root and abs(row.distance - 0.4) < 1e-9


def test_no_guess_between_two_people(lib):
    a = lib.face(e(0, 0.0), status="ok")
    b = lib.face(e(1, 0.6), status="ok")
    near_both = lib.face(at((0, 0.01), (1, 0.3)))                  # ~0.30 from a, ~0.30 from b
    clear = lib.face(at((1, 0.05)))                                # 0.05 from a, 0.55 from b
    counts = lib.rematch()
    assert lib.parent(near_both) is None and lib.row(near_both).match_note.startswith("ambiguous")
    assert counts["ambiguous"] == 1
    assert lib.parent(clear) == a and b


@pytest.mark.parametrize("spread, expected", [
    ((0.45, 0.5, 0.55, 0.55), "ambiguous"),    # one of five faces close: as likely chance as B's one
    ((0.27, 0.28, 0.29, 0.29), "a"),           # all five close: a
])
def test_people_are_compared_at_equal_numbers_of_approved_faces(lib, spread, expected):
    q = at((0, 1.0))
    a = lib.face(q + e(1, 0.26), status="ok")
    for axis, d in enumerate(spread, start=2):
        lib.face(q + e(axis, d), status="ok", parent=a)
    b = lib.face(q + e(10, 0.32), status="ok")          # 0.26 / 0.32 passes the plain ratio test
    face = lib.face(q)
    lib.rematch()
    if expected == "a":
        assert lib.parent(face) == a
    else:
        note = lib.row(face).match_note
        assert lib.parent(face) is None and note.startswith("ambiguous") and f"person {b}" in note
        assert "nearest of 1 approved faces each" in note


def test_expected_nearest_of_m_faces():
    from workers.faces.rules import expected_nearest
    assert expected_nearest([0.1, 0.2, 0.3], 3, 1, 0.7) == pytest.approx(0.2)       # the mean
    assert expected_nearest([0.1, 0.2, 0.3], 3, 3, 0.7) == pytest.approx(0.1)       # the nearest
    assert expected_nearest([0.1, 0.2, 0.3], 3, 2, 0.7) == pytest.approx(0.1 * 2 / 3 + 0.2 / 3)
    assert expected_nearest([0.1], 3, 1, 0.7) == pytest.approx(0.5)                 # two not looked up
    assert expected_nearest([0.4], 1, 1, 0.7) == pytest.approx(0.4)


def test_a_face_among_an_unapproved_cluster_is_left_out(lib):
    person = lib.face(e(0, 0.0), status="ok")
    face = lib.face(e(0, 0.5))                                     # would match the person at 0.5...
    lib.face(e(0, 0.7))                                            # ...but two unknown faces nobody
    lib.face(at((0, 0.68), (1, 0.05)))                             # approved are nearer (~0.2)
    counts = lib.rematch()
    assert lib.parent(face) is None and "unknown faces" in lib.row(face).match_note
    assert counts["closer to unapproved faces"] == 1 and person
    # the person's own not-yet-filed photos do not count against it
    own = [lib.face(e(0, 0.1)), lib.face(e(0, 0.12))]
    lib.rematch()
    assert [lib.parent(f) for f in own] == [person, person]


def test_a_face_before_a_tight_unapproved_crowd_is_left_out(lib):
    """Unknown faces the rule would file under the person too still count against it when they
    gather beyond the face, much nearer to it than the person is (an unapproved look-alike)."""
    person = lib.face(e(0, 0.0), status="ok")
    lib.face(e(0, 0.3), status="ok", parent=person)                # radius 0.3 + slack 0.1
    face = lib.face(e(1, 0.34))                                    # 0.34 from the person...
    crowd = [lib.face(at((1, 0.36), (2, 0.05))),                   # ...two faces 0.05 from it,
             lib.face(at((1, 0.36), (3, 0.05)))]                   # each 0.363 from the person
    lib.rematch()
    assert lib.parent(face) is None and "unknown faces" in lib.row(face).match_note
    assert lib.row(crowd[0]).status == "unknown"


def test_the_first_approval_does_not_draw_in_a_crowd_of_someone_else(lib):
    """With one approved face nothing says how the person's photos spread, so a crowd of unknown
    faces much nearer each other than to it is someone else's, on whichever side it lies; the
    person's own photos around the approved face are filed."""
    person = lib.face(e(0, 0.0), status="ok")
    crowd = [lib.face(at((0, 0.5), (1 + i, 0.15))) for i in range(3)]   # 0.52 from it, 0.21 apart
    own = [lib.face(at((5 + i, 0.3))) for i in range(3)]                # 0.30 from it, 0.42 apart
    lib.rematch()
    assert [lib.parent(f) for f in crowd] == [None] * 3
    assert all("unknown faces" in lib.row(f).match_note for f in crowd)
    assert [lib.parent(f) for f in own] == [person] * 3


def test_the_first_approval_files_the_persons_photos_of_another_day(lib):
    """Photos of one day sit near each other and farther from the one approved photo of another
    day: a crowd by distance alone, but one suggested group with the approved face, so filed."""
    person = lib.face(e(0, 0.0), status="ok")
    day = [lib.face(at((0, 0.4), (1 + i, 0.08))) for i in range(4)]     # 0.41 from it, 0.11 apart
    lib.rematch()
    assert [lib.parent(f) for f in day] == [person] * 4


def test_one_person_once_per_photo(lib):
    person = lib.face(e(0, 0.0), status="ok")
    photo = lib.image()
    near = lib.face(e(0, 0.2), image=photo)
    far = lib.face(e(0, 0.3), image=photo)
    lib.rematch()
    assert lib.parent(near) == person and lib.parent(far) is None
    assert "nearer face in this photo" in lib.row(far).match_note
    # a person approved in a photo takes no second face there
    other = lib.image()
    lib.face(e(0, 0.25), status="ok", parent=person, image=other)
    extra = lib.face(e(0, 0.1), image=other)
    lib.rematch()
    assert lib.parent(extra) is None
    # the setting turns it off (mirrors, collages)
    lib.rematch(face_one_per_photo=False)
    assert lib.parent(far) == person and lib.parent(extra) == person


def test_reviewed_and_hand_filed_faces_are_never_changed(lib):
    a = lib.face(e(0, 0.0), status="ok")
    b = lib.face(e(1, 1.0), status="ok")
    not_face = lib.face(e(0, 0.1), status="not_face")
    ok_member = lib.face(e(1, 0.9), status="ok", parent=b)
    by_hand = lib.face(e(0, 0.05), parent=b)          # a reviewer filed it under b, status unknown
    snapshot = {f: lib.row(f) for f in (a, b, not_face, ok_member, by_hand)}
    lib.rematch()
    lib.rematch(face_one_per_photo=False)
    assert {f: lib.row(f) for f in snapshot} == snapshot


def test_a_reviewers_not_this_person_is_learned(lib):
    person = lib.face(e(0, 0.0), status="ok")
    face = lib.face(e(0, 0.3))
    lib.rematch()
    assert lib.parent(face) == person
    lib.review(face, parent_id=None, distance=None)        # the reviewer: "not this person"
    counts = lib.rematch()
    assert counts["not this person (learned)"] == 1
    assert lib.parent(face) is None and lib.row(face).matched_parent_id is None
    with lib.engine.connect() as conn:
        assert conn.execute(sa.select(face_rejections.c.face_id, face_rejections.c.person_id)).all() == [(face, person)]
    lib.rematch()
    assert lib.parent(face) is None


def test_a_reviewers_move_keeps_look_alikes_apart(lib):
    a = lib.face(e(0, 0.0), status="ok")
    a2 = lib.face(e(0, 0.4), status="ok", parent=a)
    b = lib.face(e(1, 1.0), status="ok")
    moved = lib.face(at((0, 0.45), (2, 0.2)))               # matched to a first...
    lib.rematch()
    assert lib.parent(moved) == a
    lib.review(moved, status="ok", parent_id=b)              # ...a reviewer says it is b
    report = {p["person"]: p for p in filing.people_report(lib.engine, lib.settings)[1]}
    assert report[a]["nearest"] == b and "ratio test" in report[a]["why"] and report[a]["faces"] == 2
    near_moved = lib.face(at((0, 0.45), (2, 0.12)))         # 0.08 from the moved face, 0.26 from a2
    lib.rematch()
    assert lib.parent(near_moved) != a and a2


def test_second_look_files_beside_filed_faces_but_never_in_a_chain(lib):
    from workers.faces.index import SECOND_NOTE
    root = lib.face(at((0, 0.0)), status="ok")                  # three approved faces 0.05 from the
    for axis in (1, 2):                                         # root: a radius of 0.05 + 0.1
        lib.face(at((axis, 0.05)), status="ok", parent=root)
    filed = lib.face(at((0, 0.12)))                             # inside the radius: filed at once
    beside = lib.face(at((0, 0.22)))                            # outside it, 0.10 from `filed`
    beyond = lib.face(at((0, 0.33)))                            # 0.11 from `beside`, 0.21 from `filed`
    lib.rematch(face_second_ratio=0)
    assert [lib.parent(f) for f in (filed, beside, beyond)] == [root, None, None]
    counts = lib.rematch()
    assert [lib.parent(f) for f in (filed, beside, beyond)] == [root, root, None]
    assert lib.row(beside).match_note.startswith(SECOND_NOTE) and lib.row(filed).match_note is None
    assert counts["of those, by the second look"] == 1 and counts["outside the radius"] == 1
    lib.review(filed, parent_id=None)                           # "not this person": no evidence left
    lib.rematch()
    assert lib.parent(filed) is None and lib.parent(beside) is None


def test_rematch_revisits_our_own_filings(lib):
    sister = lib.face(e(0, 0.0), status="ok")
    other = lib.face(at((0, 0.5), (1, 0.1)))                # filed under the sister (one root, radius 0.6)
    lib.rematch()
    assert lib.parent(other) == sister
    lib.face(at((0, 0.5), (1, 0.12)), status="ok")          # the reviewer approves her own photo
    counts = lib.rematch()
    assert lib.parent(other) != sister and counts["matched"] + counts["kept"] == 0


def test_automatic_rematch_after_approvals_change(lib):
    root = lib.face(e(0, 0.0))
    waiting = [lib.face(at((1 + i, 0.3))) for i in range(5)]     # the person's photos, around the root
    settings = lib.settings.model_copy(update={"face_rematch_batch": 2})
    steps = 0

    def job_step():
        with lib.engine.begin() as conn:
            return filing.auto_rematch(conn, lib.engine, settings)

    job_step()
    while job_step():                                       # nothing approved: the pass ends
        steps += 1
    assert all(lib.parent(f) is None for f in waiting)
    lib.review(root, status="ok")                            # approvals changed: a new pass
    while job_step():
        steps += 1
    assert [lib.parent(f) for f in waiting] == [root] * 5
    assert not job_step()                                    # nothing changed since: no pass


def test_idle_faces_consumer_files_faces_after_approvals(mysql_url, rabbitmq, tmp_path):
    """A reviewer approves a person on a quiet library (no face job comes): the faces consumer,
    idle, files the waiting faces by itself in bounded steps."""
    from tests.support.consumers import consumer_env, start_consumer, stop_consumer, wait_for

    lib = Lib(mysql_url)
    root = lib.face(e(0, 0.0))
    waiting = [lib.face(at((1 + i, 0.3))) for i in range(5)]     # the person's photos, around the root
    env = consumer_env(mysql_url, rabbitmq.url, idle_interval=0.3, face_rematch_batch=2)
    proc = start_consumer("faces", env, tmp_path)
    try:
        lib.review(root, status="ok")
        wait_for(lambda: [lib.parent(f) for f in waiting] == [root] * 5, 30, "idle rematch", proc)
        assert lib.row(root).status == "ok" and lib.parent(root) is None     # the review untouched
    finally:
        assert stop_consumer(proc) == 0


def test_suggested_groups(lib, capsys):
    big = [lib.face(at((0, 1.0), (1 + i, 0.1))) for i in range(5)]
    small = [lib.face(at((10, 1.0), (11 + i, 0.1))) for i in range(3)]
    alone = lib.face(e(20, 1.0))
    filed_root = lib.face(e(30, 1.0), status="ok")
    filed = lib.face(at((30, 1.0), (31, 0.1)), parent=filed_root)
    groups = suggestions.refresh(lib.engine, lib.settings)
    assert [g.size for g in groups] == [5, 3]
    assert set(groups[0].face_ids) == set(big) and set(groups[1].face_ids) == set(small)
    assert lib.row(big[0]).suggested_group == groups[0].id and groups[0].id in big
    assert lib.row(alone).suggested_group is None and lib.row(filed).suggested_group is None

    from workers.commands.cli import main
    url = lib.settings.database_url
    assert main(["faces", "suggest", "--json", "--db", url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [g["size"] for g in listed] == [5, 3] and listed[0]["id"] in big
    assert main(["faces", "suggest", "--db", url]) == 0
    assert "suggested groups: 2 (8 unknown faces)" in capsys.readouterr().out


@pytest.mark.parametrize("seed, apart, bridge_at", [
    (0, 0.82, 0.41),    # the bridge ~0.415 from both: only at 0.45, the first tighter pass splits
    (1, 0.74, 0.37),    # ~0.375 from both: inside 0.40 too, a pass one step tighter splits
])
def test_suggested_groups_split_two_chained_people(seed, apart, bridge_at):
    """Two dense clusters joined by one bridge: DBSCAN chains them, a tighter pass splits, and
    the bridge, as near to both, belongs to neither."""
    rng = np.random.default_rng(seed)
    a = at((0, 1.0)) + rng.normal(0, 0.005, (6, 128))
    b = at((0, 1.0), (1, apart)) + rng.normal(0, 0.005, (6, 128))
    bridge = at((0, 1.0), (1, bridge_at))[None, :]
    mat = np.vstack([a, b, bridge])
    ids = np.arange(1, len(mat) + 1)
    groups = suggestions.cluster(ids, ids, mat, radius=0.45, min_faces=3)
    assert sorted(sorted(g.face_ids) for g in groups) == [list(range(1, 7)), list(range(7, 13))]


def test_suggested_groups_split_several_chains_at_once():
    """Three chained pairs of people far apart, and one lone dense person: every chain splits in
    the same pass, no sub-group reaches into another group, the lone person stays whole."""
    rng = np.random.default_rng(4)
    parts, want, start = [], [], 1
    for axis in (0, 2, 4):
        a = at((axis, 1.0)) + rng.normal(0, 0.005, (5, 128))
        b = at((axis, 1.0), (axis + 1, 0.82)) + rng.normal(0, 0.005, (7, 128))
        bridge = at((axis, 1.0), (axis + 1, 0.41))[None, :]
        parts += [a, b, bridge]
        want += [list(range(start, start + 5)), list(range(start + 5, start + 12))]
        start += 13
    parts.append(at((6, 1.0)) + rng.normal(0, 0.005, (4, 128)))
    want.append(list(range(start, start + 4)))
    mat = np.vstack(parts)
    ids = np.arange(1, len(mat) + 1)
    groups = suggestions.cluster(ids, ids, mat, radius=0.45, min_faces=3)
    assert sorted(g.face_ids for g in groups) == sorted(want)


def test_suggested_groups_pairwise_pass_in_blocks(monkeypatch):
    """The pairs found block by block are exactly the pairs closer than the radius."""
    rng = np.random.default_rng(2)
    mat = rng.normal(0, 0.05, (300, 128))
    mat[::2] += 0.3 * np.eye(128)[rng.integers(0, 4, 150)]
    monkeypatch.setattr(suggestions, "BLOCK_CELLS", 5000)         # many uneven blocks
    adj = suggestions.neighbours(mat, 0.45)
    d = np.linalg.norm(mat[:, None] - mat[None], axis=2)
    want = (d < 0.45) & ~np.eye(len(mat), dtype=bool)
    assert (adj.toarray() > 0).tolist() == want.tolist()
    assert np.allclose(np.sqrt(adj.toarray()[want]), d[want], atol=1e-4)


def test_cli_people_and_rematch(lib, capsys):
    from workers.commands.cli import main
    root = lib.face(e(0, 0.0), status="ok", name="Ada")
    lib.face(e(0, 0.3), status="ok", parent=root)
    lib.face(e(0, 0.2))
    url = lib.settings.database_url
    assert main(["faces", "people", "--db", url]) == 0
    out = capsys.readouterr().out
    assert f"person {root}" in out and "Ada" in out and "approved 2" in out and "radius 0.400" in out
    assert main(["faces", "rematch", "--db", url]) == 0
    assert "faces given a parent: 1" in capsys.readouterr().out


def test_unknown_grouping_mode_is_refused(lib):
    lib.face(e(0, 0.0))
    with pytest.raises(RuntimeError, match="face_grouping"):
        lib.rematch(face_grouping="nearest")


def test_store_faces_files_new_faces_once_per_photo(lib):
    person = lib.face(e(0, 0.0), status="ok")
    image = lib.image()
    with lib.engine.begin() as conn:
        stored = job.store_faces(conn, lib.engine, lib.settings, image,
                                 [(e(0, 0.2).tolist(), [0, 10, 10, 0]), (e(0, 0.3).tolist(), [20, 40, 40, 20])])
    assert stored["grouped"] == 1
    with lib.engine.connect() as conn:
        rows = conn.execute(sa.select(faces).where(faces.c.image_id == image).order_by(faces.c.face_index)).all()
    assert [r.parent_id for r in rows] == [person, None]
    assert rows[0].matched_parent_id == person and "nearer face" in rows[1].match_note


def test_migration_adds_the_grouping_columns_to_an_existing_faces_table(mariadb):
    """A database migrated before face grouping (0001 done, faces without our columns) gets them."""
    url = mariadb.create_database("t_grouping_upgrade")
    engine = db.engine_for(url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE faces (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, parent_id BIGINT UNSIGNED NULL,"
            " image_id BIGINT UNSIGNED NOT NULL, face_index INT NOT NULL DEFAULT 0, encoding JSON,"
            " status ENUM('process','unknown','not_face','ok') NOT NULL DEFAULT 'process',"
            " name VARCHAR(255), location JSON, distance DOUBLE, created_at DATETIME, updated_at DATETIME)"))
        conn.execute(sa.text("INSERT INTO faces (image_id, status) VALUES (1, 'ok')"))
        from workers.schema import schema_migrations
        schema_migrations.create(conn)
        conn.execute(schema_migrations.insert().values(version=1, name="initial", applied_at=db.now()))
    assert db.migrate(engine) == ["0002_face_grouping", "0003_face_review_index", "0004_face_metrics",
                                  "0005_face_unreviewed_index"]
    insp = sa.inspect(engine)
    assert {"matched_parent_id", "match_note", "suggested_group"} <= {c["name"] for c in insp.get_columns("faces")}
    assert {"faces_suggested_group_index", "faces_unreviewed_index"} <= {ix["name"] for ix in insp.get_indexes("faces")}
    assert insp.has_table("face_rejections")
    with engine.connect() as conn:
        assert conn.execute(sa.select(faces.c.status)).scalar() == "ok"
    assert db.migrate(engine) == []
