"""Face encodings held in memory per process, refreshed incrementally from the database.

`FaceMatrix` holds one set of faces (a WHERE clause) with each face's parent_id:
  * `RootIndex`: approved roots (`parent_id IS NULL AND status='ok'`), the original's rule:
    the NEAREST root whose Euclidean distance is < threshold (strict; face_recognition's
    compare_faces uses <=, the original job used <);
  * `ApprovedIndex`: every approved face, labelled with its person (workers/faces/rules.py);
  * `EvidenceIndex`: the approved faces and the unknown faces filed from them (the second look
    of workers/faces/filing.py);
  * `UnknownIndex`: unknown faces no reviewer decided (the unapproved clusters of rule 5).

Speed: one float32 matrix-vector product over the set (|r|^2 - 2 r.q + |q|^2), then the few
candidates within a small margin of the limit (or of the best) are recomputed exactly in
float64 as ||r - q||, the way face_recognition.face_distance does. dlib descriptors are float32
values, so float32 storage holds them exactly; the stored distance and the threshold test are
float64 on those values. The matrix is stored one face per COLUMN (DIM x capacity): BLAS reads
it in one streaming pass that way, faster than `q @ rows.T` (bench/matching.py measures both).

Refresh (`refresh(conn)`, run by every job before matching). Both queries below are answered
from an index that carries the id, (parent_id, status) or (status, parent_id, matched_parent_id): no
row (with its encoding's JSON) is read. `EvidenceIndex` is the exception: which filings are evidence
is in match_note, so its queries read the rows of the unknown faces; a matcher refreshes it only
when a face is left unassigned.
  * token: `COUNT(*), SUM(id), MAX(id), SUM(parent_id)` of the set. Same as last time -> nothing
    to do. (SUM(parent_id): a face moved between people changes no id.)
  * sweep, when the token changed or every SWEEP_SECONDS (60 s): `SELECT id, parent_id` of the
    set, diffed against the ids held: gone faces are dropped, only the new faces' encodings are
    fetched, parents re-read. No reliance on updated_at. A full load happens only once.
Staleness guarantee: a job matches against every face committed before its refresh query, except
when the changes since the previous job cancel out in every token field together (e.g. roots
10 and 30 rejected while faces 15 and 25 were approved): those are seen within SWEEP_SECONDS.
Approved faces are never re-encoded in place; a raw SQL rewrite of an encoding is only seen
after a restart. `faces rematch` forces a sweep.
"""
from __future__ import annotations

import json
import os
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from workers.faces.metric import IDENTITY, Metric
from workers.faces.rules import Candidates, People, Rules
from workers.schema import faces

DIM = 128
ROOT = sa.and_(faces.c.parent_id.is_(None), faces.c.status == "ok")
# Margin on approximate squared distances: float32 dot products of ~1.4-norm vectors are off by
# ~1e-6; anything within 1e-3 of the best (or of the threshold) is rechecked exactly.
MARGIN = 1e-3
SWEEP_SECONDS = 60.0     # also sweep for changed roots this often, even if the token held


def parse_encoding(value) -> np.ndarray | None:
    """A stored encoding (JSON list, or a JSON string of one) as 128 float64, or None if unusable."""
    try:
        for _ in range(2):                 # a JSON string of the list (double-encoded) too
            if isinstance(value, (bytes, str)):
                value = json.loads(value)
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (DIM,) or not np.isfinite(arr).all():
        return None
    return arr


# The encoding column as raw text: parsed in bulk below rather than row by row by the JSON type.
_ENCODING_TEXT = sa.type_coerce(faces.c.encoding, sa.Text).label("encoding")


