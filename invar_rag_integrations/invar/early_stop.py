"""Stage 2 only where it pays: the scorer reads a query's first ``read_first`` stage-1
candidates, and the rest (up to the candidate depth) only while their leader is not clear.

The leader is clear when its fused score ``s`` beats the runner-up's among those read by at least
``stop_margin`` (``s``'s scale: nats of question likelihood plus the weighted cosine and BM25
terms). Candidates left unread keep stage 1's order below every read one and carry no score
(:data:`UNSCORED`). ``read_first`` >= the depth, or ``stop_margin = inf``, reads every
candidate (a fixed depth). The defaults were chosen on the tuning slice by
``python -m benchmarks.stage2_policy`` (``benchmarks/results/stage2_policy.json``): the fewest
pairs read that keep the fixed depth's Acc@1 there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

READ_FIRST = 2
STOP_MARGIN = 1.15
UNSCORED = float("-inf")  # a candidate left unread, or a node without text: below every score


def check_policy(read_first: int, stop_margin: float, depth: int | None = None) -> None:
    """Fail on settings that cannot work, naming the value (``depth``: the most candidates
    there are to read; ``None``: any number, as a reranker is given)."""
    if isinstance(read_first, bool) or not isinstance(read_first, int) \
            or not 1 <= read_first <= (depth or read_first):
        bound = "" if depth is None else f" to the candidate depth ({depth})"
        raise ValueError(f"read_first must be an integer from 1{bound}, got {read_first!r}")
    if not isinstance(stop_margin, (int, float)) or math.isnan(stop_margin) or stop_margin < 0:
        raise ValueError(f"stop_margin must be >= 0 (inf: always read every candidate), got "
                         f"{stop_margin!r}")


def leader_is_clear(scores: np.ndarray, stop_margin: float) -> bool:
    """Whether the best of ``scores`` beats the second best by ``stop_margin`` (never with
    fewer than two, or when the second has no text to read)."""
    if len(scores) < 2 or math.isinf(stop_margin):
        return False
    first, second = np.sort(scores)[::-1][:2]
    return bool(np.isfinite(second) and first - second >= stop_margin)


def read_until_clear(counts: Sequence[int], read_first: int, stop_margin: float,
                     score: Callable[[list[int], list[slice]], list[np.ndarray]],
                     ) -> list[np.ndarray]:
    """Each query's fused scores over its ``counts[i]`` candidates, reading them in two steps.

    Args:
        counts: Candidates per query.
        read_first, stop_margin: The policy.
        score: ``score(queries, slices)`` gives the fused scores of each listed query's
            candidates in its slice.

    Returns:
        Per query, one score per candidate (:data:`UNSCORED` for those left unread).
    """
    first = [slice(0, min(read_first, n)) for n in counts]
    found = score(list(range(len(counts))), first)
    more = [i for i, n in enumerate(counts)
            if n > read_first and not leader_is_clear(found[i], stop_margin)]
    if more:
        for i, rest in zip(more, score(more, [slice(read_first, counts[i]) for i in more])):
            found[i] = np.concatenate([found[i], rest])
    return [np.concatenate([s, np.full(n - len(s), UNSCORED, np.float32)])
            for s, n in zip(found, counts)]
