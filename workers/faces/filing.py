"""Filing unknown faces under people, in the database: used by the face job (new faces of one
photo), by `faces rematch` (a full pass) and by the automatic rematch (bounded steps run by the
face workers after approvals changed). The rule itself is workers/faces/rules.py; this module reads
what it needs, applies the photo and review constraints and writes the outcome.

Only faces that are still ours are ever written: `unknown` and either without a parent or with
the parent our matcher gave (`parent_id = matched_parent_id`), checked again in every UPDATE's
WHERE, rows locked with SKIP LOCKED on MySQL. Reviewed faces (`ok`, `not_face`) and faces a
reviewer filed by hand are never changed, whoever runs at the same time. A rematch also
re-decides our own earlier filings: one made when a person had a single approved face is
revisited once a reviewer approved more (or approved the look-alike).

Constraints on top of the rule:
  * one person once per photo (setting face_one_per_photo): a person with an approved face in
    the photo is taken; between unknown faces of one photo the nearer match keeps the person;
  * a reviewer's "not this person": a face whose parent_id a reviewer cleared while our
    matched_parent_id was set gets a face_rejections row and never goes back to that person.

The second look: a face the rule left unassigned is decided again with the faces already filed
from approvals counted as their person's too (index.EvidenceIndex), with a stricter ratio test
(setting face_second_ratio). A person's filed photos cover the ways they look that three approved
ones do not, and its unfiled photos that were a crowd of their own (rule 5) are filed with them;
the learned metric stays fitted on reviewed faces only. A face filed so is marked in its
match_note (index.SECOND_NOTE) and is never evidence itself. A rematch therefore takes two passes
to settle after approvals changed: the first files from approvals, the second looks again.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from workers import db as dbmod
from workers.faces import suggestions
from workers.faces.index import (SECOND_NOTE, ApprovedIndex, EvidenceIndex, RootIndex, UnknownIndex, index_for,
                                 parse_encoding)
from workers.faces.metric import (IDENTITY, NEARBY_KNOWN, NEARBY_PEOPLE, Fitted, Metric, MetricRules, around,
                                  nearby_mapped)
from workers.faces.rules import (LEARNED_NOTE, REASONS, Candidates, Clear, Decision, People, Rules,
                                 agrees, clearly_nearest, combine, crowded, decide, nearest_people)
from workers.schema import face_rejections, faces

log = logging.getLogger("workers.faces.filing")

FREE = sa.and_(faces.c.status == "unknown", faces.c.parent_id.is_(None))
NEIGHBOURS_CHECKED = 10    # rule 5 looks at this many nearest unknown faces at most
# rule 5: an unknown face this much nearer to the face than the person is (and no nearer the
# person than the face) is a crowd of its own, even if it would be filed under the person too
CROWD_NEARER = 0.85
# the suggested group of a person's one approved face is clustered from this many unknown faces
# nearest it at most: the group is made by the faces around it, and a pass stays bounded
LOCAL_FACES = 2000
PASSES = 3      # rematch passes at most while filings keep changing under the same approvals
# what a rematch step's counts say of faces it left as they were, rather than of filings it changed
UNCHANGED = (*REASONS, "kept", "unusable encoding")
OURS = sa.and_(faces.c.status == "unknown",
               sa.or_(faces.c.parent_id.is_(None), faces.c.parent_id == faces.c.matched_parent_id))


_fitted: dict[tuple[int, str], Fitted] = {}


def looks_twice(settings) -> bool:
    """Whether the second look runs (the module's docstring): the people rule, and a ratio for it."""
    return settings.face_grouping == "people" and settings.face_second_ratio > 0


def learned_metric(conn: sa.Connection, engine: sa.Engine, settings, approved: ApprovedIndex) -> Metric:
    """This process's metric for the database, refitted when approvals or rejections changed
    (`approved` refreshed by the caller)."""
    key = (os.getpid(), engine.url.render_as_string(hide_password=False))
    return _fitted.setdefault(key, Fitted()).refresh(conn, approved, MetricRules.from_settings(settings))


@dataclass
class Face:
    """An unknown face to file: id (None while not inserted yet), photo and encoding."""
    id: int | None
    image_id: int
    encoding: np.ndarray


class Matcher:
    """Decisions for a batch of unknown faces against the current approvals of one database.

    The rule runs in dlib's distance; once the library has taught a metric (workers/faces/
    metric.py) it runs there too, and the two decisions are combined conservatively
    (rules.combine). Given the `first` matcher, this one is the second look (the module's
    docstring): the faces filed from approvals count as their person's too, the ratio test is
    the second look's."""

    def __init__(self, conn: sa.Connection, engine: sa.Engine, settings, first: "Matcher | None" = None):
        evidence = first is not None
        self.conn, self.engine, self.settings = conn, engine, settings
        # who a crowd's faces would go to (rule 5) is asked of approved faces alone, also in the
        # second look: with filed faces as evidence an unapproved look-alike's photos filed under
        # the person would vouch for the rest of them
        self.judge = first or self
        self.rules = Rules.from_settings(settings)
        if evidence:
            self.rules = dataclasses.replace(self.rules, ratio=settings.face_second_ratio)
        self.original = settings.face_grouping == "roots"
        self.second_look = not evidence and looks_twice(settings)
        self._second: Matcher | None = None
        if settings.face_grouping not in ("roots", "people"):
            raise RuntimeError(f"unknown face_grouping {settings.face_grouping!r} (people or roots)")
        self.metric = IDENTITY
        if self.original:
            self.roots = index_for(engine, RootIndex)
            self.roots.refresh(conn)
        else:
            approved = index_for(engine, ApprovedIndex)
            approved.refresh(conn)
            self.metric_rules = MetricRules.from_settings(settings)
            self._nearby: dict[tuple[int, ...], tuple[Metric, dict[int, np.ndarray]]] = {}
            self._one_face_groups: dict[int, tuple[set[int], set[int]]] = {}    # person -> (clustered, group)
            self.metric = learned_metric(conn, engine, settings, approved)     # reviewed faces only
            self.approved = index_for(engine, EvidenceIndex) if evidence else approved
            if evidence:
                self.approved.refresh(conn)
            self.approved.use(self.metric)
            self.unknown = index_for(engine, UnknownIndex)
            self.unknown.use(self.metric)
            if self.rules.unknown_neighbours:
                self.unknown.refresh(conn)
            self.people = self.approved.people(self.rules)
            if self.metric.learned:
                # radii measured on the faces the metric was fitted on look tighter than new photos
                self.learned_rules = dataclasses.replace(self.rules, radius_slack=settings.face_metric_radius_slack)
                self.learned_people = self.approved.people(self.learned_rules, learned=True)

    def decide(self, batch: list[Face]) -> list[Decision]:
        if not batch:
            return []
        if self.original:
            matches = self.roots.nearest([f.encoding for f in batch], self.rules.threshold)
            return [Decision(m.face_id, m.distance, "matched") if m else
                    Decision(None, None, REASONS[5], REASONS[5]) for m in matches]
        rejected = self._rejections([f.id for f in batch if f.id is not None])
        taken = self._taken(sorted({f.image_id for f in batch})) if self.settings.face_one_per_photo else {}
        out = []
        for f in batch:
            excluded = rejected.get(f.id, set()) | taken.get(f.image_id, set())
            d = self._decide_one(f, excluded)
            out.append(self._look_again(f, excluded, d) if d.person is None and self.second_look else d)
        return one_per_photo(batch, out) if self.settings.face_one_per_photo else out

    def _decide_one(self, face: Face, excluded) -> Decision:
        near = self._candidates(face, self.rules)
        plain = decide(near, self.people, self.rules, excluded, self._unknown_closer(face))
        return self._with_metric(face, near, plain, excluded) if self.metric.learned else plain

    def _look_again(self, face: Face, excluded, first: Decision) -> Decision:
        """The second look (the module's docstring); the first decision if it files no one."""
        if self._second is None:        # built only when a face needs it: most are filed at once
            self._second = Matcher(self.conn, self.engine, self.settings, first=self)
        again = self._second._decide_one(face, excluded)
        if again.person is None:
            return first
        return dataclasses.replace(again, second=True,
                                   why=f"{SECOND_NOTE}{again.why} (approved faces alone: {first.why})")

    def _candidates(self, face: Face, rules: Rules, learned: bool = False) -> Candidates:
        """The face's candidates, without itself (a filed face is evidence for others only)."""
        near = self.approved.candidates(face.encoding, rules, learned)
        if face.id is None or face.id not in near.ids:
            return near
        keep = near.ids != face.id
        return Candidates(near.ids[keep], near.persons[keep], near.distances[keep])

    def _with_metric(self, face: Face, near: Candidates, plain: Decision, excluded) -> Decision:
        if plain.person is None and plain.candidate is None:
            return plain        # nothing near enough, or an unapproved crowd: no metric changes that
        near_learned = self._candidates(face, self.learned_rules, learned=True)
        learned = decide(near_learned, self.learned_people, self.learned_rules, excluded,
                         self._unknown_closer(face, learned=True))
        clear = None if agrees(plain, learned) else self._clearly_nearest(face, near, near_learned, excluded)
        out = combine(plain, learned, near, clear, self.rules.threshold)
        if out.learned and self.rules.unknown_neighbours:
            crowd = self._unknown_closer(face)(out.distance, out.person)
            if crowd >= self.rules.unknown_neighbours:      # rule 5 holds in dlib's distance too
                return crowded(crowd, out.person)
        return out

    def _clearly_nearest(self, face: Face, near: Candidates, near_learned: Candidates, excluded) -> Clear | None:
        """Who the face is clearly nearest to, in the metric fitted on the people around it
        (metric.nearby) when two or more are near, each known by NEARBY_KNOWN approved faces, and
        they teach something; else in the library's learned metric."""
        persons = nearest_people(near, excluded, NEARBY_PEOPLE)
        if len(persons) >= 2 and all(self.people.counts[p] >= NEARBY_KNOWN for p in persons):
            key = tuple(sorted(persons))
            if key not in self._nearby:
                # fitted once per set of people in a pass; their approved faces mapped once too
                self._nearby[key] = nearby_mapped({p: self.people.vectors[p] for p in persons}, self.metric_rules)
            local, mapped = self._nearby[key]
            if local.learned:
                return clearly_nearest(around(local.project(face.encoding), mapped), self.people, self.rules,
                                       excluded)
        return clearly_nearest(near_learned, self.learned_people, self.learned_rules, excluded)

    def _unknown_closer(self, face: Face, learned: bool = False):
        """For rule 5: unknown faces without a person closer than d, not counting those that
        would go to the same person themselves (the person's own photos not yet filed), unless
        they sit apart from the person with this face (`_apart`)."""
        if not self.rules.unknown_neighbours:
            return None
        judge = self.judge
        rules, people = (judge.learned_rules, judge.learned_people) if learned else (judge.rules, judge.people)

        def count(d: float, winner: int | None = None) -> int:
            if judge is not self and winner is not None:
                # in the second look the crowd is one nearer than the person's APPROVED faces:
                # the filed ones it is near may be an unapproved look-alike's photos
                near = judge.approved.candidates(face.encoding, rules, learned)
                own = near.distances[near.persons == winner]
                d = max(d, float(own[0]) if len(own) else rules.reach)
            ids, vecs = self.unknown.neighbours(face.encoding, d, learned)
            n = 0
            together = None
            # nearest first, and only as far as needed: each check costs one pass over the
            # approved faces, and a crowd of the person's own photos must not cost hundreds
            for other_id, vec in list(zip(ids.tolist(), vecs))[:NEIGHBOURS_CHECKED]:
                if other_id == face.id:
                    continue
                own = decide(judge.approved.candidates(vec, rules, learned), people, rules)
                if own.person != winner:
                    n += 1
                else:
                    if together is None:
                        together = (judge._grouped_with_one_face(winner, face)
                                    if people.counts.get(winner) == 1 else set())
                    n += other_id not in together and judge._apart(face.encoding, vec, winner)
                if n >= rules.unknown_neighbours:
                    break
            return n
        return count

    def _grouped_with_one_face(self, person: int, face: Face) -> set[int]:
        """The unknown faces that the suggestions' clustering puts in one group with the
        person's one approved face and `face` (clustering it, the face and the unknown faces
        nearest it within the threshold): the person's photos of one day, near each other and
        farther from the approved photo of another, are one group with it, where another
        person of the same population splits off. Empty when `face` is not in that group.
        Clustered once per person for the faces already known (a pass asks for many)."""
        if person not in self._one_face_groups:
            ids, vecs = self._around_one_face(person)
            self._one_face_groups[person] = (set(ids.tolist()), self._group_of_first(person, ids, vecs))
        clustered, group = self._one_face_groups[person]
        if face.id is not None and face.id in clustered:
            return group if face.id in group else set()
        ids, vecs = self._around_one_face(person)
        group = self._group_of_first(person, ids, vecs, np.asarray(face.encoding, np.float64)[None])
        return group if -1 in group else set()

    def _around_one_face(self, person: int) -> tuple[np.ndarray, np.ndarray]:
        """The unknown faces nearest the person's one approved face, within the threshold."""
        ids, vecs = self.unknown.neighbours(self.people.vectors[person][0], self.rules.threshold)
        return ids[:LOCAL_FACES], vecs[:LOCAL_FACES]

    def _group_of_first(self, person: int, ids: np.ndarray, vecs: np.ndarray,
                        extra: np.ndarray = np.empty((0, 128))) -> set[int]:
        """The ids of the faces in the suggested group of the person's one approved face,
        clustered with the faces `ids`, `vecs` and the rows of `extra` (id -1 each)."""
        mat = np.vstack([self.people.vectors[person][:1], extra, vecs])
        labels = np.concatenate([np.full(1 + len(extra), -1), ids])
        rows = np.arange(len(mat))
        groups = suggestions.cluster(rows, rows, mat, self.settings.face_cluster_radius,
                                     self.settings.face_cluster_min_faces)
        mine = next((g.face_ids for g in groups if 0 in g.face_ids), [])
        return {int(labels[i]) for i in mine if i > 0}

    def _apart(self, face: np.ndarray, other: np.ndarray, person: int) -> bool:
        """Whether an unknown face `other` that the rule would file under `person` too forms a
        crowd with `face` away from the person: no nearer the person's approved faces than
        `face` is, and much nearer to `face` than those are. An unapproved look-alike's photos
        gather so; the person's own unfiled photos mostly lie between or around the approved
        ones. With one approved face there is no spread to say which side of a crowd is the
        person's, so both faces must be much nearer each other than either is to it (unless
        they are one suggested group with it, `_grouped_with_one_face`): else the first
        approval of a library draws in every person of its population within the threshold.
        Required in dlib's distance and, once learned, in the learned metric."""
        count = self.people.counts.get(person, 0)
        if count == 0:
            return False
        spaces = [(IDENTITY, self.people)] + ([(self.metric, self.learned_people)] if self.metric.learned else [])
        for metric, people in spaces:
            own = people.vectors[person]
            f, o = metric.project(face), metric.project(other)
            d_face = np.sqrt(((own - f) ** 2).sum(1).min())
            d_other = np.sqrt(((own - o) ** 2).sum(1).min())
            between = np.linalg.norm(f - o)
            if count == 1:
                if between > CROWD_NEARER * min(d_face, d_other):
                    return False
            elif d_other < d_face or between > CROWD_NEARER * d_face:
                return False
        return True

    def _rejections(self, face_ids: list[int]) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for start in range(0, len(face_ids), 1000):
            for face_id, person in self.conn.execute(
                    sa.select(face_rejections.c.face_id, face_rejections.c.person_id)
                    .where(face_rejections.c.face_id.in_(face_ids[start:start + 1000]))):
                out.setdefault(face_id, set()).add(person)
        return out

    def _taken(self, image_ids: list[int]) -> dict[int, set[int]]:
        """Persons with an approved face in each photo (never given a second face there)."""
        out: dict[int, set[int]] = {}
        for start in range(0, len(image_ids), 1000):
            rows = self.conn.execute(sa.select(faces.c.image_id, faces.c.id, faces.c.parent_id)
                                     .where(faces.c.image_id.in_(image_ids[start:start + 1000]),
                                            faces.c.status == "ok"))
            for image_id, face_id, parent in rows:
                out.setdefault(image_id, set()).add(parent or face_id)
        return out


def one_per_photo(batch: list[Face], decisions: list[Decision]) -> list[Decision]:
    """Among the batch, a person goes to the nearest of its faces in each photo."""
    best: dict[tuple[int, int], int] = {}
    for i, (f, d) in enumerate(zip(batch, decisions)):
        if d.person is not None:
            key = (f.image_id, d.person)
            if key not in best or d.distance < decisions[best[key]].distance:
                best[key] = i
    winners = set(best.values())
    return [d if d.person is None or i in winners else
            _taken_in_photo(d.person) for i, d in enumerate(decisions)]


def _taken_in_photo(person: int) -> Decision:
    return Decision(None, None, REASONS[4], f"person {person} is a nearer face in this photo")


# ---------------------------------------------------------------- rematch

def learn_rejections(conn: sa.Connection, rows) -> int:
    """Faces we had filed whose parent a reviewer cleared: remember "not this person"."""
    cleared = [(r.id, r.matched_parent_id) for r in rows
               if r.parent_id is None and r.matched_parent_id is not None]
    if not cleared:
        return 0
    now = dbmod.now()
    insert = (face_rejections.insert().prefix_with("IGNORE", dialect="mysql")
              .prefix_with("OR IGNORE", dialect="sqlite"))
    conn.execute(insert, [{"face_id": f, "person_id": p, "created_at": now} for f, p in cleared])
    conn.execute(faces.update().where(faces.c.id.in_([f for f, _ in cleared]), FREE)
                 .values(matched_parent_id=None))
    return len(cleared)


def rematch_step(conn: sa.Connection, engine: sa.Engine, settings, after_id: int = 0,
                 limit: int = 1000, exclude_image: int | None = None) -> tuple[int, Counter]:
    """(Re-)decide our unknown faces with id > after_id (at most `limit`): those without a
    parent and our own filings. Returns (last id seen, or -1 when none was left; counts)."""
    original = settings.face_grouping == "roots"       # the original never revisited a filing
    which = sa.and_(FREE if original else OURS, faces.c.id > after_id)
    if exclude_image is not None:
        which = sa.and_(which, faces.c.image_id != exclude_image)
    ids = conn.execute(sa.select(faces.c.id).where(which).order_by(faces.c.id).limit(limit)).scalars().all()
    counts: Counter = Counter()
    if not ids:
        return -1, counts
    # Lock by primary key, like a reviewer's UPDATE does (a locking read through the (parent_id,
    # status) index would take the locks in the other order and deadlock with the review screen);
    # rows a worker or another rematch holds are skipped, and the condition is checked again.
    rows = conn.execute(sa.select(faces.c.id, faces.c.image_id, faces.c.encoding, faces.c.parent_id,
                                  faces.c.matched_parent_id, faces.c.match_note)
                        .with_hint(faces, "FORCE INDEX (PRIMARY)", "mysql")
                        .where(faces.c.id.in_(ids), which).order_by(faces.c.id)
                        .with_for_update(skip_locked=True)).all()
    if not rows:
        return ids[-1], counts
    counts["not this person (learned)"] += learn_rejections(conn, rows)
    batch, old = [], {}
    for r in rows:
        vec = parse_encoding(r.encoding)
        if vec is None:
            counts["unusable encoding"] += 1
            continue
        batch.append(Face(r.id, r.image_id, vec))
        old[r.id] = r
    matcher = Matcher(conn, engine, settings)
    decisions = matcher.decide(batch)
    if settings.face_one_per_photo and not matcher.original:
        decisions = _against_filed(conn, batch, decisions)
    now = dbmod.now()
    for f, d in zip(batch, decisions):
        r = old[f.id]
        still_ours = sa.and_(faces.c.id == f.id, faces.c.status == "unknown",
                             faces.c.parent_id.is_(None) if r.parent_id is None else
                             sa.and_(faces.c.parent_id == r.parent_id, faces.c.matched_parent_id == r.parent_id))
        if d.person is not None and d.person == r.parent_id:
            counts["kept"] += 1
            if not matcher.original and r.match_note != d.note:
                # why it is filed: the second look's mark decides whether it is evidence
                conn.execute(faces.update().where(still_ours).values(match_note=d.note))
            continue
        if d.person is None and r.parent_id is None:
            counts[d.reason] += 1
            if not matcher.original and r.match_note != d.why[:255]:
                conn.execute(faces.update().where(still_ours).values(match_note=d.why[:255]))
            continue
        values = ({"parent_id": d.person, "distance": d.distance, "matched_parent_id": d.person,
                   "match_note": d.note} if d.person is not None else
                  {"parent_id": None, "distance": None, "matched_parent_id": None, "match_note": d.note})
        done = conn.execute(faces.update().where(still_ours).values(updated_at=now, **values))
        outcome = ("matched" if r.parent_id is None else "refiled" if d.person is not None
                   else f"unfiled, {d.reason}")
        counts[outcome if done.rowcount else "changed meanwhile"] += 1
        if done.rowcount and d.learned:
            counts["of those, by the learned metric"] += 1
        if done.rowcount and d.second:
            counts["of those, by the second look"] += 1
    return ids[-1], counts


def _against_filed(conn: sa.Connection, batch: list[Face], decisions: list[Decision]) -> list[Decision]:
    """One per photo against unknown faces already filed there: the nearer match keeps the
    person; a filed face that loses it goes back to the pool (it is ours, not reviewed)."""
    wanted = {(f.image_id, d.person): (f, d) for f, d in zip(batch, decisions) if d.person is not None}
    if not wanted:
        return decisions
    in_batch = [f.id for f in batch]
    filed = conn.execute(sa.select(faces.c.id, faces.c.image_id, faces.c.parent_id, faces.c.distance)
                         .where(faces.c.image_id.in_(sorted({k[0] for k in wanted})),
                                faces.c.id.not_in(in_batch),
                                faces.c.status == "unknown", faces.c.parent_id.is_not(None))).all()
    lost = set()
    for r in filed:
        hit = wanted.get((r.image_id, r.parent_id))
        if hit is None:
            continue
        f, d = hit
        if r.distance is not None and r.distance <= d.distance:
            lost.add(f.id)
        else:
            conn.execute(faces.update().where(faces.c.id == r.id, faces.c.status == "unknown",
                                              faces.c.parent_id == r.parent_id,
                                              faces.c.matched_parent_id == r.parent_id)
                         .values(parent_id=None, distance=None, matched_parent_id=None,
                                 match_note=f"person {r.parent_id} is a nearer face in this photo"))
    return [_taken_in_photo(d.person) if f.id in lost else d
            for f, d in zip(batch, decisions)]


def _changed(counts: Counter) -> bool:
    """Whether a rematch step changed any filing (the evidence of the second look)."""
    return any(v for k, v in counts.items() if k == "matched" or k == "refiled" or k.startswith("unfiled"))


def rematch(engine: sa.Engine, settings, batch: int = 1000) -> Counter:
    """Full passes over our unknown faces (`faces rematch`): another one while the last changed
    filings and the second look may use them, PASSES at most. Counts: the last pass's, with the
    filings the earlier ones changed."""
    with engine.connect() as conn:
        if settings.face_grouping == "roots":
            index_for(engine, RootIndex).refresh(conn, force_sweep=True)
        else:
            index_for(engine, ApprovedIndex).refresh(conn, force_sweep=True)
    writes = Counter()      # the filings changed by every pass but the last
    passes = PASSES if looks_twice(settings) else 1
    for n in range(passes):
        after, last = 0, Counter()
        while after >= 0:
            with engine.begin() as conn:
                after, counts = rematch_step(conn, engine, settings, after, batch)
            last.update(counts)
        if not _changed(last) or n == passes - 1:
            break
        writes.update({k: v for k, v in last.items() if k not in UNCHANGED})
    # a face an earlier pass filed is "kept" by the last: counted once, as filed
    last["kept"] -= min(last["kept"], writes["matched"] + writes["refiled"])
    return last + writes


# ---------------------------------------------------------------- automatic rematch

@dataclass
class _Pass:
    token: tuple | None = None      # the approvals this pass files against
    after: int = 0
    done: bool = True
    changed: bool = False           # this pass changed a filing: the second look may use it
    passes: int = 0                 # passes run under this token


_passes: dict[tuple[int, str], _Pass] = {}


def auto_rematch(conn: sa.Connection, engine: sa.Engine, settings, exclude_image: int | None = None) -> Counter:
    """One bounded step of the pass this process runs since approvals last changed (called by
    the face job, in its transaction). Every face worker notices a change on its own; their
    passes overlap harmlessly (SKIP LOCKED, and a filed face leaves the pool)."""
    if settings.face_grouping == "roots" or settings.face_rematch_batch <= 0:
        return Counter()
    index = index_for(engine, ApprovedIndex)
    index.refresh(conn)
    # a refitted metric (after approvals, or a rejection) may file faces differently too
    token = (index.token, learned_metric(conn, engine, settings, index).fingerprint)
    key = (os.getpid(), engine.url.render_as_string(hide_password=False))
    state = _passes.setdefault(key, _Pass())
    if state.done and token != state.token:
        # a pass in progress is finished first (restarting it at every approval of a busy
        # review session would never reach the newest faces); then one more pass if needed
        state.token, state.after, state.done, state.changed, state.passes = token, 0, False, False, 1
    if state.done:
        return Counter()
    after, counts = rematch_step(conn, engine, settings, state.after, settings.face_rematch_batch,
                                 exclude_image)
    state.after, state.changed = max(after, state.after), state.changed or _changed(counts)
    if after < 0:
        if state.changed and state.passes < PASSES and looks_twice(settings):
            # the filings this pass made are the second look's evidence: one more pass
            state.after, state.changed, state.passes = 0, False, state.passes + 1
            if not counts:      # an empty step means "pass over" to callers: begin the next one
                return auto_rematch(conn, engine, settings, exclude_image)
        else:
            state.done = True
    if counts:
        log.info("automatic rematch: %s", dict(counts))
    return counts


def idle_rematch(conn: sa.Connection, engine: sa.Engine, settings) -> bool:
    """The faces consumers' idle task (workers/queue/idle.py): the next step of the automatic rematch
    while no face job comes; True while the pass has more to do."""
    auto_rematch(conn, engine, settings)
    state = _passes.get((os.getpid(), engine.url.render_as_string(hide_password=False)))
    return state is not None and not state.done


def people_report(engine: sa.Engine, settings) -> tuple[Metric, list[dict]]:
    """The metric, and each person: approved faces, radius and why, the nearest other person
    and the distance to it, in the learned metric beside dlib's distance."""
    rules = Rules.from_settings(settings)
    index = index_for(engine, ApprovedIndex)
    with engine.begin() as conn:
        index.refresh(conn, force_sweep=True)
        metric = learned_metric(conn, engine, settings, index)
        ids, persons, vectors = index.labelled()
        names = dict(conn.execute(sa.select(faces.c.id, faces.c.name)
                                  .where(faces.c.id.in_(sorted(set(persons.tolist()))[:10000]))).all())
        filed = dict(conn.execute(sa.select(faces.c.parent_id, sa.func.count())
                                  .where(faces.c.status == "unknown", faces.c.parent_id.is_not(None))
                                  .group_by(faces.c.parent_id)).all())
        by_metric = dict(conn.execute(sa.select(faces.c.parent_id, sa.func.count())
                                      .where(faces.c.status == "unknown", faces.c.parent_id.is_not(None),
                                             faces.c.match_note.like(LEARNED_NOTE + "%"))
                                      .group_by(faces.c.parent_id)).all())
    learned_rules = (dataclasses.replace(rules, radius_slack=settings.face_metric_radius_slack)
                     if metric.learned else rules)
    learned = People.learn(ids, persons, metric.project(vectors), learned_rules)
    plain = People.learn(ids, persons, vectors, rules)
    out = []
    for root in sorted(learned.vectors):
        p, e = learned.person(root), plain.person(root)
        near = learned.nearest_other(root, np.inf)
        near_plain = plain.collision(root, near[0]) if near else None
        why = p.why + (f"; person {near[0]}'s approved faces come within {near[1]:.3f}: a face between "
                       f"them is left to a reviewer (ratio test)" if near and near[1] < p.radius else "")
        out.append({"person": root, "name": names.get(root), "faces": p.faces, "radius": p.radius,
                    "radius_dlib": e.radius, "why": why,
                    "nearest": near[0] if near else None, "nearest_distance": near[1] if near else None,
                    "nearest_distance_dlib": near_plain, "learned": metric.weight,
                    "filed": filed.get(root, 0), "filed_by_metric": by_metric.get(root, 0)})
    return metric, out
