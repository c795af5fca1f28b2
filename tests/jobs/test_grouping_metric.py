"""The learned face distance (workers/faces/metric.py) on real SQLite and MariaDB: fitted from
approvals and refitted when they change, informed by rejections and by faces of one photo,
stored beside the encodings; suggested groups and filing never put two faces of one photo
together. Synthetic encodings: people differ along a few axes, their photos vary along others."""
from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from workers import db
from workers.faces import filing, metric, suggestions
from workers.schema import face_metrics, faces, images
from workers.settings import Settings

PEOPLE = 4


def person_face(p: int, k: int) -> np.ndarray:
    """Person p's k-th photo: the person on axis p (0.3 apart), the photo on axis 20 + k."""
    v = np.zeros(128)
    v[p] = 0.3
    v[20 + k % 8] = 0.15
    return v


class Lib:
    def __init__(self, url: str, **settings):
        self.settings = Settings(database_url=url, face_metric_min_people=2, **settings)
        self.engine = db.engine_for(url)

    def image(self) -> int:
        with self.engine.begin() as conn:
            return conn.execute(images.insert().values(path="x.jpg")).inserted_primary_key[0]

    def face(self, enc, status="unknown", parent=None, image=None) -> int:
        now = db.now()
        with self.engine.begin() as conn:
            return conn.execute(faces.insert().values(
                image_id=image or self.image(), face_index=0, encoding=[float(x) for x in enc],
                status=status, parent_id=parent, created_at=now, updated_at=now)).inserted_primary_key[0]

    def people(self, photos: int = 3) -> dict[int, int]:
        roots = {}
        for p in range(PEOPLE):
            roots[p] = self.face(person_face(p, 0), status="ok")
            for k in range(1, photos):
                self.face(person_face(p, k), status="ok", parent=roots[p])
        return roots

    def metric(self) -> metric.Metric:
        with self.engine.begin() as conn:
            return filing.Matcher(conn, self.engine, self.settings).metric

    def stored(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(face_metrics).order_by(face_metrics.c.id)).all()


def test_fit_weighs_what_tells_people_apart():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 0.1, (12, 128))
    centres[:, 0] = 0                                   # people never differ along axis 0...
    noise = rng.normal(0, 0.01, (12, 5, 128))
    noise[:, :, 0] = rng.normal(0, 0.2, (12, 5))        # ...their photos do
    vecs = (centres[:, None, :] + noise).reshape(-1, 128)
    persons = np.repeat(np.arange(12), 5)
    m = metric.fit(vecs, persons, rules=metric.MetricRules(min_people=2, shrinkage=10))
    assert m.learned and 0 < m.weight < 1
    along = lambda axis: float(m.distance(np.eye(128)[axis], np.zeros(128)))  # noqa: E731
    assert along(0) < 0.5 * along(1)                    # photo-to-photo change counts for less
    assert metric.fit(vecs[:5], persons[:5], rules=metric.MetricRules(min_people=2)).matrix is None
    assert not metric.fit(vecs, persons, rules=metric.MetricRules(enabled=False)).learned
    assert metric.fit(np.empty((0, 128)), np.empty(0)) == metric.IDENTITY


def test_nothing_approved_is_todays_distance(any_db_url):
    lib = Lib(any_db_url)
    lib.face(person_face(0, 0))
    assert lib.metric() == metric.IDENTITY and lib.stored() == []


def test_refit_after_an_approval_is_stored(any_db_url):
    lib = Lib(any_db_url)
    roots = lib.people()
    first = lib.metric()
    assert first.learned and first.people == PEOPLE and first.faces == 3 * PEOPLE
    assert [r.fingerprint for r in lib.stored()] == [first.fingerprint]
    stored = metric.stored(lib.engine.connect())
    assert np.allclose(stored.matrix, first.matrix, atol=1e-9)
    assert lib.metric().fingerprint == first.fingerprint          # unchanged approvals: no refit
    lib.face(person_face(0, 5), status="ok", parent=roots[0])
    second = lib.metric()
    assert second.fingerprint != first.fingerprint and second.faces == 3 * PEOPLE + 1
    assert [r.fingerprint for r in lib.stored()] == [first.fingerprint, second.fingerprint]


