"""Nearest approved root face for new face encodings, from an in-memory matrix per process.

Roots are the faces a reviewer approved as a person's reference: `parent_id IS NULL AND
status = 'ok'`. A new face gets the NEAREST root whose Euclidean distance is < threshold
(strict; face_recognition's compare_faces uses <=, the original job used <).

Speed: one float32 matrix-vector product over all roots (|r|^2 - 2 r.q + |q|^2), then the few
candidates within a small margin of the best (and of the threshold) are recomputed exactly in
float64 as ||r - q||, the way face_recognition.face_distance does. dlib descriptors are float32
values, so float32 storage holds them exactly; the stored distance and the threshold test are
float64 on those values.

Refresh (`RootIndex.refresh(conn)`, run by every job before matching):
  * token: `COUNT(*), SUM(id), MAX(id)` of the roots - answered from the (parent_id, status)
    index without reading rows (rows are ~2.6 KB of JSON each). Same token -> nothing to do.
  * sweep, when the token changed or every SWEEP_SECONDS (60 s): fetch the roots with
    `updated_at >= newest updated_at seen` or `id > newest id held` and upsert them; if our set's
    count/sum/max then disagrees with the token (a root was rejected, demoted or deleted), reload
    everything. A sweep reads the root rows (no index on updated_at), hence not on every job.
Staleness guarantee: a job matches against every root committed before its refresh query when
the change altered the root set's count, id sum or max id - i.e. any single approval, rejection,
demotion or deletion. Changes that cancel out in all three (e.g. root 10 and 30 rejected while
15 and 25 were approved, between two jobs of this process) are picked up by the periodic sweep,
within SWEEP_SECONDS, provided the approvals set `updated_at` (Eloquent does). A raw-SQL rewrite
of a root's encoding that leaves updated_at as it was is only seen after a restart.
`faces rematch` forces a sweep first.
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

from .schema import faces

DIM = 128
ROOT = sa.and_(faces.c.parent_id.is_(None), faces.c.status == "ok")
# Margin on approximate squared distances: float32 dot products of ~1.4-norm vectors are off by
# ~1e-6; anything within 1e-3 of the best (or of the threshold) is rechecked exactly.
MARGIN = 1e-3
SWEEP_SECONDS = 60.0     # also sweep for changed roots this often, even if the token held
CHUNK = 16384           # rows per BLAS call: small calls stay single-threaded and in cache


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
        self._token = None                              # (COUNT, SUM(id), MAX(id)) of the roots
        self._since = None                              # newest updated_at seen
        self._swept = 0.0                               # monotonic time of the last sweep

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        return self._ids[:self._n]

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
            return kind

    @staticmethod
    def _db_token(conn: sa.Connection) -> tuple[int, int, int]:
        # COUNT/SUM/MAX over ids only: answered from faces_parent_status_index, no row reads
        row = conn.execute(sa.select(sa.func.count(), sa.func.sum(faces.c.id), sa.func.max(faces.c.id))
                           .where(ROOT)).one()
        return int(row[0]), int(row[1] or 0), int(row[2] or 0)

    def _sweep(self, conn: sa.Connection, token) -> str:
        """Upsert roots stamped since the last sweep or newer than our newest id; rebuild if the
        set still disagrees with the database (a root was rejected, demoted or deleted)."""
        max_id = int(self._ids[:self._n].max(initial=0))
        max_id = max([max_id, *self._invalid])
        changed = faces.c.id > max_id
        if self._since is not None:
            changed = sa.or_(changed, faces.c.updated_at >= self._since)
        # ids first: rows stamped exactly `since` that we already hold need no encoding
        # (several roots can share the last second; `>=` keeps same-second ones visible)
        stamps = conn.execute(sa.select(faces.c.id, faces.c.updated_at).where(ROOT, changed)).all()
        need = [r.id for r in stamps
                if r.id not in self._row or r.updated_at is None or r.updated_at != self._since]
        for start in range(0, len(need), 1000):
            self._upsert(conn.execute(sa.select(faces.c.id, _ENCODING_TEXT)
                                      .where(ROOT, faces.c.id.in_(need[start:start + 1000]))).all())
        newest = [r.updated_at for r in stamps if r.updated_at is not None]
        if newest:
            self._since = max(newest + ([self._since] if self._since else []))
        self._token, self._swept = token, time.monotonic()
        if self._count_sum_max() != token:
            return self._full(conn)
        return "incremental"

    def _full(self, conn: sa.Connection) -> str:
        self._clear()
        self._swept = time.monotonic()
        self._token = self._db_token(conn)   # may lag the rows read below; the next sweep fixes
        rows = conn.execute(sa.select(faces.c.id, _ENCODING_TEXT, faces.c.updated_at)
                            .where(ROOT).order_by(faces.c.id)).all()
        self._since = max((r.updated_at for r in rows if r.updated_at is not None), default=None)
        self._upsert([(r.id, r.encoding) for r in rows])
        return "full"

    def _count_sum_max(self) -> tuple[int, int, int]:
        ids = self._ids[:self._n]
        return (self._n + len(self._invalid), int(ids.sum()) + sum(self._invalid),
                max([int(ids.max(initial=0)), *self._invalid]))

    def _upsert(self, rows) -> None:
        """rows: (face id, encoding as stored: JSON text, list or None)."""
        ids, mat, bad = parse_rows(rows)
        # A held root whose encoding became unusable ends up in both sets: the count check of
        # the sweep then disagrees and a full reload drops it.
        self._invalid.update(bad)
        self._invalid.difference_update(ids.tolist())
        known = np.array([i in self._row for i in ids.tolist()], dtype=bool)
        for face_id, vec in zip(ids[known].tolist(), mat[known]):
            self._set_rows(self._row[face_id], np.array([face_id]), vec[None, :])
        ids, mat = ids[~known], mat[~known]
        if not len(ids):
            return
        need = self._n + len(ids)
        if need > len(self._m):           # grow by doubling so appends are amortised O(1)
            cap = max(need, 2 * len(self._m), 1024)
            m = np.zeros((cap, DIM), np.float32)
            m[:self._n] = self._m[:self._n]
            grown_ids = np.zeros(cap, np.int64)
            grown_ids[:self._n] = self._ids[:self._n]
            sq = np.zeros(cap, np.float32)
            sq[:self._n] = self._sq[:self._n]
            self._m, self._ids, self._sq = m, grown_ids, sq
        self._row.update(zip(ids.tolist(), range(self._n, need)))
        self._set_rows(self._n, ids, mat)
        self._n = need

    def _set_rows(self, at: int, ids: np.ndarray, mat: np.ndarray) -> None:
        block = self._m[at:at + len(ids)]
        block[:] = mat
        self._ids[at:at + len(ids)] = ids
        exact = block.astype(np.float64)
        self._sq[at:at + len(ids)] = np.einsum("ij,ij->i", exact, exact)

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

