"""The fused score ``s(q, d) = w * cos(c(q), c(d)) / tau + r(q, d) [+ w_bm25 * bm25(q, d)]``
(DESIGN.md §2): one definition for serving, training and the benchmarks."""

from __future__ import annotations

from typing import Any


def fused_score(lm_score: Any, cosine: Any, cos_weight: Any, tau: float, bm25: Any = None,
                bm25_weight: Any = 0.0) -> Any:
    """``s = cos_weight * cos / tau + r + bm25_weight * bm25`` for numpy arrays (serving) and
    torch tensors (training, where the weights are learned parameters); ``bm25 = None`` leaves
    its term out."""
    score = cos_weight * cosine / tau + lm_score
    return score if bm25 is None else score + bm25_weight * bm25


def settings_score(settings: Any, lm_score: Any, cosine: Any, bm25: Any = None) -> Any:
    """:func:`fused_score` with the weights of ``settings`` (``InvarSettings``): what every
    path that ranks by the retriever's score calls."""
    return fused_score(lm_score, cosine, settings.cos_weight, settings.tau, bm25,
                       settings.bm25_weight)
