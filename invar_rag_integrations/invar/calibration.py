"""Relevance probabilities: P(the node holds an answer to the query), the number every score
that leaves the package is (DESIGN.md §2).

The fused score ``s`` orders one query's list, but how predictable a question's words are moves
it as much as relevance does. The probability of a candidate the LM read is a logistic model of

- ``fused``: ``s`` as the path computes it (with the BM25 term in the two-stage retriever), and
- ``prior``: the question's log-likelihood per token after the prompt with no passage (how
  predictable the question is by itself: what makes ``s`` mean different things for two
  questions).

Within a query it increases with ``s``, so ranking by it is ranking by ``s``: richer read
models (the LM gain, cosine, BM25, length and stage-1 terms apart) were as well calibrated on
the tuning questions but ranked worse (``benchmarks/calibration.py``). A candidate the early
stop left unread has no ``s``; its probability comes from ``cosine`` (the coarse cosine, its
best window's), ``log_tokens`` (log(1 + its length in tokens)) and, in the two-stage retriever,
``bm25`` (the relative BM25 term), ``stage1_rank`` (log(1 + its position in stage 1's list))
and ``stage1_score`` (stage 1's own score: RRF's, higher when BM25 and MiniLM agree).

Each path has a read and an unread logistic model, fitted with scikit-learn
(``training/calibrate.py``) for the retriever settings they serve (the fused score is theirs)
and stored as plain numbers (the manifest, or ``zero_shot_calibration.json`` for the embedded
zero-shot settings); applying one needs numpy only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fusion import settings_score

PATHS = ("reranker", "retriever")  # the stage-2 reranker over any nodes; the two-stage retriever
READ_FEATURES = ("fused", "prior")
UNREAD_FEATURES = {"reranker": ("cosine", "log_tokens"),
                   "retriever": ("cosine", "bm25", "log_tokens", "stage1_rank", "stage1_score")}
STAGE1_FEATURES = ("bm25", "stage1_rank", "stage1_score")
ZERO_SHOT_FILE = Path(__file__).with_name("zero_shot_calibration.json")


def model_name(path: str, read: bool) -> str:
    """The key of a path's model for read (``reranker``) or unread (``reranker-unread``)
    candidates."""
    return path if read else f"{path}-unread"


def features_of(path: str, read: bool) -> tuple[str, ...]:
    """The features a path's read or unread model reads."""
    return READ_FEATURES if read else UNREAD_FEATURES[path]


def pair_features(settings: Any, lm: np.ndarray, prior: float, cosine: np.ndarray,
                  tokens: np.ndarray, bm25: np.ndarray | None = None,
                  rank: np.ndarray | None = None,
                  stage1: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One query's candidates as the calibrators read them: ``lm`` is ``r`` (NaN where
    unread), ``prior`` the question's ``r`` with no passage, ``tokens`` each node's length;
    ``fused`` is ``settings``' fused score (with the BM25 term when ``bm25`` is given)."""
    lm, cosine = np.asarray(lm, np.float64), np.asarray(cosine, np.float64)
    found = {"lm": lm, "cosine": cosine, "prior": np.full(len(lm), float(prior)),
             "log_tokens": np.log1p(np.asarray(tokens, np.float64)),
             "fused": np.asarray(settings_score(settings, lm, cosine, bm25), np.float64)}
    for name, values in (("bm25", bm25), ("stage1_rank", rank), ("stage1_score", stage1)):
        if values is not None:
            values = np.asarray(values, np.float64)
            found[name] = np.log1p(values) if name == "stage1_rank" else values
    return found


def usable_path(path: str, table: Mapping[str, np.ndarray]) -> str:
    """The path whose models read ``table``: a two-stage candidate without the stage-1 terms
    (no BM25 in stage 1) is read as the reranker reads it."""
    return path if path == "reranker" or set(STAGE1_FEATURES) <= set(table) else "reranker"