def test_a_rejection_changes_the_metric(any_db_url):
    lib = Lib(any_db_url)
    roots = lib.people()
    face = lib.face(person_face(0, 6) + 0.05 * np.eye(128)[1])
    filing.rematch(lib.engine, lib.settings)
    with lib.engine.connect() as conn:
        assert conn.execute(sa.select(faces.c.parent_id).where(faces.c.id == face)).scalar() == roots[0]
    before = lib.metric()
    with lib.engine.begin() as conn:                 # the reviewer: "not this person"
        conn.execute(faces.update().where(faces.c.id == face).values(parent_id=None, distance=None))
    counts = filing.rematch(lib.engine, lib.settings)
    assert counts["not this person (learned)"] == 1
    after = lib.metric()
    assert after.learned and after.fingerprint != before.fingerprint
    assert after.negatives == before.negatives + 1
    with lib.engine.connect() as conn:
        assert conn.execute(sa.select(faces.c.parent_id).where(faces.c.id == face)).scalar() != roots[0]


def test_faces_of_one_photo_inform_the_metric_and_never_join_one_person(any_db_url):
    lib = Lib(any_db_url)
    roots = lib.people()
    before = lib.metric()
    photo = lib.image()
    a = lib.face(person_face(1, 6), image=photo)
    b = lib.face(person_face(1, 7), image=photo)       # both look like person 1
    filing.rematch(lib.engine, lib.settings)
    with lib.engine.connect() as conn:
        parents = dict(conn.execute(sa.select(faces.c.id, faces.c.parent_id).where(faces.c.id.in_([a, b]))).all())
    assert sorted(parents.values(), key=str) == sorted([roots[1], None], key=str)
    with lib.engine.begin() as conn:                 # the reviewer approves one of them
        winner = next(f for f, p in parents.items() if p)
        conn.execute(faces.update().where(faces.c.id == winner).values(status="ok"))
    after = lib.metric()
    assert after.negatives > before.negatives        # the other face of the photo is a negative


def test_suggested_groups_hold_one_face_per_photo(any_db_url):
    lib = Lib(any_db_url)
    photo = lib.image()
    group = [lib.face(person_face(0, k)) for k in range(4)]
    twin = lib.face(person_face(0, 4), image=photo)
    same_photo = lib.face(person_face(0, 5), image=photo)
    groups = suggestions.refresh(lib.engine, lib.settings)
    assert len(groups) == 1
    members = set(groups[0].face_ids)
    assert set(group) <= members and len(members & {twin, same_photo}) == 1


def test_people_report_shows_radius_nearest_person_and_learned_share(any_db_url, capsys, monkeypatch):
    lib = Lib(any_db_url)
    roots = lib.people()
    from workers.commands.cli import main
    monkeypatch.setenv("PHOTO_FACE_METRIC_MIN_PEOPLE", "2")     # the command reads the environment
    assert main(["faces", "people", "--db", lib.settings.database_url]) == 0
    out = capsys.readouterr().out
    assert "% learned" in out and "nearest person" in out and f"person {roots[0]}" in out
    m, report = filing.people_report(lib.engine, lib.settings)
    row = next(r for r in report if r["person"] == roots[0])
    assert row["nearest"] in roots.values() and row["nearest_distance_dlib"] == pytest.approx(np.sqrt(2) * 0.3, abs=0.2)
    assert row["learned"] == m.weight > 0 and row["radius"] > 0


def _near(distances: dict[int, float]):
    """Candidates: one approved face per person (person id -> distance), nearest first."""
    from workers.faces.rules import Candidates
    return Candidates(np.arange(1, len(distances) + 1), np.array(list(distances)), np.array(list(distances.values())))


