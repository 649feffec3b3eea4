"""Questions the corpus cannot answer: the same questions over a corpus with every passage that
holds one of their answers removed (an abstention benchmark built from any question split).

A question is kept when its question holds no word of its answers (else a passage could be
matched by the question's own words) and its answers occur in 1 to ``max_passages`` passages
(none: nothing to remove; many: a common word, whose removal would gut the corpus). The
reduced corpus drops every passage that holds an answer of any kept question; it is indexed
anew, so BM25's statistics and the dense index never see the removed passages.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ..answer_match import holds_run, match_tokens
from ..data import Passage, Question

MAX_PASSAGES = 50
EXCLUSION_RULES = ("answer_word_in_question", "answer_in_no_passage", "answer_in_too_many")


def answer_words(answers: Sequence[str]) -> set[str]:
    """The content words of the answers (matching tokens that are not English stop words)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {t for a in answers for t in match_tokens(a)} - set(ENGLISH_STOP_WORDS)


class AnswerIndex:
    """Which passages hold an answer, by DPR's token matching over title and text.

    Args:
        passages: The corpus.
    """

    def __init__(self, passages: Sequence[Passage]):
        self.passages = list(passages)
        self.tokens = [match_tokens(p.full_text()) for p in self.passages]
        self.postings: dict[str, set[int]] = defaultdict(set)
        for number, tokens in enumerate(self.tokens):
            for token in tokens:
                self.postings[token].add(number)

    def holding(self, answers: Sequence[str]) -> set[int]:
        """Numbers of the passages holding any of ``answers`` as a contiguous token run."""
        found: set[int] = set()
        for answer in answers:
            target = match_tokens(answer)
            if not target:
                continue
            candidates = set.intersection(*(self.postings.get(t, set()) for t in target))
            found |= {n for n in candidates - found if holds_run(self.tokens[n], target)}
        return found


@dataclass(frozen=True)
class UnanswerableSet:
    """Kept questions, the corpus without their answers, and how many each rule excluded.

    Attributes:
        questions: The kept questions (over ``corpus`` none of them can be answered).
        corpus: The passages left after removing every passage holding a kept answer.
        removed: Ids of the removed passages.
        excluded: Questions excluded per rule (:data:`EXCLUSION_RULES`), each counted under the
            first rule it breaks.
    """

    questions: list[Question]
    corpus: list[Passage]
    removed: frozenset[str]
    excluded: dict[str, int]


def unanswerable_set(questions: Sequence[Question], passages: Sequence[Passage],
                     max_passages: int = MAX_PASSAGES,
                     index: AnswerIndex | None = None) -> UnanswerableSet:
    """The questions of ``questions`` that a reduced ``passages`` cannot answer.

    Raises:
        ValueError: No question is kept, or ``max_passages`` is not positive.
    """
    if max_passages < 1:
        raise ValueError(f"max_passages must be positive, got {max_passages}")
    index = index or AnswerIndex(passages)
    excluded = dict.fromkeys(EXCLUSION_RULES, 0)
    kept, removed = [], set()
    for question in questions:
        holding = index.holding(question.answers)
        if answer_words(question.answers) & set(match_tokens(question.question)):
            excluded["answer_word_in_question"] += 1
        elif not holding:
            excluded["answer_in_no_passage"] += 1
        elif len(holding) > max_passages:
            excluded["answer_in_too_many"] += 1
        else:
            kept.append(question)
            removed |= holding
    if not kept:
        raise ValueError(f"none of {len(questions)} questions has answers in 1 to "
                         f"{max_passages} passages and no answer word in the question "
                         f"(excluded: {excluded})")
    ids = frozenset(index.passages[n].id for n in removed)
    corpus = [p for p in index.passages if p.id not in ids]
    return UnanswerableSet(kept, corpus, ids, excluded)