def without_stage1(table: Mapping[str, np.ndarray], settings: Any) -> dict[str, np.ndarray]:
    """A two-stage candidate's features as the reranker (which has no stage 1) reads them."""
    found = {k: v for k, v in table.items() if k not in STAGE1_FEATURES}
    found["fused"] = np.asarray(settings_score(settings, table["lm"], table["cosine"]),
                                np.float64)
    return found


@dataclass(frozen=True)
class Logistic:
    """``P = sigmoid(intercept + weights . x)`` over named features (raw units: the scaling
    used while fitting is folded in)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    intercept: float

    def __post_init__(self) -> None:
        if len(self.features) != len(self.weights):
            raise ValueError(f"{len(self.features)} features but {len(self.weights)} weights")

    def probability(self, table: Mapping[str, np.ndarray]) -> np.ndarray:
        """The probability of each row of ``table`` (feature name -> ``[N]``)."""
        missing = [f for f in self.features if f not in table]
        if missing:
            raise ValueError(f"this calibrator reads {list(self.features)}; missing {missing}")
        logit = np.full(len(next(iter(table.values()))) if table else 0, self.intercept)
        for name, weight in zip(self.features, self.weights):
            logit = logit + weight * np.asarray(table[name], np.float64)
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0)))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "weights": list(self.weights),
                "intercept": self.intercept}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Logistic:
        return cls(tuple(stored["features"]), tuple(float(w) for w in stored["weights"]),
                   float(stored["intercept"]))


@dataclass(frozen=True)
class Calibration:
    """A system's calibrators: per path, a model for read and one for unread candidates.

    Attributes:
        models: ``reranker``, ``reranker-unread``, ``retriever``, ``retriever-unread``.
        fitted_on: What they were fitted on (questions, pairs, the share relevant, source).
        calibrated: ``False`` for the fallback an older system gets (the embedded zero-shot
            calibrators, which were not fitted for it).
    """

    models: Mapping[str, Logistic]
    fitted_on: Mapping[str, Any] = field(default_factory=dict)
    calibrated: bool = True

    def __post_init__(self) -> None:
        wanted = {model_name(p, read) for p in PATHS for read in (True, False)}
        if set(self.models) != wanted:
            raise ValueError(f"a calibration needs models {sorted(wanted)}, got "
                             f"{sorted(self.models)}")

    def probabilities(self, path: str, table: Mapping[str, np.ndarray],
                      read: np.ndarray) -> np.ndarray:
        """P(relevant) of one query's candidates on ``path`` (``reranker`` or ``retriever``):
        the read model where ``read``, the unread model elsewhere; a node without text (no
        tokens) holds no answer: 0."""
        read = np.asarray(read, bool)
        empty = np.asarray(table["log_tokens"]) == 0
        found = np.zeros(len(read))
        for was_read, rows in ((False, ~read & ~empty), (True, read & ~empty)):
            if rows.any():
                found[rows] = self.models[model_name(path, was_read)].probability(
                    {k: np.asarray(v)[rows] for k, v in table.items()})
        return found

    def to_dict(self) -> dict[str, Any]:
        """What the manifest stores."""
        return {"models": {k: m.to_dict() for k, m in sorted(self.models.items())},
                "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any], calibrated: bool = True) -> Calibration:
        try:
            return cls({k: Logistic.from_dict(m) for k, m in stored["models"].items()},
                       stored.get("fitted_on", {}), calibrated)
        except (KeyError, TypeError) as err:
            raise ValueError(f"a malformed calibration ({err!r})") from None

    def fingerprint(self) -> str:
        """A hash of the stored form: part of the retriever's identity."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def zero_shot_calibration(calibrated: bool = True) -> Calibration:
    """The embedded zero-shot settings' calibrators (``benchmarks/calibration.py`` fitted them
    on the tuning questions); ``calibrated = False`` marks them as another system's fallback."""
    return Calibration.from_dict(json.loads(ZERO_SHOT_FILE.read_text(encoding="utf-8")),
                                 calibrated)


def check_threshold(threshold: float | None, name: str = "score_threshold") -> float | None:
    """A relevance threshold is ``None`` (keep every node) or a number in [0, 1]."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{name} must be a relevance probability in [0, 1], got {threshold!r}")
    return float(threshold)
