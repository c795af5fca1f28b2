"""Who a new face is: a person is ALL their approved faces, not one root.

A person is a root face (`parent_id IS NULL AND status='ok'`) plus every approved face filed
under it (`status='ok' AND parent_id = root`); the person's id is the root's id, so `parent_id`
keeps pointing at an approved root as the Laravel app expects.

`decide()` for one face, given the approved faces near it (`Candidates`):
  1. only approved faces closer than the threshold (0.6, the original's bound) count, and not
     those of people a reviewer took this face away from;
  2. the k nearest of them vote; the person with most votes wins (a tie: the nearer one);
  3. the winner's nearest approved face must be inside the winner's radius (below);
  4. it must be clearly nearer than every other person's nearest approved face: at most `ratio`
     times that distance (Lowe's ratio test), else the face is left to a reviewer ("ambiguous")
     instead of picking one of two look-alikes. A ratio, not a fixed margin, because people of
     one population sit closer together in dlib's space than others: what counts as clearly
     nearer scales with how close the people around the face are. People with different
     numbers of approved faces are also compared at the same number (`expected_nearest`): five
     approved faces have more chances than one that one of them lies close by;
  5. if `unknown_neighbours` unknown faces without a person are closer to it than the winner
     is, it belongs with them (an unapproved cluster: the look-alike nobody approved yet).

A person's radius is learned from its approved faces: the largest leave-one-out distance from an
approved face to the person's nearest other approved face, plus `radius_slack` (a new photo of
the person is as far from the approved ones as they are from each other), capped by the
threshold; from four approved faces on the farthest one is left out (one odd photo would open
the radius to everyone nearby). One approved face teaches nothing: the radius is the threshold.
Look-alikes a reviewer filed apart are kept apart by the ratio test: a face between them is near
both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

# Pairwise work per person is capped so a person with thousands of approved faces stays cheap:
# the radius and the nearest other person use the first SAMPLE faces (by id) of each person.
SAMPLE = 400
OUTLIER_FROM = 4    # approved faces from which the farthest one does not set the radius


@dataclass(frozen=True)
class Rules:
    threshold: float = 0.6          # outer bound: nothing farther is ever matched
    vote_k: int = 5                 # nearest approved faces that vote
    ratio: float = 0.92             # best person's distance / the runner-up's must be below this
    radius_slack: float = 0.1       # added to the learned leave-one-out radius
    unknown_neighbours: int = 2     # unknown faces closer than the person: an unapproved cluster

    @classmethod
    def from_settings(cls, settings) -> "Rules":
        return cls(threshold=settings.face_match_threshold, vote_k=settings.face_vote_k,
                   ratio=settings.face_ratio, radius_slack=settings.face_radius_slack,
                   unknown_neighbours=settings.face_unknown_neighbours)

    @property
    def reach(self) -> float:
        """How far candidates must be looked up: a runner-up just outside the threshold still
        makes a winner just inside it ambiguous."""
        return self.threshold / self.ratio


@dataclass(frozen=True)
class Candidates:
    """Approved faces near one face, nearest first: ids, their person (root id) and distance."""
    ids: np.ndarray
    persons: np.ndarray
    distances: np.ndarray


@dataclass(frozen=True)
class Decision:
    person: int | None          # root id to file the face under, or None
    distance: float | None      # to the person's nearest approved face
    reason: str                 # "matched", or one of the REASONS a face is left unassigned
    why: str = ""               # the same with the numbers, kept in faces.match_note
    candidate: int | None = None    # the person it was nearly filed under (outside the radius, ambiguous)
    learned: bool = False       # filed because the learned metric was sure where dlib's distance was not
    second: bool = False        # filed by the second look (with the faces filed from approvals)

    @property
    def note(self) -> str | None:
        """faces.match_note: why a face was left without a person, or that the learned metric or
        the second look filed it (the second look's mark keeps that face from being evidence)."""
        return self.why[:255] if self.person is None or self.learned or self.second else None


LEARNED_NOTE = "learned metric: "    # match_note of a face the learned metric filed
REASONS = ("no person within the threshold", "outside the radius", "ambiguous",
           "closer to unapproved faces", "person already in the photo", "no root within the threshold",
           "the learned distance disagrees")


@dataclass
class Person:
    root_id: int
    faces: int
    radius: float
    why: str


@dataclass
class People:
    """Approved faces grouped by person; each person's radius is learned when first needed
    (after approvals change, only the people a face is actually matched against pay for it)."""
    rules: Rules
    vectors: dict[int, np.ndarray] = field(default_factory=dict)     # root id -> (m, 128)
    counts: dict[int, int] = field(default_factory=dict)
    _persons: dict[int, Person] = field(default_factory=dict)
    _collisions: dict[tuple[int, int], float] = field(default_factory=dict)

    @classmethod
    def learn(cls, ids: np.ndarray, persons: np.ndarray, matrix: np.ndarray, rules: Rules) -> "People":
        out = cls(rules)
        order = np.lexsort((ids, persons))
        bounds = np.flatnonzero(np.diff(persons[order])) + 1
        for group in np.split(order, bounds):
            if len(group):
                root = int(persons[group[0]])
                out.vectors[root] = matrix[group[:SAMPLE]].astype(np.float64)
                out.counts[root] = len(group)
        return out

    def person(self, root: int) -> Person:
        if root not in self._persons:
            self._persons[root] = _radius(root, self.counts[root], self.vectors[root], self.rules)
        return self._persons[root]

    def collision(self, a: int, b: int) -> float:
        """Closest distance between the approved faces of persons a and b (cached)."""
        key = (min(a, b), max(a, b))
        if key not in self._collisions:
            va, vb = self.vectors[a], self.vectors[b]
            self._collisions[key] = float(np.sqrt(_sq_dists(va, vb).min()))
        return self._collisions[key]

    def nearest_other(self, root: int, reach: float) -> tuple[int, float] | None:
        """The other person whose approved faces come closest to this one's (for inspection)."""
        best = None
        for other in self.vectors:
            if other != root:
                d = self.collision(root, other)
                if d < reach and (best is None or d < best[1]):
                    best = (other, d)
        return best


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _radius(root: int, count: int, vecs: np.ndarray, rules: Rules) -> Person:
    if len(vecs) < 2:
        return Person(root, count, rules.threshold, "one approved face: the threshold")
    d = _sq_dists(vecs, vecs)
    np.fill_diagonal(d, np.inf)
    loo = np.sort(np.sqrt(d.min(axis=1)))
    # From four approved faces on, the one farthest from the others is left out: one odd photo
    # would otherwise open the radius for every face; a new photo like it is near it anyway.
    trimmed = len(loo) >= OUTLIER_FROM
    spread = float(loo[-2] if trimmed else loo[-1])
    radius = min(rules.threshold, spread + rules.radius_slack)
    why = (f"approved faces up to {spread:.3f} from each other"
           + (" (the farthest one left out)" if trimmed else "") + f" + slack {rules.radius_slack}"
           + (" (capped by the threshold)" if radius == rules.threshold else ""))
    return Person(root, count, radius, why)


def expected_nearest(distances: list[float], count: int, m: int, beyond: float) -> float:
    """The expected distance to the nearest of m faces drawn at random from a person's `count`
    approved faces, given the sorted distances of those looked up (the others count as `beyond`).
    The i-th nearest is the nearest of the m with probability C(count-1-i, m-1) / C(count, m)."""
    weight, total, used = m / count, 0.0, 0.0
    for i, d in enumerate(distances[:count - m + 1]):
        total, used = total + weight * d, used + weight
        weight *= (count - i - m) / (count - i - 1) if count - i - 1 > 0 else 0.0
    return total + (1.0 - used) * beyond


def _close_at_equal_count(winner: int, persons: np.ndarray, dists: np.ndarray, people: People,
                          rules: Rules) -> tuple[int, int, float, float] | None:
    """The ratio test again, each person against the winner at the same number of approved
    faces: a person with many approved faces has more chances that one of them lies close to
    any face, so the winner's nearest of m is compared with the other's nearest of m (m the
    smaller count). The first person too close that way, or None."""
    by_person: dict[int, list[float]] = {}
    for p, d in zip(persons.tolist(), dists.tolist()):
        by_person.setdefault(p, []).append(d)            # nearest first: sorted already
    n_win = people.counts.get(winner, 1)
    worst = expected_nearest(by_person[winner], n_win, 1, rules.reach)   # the winner's at m = 1
    for other, ds in by_person.items():
        n_other = people.counts.get(other, 1)
        if other == winner or n_other == n_win or rules.ratio * ds[0] > worst:
            continue        # equal counts: the test above; farther: cannot be too close
        m = min(n_win, n_other)
        e_win = expected_nearest(by_person[winner], n_win, m, rules.reach)
        e_other = expected_nearest(ds, n_other, m, rules.reach)
        if e_win >= rules.ratio * e_other:
            return other, m, e_win, e_other
    return None


def _allowed(near: Candidates, excluded) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """The candidates of the persons not excluded, and each such person's nearest distance."""
    keep = np.array([int(p) not in excluded for p in near.persons], dtype=bool)
    persons, dists = near.persons[keep], near.distances[keep]
    nearest: dict[int, float] = {}
    for p, d in zip(persons.tolist(), dists.tolist()):
        nearest.setdefault(p, d)                    # nearest first: the first one is the min
    return persons, dists, nearest


def nearest_people(near: Candidates, excluded, k: int) -> list[int]:
    """The k persons (not excluded) whose approved faces come nearest, nearest first."""
    _, _, nearest = _allowed(near, excluded)
    return sorted(nearest, key=nearest.get)[:k]


def _runner_up(winner: int, nearest: dict[int, float], rules: Rules) -> float:
    """The nearest other person's distance; one beyond the candidates counts as at the reach."""
    return min((d for p, d in nearest.items() if p != winner), default=rules.reach)


def _ambiguity(winner: int, persons: np.ndarray, dists: np.ndarray, nearest: dict[int, float],
               people: People, rules: Rules) -> str | None:
    """Why `winner` is not clearly nearer than every other person (the ratio test, plainly and at
    equal numbers of approved faces), or None when it is."""
    d_win, runner = nearest[winner], _runner_up(winner, nearest, rules)
    if d_win >= rules.ratio * runner:
        return f"ambiguous: person {winner} at {d_win:.3f}, another at {runner:.3f}"
    close = _close_at_equal_count(winner, persons, dists, people, rules)
    if close is not None:
        other, m, e_win, e_other = close
        return (f"ambiguous: person {winner} at {d_win:.3f}, person {other} at {nearest[other]:.3f}; "
                f"nearest of {m} approved faces each: {e_win:.3f} against {e_other:.3f}")
    return None


def crowded(crowd: int, person: int) -> Decision:
    """Rule 5's decision: the face belongs with `crowd` unknown faces rather than with `person`."""
    return Decision(None, None, REASONS[3], f"closer to {crowd} unknown faces than to person {person}")


def decide(near: Candidates, people: People, rules: Rules, excluded=frozenset(),
           unknown_closer: Callable[[float, int], int] | None = None) -> Decision:
    """One face's person. `near` must hold every approved face within `rules.reach`, nearest
    first; `excluded`: persons this face may not go to (a reviewer's "not this person", a person
    already in the photo); `unknown_closer(d, person)`: how many unknown faces without a
    person, other than the person's own, are closer to the face than d (None: not checked)."""
    persons, dists, nearest = _allowed(near, excluded)
    inside = dists < rules.threshold
    if not inside.any():
        return Decision(None, None, REASONS[0], "no person within the threshold")
    votes: dict[int, int] = {}
    for p in persons[inside][:rules.vote_k].tolist():
        votes[p] = votes.get(p, 0) + 1
    winner = max(votes, key=lambda p: (votes[p], -nearest[p]))
    d_win = nearest[winner]
    radius = people.person(winner).radius
    if d_win >= radius:
        return Decision(None, None, REASONS[1], f"outside the radius of person {winner}: {d_win:.3f} >= "
                                                f"{radius:.3f}", candidate=winner)
    why = _ambiguity(winner, persons, dists, nearest, people, rules)
    if why:
        return Decision(None, None, REASONS[2], why, candidate=winner)
    if rules.unknown_neighbours and unknown_closer is not None:
        crowd = unknown_closer(d_win, winner)
        if crowd >= rules.unknown_neighbours:
            return crowded(crowd, winner)
    return Decision(winner, d_win, "matched", f"person {winner} at {d_win:.3f}")


class Clear(NamedTuple):
    """The person a face is clearly nearest to, its distance and the runner-up's."""
    person: int
    distance: float
    runner_up: float


def clearly_nearest(near: Candidates, people: People, rules: Rules, excluded=frozenset()) -> Clear | None:
    """The person whose approved faces are clearly nearer than every other person's (the ratio
    test of `decide`), or None. No radius and no threshold: in the learned metric this says only
    *who*, once dlib's distance has said the face is near enough."""
    persons, dists, nearest = _allowed(near, excluded)
    if not nearest:
        return None
    winner = min(nearest, key=nearest.get)
    if _ambiguity(winner, persons, dists, nearest, people, rules):
        return None
    return Clear(winner, nearest[winner], _runner_up(winner, nearest, rules))


def agrees(plain: Decision, learned: Decision) -> bool:
    """Whether the learned metric lets a dlib filing stand: it files the face under the same
    person, or finds no one near enough (it is tighter where it learned little)."""
    return plain.person is not None and (
        learned.person == plain.person or (learned.person is None and learned.reason != REASONS[2]))


def combine(plain: Decision, learned: Decision, near: Candidates, clear: Clear | None = None,
            threshold: float = Rules.threshold) -> Decision:
    """One face's decision from the rule in dlib's distance (`plain`, with its candidates `near`)
    and in the learned metric (`learned`; `clear`: whom `clearly_nearest` finds the face clearly
    nearest to, in the metric of the people around it where that can be fitted). dlib's distance
    says whether a face is near enough; the learned side says better *who*.

    A dlib filing stands when the learned metric agrees (`agrees`) or finds that person clearly
    nearest; else it goes to a reviewer. A face dlib's distance left unfiled is filed when the
    person clearly nearest is one dlib's distance allows: for a face between two people
    (ambiguous) only the one dlib's distance leaned to; for a face just outside the radius of its
    nearest person, anyone within the threshold. The learned rule's votes must lean to no one
    else."""
    if plain.person is not None:
        if agrees(plain, learned) or (clear is not None and clear.person == plain.person):
            return plain
        seen = (f"person {learned.person}" if learned.person is not None else
                f"ambiguous ({learned.why.removeprefix('ambiguous: ')})")
        return Decision(None, None, REASONS[6], f"person {plain.person} at {plain.distance:.3f}, "
                                                f"but in the learned metric {seen}")
    if plain.candidate is None or clear is None:
        return plain
    if plain.reason == REASONS[2] and clear.person != plain.candidate:
        return plain            # between two people, dlib's distance is not overruled on who
    dlib = near.distances[near.persons == clear.person]
    if not (dlib < threshold).any():
        return plain
    if learned.person not in (None, clear.person) or learned.candidate not in (None, clear.person):
        return plain            # the learned rule's votes lean elsewhere
    seen = (f"person {learned.person} at {learned.distance:.3f}" if learned.person is not None else
            f"person {clear.person} at {clear.distance:.3f}, clearly nearer than anyone else "
            f"({clear.runner_up:.3f})")
    # the stored distance stays dlib's (the Laravel app and one-per-photo compare it)
    return Decision(clear.person, float(dlib.min()), "matched",
                    f"{LEARNED_NOTE}{seen} (dlib's distance alone: {plain.why})", learned=True)
