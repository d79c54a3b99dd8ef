"""Nearest-name suggestions for "did you mean ...?" in error messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["suggest"]

# Below this similarity a suggestion confuses more than it helps ("to" for "tags").
_CUTOFF = 0.6
# How far behind the best a second suggestion may score and still be offered.
_RUNNER_UP_GAP = 0.1


def suggest(name: str, candidates: Iterable[str], n: int = 2) -> tuple[str, ...]:
    """Return up to ``n`` candidates closest to ``name``, best first.

    Matching is case-insensitive, so ``Approved`` suggests ``approved``. A candidate equal to
    ``name`` is never suggested (it would not be an error), and an empty result means nothing
    is close enough.

    >>> suggest("aproved", ["draft", "approved", "paid"])
    ('approved',)
    """
    if n <= 0:
        return ()
    by_folded: dict[str, str] = {}
    for candidate in candidates:
        if candidate != name:
            by_folded.setdefault(candidate.lower(), candidate)
    folded = name.lower()
    scored = []
    for candidate in by_folded:
        ratio = difflib.SequenceMatcher(None, folded, candidate).ratio()
        if ratio >= _CUTOFF:
            scored.append((ratio, candidate))
    if not scored:
        return ()
    scored.sort(key=lambda item: (-item[0], item[1]))
    best = scored[0][0]
    # A runner-up far behind the best match is noise: "sales_manger" should not also offer
    # "sales_rep".
    return tuple(by_folded[c] for ratio, c in scored[:n] if ratio >= best - _RUNNER_UP_GAP)
