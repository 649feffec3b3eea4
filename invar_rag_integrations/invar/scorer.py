"""The Invar scorer (stage 2): the LM reads a candidate node, then the question.

``r(q, d)`` is the length-normalised log-likelihood of the question's tokens after the passage
prompt, computed by the base LM plus the ``retriever`` LoRA adapter when one is loaded (no
adapter, or a LoRA at zero, is zero-shot query likelihood: UPR, Sachan et al. 2022), plus a
trained head on the question's hidden states when there is one.

:meth:`InvarScorer.read` is the one reading of nodes, from ``(queries, nodes)`` to node scores:
a node's windows (``windows.py``), their sequences (``tokens.py``), micro-batches sorted by
length, the forward pass (``forward.py``: torch, the passage cache; or a vLLM engine) and the
regrouping of window scores by node. Training runs it with gradients; serving runs it under
inference mode (:meth:`InvarScorer.serve`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data import Passage
from ..models.adapters import model_lock
from .forward import TorchForward
from .passage_cache import PassageCache
from .precision import ServingCopy, resolve_precision
from .projector import Projector, zero_head
from .settings import ScorerSettings
from .tokens import ScorerTokens
from .windows import by_node

Nodes = Sequence[Sequence[Passage | str]]


@dataclass
class Reading:
    """What the LM read for a batch of queries.

    Attributes:
        scores: Per query, ``r`` of each node ``[C]`` (:data:`UNSCORED` for a node without
            text); with gradients when read in training.
        features: Per query, the head's input features ``[C, H]`` of each node (only when
            asked for), weighted over its windows as its score weighs them.
        tokens: Per query, the tokens the LM read (each window's whole sequence: prompt,
            window, question): what a service reports as usage.
    """

    scores: list[Tensor]
    features: list[Tensor] | None
    tokens: list[int]


class InvarScorer:
    """Score candidate nodes for queries with the LM (stage 2 of the Invar retriever).

    Args:
        lm: The base causal LM, plain or peft-wrapped (it may hold the generator adapter too).
        tokenizer: Its tokenizer.
        settings: Scorer settings.
        adapter: The peft adapter to score with (``retriever``), or ``None`` for the base model
            (zero-shot).
        projector: Maps coarse vectors to soft tokens (needed when ``num_soft_tokens > 0``).
        head: The linear head (``settings.head``; a zero-initialised one is made when
            ``None``).
        batch_size: Query-window pairs per forward pass.
        precision: ``auto`` (bfloat16 where the hardware multiplies bf16 natively, else
            float32), ``float32`` or ``bfloat16``.
    """

    def __init__(self, lm: nn.Module, tokenizer: Any, settings: ScorerSettings,
                 adapter: str | None = None, projector: Projector | None = None,
                 head: nn.Linear | None = None, batch_size: int = 16,
                 precision: str = "auto"):
        if settings.num_soft_tokens and projector is None:
            raise ValueError(f"num_soft_tokens = {settings.num_soft_tokens} needs a projector")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.lm, self.settings = lm, settings
        self.head = head if head is not None or not settings.head else zero_head(
            lm.get_input_embeddings().embedding_dim)
        self.tokens = ScorerTokens(tokenizer, settings)
        self.batch_size = batch_size
        self.dtype = resolve_precision(precision, self.device)
        self.forward = TorchForward(self.tokens, adapter, self.dtype, projector)
        self._serving = ServingCopy()
        self.engine: Any = None
        self.window_counts = {"nodes": 0, "windows_read": 0, "nodes_read_in_part": 0}
        self._warned_cut = False
        self.passage_cache: PassageCache | None = None

    def use_passage_cache(self, max_mb: float | None) -> None:
        """Keep the key/value states of windows read (``passage_cache.py``), at most ``max_mb``
        megabytes, so a window read again costs only its question's tokens; ``None`` turns the
        cache off. Scores without gradients use it; training passes never do.

        Only a float32 scorer caches: there a question read after cached states scores as in
        one pass (within 1e-5 nats), while in bfloat16 the two roundings moved ``r`` by up to
        0.06 nats and changed rankings (``benchmarks/passage_cache.py``).

        Raises:
            ValueError: The scorer runs in bfloat16, has soft tokens (its prefix depends on
                the coarse vectors) or reads through a vLLM engine (whose prefix cache keeps
                passage states itself), or ``max_mb`` is not positive.
        """
        if max_mb is not None and self.engine is not None:
            raise ValueError("this scorer reads through a vLLM engine, which keeps passage "
                             "states in its own prefix cache; the passage cache is for the HF "
                             "model")
        if max_mb is not None and self.dtype != torch.float32:
            raise ValueError(f"the passage cache needs a float32 scorer (this one runs in "
                             f"{self.dtype}, where cached states do not rank exactly as one "
                             "pass); build it with precision='float32'")
        if max_mb is not None and self.settings.num_soft_tokens:
            raise ValueError("a scorer with soft tokens cannot cache passage states")
        self.passage_cache = None if max_mb is None else PassageCache(max_mb)

    def use_engine(self, engine: Any) -> None:
        """Score through a vLLM engine (a ``VLLMGenerator`` serving this scorer's adapter)
        instead of the HF model: the question's token log-probabilities come back as prompt
        log-probabilities, so re-ranking and answering share one engine. ``None`` returns to
        the HF model. Training always runs on the HF model.

        Raises:
            ValueError: Soft tokens or a head (vLLM returns neither prompt embeddings mixed with
                token prompts nor hidden states), a passage cache in use (the engine keeps its
                own), or the engine does not serve the adapter.
        """
        if engine is not None:
            if self.passage_cache is not None:
                raise ValueError("turn the passage cache off (use_passage_cache(None)) before "
                                 "scoring through a vLLM engine, which keeps its own")
            if self.settings.num_soft_tokens or self.head is not None:
                raise ValueError("a scorer with soft tokens or a head reads what vLLM does not "
                                 "return (embeddings in, hidden states out); score it with HF")
            engine.lora_request(self.adapter)  # the engine must serve the adapter
        self.engine = engine

    @property
    def adapter(self) -> str | None:
        """The peft adapter scores are read with (``None``: the base model)."""
        return self.forward.adapter

    @adapter.setter
    def adapter(self, name: str | None) -> None:
        self.forward.adapter = name

    @property
    def projector(self) -> Projector | None:
        return self.forward.projector

    @projector.setter
    def projector(self, projector: Projector | None) -> None:
        self.forward.projector = projector

    @property
    def tokenizer(self) -> Any:
        return self.tokens.tokenizer

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def serving_model(self) -> nn.Module:
        """The model that scores without gradients (``precision.ServingCopy``)."""
        return self._serving.of(self.lm, self.dtype)

    # --- one batch of tokenised pairs ---------------------------------------------------------

    def pair_scores(self, questions: Sequence[list[int]], passages: Sequence[list[int]],
                    query_coarse: Tensor | None = None, passage_coarse: Tensor | None = None,
                    model: nn.Module | None = None) -> Tensor:
        """``r(q, d)`` for one batch of tokenised pairs: the question's log-likelihood, plus
        the head on the question's hidden states when there is one. Coarse vectors ``[B, d_c]``
        are needed with soft tokens. Runs under the adapter and precision this scorer was
        built with, on ``model`` (default ``lm``)."""
        likelihood, features = self.pair_outputs(questions, passages, query_coarse,
                                                 passage_coarse, self.head is not None, model)
        if self.head is None:
            return likelihood
        return likelihood + self.head(features.to(self.head.weight.dtype))[:, 0]

    def pair_outputs(self, questions: Sequence[list[int]], passages: Sequence[list[int]],
                     query_coarse: Tensor | None = None, passage_coarse: Tensor | None = None,
                     features: bool = False,
                     model: nn.Module | None = None) -> tuple[Tensor, Tensor | None]:
        """``(question log-likelihood [B], features [B, H] or None)``; the features are the
        mean final hidden state over the question's tokens (what the head reads). Without
        gradients, through the passage cache when there is one."""
        model = self.lm if model is None else model
        cache = self.passage_cache if not torch.is_grad_enabled() else None
        total, vectors = self.forward.outputs(model, questions, passages, query_coarse,
                                              passage_coarse, features, cache, self.lm)
        count = torch.tensor([len(q) for q in questions], device=total.device)
        return self._normalized(total, count), vectors

    def _normalized(self, total: Any, count: Any) -> Any:
        """A question's summed log-likelihood as ``r``: per token (``mean``) or summed."""
        return total / count if self.settings.normalization == "mean" else total

    # --- the reading of nodes -----------------------------------------------------------------

    def read(self, queries: Sequence[str], nodes: Nodes, query_coarse: Any = None,
             passage_coarse: Sequence[Any] | None = None, features: bool = False,
             batch_size: int | None = None) -> Reading:
        """``r`` of every query's nodes: the one reading, for serving and training.

        Each node is read in the windows ``ScorerSettings`` say (a node without text scores
        :data:`UNSCORED`), the windows of all queries sorted by length and read in batches of
        ``batch_size`` (default the scorer's), and a node's window scores aggregated into its
        ``r``. With gradients on (training) it runs on ``lm`` as it is, never through the cache
        or an engine; without (serving), on :meth:`serving_model` in eval mode.

        Args:
            queries: The query texts.
            nodes: Each query's nodes (``Passage`` or text).
            query_coarse: ``[Q, d_c]`` coarse vectors of the queries (soft tokens only).
            passage_coarse: Per query, ``[C, d_c]`` coarse vectors of its nodes (soft tokens
                only).
            features: Also return the head's input features (the head is not applied to the
                scores then): what a head is trained on while the LM stays frozen.
            batch_size: Pairs per forward pass.
        """
        if len(queries) != len(nodes):
            raise ValueError(f"{len(nodes)} candidate lists for {len(queries)} queries")
        with model_lock(self.lm):  # the tokenizer, its cache and eval mode: threads take turns
            question_ids, owners, windows, tokens = self._fan_out(queries, nodes)
            values, vectors = self._window_outputs(question_ids, owners, windows, query_coarse,
                                                   passage_coarse, features,
                                                   batch_size or self.batch_size)
        scores, found = by_node(values, vectors, owners, [len(c) for c in nodes],
                                self.settings.window_aggregation,
                                self.settings.window_temperature, self.head)
        return Reading(scores, found if features else None, tokens)

    def _fan_out(self, queries: Sequence[str], nodes: Nodes, count: bool = True,
                 ) -> tuple[list[list[int]], list[tuple[int, int]], list[list[int]], list[int]]:
        """The questions' token ids, the windows read of every query's nodes with their
        ``(query, node)`` owners, and the tokens read per query (with ``count``, added to
        :attr:`window_counts`)."""
        question_ids = [self.tokens.question(q) for q in queries]
        owners: list[tuple[int, int]] = []
        windows: list[list[int]] = []
        tokens = [0] * len(queries)
        for qi, (query, cands) in enumerate(zip(queries, nodes)):
            read, cut = self.tokens.windows(query, cands)
            if count:
                self._count(read, cut)
            for ci, node_windows in enumerate(read):
                owners += [(qi, ci)] * len(node_windows)
                windows += node_windows
                tokens[qi] += sum(len(self.tokens.row(question_ids[qi], w))
                                  for w in node_windows)
        return question_ids, owners, windows, tokens

    def tokens_read(self, query: str, nodes: Sequence[Passage | str]) -> int:
        """Tokens the LM reads to score ``nodes`` for ``query`` (each window's whole sequence:
        prompt, window, question), without reading them: :attr:`Reading.tokens` of a read."""
        with model_lock(self.lm):
            return self._fan_out([query], [nodes], count=False)[3][0]

    @torch.inference_mode()
    def serve(self, queries: Sequence[str], nodes: Nodes, query_coarse: Any = None,
              passage_coarse: Sequence[Any] | None = None, features: bool = False) -> Reading:
        """:meth:`read` without gradients (the scores are CPU tensors)."""
        return self.read(queries, nodes, query_coarse, passage_coarse, features)

    def score_batch(self, queries: Sequence[str], candidates: Nodes,
                    query_coarse: np.ndarray | None = None,
                    passage_coarse: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """``r(q, d)`` for every query's candidates (float32 arrays, one per query)."""
        reading = self.serve(queries, candidates, query_coarse, passage_coarse)
        return [s.numpy() for s in reading.scores]

    def score(self, query: str, passages: Sequence[Passage | str]) -> np.ndarray:
        """``r(query, d)`` for each passage (an empty list gives an empty array)."""
        return self.score_batch([query], [passages])[0]

    def likelihoods_and_features(
            self, queries: Sequence[str], candidates: Nodes,
            query_coarse: np.ndarray | None = None,
            passage_coarse: Sequence[np.ndarray] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query, the question log-likelihood ``[C]`` and the head's input features
        ``[C, H]`` of each candidate (:meth:`read` with ``features``)."""
        reading = self.serve(queries, candidates, query_coarse, passage_coarse, True)
        return [s.numpy() for s in reading.scores], [f.numpy() for f in reading.features]

    def prior(self, queries: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Each question's ``r`` after the prompt with no passage (what the calibrated
        relevance subtracts: how predictable the question is by itself) and the tokens read."""
        with model_lock(self.lm):
            empty = [self.tokens.row(self.tokens.question(q), []) for q in queries]
        return self.window_scores(queries, [[] for _ in queries]), [len(r) for r in empty]

    def node_lengths(self, nodes: Sequence[Passage | str]) -> np.ndarray:
        """Each node's length in the LM's tokens (title included)."""
        with model_lock(self.lm):
            found = [self.tokens.node(n) for n in nodes]
        return np.array([len(n.prefix) + len(n.body) for n in found], np.int64)

    @torch.inference_mode()
    def window_scores(self, questions: Sequence[str],
                      windows: Sequence[list[int]]) -> np.ndarray:
        """``r`` of each ``(question, window)`` pair, a window given as its token ids (e.g. from
        ``tokens.node(...).windows(...)``): to study readings of long nodes from one pass."""
        with model_lock(self.lm):
            ids = [self.tokens.question(q) for q in questions]
            values, _ = self._window_outputs(ids, [(i, 0) for i in range(len(ids))],
                                             list(windows), None, None, False, self.batch_size)
        return values.numpy()

    def _count(self, read: list[list[list[int]]], cut: int) -> None:
        """Add one query's reading to :attr:`window_counts`; warn once when nodes were cut to
        their first windows (``preselect = "none"``)."""
        counts = self.window_counts
        counts["nodes"] += len(read)
        counts["windows_read"] += sum(len(w) for w in read)
        counts["nodes_read_in_part"] += cut
        if cut and self.settings.preselect == "none" and not self._warned_cut:
            self._warned_cut = True
            warnings.warn(f"a node longer than max_windows = {self.settings.max_windows} "
                          "windows was read in its first windows only (counted in "
                          "InvarScorer.window_counts; warned once); preselect = 'bm25' reads "
                          "its best windows instead", stacklevel=4)

    def _window_outputs(self, question_ids: list[list[int]], owners: list[tuple[int, int]],
                        windows: list[list[int]], query_coarse: Any,
                        passage_coarse: Sequence[Any] | None, features: bool,
                        batch_size: int) -> tuple[Tensor, Tensor | None]:
        """``(r [N], features [N, H] or None)`` of each window read with its query's question;
        windows of all queries are sorted by length and read in batches (an engine reads
        them all at once)."""
        width = self.lm.get_input_embeddings().embedding_dim
        if not windows:
            return torch.zeros(0), torch.zeros(0, width) if features else None
        training = torch.is_grad_enabled()
        if self.engine is not None and not features and not training:
            questions = [question_ids[qi] for qi, _ in owners]
            rows = [self.tokens.row(q, w) for q, w in zip(questions, windows)]
            found = self.engine.token_logprobs(rows, adapter=self.adapter)
            return torch.tensor([self._normalized(float(logprobs[-len(q):].sum()), len(q))
                                 for q, logprobs in zip(questions, found)]), None
        order = sorted(range(len(windows)),
                       key=lambda i: -(len(windows[i]) + len(question_ids[owners[i][0]])))
        was_training = self.lm.training
        if not training:
            self.lm.eval()
        model = self.lm if training else self.serving_model()
        parts: list[Tensor] = []
        feature_parts: list[Tensor] = []
        try:
            for chunk in _chunks(order, batch_size):
                coarse = self._chunk_coarse([owners[i] for i in chunk], query_coarse,
                                            passage_coarse)
                questions = [question_ids[owners[i][0]] for i in chunk]
                passages = [windows[i] for i in chunk]
                if features:
                    found, found_vectors = self.pair_outputs(questions, passages, *coarse, True,
                                                             model)
                    feature_parts.append(found_vectors.float())
                else:
                    found = self.pair_scores(questions, passages, *coarse, model)
                parts.append(found.float())
        finally:
            self.lm.train(was_training)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        values = torch.cat(parts)[inverse.to(parts[0].device)]
        vectors = torch.cat(feature_parts)[inverse.to(parts[0].device)] if features else None
        if training:
            return values, vectors
        return values.cpu(), vectors.cpu() if vectors is not None else None

    def _chunk_coarse(self, owners: list[tuple[int, int]], query_coarse: Any,
                      passage_coarse: Sequence[Any] | None) -> tuple[Tensor | None, ...]:
        """The coarse vectors of a chunk's queries and nodes (soft tokens only)."""
        if not self.settings.num_soft_tokens:
            return None, None
        if query_coarse is None or passage_coarse is None:
            raise ValueError("soft tokens need query_coarse and passage_coarse")
        return (torch.stack([torch.as_tensor(query_coarse[qi]) for qi, _ in owners]),
                torch.stack([torch.as_tensor(passage_coarse[qi][ci]) for qi, ci in owners]))


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