def parse_rows(rows) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(ids, float64 matrix, ids of unusable encodings) from (id, encoding) rows.

    Well-formed JSON arrays of 128 numbers are parsed in one np.fromstring call (C strtod, the
    same correctly rounded doubles as json.loads); anything else goes through parse_encoding."""
    fast_ids, texts, slow = [], [], []
    for face_id, value in rows:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            v = value.strip()
            if v[:1] == "[" and v[-1:] == "]" and v.count(",") == DIM - 1 and "[" not in v[1:]:
                fast_ids.append(int(face_id))
                texts.append(v[1:-1])
                continue
        slow.append((int(face_id), value))
    mat = np.empty((0, DIM))
    if texts:
        with warnings.catch_warnings():
            warnings.simplefilter("error")      # a malformed number would end the parse early
            try:
                flat = np.fromstring(",".join(texts), sep=",")
            except (ValueError, DeprecationWarning):
                flat = None
        if flat is not None and flat.size == DIM * len(texts):
            mat = flat.reshape(-1, DIM)
            ok = np.isfinite(mat).all(axis=1)
            slow += [(i, t) for i, t, good in zip(fast_ids, texts, ok) if not good]
            fast_ids = [i for i, good in zip(fast_ids, ok) if good]
            mat = mat[ok]
        else:
            slow += [(i, "[" + t + "]") for i, t in zip(fast_ids, texts)]
            fast_ids = []
    ids, vecs, bad = list(fast_ids), [mat], []
    for face_id, value in slow:
        vec = parse_encoding(value)
        if vec is None:
            bad.append(face_id)
        else:
            ids.append(face_id)
            vecs.append(vec[None, :])
    return np.array(ids, dtype=np.int64), np.concatenate(vecs) if ids else np.empty((0, DIM)), bad


@dataclass(frozen=True)
class Match:
    face_id: int
    distance: float


class FaceMatrix:
    """Encodings of one set of faces (`WHERE` = the class's `where`), held in memory per process
    and refreshed incrementally; each row also keeps the face's parent_id (0 for none)."""

    where = ROOT
    def __init__(self):
        self._lock = threading.Lock()
        self._clear()
        self.reloads = {"full": 0, "incremental": 0, "unchanged": 0}

    def _clear(self):
        self._ids = np.empty(0, np.int64)
        self._t = np.empty((DIM, 0), np.float32)        # one face per column; first _n are live
        self._sq = np.empty(0, np.float32)              # |r|^2 per row
        self._parent = np.empty(0, np.int64)            # parent_id per row, 0 for none
        self._n = 0
        self._row: dict[int, int] = {}                  # face id -> row
        self._invalid: set[int] = set()                 # faces whose encoding is unusable
        self._token = None                              # aggregate of the set, see _db_token
        self._swept = 0.0                               # monotonic time of the last sweep
        self._metric = IDENTITY                         # the metric of learned=True queries
        self._space = None                              # (L t, |L r|^2) under a learned metric

    def __len__(self) -> int:
        return self._n

    @classmethod
    def from_arrays(cls, ids, parents, matrix) -> "FaceMatrix":
        """An index holding the given faces, not tied to a database (benches, tests)."""
        index = cls()
        n = len(ids)
        index._ids, index._parent = np.asarray(ids, np.int64).copy(), np.asarray(parents, np.int64).copy()
        rows = np.asarray(matrix, np.float32).reshape(n, DIM)
        index._t = np.ascontiguousarray(rows.T)
        index._sq = np.einsum("ij,ij->i", rows.astype(np.float64), rows.astype(np.float64)).astype(np.float32)
        index._n, index._row = n, dict(zip(index._ids.tolist(), range(n)))
        index._changed()
        return index

    @property
    def metric(self) -> Metric:
        return self._metric

    def use(self, metric: Metric) -> None:
        """The metric that queries with `learned=True` compare in (dlib's distance otherwise)."""
        with self._lock:
            if metric.fingerprint != self._metric.fingerprint:
                self._metric, self._space = metric, None
                self._changed()

    @property
    def ids(self) -> np.ndarray:
        return self._ids[:self._n]

    @property
    def token(self):
        return self._token

    # ------------------------------------------------------------------ refresh

    def refresh(self, conn: sa.Connection, force_sweep: bool = False) -> str:
        """Bring the matrix up to date; returns "unchanged", "incremental" or "full"."""
        with self._lock:
            token = self._db_token(conn)
            fresh = time.monotonic() - self._swept < SWEEP_SECONDS and not force_sweep
            if self._token is None:
                kind = self._full(conn)
            elif token == self._token and fresh:
                kind = "unchanged"
            else:
                kind = self._sweep(conn, token)
            self.reloads[kind] += 1
            if kind != "unchanged":
                self._space = None
                self._changed()
            return kind

    def _changed(self) -> None:
        """Hook for subclasses: the set or a parent changed."""

    def _db_token(self, conn: sa.Connection) -> tuple[int, ...]:
        # SUM(parent_id) too: a face moved from one person to another changes no id
        row = conn.execute(sa.select(sa.func.count(), sa.func.sum(faces.c.id), sa.func.max(faces.c.id),
                                     sa.func.sum(sa.func.coalesce(faces.c.parent_id, 0)))
                           .where(self.where)).one()
        return tuple(int(v or 0) for v in row)

    def _sweep(self, conn: sa.Connection, token) -> str:
        """Diff the ids (index-only) against ours: drop the gone, fetch only the new, re-read parents."""
        rows = conn.execute(sa.select(faces.c.id, faces.c.parent_id).where(self.where)).all()
        db_ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        held = np.concatenate([self._ids[:self._n], np.fromiter(self._invalid, np.int64)])
        removed = np.setdiff1d(held, db_ids, assume_unique=True)
        added = np.setdiff1d(db_ids, held, assume_unique=True).tolist()
        if removed.size:
            self._remove(removed)
        for start in range(0, len(added), 1000):
            self._upsert(conn.execute(sa.select(faces.c.id, _ENCODING_TEXT, faces.c.parent_id)
                                      .where(self.where, faces.c.id.in_(added[start:start + 1000]))).all())
        parents = {r[0]: r[1] or 0 for r in rows}
        self._parent[:self._n] = [parents.get(i, 0) for i in self._ids[:self._n].tolist()]
        self._token, self._swept = token, time.monotonic()
        return "incremental"

    def _full(self, conn: sa.Connection) -> str:
        self._clear()
        self._token, self._swept = self._db_token(conn), time.monotonic()
        # (if the set changes between these two reads the token differs next time: a sweep fixes it)
        self._upsert(conn.execute(sa.select(faces.c.id, _ENCODING_TEXT, faces.c.parent_id)
                                  .where(self.where).order_by(faces.c.id)).all())
        return "full"

    def _remove(self, ids: np.ndarray) -> None:
        self._invalid.difference_update(ids.tolist())
        keep = ~np.isin(self._ids[:self._n], ids)
        k = int(keep.sum())
        for arr in (self._ids, self._sq, self._parent):
            arr[:k] = arr[:self._n][keep]
        self._t[:, :k] = self._t[:, :self._n][:, keep]
        self._n = k
        self._row = dict(zip(self._ids[:k].tolist(), range(k)))

    def _upsert(self, rows) -> None:
        """rows: (face id, encoding as stored: JSON text, list or None[, parent_id])."""
        parent_of = {int(r[0]): int(r[2] or 0) if len(r) > 2 else 0 for r in rows}
        ids, mat, bad = parse_rows([(r[0], r[1]) for r in rows])
        self._invalid.update(bad)
        self._invalid.difference_update(ids.tolist())
        known = np.array([i in self._row for i in ids.tolist()], dtype=bool)
        for face_id, vec in zip(ids[known].tolist(), mat[known]):
            self._set_rows(self._row[face_id], np.array([face_id]), vec[None, :])
        ids, mat = ids[~known], mat[~known]
        if not len(ids):
            return
        need = self._n + len(ids)
        if need > len(self._ids):         # grow by doubling so appends are amortised O(1)
            cap = max(need, 2 * len(self._ids), 1024)
            t = np.zeros((DIM, cap), np.float32)
            t[:, :self._n] = self._t[:, :self._n]
            self._t = t
            self._ids = _grown(self._ids, cap, self._n)
            self._sq = _grown(self._sq, cap, self._n)
            self._parent = _grown(self._parent, cap, self._n)
        self._row.update(zip(ids.tolist(), range(self._n, need)))
        self._set_rows(self._n, ids, mat)
        self._parent[self._n:need] = [parent_of[i] for i in ids.tolist()]
        self._n = need

    def _set_rows(self, at: int, ids: np.ndarray, mat: np.ndarray) -> None:
        block = np.asarray(mat, np.float32)
        self._t[:, at:at + len(ids)] = block.T
        self._ids[at:at + len(ids)] = ids
        exact = block.astype(np.float64)
        self._sq[at:at + len(ids)] = np.einsum("ij,ij->i", exact, exact)

    # ------------------------------------------------------------------ distances

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        """The encodings of the given rows, one per row (float32)."""
        return self._t[:, idx].T

    def _projected(self) -> tuple[np.ndarray, np.ndarray]:
        """The matrix and squared norms in the current metric (rebuilt after a change; under
        the identity the stored ones). The caller holds the lock."""
        if not self._metric.learned:
            return self._t, self._sq
        if self._space is None:
            t = (self._metric.matrix @ self._t[:, :self._n].astype(np.float64)).astype(np.float32)
            self._space = (t, np.einsum("ij,ij->j", t, t, dtype=np.float64).astype(np.float32))
        return self._space

    def _approx(self, q: np.ndarray, learned: bool = False) -> np.ndarray:
        """approx[j, i] = |r_i|^2 - 2 r_i.q_j + |q_j|^2, one BLAS pass over the matrix (in the
        learned metric if `learned`: q must then be projected already)."""
        n = self._n
        t, sq = self._projected() if learned else (self._t, self._sq)
        approx = q.astype(np.float32) @ t[:, :n]
        approx *= -2
        approx += sq[:n]
        approx += (q * q).sum(axis=1).astype(np.float32)[:, None]
        return approx

    def _within(self, encoding, limit: float, learned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(rows, exact distances) of the faces closer than `limit` to one encoding, nearest
        first (ties: lowest id), in dlib's distance or (`learned`) the learned metric. The
        caller holds the lock."""
        q = np.asarray(encoding, dtype=np.float64).reshape(1, DIM)
        if self._n == 0:
            return np.empty(0, np.int64), np.empty(0)
        metric = self._metric if learned else IDENTITY
        if metric.learned:
            col = self._approx(metric.project(q), learned=True)[0]
            # the float32 copy of the mapped matrix only pre-selects: its rounding grows with
            # the map's largest stretch; the exact distance maps the stored values in float64
            cand = np.flatnonzero(col <= limit * limit + MARGIN * metric.stretch)
            exact = metric.distance(self._rows(cand).astype(np.float64), q[0])
        else:
            col = self._approx(q)[0]
            cand = np.flatnonzero(col <= limit * limit + MARGIN)
            exact = np.linalg.norm(self._rows(cand).astype(np.float64) - q[0], axis=1)
        inside = exact < limit
        cand, exact = cand[inside], exact[inside]
        order = np.lexsort((self._ids[cand], exact))
        return cand[order], exact[order]


def _grown(arr: np.ndarray, cap: int, n: int) -> np.ndarray:
    out = np.zeros((cap,) + arr.shape[1:], arr.dtype)
    out[:n] = arr[:n]
    return out


class RootIndex(FaceMatrix):
    """The original's rule: the nearest approved root (`parent_id IS NULL AND status='ok'`)."""

    where = ROOT

    def _db_token(self, conn: sa.Connection) -> tuple[int, ...]:
        return super()._db_token(conn)[:3]        # roots have no parent

    def nearest(self, encodings, threshold: float) -> list[Match | None]:
        """For each encoding, the nearest root with distance < threshold (ties: lowest id)."""
        q = np.asarray(encodings, dtype=np.float64).reshape(-1, DIM)
        with self._lock:
            if self._n == 0 or len(q) == 0:
                return [None] * len(q)
            approx = self._approx(q)
            out = []
            limit_thr = threshold * threshold + MARGIN
            for j in range(len(q)):
                col = approx[j]
                best = float(col.min())
                if best > limit_thr:
                    out.append(None)
                    continue
                cand = np.flatnonzero(col <= min(best, threshold * threshold) + MARGIN)
                exact = np.linalg.norm(self._rows(cand).astype(np.float64) - q[j], axis=1)
                order = np.lexsort((self._ids[cand], exact))
                i = order[0]
                d = float(exact[i])
                out.append(Match(int(self._ids[cand[i]]), d) if d < threshold else None)
            return out


APPROVED = faces.c.status == "ok"
# unknown faces no reviewer decided: without a parent, or filed by the rule (parent = matched_parent_id)
UNKNOWN_UNREVIEWED = sa.and_(faces.c.status == "unknown",
                             sa.or_(faces.c.parent_id.is_(None), faces.c.parent_id == faces.c.matched_parent_id))


class ApprovedIndex(FaceMatrix):
    """Every approved face, labelled with its person: the root it is, or the root it is filed
    under. An approved face under a parent that is not an approved root belongs to nobody."""

    where = APPROVED
    def _clear(self):
        super()._clear()
        self._person = np.empty(0, np.int64)
        self._people: dict[tuple[Rules, bool], People] = {}

    def _changed(self) -> None:
        ids, parent = self._ids[:self._n], self._parent[:self._n]
        roots = ids[parent == 0]
        self._person = np.where(parent == 0, ids, np.where(np.isin(parent, roots), parent, -1))
        self._people = {}

    def people(self, rules: Rules, learned: bool = False) -> People:
        """The persons and their learned radii, in dlib's distance or the learned metric
        (recomputed only after the set or the metric changed)."""
        with self._lock:
            key = (rules, learned and self._metric.learned)
            if key not in self._people:
                live = self._person >= 0
                n = self._n
                vectors = self._rows(np.flatnonzero(live)).astype(np.float64)
                if key[1]:
                    vectors = self._metric.project(vectors)
                self._people[key] = People.learn(self._ids[:n][live], self._person[live], vectors, rules)
            return self._people[key]

    def labelled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, person, float64 encodings) of the approved faces that belong to a person."""
        with self._lock:
            live = np.flatnonzero(self._person >= 0)
            return self._ids[live].copy(), self._person[live].copy(), self._rows(live).astype(np.float64)

    def candidates(self, encoding, rules: Rules, learned: bool = False) -> Candidates:
        """The approved faces within the rules' reach of one encoding, nearest first."""
        with self._lock:
            rows, dist = self._within(encoding, rules.reach, learned)
            person = self._person[rows]
            keep = person >= 0
            return Candidates(self._ids[rows][keep], person[keep], dist[keep])


SECOND_NOTE = "with filed faces: "    # match_note of a face filed by the second look
FILED_FROM_APPROVALS = sa.and_(faces.c.status == "unknown", faces.c.parent_id.is_not(None),
                               sa.or_(faces.c.match_note.is_(None), ~faces.c.match_note.like(SECOND_NOTE + "%")))


class EvidenceIndex(ApprovedIndex):
    """The approved faces and the unknown faces filed under a person from approved faces alone
    (a reviewer's or the rule's first look), each labelled with that person. Faces the second
    look filed are left out: evidence never rests on evidence, so a wrong filing cannot pull in
    a chain of others."""

    where = sa.or_(APPROVED, FILED_FROM_APPROVALS)


class UnknownIndex(FaceMatrix):
    """Unknown faces no reviewer decided, filed by the rule or not: the unapproved clusters a new
    face may belong to. The rule's own filings are counted too, so that what rule 5 sees does not
    depend on how far a rematch has got (a pass that filed a crowd would otherwise open the way
    for the face it kept out)."""

    where = UNKNOWN_UNREVIEWED

    def neighbours(self, encoding, limit: float, learned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float64 encodings) of these faces closer than `limit`, nearest first."""
        with self._lock:
            rows, _ = self._within(encoding, limit, learned)
            return self._ids[rows].copy(), self._rows(rows).astype(np.float64)


_indexes: dict[tuple[int, str, type], FaceMatrix] = {}


def index_for(engine: sa.Engine, cls: type[FaceMatrix] = RootIndex):
    """The process-wide index of one kind for a database (a forked child builds its own)."""
    key = (os.getpid(), engine.url.render_as_string(hide_password=False), cls)
    index = _indexes.get(key)
    if index is None:
        index = _indexes[key] = cls()
    return index