@pytest.mark.parametrize("learned, expected", [
    ("matched 7", 7),                       # both distances agree
    ("no person within the threshold", 7),  # too far for the tighter learned metric to say
    ("matched 9", None),                    # the learned metric picks someone else
    ("ambiguous", None),                    # ...or sees the face between two people
])
def test_a_dlib_filing_stands_only_where_the_learned_metric_does_not_object(learned, expected):
    from workers.faces.rules import REASONS, Clear, Decision, combine
    plain = Decision(7, 0.40, "matched", "person 7 at 0.400")
    other = (Decision(int(learned.split()[1]), 0.5, "matched", learned) if learned.startswith("matched") else
             Decision(None, None, learned, "ambiguous: person 7 at 0.500, another at 0.510" if learned == "ambiguous"
                      else learned, candidate=7 if learned == "ambiguous" else None))
    out = combine(plain, other, _near({7: 0.40, 9: 0.55}))
    assert out.person == expected
    if expected is None:
        assert out.reason == REASONS[6] and "learned metric" in out.why and out.note
        # ...unless the person dlib's distance found is clearly nearest in the nearby metric
        assert combine(plain, other, _near({7: 0.40, 9: 0.55}), clear=Clear(7, 0.3, 0.5)) is plain
        assert combine(plain, other, _near({7: 0.40, 9: 0.55}), clear=Clear(9, 0.3, 0.5)).person is None


def test_the_learned_metric_files_only_where_dlib_leaned():
    from workers.faces.rules import LEARNED_NOTE, REASONS, Clear, Decision, combine
    near = _near({7: 0.45, 9: 0.47})
    ambiguous = Decision(None, None, REASONS[2], "ambiguous: person 7 at 0.450, another at 0.470", candidate=7)
    learned = Decision(7, 0.30, "matched", "person 7 at 0.300")
    filed = combine(ambiguous, learned, near, clear=Clear(7, 0.30, 0.50))
    assert filed.person == 7 and filed.distance == pytest.approx(0.45) and filed.learned
    assert filed.note.startswith(LEARNED_NOTE)
    assert combine(ambiguous, Decision(9, 0.30, "matched", "person 9 at 0.300"), near,
                   clear=Clear(9, 0.30, 0.50)) is ambiguous
    # the learned rule alone is not enough: who is clearly nearest must agree
    assert combine(ambiguous, learned, near) is ambiguous
    assert combine(ambiguous, learned, near, clear=Clear(9, 0.30, 0.50)) is ambiguous


def test_the_learned_metric_files_where_dlib_leaned_and_it_finds_that_person_clearly_nearest():
    from workers.faces.rules import REASONS, Clear, Decision, combine
    near = _near({7: 0.45, 9: 0.47})
    outside = Decision(None, None, REASONS[1], "outside the radius of person 7: 0.450 >= 0.420", candidate=7)
    too_far = Decision(None, None, REASONS[1], "outside the radius of person 7 in the learned metric")
    filed = combine(outside, too_far, near, clear=Clear(7, 0.31, 0.52))
    assert filed.person == 7 and filed.distance == pytest.approx(0.45) and filed.learned
    assert "clearly nearer than anyone else (0.520)" in filed.why
    assert combine(outside, too_far, near, clear=None) is outside
    # just outside the radius of its nearest person: whoever is clearly nearest, within the threshold
    other = combine(outside, too_far, near, clear=Clear(9, 0.31, 0.52))
    assert other.person == 9 and other.distance == pytest.approx(0.47) and other.learned
    assert combine(outside, too_far, near, clear=Clear(9, 0.31, 0.52), threshold=0.46) is outside
    # between two people: only the one dlib's distance leaned to
    ambiguous = Decision(None, None, REASONS[2], "ambiguous: person 7 at 0.450, another at 0.470", candidate=7)
    assert combine(ambiguous, too_far, near, clear=Clear(9, 0.31, 0.52)) is ambiguous
    assert combine(ambiguous, too_far, near, clear=Clear(7, 0.31, 0.52)).person == 7
    # the learned rule's votes lean to someone else although person 7 is nearest: no filing
    votes_elsewhere = Decision(None, None, REASONS[2], "ambiguous: person 9 at 0.35, another at 0.31", candidate=9)
    assert combine(outside, votes_elsewhere, near, clear=Clear(7, 0.31, 0.35)) is outside


