"""Nearest approved root face for new face encodings, from an in-memory matrix per process.

Roots are the faces a reviewer approved as a person's reference: `parent_id IS NULL AND
status = 'ok'`. A new face gets the NEAREST root whose Euclidean distance is < threshold
(strict; face_recognition's compare_faces uses <=, the original job used <).

Speed: one float32 matrix-vector product over all roots (|r|^2 - 2 r.q + |q|^2), then the few
candidates within a small margin of the best (and of the threshold) are recomputed exactly in
float64 as ||r - q||, the way face_recognition.face_distance does. dlib descriptors are float32
values, so float32 storage holds them exactly; the stored distance and the threshold test are
float64 on those values.

Refresh (`RootIndex.refresh(conn)`, run by every job before matching) costs one aggregate query,
`COUNT(*), MAX(id), SUM(id), MAX(updated_at)` over the roots, compared with the token of the
last refresh:
  * unchanged -> nothing to do;
  * changed   -> fetch only roots with `updated_at >= last MAX(updated_at)` or `id > last MAX(id)`
                 and upsert them; if our set's count or id sum then disagrees with the database
                 (a root was rejected, demoted or deleted) -> full reload.
Staleness guarantee: a job matches against every root committed before its refresh query,
provided the change that made or unmade the root either set `updated_at` (Eloquent does on every
update) or changed the set of root ids (which COUNT/SUM(id) detect). Not detected: a raw-SQL
change that leaves the id set, count and timestamps as they were (e.g. rewriting a root's
encoding without touching updated_at); `faces rematch` or a process restart picks those up.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from .schema import faces

DIM = 128
ROOT = sa.and_(faces.c.parent_id.is_(None), faces.c.status == "ok")
# Margin on approximate squared distances: float32 dot products of ~1.4-norm vectors are off by
# ~1e-6; anything within 1e-3 of the best (or of the threshold) is rechecked exactly.
MARGIN = 1e-3
CHUNK = 16384           # rows per BLAS call: small calls stay single-threaded and in cache


def parse_encoding(value) -> np.ndarray | None:
    """A stored encoding (JSON list, or a JSON string of one) as 128 float64, or None if unusable."""
    try:
        if isinstance(value, (bytes, str)):
            value = json.loads(value)
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (DIM,) or not np.isfinite(arr).all():
        return None
    return arr


@dataclass(frozen=True)
class Match:
    face_id: int
    distance: float


class RootIndex:
    """Root encodings of one database, kept in memory and refreshed incrementally."""

    def __init__(self):
        self._lock = threading.Lock()
        self._clear()
        self.reloads = {"full": 0, "incremental": 0, "unchanged": 0}

    def _clear(self):
        self._ids = np.empty(0, np.int64)
        self._m = np.empty((0, DIM), np.float32)        # capacity rows; first _n are live
        self._sq = np.empty(0, np.float32)              # |r|^2 per row
        self._n = 0
        self._row: dict[int, int] = {}                  # face id -> row
        self._invalid: set[int] = set()                 # roots whose encoding is unusable
        self._token = None
        self._since = None                              # MAX(updated_at) at the last refresh
        self._max_id = 0

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        return self._ids[:self._n]

    # ------------------------------------------------------------------ refresh

    def refresh(self, conn: sa.Connection) -> str:
        """Bring the matrix up to date; returns "unchanged", "incremental" or "full"."""
        with self._lock:
            row = conn.execute(sa.select(sa.func.count(), sa.func.max(faces.c.id),
                                         sa.func.sum(faces.c.id), sa.func.max(faces.c.updated_at))
                               .where(ROOT)).one()
            token = (int(row[0]), int(row[1] or 0), int(row[2] or 0), row[3])
            if token == self._token:
                kind = "unchanged"
            elif self._token is None:
                kind = self._full(conn)
            else:
                changed = faces.c.id > self._max_id
                if self._since is not None:
                    changed = sa.or_(changed, faces.c.updated_at >= self._since)
                rows = conn.execute(sa.select(faces.c.id, faces.c.encoding)
                                    .where(ROOT, changed)).all()
                self._upsert([(r.id, r.encoding) for r in rows])
                self._token, self._since, self._max_id = token, token[3], token[1]
                kind = "incremental"
                if self._count_and_sum() != (token[0], token[2]):
                    kind = self._full(conn)     # a root left the set: rebuild
            self.reloads[kind] += 1
            return kind

    def _full(self, conn: sa.Connection) -> str:
        rows = conn.execute(sa.select(faces.c.id, faces.c.encoding, faces.c.updated_at)
                            .where(ROOT).order_by(faces.c.id)).all()
        self._clear()
        self._upsert([(r.id, r.encoding) for r in rows])
        stamps = [r.updated_at for r in rows if r.updated_at is not None]
        count, id_sum = self._count_and_sum()
        self._since = max(stamps) if stamps else None
        self._max_id = max((r.id for r in rows), default=0)
        self._token = (count, self._max_id, id_sum, self._since)
        return "full"

    def _count_and_sum(self) -> tuple[int, int]:
        return (self._n + len(self._invalid),
                int(self._ids[:self._n].sum()) + sum(self._invalid))

    def _upsert(self, rows) -> None:
        new_ids, new_vecs = [], []
        for face_id, value in rows:
            face_id = int(face_id)
            vec = parse_encoding(value)
            if vec is None:
                self._invalid.add(face_id)
                continue
            self._invalid.discard(face_id)
            at = self._row.get(face_id)
            if at is not None:
                self._set_row(at, face_id, vec)
            else:
                new_ids.append(face_id)
                new_vecs.append(vec)
        if not new_ids:
            return
        need = self._n + len(new_ids)
        if need > len(self._m):           # grow by doubling so appends are amortised O(1)
            cap = max(need, 2 * len(self._m), 1024)
            m = np.zeros((cap, DIM), np.float32)
            m[:self._n] = self._m[:self._n]
            ids = np.zeros(cap, np.int64)
            ids[:self._n] = self._ids[:self._n]
            sq = np.zeros(cap, np.float32)
            sq[:self._n] = self._sq[:self._n]
            self._m, self._ids, self._sq = m, ids, sq
        for face_id, vec in zip(new_ids, new_vecs):
            self._row[face_id] = self._n
            self._set_row(self._n, face_id, vec)
            self._n += 1

    def _set_row(self, at: int, face_id: int, vec: np.ndarray) -> None:
        self._m[at] = vec
        self._ids[at] = face_id
        exact = self._m[at].astype(np.float64)
        self._sq[at] = exact @ exact

    # ------------------------------------------------------------------ matching

    def nearest(self, encodings, threshold: float) -> list[Match | None]:
        """For each encoding, the nearest root with distance < threshold (ties: lowest id)."""
        q = np.asarray(encodings, dtype=np.float64).reshape(-1, DIM)
        with self._lock:
            n = self._n
            if n == 0 or len(q) == 0:
                return [None] * len(q)
            q32 = q.astype(np.float32)
            approx = np.empty((n, len(q)), np.float32)
            for start in range(0, n, CHUNK):
                stop = min(n, start + CHUNK)
                np.dot(self._m[start:stop], q32.T, out=approx[start:stop])
            approx *= -2
            approx += self._sq[:n, None]
            approx += (q * q).sum(axis=1).astype(np.float32)[None, :]
            out = []
            limit_thr = threshold * threshold + MARGIN
            for j in range(len(q)):
                col = approx[:, j]
                best = float(col.min())
                if best > limit_thr:
                    out.append(None)
                    continue
                cand = np.flatnonzero(col <= min(best, threshold * threshold) + MARGIN)
                exact = np.linalg.norm(self._m[cand].astype(np.float64) - q[j], axis=1)
                order = np.lexsort((self._ids[cand], exact))
                i = order[0]
                d = float(exact[i])
                out.append(Match(int(self._ids[cand[i]]), d) if d < threshold else None)
            return out


_indexes: dict[tuple[int, str], RootIndex] = {}


def index_for(engine: sa.Engine) -> RootIndex:
    """The process-wide index for a database (a forked child builds its own)."""
    key = (os.getpid(), engine.url.render_as_string(hide_password=False))
    index = _indexes.get(key)
    if index is None:
        index = _indexes[key] = RootIndex()
    return index

