"""Suggested people: unknown faces without a parent, clustered by density (DBSCAN, as Immich
does): a face with at least `face_cluster_min_faces` faces (itself included) within
`face_cluster_radius` is a core face; cores within the radius of each other form one group, and
a non-core face joins the group of its nearest core within the radius. Everything else stays
ungrouped. The radius is well below the 0.6 match threshold on purpose: a group of two people
costs a reviewer more than one person split in two groups (merging is one click). DBSCAN chains:
two dense look-alike clusters joined by a few close faces become one group. So each group is
clustered again at a radius SPLIT_STEP smaller, and split when that gives two or more groups of
`min_faces` each (HDBSCAN's "prefer substantial children"), then again SPLIT_STEP smaller, for
SPLIT_LEVELS levels: people of one population sit closer together than others, so the radius
that separates two of them is not the one that separates two others. Faces that are noise at
the smaller radius join the sub-group of their nearest face when it is clearly nearer than every
other sub-group (JOIN_RATIO, the ratio test of the filing rule); a face as near to two of them
leaves the group.

Two faces of one photo are never one person: a group holding several faces of one photo keeps
the one nearest its centre.

Kept in `faces.suggested_group` = the id of the group's representative face (its core face with
the most neighbours), rewritten as a whole by `refresh()` (`faces suggest`, the embedded summary).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import sqlalchemy as sa
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from workers.faces.index import parse_rows
from workers.schema import faces

FREE = sa.and_(faces.c.status == "unknown", faces.c.parent_id.is_(None))
BLOCK_CELLS = 25_000_000   # pairwise distances computed at once (100 MB of float32)
SPLIT_STEP = 0.05   # a group is re-clustered this much tighter to find two people in it...
SPLIT_LEVELS = 3    # ...and so on this many times
JOIN_RATIO = 0.95   # a face left over by a split joins its nearest sub-group only this much nearer


@dataclass
class Group:
    id: int                 # representative face id
    image_id: int           # the representative face's photo
    size: int
    photos: int
    face_ids: list[int]

    def as_dict(self) -> dict:
        return asdict(self)


def neighbours(mat: np.ndarray, radius: float) -> csr_matrix:
    """Sparse symmetric matrix of the squared distances between rows closer than `radius`
    (the diagonal left out). Each pair is computed once: blocks of rows against the rows after
    them, in float32 (dlib descriptors are float32 values)."""
    n = len(mat)
    m32 = mat.astype(np.float32)
    sq = (m32 * m32).sum(1)
    # |a - b|^2 = [a, |a|^2, 1] . [-2b, 1, |b|^2]: one matrix product gives the squared distances
    left = np.hstack([m32, sq[:, None], np.ones((n, 1), np.float32)])
    right = np.ascontiguousarray(np.hstack([-2 * m32, np.ones((n, 1), np.float32), sq[:, None]]).T)
    limit = np.float32(radius * radius)
    rows, cols, d2s = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.float32)]
    start = 0
    while start < n:
        stop = min(n, start + max(16, BLOCK_CELLS // (n - start)))
        d2 = left[start:stop] @ right[:, start:]
        r, c = np.divmod(np.flatnonzero(d2 < limit), d2.shape[1])   # far faster than 2-d nonzero
        upper = c > r                   # column offset equals row offset here: the pair's other half
        r, c = r[upper], c[upper]
        rows.append(r + start)
        cols.append(c + start)
        d2s.append(d2[r, c])
        start = stop
    r, c, d2 = (np.concatenate(v) for v in (rows, cols, d2s))
    # a stored zero (two identical encodings) would vanish from the sparse matrix
    d2 = np.maximum(d2, np.float32(1e-12))
    return coo_matrix((np.concatenate([d2, d2]), (np.concatenate([r, c]), np.concatenate([c, r]))),
                      shape=(n, n)).tocsr()


def within(adj: csr_matrix, radius: float) -> csr_matrix:
    """The pairs of `adj` closer than `radius` (at most the radius `adj` was built with)."""
    out = adj.copy()
    out.data[out.data >= np.float32(radius * radius)] = 0
    out.eliminate_zeros()
    return out


def dbscan(adj: csr_matrix, mat: np.ndarray, min_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster label per row (-1: noise), and the number of neighbours per row (itself
    included), given the pairs within the radius (`neighbours`, `within`)."""
    n = len(mat)
    if n == 0:
        return np.empty(0, int), np.empty(0, int)
    count = np.diff(adj.indptr) + 1
    core = count >= min_faces
    core_idx, border = np.flatnonzero(core), np.flatnonzero(~core)
    _, comp = connected_components(adj[core_idx][:, core_idx], directed=False)
    labels = np.full(n, -1)
    labels[core_idx] = comp
    to_core = adj[border][:, core_idx].tocsr()          # border faces: the nearest core within the radius
    for k in np.flatnonzero(np.diff(to_core.indptr)):
        i, near = border[k], core_idx[to_core.indices[to_core.indptr[k]:to_core.indptr[k + 1]]]
        d = np.linalg.norm(mat[near] - mat[i], axis=1)
        labels[i] = labels[near[int(d.argmin())]]
    return labels, count