@pytest.mark.parametrize("distances, counts, expected", [
    ({7: 0.30, 9: 0.50}, {7: 3, 9: 3}, 7),            # clearly nearer
    ({7: 0.30, 9: 0.31}, {7: 3, 9: 3}, None),         # between two people
    ({7: 0.50}, {7: 3}, 7),                           # nobody else within reach: reach is the runner-up
    ({7: 0.62}, {7: 3}, None),                        # ...but that is not clearly farther
    ({}, {}, None),
])
def test_clearly_nearest(distances, counts, expected):
    from workers.faces.rules import People, Rules, clearly_nearest
    people = People(Rules(), counts=counts)
    got = clearly_nearest(_near(distances), people, Rules())
    assert (got.person if got else None) == expected


def test_clearly_nearest_compares_people_at_equal_numbers_of_approved_faces():
    from workers.faces.rules import Candidates, People, Rules, clearly_nearest
    # One person has five approved faces, one of them at 0.30 and the rest far; the other has one
    # at 0.34. 0.30 < 0.92 * 0.34 passes the plain ratio test either way.
    five = [0.30, 0.55, 0.56, 0.57, 0.58]
    # the single face is the nearest: at one face each it is still clearly nearer
    near = Candidates(np.arange(1, 7), np.array([7, 9, 9, 9, 9, 9]), np.array([0.30, 0.34, *five[1:]]))
    assert clearly_nearest(near, People(Rules(), counts={7: 1, 9: 5}), Rules()).person == 7
    # one of five faces lies close by chance: one face drawn from the five is farther than 0.34
    near = Candidates(np.arange(1, 7), np.array([9, 7, 9, 9, 9, 9]), np.array([0.30, 0.34, *five[1:]]))
    assert clearly_nearest(near, People(Rules(), counts={9: 5, 7: 1}), Rules()) is None


def test_one_odd_approved_photo_does_not_open_the_radius():
    from workers.faces.rules import People, Rules
    e = np.eye(128)
    three_close, odd = [0 * e[0], 0.3 * e[1], 0.3 * e[2]], 0.5 * e[3]
    four = People.learn(np.arange(4), np.zeros(4, int), np.array([*three_close, odd]), Rules())
    assert four.person(0).radius == pytest.approx(0.4) and "farthest one left out" in four.person(0).why
    # with three approved faces, each one counts: the odd photo sets the radius
    three = People.learn(np.arange(3), np.zeros(3, int), np.array([three_close[0], three_close[1], odd]), Rules())
    assert three.person(0).radius == pytest.approx(0.6)


def _two_alike(rng, n_faces: int = 3):
    """Six people of n_faces approved faces: persons 1 and 2 differ only a little, along one
    direction, while each one's photos vary a lot along others; persons 3-6 are far away."""
    e = np.eye(128)
    centres = {1: 0.5 * e[0], 2: 0.5 * e[0] + 0.3 * e[1]}
    centres.update({p: 0.5 * e[0] + 1.0 * e[p + 10] for p in range(3, 7)})
    def photo(p):
        return centres[p] + rng.normal(0, 0.06, 60) @ e[20:80]
    return {p: np.array([photo(p) for _ in range(n_faces)]) for p in centres}, photo


def test_the_nearby_metric_tells_apart_people_dlibs_distance_finds_between():
    from workers.faces.metric import IDENTITY, around, nearby
    from workers.faces.rules import People, Rules, clearly_nearest
    rng = np.random.default_rng(3)
    vectors_of, photo = _two_alike(rng)
    people = People(Rules(), counts={p: len(v) for p, v in vectors_of.items()})
    local = nearby(vectors_of)
    assert local.learned and 0 < local.weight < 0.5      # few faces: mostly the prior, yet enough
    plain, learned = [], []
    for _ in range(40):
        face = photo(1)
        for metric, out in ((IDENTITY, plain), (local, learned)):
            mapped = {p: metric.project(v) for p, v in vectors_of.items()}
            got = clearly_nearest(around(metric.project(face), mapped), people, Rules())
            out.append(got.person if got else None)
    assert learned.count(1) >= plain.count(1) + 10 and learned.count(2) == 0


def test_the_nearby_metric_needs_people_with_two_approved_faces():
    from workers.faces.metric import nearby
    rng = np.random.default_rng(4)
    vectors_of, _ = _two_alike(rng, n_faces=1)
    assert not nearby(vectors_of).learned
