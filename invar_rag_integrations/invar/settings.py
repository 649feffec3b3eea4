"""Everything that changes a score, stored in the system manifest and covered by its hash:
the scorer's settings (how the LM reads a node and a question) and the retriever's (stage 1,
the fused score, the early stop)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..models.chat_template import check_chat_template
from ..retrieval.stage1 import STAGE1
from .early_stop import READ_FIRST, STOP_MARGIN, check_policy

RETRIEVER_ADAPTER = "retriever"
SCORE_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
NORMALIZATIONS = ("mean", "sum")
PRECISIONS = ("auto", "float32", "bfloat16")
AGGREGATIONS = ("first", "max", "mean", "softmax")
PRESELECTIONS = ("none", "bm25")
MIN_WINDOW = 16


def check_window_settings(window: int, stride: int, max_windows: int, aggregation: str,
                          temperature: float, preselect: str) -> None:
    """Fail on window settings that cannot work, naming the values.

    Raises:
        ValueError: ``window < 16``, ``stride`` outside ``[1, window]``, ``max_windows < 1``,
            an unknown aggregation or pre-selection, or a temperature that is not positive.
    """
    if window < MIN_WINDOW:
        raise ValueError(f"the scorer's window (max_passage_tokens) must be at least "
                         f"{MIN_WINDOW} tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"window_stride must be between 1 and the window (max_passage_tokens "
                         f"= {window}), got {stride}: a larger stride skips tokens")
    if max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, got {max_windows}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"window_aggregation must be one of {AGGREGATIONS}, got "
                         f"{aggregation!r}")
    if preselect not in PRESELECTIONS:
        raise ValueError(f"preselect must be one of {PRESELECTIONS}, got {preselect!r}")
    if not temperature > 0:
        raise ValueError(f"window_temperature must be positive, got {temperature}")


@dataclass
class ScorerSettings:
    """Everything that changes ``r(q, d)``; stored in the manifest and covered by its hash.

    The window defaults (one 128-token window per node, the best by BM25) were chosen on the
    tuning slice by ``python -m benchmarks.tune_windows``
    (``benchmarks/results/window_tuning.json``): on 512- and 1024-token nodes they read as
    many tokens as the first window alone and ranked better than every other reading tried,
    all windows with MaxP included.

    Attributes:
        prompt: The text around the passage; ``{passage}`` marks where it goes and the
            question's tokens follow the prompt.
        chat_template: The prompt in the base model's chat form: ``None`` (the plain prompt),
            ``"model"`` (the tokenizer's own chat template; training stores it rendered) or a
            form as text with ``{message}`` (the prompt) and ``{answer}`` (the question)
            (``models/chat_template.py``).
        max_passage_tokens: The window: passage tokens the LM reads at once (the title
            included); a longer passage is read as several windows (``windows.py``).
        window_stride: Tokens between the starts of consecutive windows (``<=`` the window;
            ``None``: three quarters of it).
        window_aggregation: How a node's ``r`` comes from its windows' scores: ``first``,
            ``max`` (MaxP), ``mean`` or ``softmax`` (a smooth maximum).
        window_temperature: Temperature of the ``softmax`` aggregation.
        max_windows: Windows the LM reads per node at most; a node with more is read in part
            (counted in ``InvarScorer.window_counts``).
        preselect: Which windows of such a node are read: ``bm25`` (the best by BM25 against
            the question) or ``none`` (its first ones).
        max_query_tokens: Question tokens scored (a longer question keeps its last tokens,
            counted and warned about once).
        normalization: ``mean`` (log-likelihood per question token) or ``sum``.
        num_soft_tokens: ``m`` soft tokens ``P(c(d))`` before the passage and ``P(c(q))``
            before the question (0 = none; they need a trained projector).
        projector_hidden: Hidden width of the projector MLP (when ``num_soft_tokens > 0``).
        head: Add a trained linear head on the mean final hidden state over the question's
            tokens to ``r`` (zero-initialised, so an untrained head changes nothing).
    """

    prompt: str = SCORE_PROMPT
    chat_template: str | None = None
    max_passage_tokens: int = 128
    window_stride: int | None = None
    window_aggregation: str = "max"
    window_temperature: float = 0.3
    max_windows: int = 1
    preselect: str = "bm25"
    max_query_tokens: int = 64
    normalization: str = "mean"
    num_soft_tokens: int = 0
    projector_hidden: int = 256
    head: bool = False

    def __post_init__(self) -> None:
        if self.prompt.count("{passage}") != 1:
            raise ValueError(f"prompt must contain '{{passage}}' exactly once, got "
                             f"{self.prompt!r}")
        check_chat_template(self.chat_template)
        if min(self.max_passage_tokens, self.max_query_tokens, self.projector_hidden) < 1 \
                or self.num_soft_tokens < 0:
            raise ValueError("need max_passage_tokens, max_query_tokens, projector_hidden >= 1 "
                             f"and num_soft_tokens >= 0; got {self.max_passage_tokens}, "
                             f"{self.max_query_tokens}, {self.projector_hidden}, "
                             f"{self.num_soft_tokens}")
        check_window_settings(self.max_passage_tokens, self.stride, self.max_windows,
                              self.window_aggregation, self.window_temperature, self.preselect)
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got "
                             f"{self.normalization!r}")

    @property
    def stride(self) -> int:
        """Tokens between window starts (``window_stride``, or three quarters of the window)."""
        if self.window_stride is not None:
            return self.window_stride
        return max(1, self.max_passage_tokens * 3 // 4)


@dataclass
class InvarSettings(ScorerSettings):
    """Scorer settings plus stage 1 and the fused score (stored in the manifest). The defaults
    are the zero-shot retriever's, chosen on the tuning slice of the training questions by
    ``python -m benchmarks.tune_zero_shot`` (``benchmarks/results/zero_shot_tuning.json``).

    Attributes:
        stage1: ``minilm`` or ``rrf`` (reciprocal-rank fusion of BM25 and MiniLM).
        candidates: Stage-1 candidates per query that the scorer reads (the largest ``k``).
        cos_weight: ``w`` in ``s = w * cos / tau + r + bm25_weight * bm25``.
        tau: Temperature of the coarse cosine.
        bm25_weight: Weight of the BM25 term (the candidate's BM25 score over the query's best
            in the corpus); needs BM25 in stage 1 (``rrf``). Over candidates from elsewhere
            (the reranker) there is no corpus to score against and the term is left out.
        coarse_windows: MiniLM reads a node longer than its limit (256 word pieces) as
            windows, and a node's cosine is its best window's, in stage 1 and in the fused
            score; without, MiniLM reads a node's beginning only.
        read_first: The scorer reads a query's first ``read_first`` candidates, and the rest
            only while their leader's fused score beats the runner-up's by less than
            ``stop_margin`` (``early_stop.py``); default ``min(2, candidates)``;
            ``read_first = candidates`` or ``stop_margin = inf`` reads every candidate.
        stop_margin: See ``read_first``.
    """

    stage1: str = "rrf"
    coarse_windows: bool = True
    candidates: int = 5
    cos_weight: float = 0.1
    tau: float = 0.05
    bm25_weight: float = 2.0
    read_first: int | None = None
    stop_margin: float = STOP_MARGIN

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage1 not in STAGE1:
            raise ValueError(f"stage1 must be one of {STAGE1}, got {self.stage1!r}")
        if self.candidates < 1 or self.tau <= 0:
            raise ValueError(f"need candidates >= 1 and tau > 0; got {self.candidates}, "
                             f"{self.tau}")
        if self.bm25_weight and self.stage1 != "rrf":
            raise ValueError(f"bm25_weight = {self.bm25_weight} needs BM25 in stage 1 "
                             f"(stage1 = 'rrf'), not {self.stage1!r}")
        if self.read_first is None:
            self.read_first = min(READ_FIRST, self.candidates)
        check_policy(self.read_first, self.stop_margin, self.candidates)

    def scorer_settings(self) -> ScorerSettings:
        """The stage-2 part of these settings."""
        names = {f.name for f in fields(ScorerSettings)}
        return ScorerSettings(**{k: v for k, v in asdict(self).items() if k in names})
