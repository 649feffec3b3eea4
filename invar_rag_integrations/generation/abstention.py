"""Abstention: how much the evidence behind an answer supports it, and when to decline.

The signals, for one question, its retrieved sources and the generated answer:
- ``relevance``: the best source's relevance probability (calibrated for the Invar retriever);
- ``relevance_any``: the probability that any source holds an answer, ``1 - prod(1 - p)``;
- ``answer_logprob``: the generator's mean log-probability per generated token;
- ``closed_logprob``: the same answer's mean log-probability per token without the passages;
- ``pmi``: ``log P(answer | question, passages) - log P(answer | question)`` (summed);
- ``in_passages``: 1 when the answer's words occur in the passages shown, else 0.

An :class:`AbstentionModel` is a logistic model of some of them, with a threshold on its
confidence below which the RAG declines.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..invar.calibration import Logistic
from ..system import MANIFEST, read_manifest, write_manifest

SIGNALS = ("relevance", "relevance_any", "answer_logprob", "closed_logprob", "pmi",
           "in_passages")
CLOSED_BOOK_SIGNALS = ("closed_logprob", "pmi")  # the ones that cost an extra pass
DECLINED_TEXT = "Not found in the documents."


@dataclass(frozen=True)
class Evidence:
    """What one answer rests on (see the module's docstring for each signal)."""

    relevance: float
    relevance_any: float
    answer_logprob: float
    closed_logprob: float
    pmi: float
    in_passages: float

    @classmethod
    def of(cls, scores: Sequence[float], logprob: float, num_tokens: int,
           closed: tuple[float, int] | None, in_passages: bool) -> Evidence:
        """The signals from the sources' scores, the generation's summed log-probability over
        ``num_tokens`` tokens, and ``closed``: the answer's summed log-probability without the
        passages and its token count (an empty answer: ``(0, 0)``; ``None``: not computed,
        so ``closed_logprob`` and ``pmi`` are NaN)."""
        miss = 1.0
        for score in scores:
            miss *= 1.0 - min(max(score, 0.0), 1.0)
        total, count = closed if closed is not None else (math.nan, 0)
        return cls(relevance=max(scores, default=0.0), relevance_any=1.0 - miss,
                   answer_logprob=logprob / max(num_tokens, 1),
                   closed_logprob=total / max(count, 1), pmi=logprob - total,
                   in_passages=float(in_passages))


@dataclass(frozen=True)
class AbstentionModel:
    """A logistic model of some signals, the answer's *confidence*; the RAG declines when the
    confidence is below ``threshold``.

    Attributes:
        model: Its features are names from :data:`SIGNALS`.
        threshold: The confidence below which to decline, chosen on tuning questions.
        fitted_on: What it was fitted on (questions per dataset, the threshold's rule).
    """

    model: Logistic
    threshold: float
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.model.features) - set(SIGNALS))
        if unknown or not self.model.features:
            raise ValueError(f"abstention signals must be among {SIGNALS}, got "
                             f"{list(self.model.features)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"an abstention threshold is a confidence in [0, 1], got "
                             f"{self.threshold!r}")

    @property
    def reads_closed_book(self) -> bool:
        """Whether a signal needs the answer's log-probability without the passages."""
        return bool(set(CLOSED_BOOK_SIGNALS) & set(self.model.features))

    def confidence(self, evidence: Evidence) -> float:
        """The probability that the answer rests on passages that hold an answer."""
        table = {name: np.array([getattr(evidence, name)]) for name in self.model.features}
        return float(self.model.probability(table)[0])

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "threshold": self.threshold,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> AbstentionModel:
        try:
            return cls(Logistic.from_dict(stored["model"]), float(stored["threshold"]),
                       dict(stored.get("fitted_on") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed abstention entry in the manifest ({err})") from None


def stamp(manifest: Mapping[str, Any]) -> dict[str, str]:
    """What an abstention model was fitted with: the retriever's and the generator's hashes
    (retraining either makes it stale)."""
    return {stage: str((manifest.get(stage) or {}).get("hash", ""))
            for stage in ("retriever", "generator")}


def store_abstention(path: str | os.PathLike[str], model: AbstentionModel,
                     on_by_default: bool) -> None:
    """Store ``model`` in system ``path``'s manifest (``abstention``), stamped with the
    retriever and generator it was fitted with; the rest of the manifest is kept."""
    manifest = read_manifest(path)
    if "generator" not in manifest:
        raise ValueError(f"{Path(path) / MANIFEST}: this system has no generator to abstain with")
    manifest["abstention"] = {**model.to_dict(), "on_by_default": bool(on_by_default),
                              "fitted_with": stamp(manifest)}
    write_manifest(path, manifest)


def load_abstention(manifest: Mapping[str, Any]) -> tuple[AbstentionModel | None, bool]:
    """A system's abstention model and whether it declines by default; ``(None, False)`` when
    it has none, or (with a warning) when the retriever or generator changed since it was
    fitted."""
    stored = manifest.get("abstention")
    if not stored:
        return None, False
    if stored.get("fitted_with") != stamp(manifest):
        warnings.warn("this system's abstention model was fitted with another retriever or "
                      "generator, so it is not used: refit it with `invar-rag fit-abstention`",
                      stacklevel=3)
        return None, False
    return AbstentionModel.from_dict(stored), bool(stored.get("on_by_default", False))
