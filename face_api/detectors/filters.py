"""Which YuNet candidates are kept as faces: precision filters, each measured by the bench."""
from __future__ import annotations


def keep(candidate, min_score: float) -> bool:
    return candidate.score >= min_score
