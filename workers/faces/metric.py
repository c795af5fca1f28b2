"""A distance learned from the library's own reviewed faces, used beside dlib's encodings.

dlib's encoder puts different people of some populations (East-Asian faces, children) closer
together than others, so one Euclidean distance fits some people and not others. The reviewers'
decisions say which differences matter in THIS library:
  * same person: every pair of approved faces of one person (the within-person scatter);
  * different people: each approved face and its nearest approved faces of other people, a
    face a reviewer took away from a person ("not this person") and that person's nearest
    approved face, and two faces of one photo (never the same person).

From these a linear map L (128 x 128) is fitted in closed form, the KISS metric: with S the
covariance of same-person differences and D that of different-people differences, the squared
distance is d^T (S^-1 - beta D^-1) d, whose negative eigenvalues are clipped. Both covariances
are shrunk towards a multiple of the identity with weight `shrinkage / (shrinkage + dof)` (dof:
the same-person degrees of freedom, sum over people of faces - 1), so a library with few
approvals keeps today's distances and one with many trusts what it learned; `Metric.weight` is
the share learned. L is scaled so that the approved faces' same-person distances keep their
mean, which keeps the rule's threshold, margin and radii in comparable units.

Below `min_people` people with two approved faces the metric is the identity: the rule then is
exactly the Euclidean one. The encodings themselves stay dlib's 128 floats; the map is stored
beside them (table face_metrics) and applied when distances are computed.

`nearby` fits the same map on the approved faces of the few people nearest one face only, when
the rule asks who among them the face is (the face's candidates decide which people; the fit is
cached per set of people for one matching pass, never stored).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import aliased

from workers import db as dbmod
from workers.faces.rules import Candidates
from workers.schema import face_metrics, face_rejections, faces

DIM = 128


@dataclass(frozen=True)
class MetricRules:
    enabled: bool = True
    shrinkage: float = 300.0     # same-person degrees of freedom worth as much as the prior
    beta: float = 0.5            # weight of the different-people covariance
    hard: int = 3                # nearest other people's approved faces per approved face
    min_people: int = 10         # people with >= 2 approved faces before anything is learned
    sample: int = 4000           # approved faces used for the different-people pairs at most
    pairs: int = 5000            # rejections and same-photo pairs used at most

    @classmethod
    def from_settings(cls, settings) -> "MetricRules":
        return cls(enabled=settings.face_metric == "learned", shrinkage=settings.face_metric_shrinkage,
                   beta=settings.face_metric_beta, min_people=settings.face_metric_min_people)


@dataclass(frozen=True)
class Metric:
    """x -> L x; `matrix` None is the identity (today's distances)."""
    matrix: np.ndarray | None = None
    weight: float = 0.0          # share of the distance that is learned (0: Euclidean)
    people: int = 0
    faces: int = 0
    negatives: int = 0           # different-people pairs it was fitted on
    seconds: float = 0.0
    why: str = "nothing learned yet"

    @property
    def fingerprint(self) -> str:
        if self.matrix is None:
            return "identity"
        return hashlib.sha256(np.ascontiguousarray(self.matrix, np.float64).tobytes()).hexdigest()[:32]

    @cached_property
    def stretch(self) -> float:
        """The largest factor by which the map lengthens a squared distance (at least 1)."""
        return 1.0 if self.matrix is None else max(1.0, float(np.linalg.norm(self.matrix, 2)) ** 2)

    @property
    def learned(self) -> bool:
        return self.matrix is not None

    def project(self, vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, np.float64)
        return v if self.matrix is None else v @ self.matrix.T

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distances between rows of a and b (same shape, or b one vector) in this metric."""
        return np.linalg.norm(self.project(np.asarray(a, np.float64) - np.asarray(b, np.float64)), axis=-1)


IDENTITY = Metric()


def _within(vectors: np.ndarray, persons: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Within-person scatter (sum of outer products of deviations from each person's mean),
    its degrees of freedom and the number of people with two faces or more."""
    uniq, inv, counts = np.unique(persons, return_inverse=True, return_counts=True)
    sums = np.zeros((len(uniq), vectors.shape[1]))
    np.add.at(sums, inv, vectors)
    dev = vectors - (sums / counts[:, None])[inv]
    return dev.T @ dev, int((counts - 1).sum()), int((counts >= 2).sum())


def _hard_negatives(vectors: np.ndarray, persons: np.ndarray, hard: int, sample: int) -> np.ndarray:
    """Differences between each (sampled) approved face and its nearest faces of other people."""
    if len(vectors) > sample:
        # evenly spread over the ids, so the same approvals always give the same sample
        pick = np.linspace(0, len(vectors) - 1, sample).astype(int)
        vectors, persons = vectors[pick], persons[pick]
    sq = (vectors * vectors).sum(1)
    d2 = sq[:, None] - 2 * vectors @ vectors.T + sq[None, :]
    d2[persons[:, None] == persons[None, :]] = np.inf
    k = min(hard, len(vectors) - 1)
    if k <= 0:
        return np.empty((0, vectors.shape[1]))
    nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
    ok = np.isfinite(np.take_along_axis(d2, nearest, axis=1))
    return (vectors[:, None, :] - vectors[nearest])[ok]


def _shrunk(cov: np.ndarray, a: float) -> np.ndarray:
    s = np.trace(cov) / len(cov)
    return (1 - a) * cov + a * s * np.eye(len(cov))


def fit(vectors: np.ndarray, persons: np.ndarray, negatives: np.ndarray | None = None,
        rules: MetricRules = MetricRules()) -> Metric:
    """The metric learned from approved faces (rows of `vectors`, labelled by `persons`) and
    extra different-people differences (`negatives`: rejections, faces of one photo)."""
    started = time.perf_counter()
    vectors = np.asarray(vectors, np.float64).reshape(-1, DIM)
    persons = np.asarray(persons)
    n_people = len(np.unique(persons))
    if not rules.enabled:
        return Metric(why="learned metric off (face_metric)")
    if len(vectors) == 0:
        return IDENTITY
    within, dof, multi = _within(vectors, persons)
    if multi < rules.min_people or dof == 0 or np.trace(within) <= 0:
        return Metric(people=n_people, faces=len(vectors),
                      why=f"{multi} people with two approved faces, {rules.min_people} needed")
    within /= dof
    neg = _hard_negatives(vectors, persons, rules.hard, rules.sample)
    if negatives is not None and len(negatives):
        neg = np.concatenate([neg, np.asarray(negatives, np.float64).reshape(-1, DIM)])
    if len(neg) == 0:
        return Metric(people=n_people, faces=len(vectors), why="no pair of different people")
    a = rules.shrinkage / (rules.shrinkage + dof)
    same = 2 * _shrunk(within, a)                 # a difference of two faces: twice the scatter
    diff = _shrunk(neg.T @ neg / len(neg), a)
    m = np.linalg.inv(same) - rules.beta * np.linalg.inv(diff)
    m = (m + m.T) / 2
    w, u = np.linalg.eigh(m)
    if w.max() <= 0:
        return Metric(people=n_people, faces=len(vectors), why="nothing to learn (no direction separates people)")
    w = np.maximum(w, 1e-3 * w.max())
    lmap = (u * np.sqrt(w)) @ u.T
    lmap *= np.sqrt(np.trace(within) / np.trace(lmap @ within @ lmap.T))
    return Metric(lmap, 1 - a, n_people, len(vectors), len(neg), time.perf_counter() - started,
                  f"learned from {len(vectors)} approved faces of {n_people} people and "
                  f"{len(neg)} pairs of different people; {100 * (1 - a):.0f} % learned")


# A face between a few people is told apart best by a metric fitted on those people only: the
# directions that separate two members of one group are not the ones that separate the library
# at large, and a fit over everyone averages them away.
NEARBY_PEOPLE = 6           # the people nearest a face that its nearby metric is fitted on
NEARBY_KNOWN = 3            # approved faces each of them needs: fewer do not show how a person varies
NEARBY_FACES = 50           # approved faces per person used at most
NEARBY_SHRINKAGE = 100.0    # a few people's faces: the prior's weight in degrees of freedom


def nearby(vectors_of: dict[int, np.ndarray], rules: MetricRules = MetricRules()) -> Metric:
    """The metric fitted on the approved faces (dlib's encodings) of a few people around one
    face, person -> (m, 128); the identity when they teach nothing."""
    persons = np.concatenate([np.full(min(len(v), NEARBY_FACES), p) for p, v in vectors_of.items()])
    vectors = np.concatenate([v[:NEARBY_FACES] for v in vectors_of.values()])
    return fit(vectors, persons, rules=dataclasses.replace(rules, shrinkage=NEARBY_SHRINKAGE, min_people=2))


def nearby_mapped(vectors_of: dict[int, np.ndarray], rules: MetricRules = MetricRules()
                  ) -> tuple[Metric, dict[int, np.ndarray]]:
    """`nearby`, and the same people's approved faces mapped by it (what `around` compares a
    face with)."""
    local = nearby(vectors_of, rules)
    return local, {p: local.project(v) for p, v in vectors_of.items()}


def around(point: np.ndarray, points_of: dict[int, np.ndarray]) -> Candidates:
    """Candidates of one point among these people's points (person -> (m, d)), nearest first, in
    whichever space both are given (project them first); which face is which does not matter
    there (ids are -1)."""
    persons = np.concatenate([np.full(len(v), p) for p, v in points_of.items()])
    dists = np.concatenate([np.linalg.norm(v - point, axis=1) for v in points_of.values()])
    order = np.argsort(dists, kind="stable")
    return Candidates(np.full(len(order), -1), persons[order], dists[order])


# ---------------------------------------------------------------- from the database

def _rejection_token(conn: sa.Connection) -> tuple[int, int, int]:
    row = conn.execute(sa.select(sa.func.count(), sa.func.sum(face_rejections.c.face_id),
                                 sa.func.sum(face_rejections.c.person_id))).one()
    return tuple(int(v or 0) for v in row)


def _encodings(conn: sa.Connection, ids: list[int]) -> dict[int, np.ndarray]:
    from workers.faces.index import parse_rows
    out = {}
    for start in range(0, len(ids), 1000):
        rows = conn.execute(sa.select(faces.c.id, sa.type_coerce(faces.c.encoding, sa.Text))
                            .where(faces.c.id.in_(ids[start:start + 1000]))).all()
        got, mat, _ = parse_rows(rows)
        out.update(zip(got.tolist(), mat))
    return out


def negatives_from(conn: sa.Connection, ids: np.ndarray, persons: np.ndarray, vectors: np.ndarray,
                   rules: MetricRules) -> np.ndarray:
    """Different-people differences the reviewers and the photos give: each rejected face
    against its person's nearest approved face, and each approved face against the other
    faces of its photo (reviewed as not_face excepted)."""
    pairs: list[tuple[int, np.ndarray]] = []          # (other face id, approved vector)
    by_person: dict[int, np.ndarray] = {}
    for p in np.unique(persons):
        by_person[int(p)] = vectors[persons == p]
    rejected = conn.execute(sa.select(face_rejections.c.face_id, face_rejections.c.person_id)
                            .order_by(face_rejections.c.face_id).limit(rules.pairs)).all()
    other = aliased(faces)
    approved_ids = set(ids.tolist())
    same_photo = conn.execute(
        sa.select(faces.c.id, other.c.id).join(other, sa.and_(other.c.image_id == faces.c.image_id,
                                                              other.c.id != faces.c.id))
        .where(faces.c.status == "ok", other.c.status != "not_face")
        .order_by(faces.c.id, other.c.id).limit(rules.pairs)).all()
    row_of = dict(zip(ids.tolist(), range(len(ids))))
    need = sorted({f for f, _ in rejected} | {o for a, o in same_photo if o not in approved_ids})
    enc = _encodings(conn, need)
    out = []
    for face_id, person in rejected:
        own = by_person.get(int(person))
        if own is None or face_id not in enc:
            continue
        d = own - enc[face_id]
        out.append(d[int(np.argmin((d * d).sum(1)))])
    for a, o in same_photo:
        if a in row_of and (a < o or o not in row_of):       # each approved pair once
            vec = vectors[row_of[o]] if o in row_of else enc.get(o)
            if vec is not None:
                out.append(vectors[row_of[a]] - vec)
    return np.array(out).reshape(-1, DIM)


def store(conn: sa.Connection, metric: Metric) -> None:
    """Keep the fitted map beside the encodings (one row per distinct fit, newest kept)."""
    if not metric.learned:
        return
    key = metric.fingerprint
    if conn.execute(sa.select(face_metrics.c.id).where(face_metrics.c.fingerprint == key)).first():
        return
    insert = (face_metrics.insert().prefix_with("IGNORE", dialect="mysql")
              .prefix_with("OR IGNORE", dialect="sqlite"))
    conn.execute(insert.values(
        fingerprint=key, fitted_at=dbmod.now(), people=metric.people, faces=metric.faces,
        negatives=metric.negatives, weight=metric.weight, seconds=metric.seconds, why=metric.why[:255],
        matrix=json.dumps(np.round(metric.matrix, 10).tolist())))
    newest = conn.execute(sa.select(sa.func.max(face_metrics.c.id))).scalar() or 0
    conn.execute(face_metrics.delete().where(face_metrics.c.id < newest - 9))


def stored(conn: sa.Connection) -> Metric | None:
    """The newest stored metric (for the Laravel app and operators; workers fit their own)."""
    row = conn.execute(sa.select(face_metrics).order_by(face_metrics.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    return Metric(np.array(json.loads(row.matrix)), row.weight, row.people, row.faces, row.negatives,
                  row.seconds, row.why or "")


class Fitted:
    """The metric of one database in this process, refitted when the approvals or the
    rejections changed (the caller passes the approved index, already refreshed)."""

    def __init__(self):
        self.token = None
        self.metric = IDENTITY

    def refresh(self, conn: sa.Connection, index, rules: MetricRules) -> Metric:
        token = (index.token, _rejection_token(conn), rules)
        if token == self.token:
            return self.metric
        ids, persons, vectors = index.labelled()
        negatives = negatives_from(conn, ids, persons, vectors, rules) if len(ids) and rules.enabled else None
        metric = fit(vectors, persons, negatives, rules)
        if metric.learned and metric.fingerprint != self.metric.fingerprint:
            # in the caller's transaction: a deadlock here fails the job, which the queue retries
            store(conn, metric)
        self.token, self.metric = token, metric
        return metric
