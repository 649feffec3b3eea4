"""Answer metrics: Acc@k by DPR's ``has_answer`` token matching, and SQuAD-style EM / F1; the
words of a text around its first answer mention by the same matching (``answer_window``)."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from ..answer_match import ARTICLES, has_answer, match_tokens, strip_punctuation
from ..data import Passage, Question

__all__ = ["has_answer", "match_tokens"]  # re-exported: evaluation's names for them


def _answer_start(words: list[str], answers: Sequence[str]) -> int | None:
    """Index of the first word where an answer's token sequence begins, if any."""
    targets = [t for t in (match_tokens(a) for a in answers) if t]
    for i in range(len(words)):
        window = match_tokens(" ".join(words[i : i + 12]))
        if any(window[: len(t)] == t for t in targets):
            return i
    return None


def answer_window(text: str, answers: Sequence[str], words: int) -> str:
    """At most ``words`` words of ``text``, centred on the first answer mention when there is
    one (else its beginning)."""
    if words <= 0:
        raise ValueError(f"words must be positive, got {words}")
    tokens = text.split()
    if len(tokens) > words:
        hit = _answer_start(tokens, answers)
        start = 0 if hit is None else min(max(0, hit - words // 2), len(tokens) - words)
        tokens = tokens[start : start + words]
    return " ".join(tokens)


def first_hit_rank(answers: Sequence[str], ranked_texts: Sequence[str]) -> int | None:
    """0-based rank of the first passage that contains an answer, or ``None``."""
    for rank, text in enumerate(ranked_texts):
        if has_answer(answers, text):
            return rank
    return None


def accuracy_by_dataset(datasets: Sequence[str], hits: Sequence[bool]) -> dict[str, float]:
    """The share of hits per dataset, plus ``mean``: the unweighted mean over datasets (what
    tuning curves and early stopping compare)."""
    grouped: dict[str, list[bool]] = {}
    for dataset, hit in zip(datasets, hits):
        grouped.setdefault(dataset, []).append(bool(hit))
    table = {d: sum(h) / len(h) for d, h in grouped.items()}
    table["mean"] = sum(table.values()) / len(table)
    return table


def tuning_accuracy(questions: Sequence[Question], firsts: Sequence[Passage | str],
                    ) -> dict[str, float]:
    """Acc@1 per dataset and their mean (``mean``) when each question's first passage is
    ``firsts[i]``: what every tuning curve compares."""
    return accuracy_by_dataset(
        [q.dataset for q in questions],
        [has_answer(q.answers, p if isinstance(p, str) else p.full_text())
         for q, p in zip(questions, firsts)])


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation and articles, fold spaces."""
    text = strip_punctuation(unicodedata.normalize("NFD", text).lower(), "")
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def f1_score(prediction: str, answers: Iterable[str]) -> float:
    """Best token-overlap F1 between the prediction and any gold answer."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def reliability_bins(probability: Sequence[float], relevant: Sequence[bool],
                     bins: int = 10) -> list[tuple[float, float, int]]:
    """A reliability diagram: per equal-width probability bin that holds pairs, ``(mean
    probability, share relevant, pairs)``."""
    import numpy as np

    p, y = np.asarray(probability, np.float64), np.asarray(relevant, bool)
    if len(p) != len(y) or not len(p):
        raise ValueError(f"need as many outcomes as probabilities (and some), got {len(y)} "
                         f"and {len(p)}")
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [(float(p[which == b].mean()), float(y[which == b].mean()), int((which == b).sum()))
            for b in range(bins) if (which == b).any()]


def calibration_errors(probability: Sequence[float], relevant: Sequence[bool],
                       bins: int = 10) -> dict[str, float]:
    """How well probabilities match outcomes: ``ece`` (expected calibration error over
    ``bins`` equal-width bins: the pairs-weighted gap between mean probability and the share
    relevant), ``brier`` (mean squared error) and ``auroc_relevant`` (relevant against not
    relevant; NaN when only one kind is there)."""
    import numpy as np
    from sklearn.metrics import brier_score_loss, roc_auc_score

    found = reliability_bins(probability, relevant, bins)
    p, y = np.asarray(probability, np.float64), np.asarray(relevant, bool)
    ece = sum(abs(mean - share) * n for mean, share, n in found) / len(p)
    auroc = roc_auc_score(y, p) if 0 < y.sum() < len(y) else float("nan")
    return {"ece": float(ece), "brier": float(brier_score_loss(y, p)),
            "auroc_relevant": float(auroc)}