def split(adj: csr_matrix, mat: np.ndarray, labels: np.ndarray, tighter: float, min_faces: int) -> np.ndarray:
    """Labels after splitting each group that holds two substantial groups at radius `tighter`.
    Every group is clustered again at once: the pairs kept are those within one group, so no
    sub-group reaches across two of them."""
    out = labels.copy()
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.empty(0, int)
    big = np.flatnonzero(sizes >= 2 * min_faces)              # smaller ones cannot hold two groups
    pool = np.flatnonzero(np.isin(labels, big))
    if len(pool) == 0:
        return out
    group = labels[pool]
    tight = within(adj, tighter)[pool][:, pool].tocoo()
    same = group[tight.row] == group[tight.col]
    tight = csr_matrix((tight.data[same], (tight.row[same], tight.col[same])), shape=tight.shape)
    sub, _ = dbscan(tight, mat[pool], min_faces)
    sub_size = np.bincount(sub[sub >= 0]) if (sub >= 0).any() else np.empty(0, int)
    group_of_sub = np.zeros(len(sub_size), int)
    group_of_sub[sub[sub >= 0]] = group[sub >= 0]
    kept_per_group = np.bincount(group_of_sub[sub_size >= min_faces], minlength=len(sizes))
    fresh = labels.max() + 1
    for label in np.flatnonzero(kept_per_group >= 2):
        members, subs = pool[group == label], sub[group == label]
        kept = [s for s in np.unique(subs) if s >= 0 and sub_size[s] >= min_faces]
        anchored = np.isin(subs, kept)
        anchors, anchor_sub = members[anchored], subs[anchored]
        for j in np.flatnonzero(~anchored):
            # the rest: the sub-group of the nearest face, when clearly nearer than any other
            # sub-group (a face between two people leaves the group rather than mix them)
            d = np.linalg.norm(mat[anchors] - mat[members[j]], axis=1)
            nearest = sorted(d[anchor_sub == s].min() for s in kept)
            subs[j] = anchor_sub[int(d.argmin())] if nearest[0] < JOIN_RATIO * nearest[1] else -1
        out[members[subs < 0]] = -1
        for s in kept:
            out[members[subs == s]] = fresh
            fresh += 1
    return out


def one_per_photo(mat: np.ndarray, image_ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Two faces of one photo are two people: in a group holding several faces of one photo,
    the face nearest the group's centre stays and the others leave the group (ungrouped)."""
    out = labels.copy()
    grouped = np.flatnonzero(labels >= 0)
    if len(grouped) == 0:
        return out
    key = labels[grouped] * (int(image_ids.max()) + 1) + image_ids[grouped]
    uniq, counts = np.unique(key, return_counts=True)
    shared = uniq[counts > 1]
    if len(shared) == 0:
        return out
    sums = np.zeros((labels.max() + 1, mat.shape[1]))
    np.add.at(sums, labels[grouped], mat[grouped])
    centres = sums / np.maximum(np.bincount(labels[grouped]), 1)[:, None]   # labels a split retired count 0
    for k in shared:
        same = grouped[key == k]
        keep = same[int(np.linalg.norm(mat[same] - centres[labels[same[0]]], axis=1).argmin())]
        out[same[same != keep]] = -1
    return out


def cluster(ids: np.ndarray, image_ids: np.ndarray, mat: np.ndarray, radius: float,
            min_faces: int) -> list[Group]:
    """Groups of the faces, largest first."""
    adj = neighbours(mat, radius)
    labels, count = dbscan(adj, mat, min_faces)
    for level in range(1, SPLIT_LEVELS + 1):
        labels = split(adj, mat, labels, radius - level * SPLIT_STEP, min_faces)
    labels = one_per_photo(mat, np.asarray(image_ids, np.int64), labels)
    # a group that lost faces may have become smaller than a group is
    grouped = np.flatnonzero(labels >= 0)
    small = np.bincount(labels[grouped]) < min_faces if len(grouped) else np.empty(0, bool)
    labels[grouped[small[labels[grouped]]]] = -1
    grouped = np.flatnonzero(labels >= 0)
    order = grouped[np.argsort(labels[grouped], kind="stable")]
    groups = []
    for members in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1) if len(order) else []:
        rep = members[np.lexsort((ids[members], -count[members]))[0]]
        groups.append(Group(int(ids[rep]), int(image_ids[rep]), len(members),
                            len(set(image_ids[members].tolist())), sorted(ids[members].tolist())))
    groups.sort(key=lambda g: (-g.size, g.id))
    return groups


def refresh(engine: sa.Engine, settings) -> list[Group]:
    """Recluster the unknown faces without a parent and store their groups."""
    with engine.begin() as conn:
        rows = conn.execute(sa.select(faces.c.id, faces.c.image_id, faces.c.encoding).where(FREE)).all()
        image_of = {r.id: r.image_id for r in rows}
        ids, mat, _bad = parse_rows([(r.id, r.encoding) for r in rows])
        image_ids = np.array([image_of[i] for i in ids.tolist()], dtype=np.int64)
        groups = cluster(ids, image_ids, mat, settings.face_cluster_radius, settings.face_cluster_min_faces)
        conn.execute(faces.update().where(faces.c.suggested_group.is_not(None)).values(suggested_group=None))
        for g in groups:
            for start in range(0, len(g.face_ids), 1000):
                conn.execute(faces.update().where(faces.c.id.in_(g.face_ids[start:start + 1000]), FREE)
                             .values(suggested_group=g.id))
    return groups
