"""The Invar scorer (stage 2): the LM reads a candidate passage, then the question.

``r(q, d)`` is the length-normalised log-likelihood of the question's tokens after the passage
prompt, computed by the base LM plus the ``retriever`` LoRA adapter when one is loaded (no
adapter, or a LoRA at zero, is zero-shot query likelihood: UPR, Sachan et al. 2022).
:class:`ScorerTokens` is the one place where the scorer's token sequences are built (prompt
template, the windows a long node is read in (``windows.py``), BOS, optional soft tokens
``P(c(d))`` / ``P(c(q))``); serving and training both use it through
:meth:`InvarScorer.pair_scores`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data import Passage
from ..models.adapters import model_lock, use_adapter
from .passage_cache import (
    PassageCache,
    PrefixState,
    model_identity,
    question_outputs,
    take_prefix_states,
    weights_version,
)
from .windows import (
    EMPTY_SCORE,
    NodeTokens,
    aggregate,
    aggregation_weights,
    check_window_settings,
    windows_to_read,
)

RETRIEVER_ADAPTER = "retriever"
SCORE_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
NORMALIZATIONS = ("mean", "sum")
PRECISIONS = ("auto", "float32", "bfloat16")


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


def passage_text(passage: Passage | str) -> str:
    """A passage as the scorer reads it: ``Title. text`` (a string is taken as it is)."""
    if isinstance(passage, str):
        return passage
    return f"{passage.title}. {passage.text}" if passage.title else passage.text


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16); without it, bf16
    matrix products are far slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16), else float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
        return torch.bfloat16 if fast else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


class Projector(nn.Module):
    """``P``: coarse vectors ``[B, d_c]`` -> ``m`` soft tokens ``[B, m, H]``.

    A two-layer MLP; each soft token is rescaled to the mean norm of the LM's token embeddings
    so it starts in the range the LM was trained on.
    """

    def __init__(self, coarse_dim: int, hidden: int, num_tokens: int, model_dim: int,
                 token_norm: float):
        super().__init__()
        self.num_tokens, self.model_dim = num_tokens, model_dim
        self.net = nn.Sequential(nn.Linear(coarse_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_tokens * model_dim))
        self.register_buffer("token_norm", torch.tensor(float(token_norm)))

    def forward(self, coarse: Tensor) -> Tensor:
        out = self.net(coarse).view(coarse.shape[0], self.num_tokens, self.model_dim)
        return nn.functional.normalize(out, dim=-1) * self.token_norm

    @classmethod
    def for_model(cls, lm: nn.Module, coarse_dim: int, settings: ScorerSettings) -> Projector:
        """A fresh projector sized for ``lm``'s embeddings."""
        embeddings = lm.get_input_embeddings()
        return cls(coarse_dim, settings.projector_hidden, settings.num_soft_tokens,
                   embeddings.embedding_dim,
                   embeddings.weight.detach().float().norm(dim=-1).mean().item())

    @classmethod
    def from_file(cls, path: str | Path) -> Projector:
        """Load a projector saved with safetensors (shapes come from the weights)."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        first, last = state["net.0.weight"], state["net.2.weight"]
        model_dim = int(state["model_dim"]) if "model_dim" in state else None
        if model_dim is None:
            raise ValueError(f"{path}: not a projector file (no model_dim)")
        projector = cls(first.shape[1], first.shape[0], last.shape[0] // model_dim, model_dim,
                        float(state["token_norm"]))
        projector.load_state_dict({k: v for k, v in state.items() if k != "model_dim"})
        return projector

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        state["model_dim"] = torch.tensor(self.model_dim)
        save_file(state, str(path))


def zero_head(width: int) -> nn.Linear:
    """A linear head ``[H] -> 1`` starting at zero (the scorer starts as it was)."""
    head = nn.Linear(width, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


@dataclass(frozen=True)
class ScorerBatch:
    """Left-padded scorer sequences, so every question ends at the last position.

    Attributes:
        input_ids, attention_mask, position_ids: ``[B, W]``.
        targets, target_mask: ``[B, L]`` question tokens, right-aligned (``L`` = the longest
            question); position ``t`` is predicted by the logits at ``W - L - 1 + t``.
        soft_starts: ``[B, 2]`` first position of the passage's and the question's soft tokens
            (``None`` without soft tokens).
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    targets: Tensor
    target_mask: Tensor
    soft_starts: Tensor | None = None


class ScorerTokens:
    """Builds scorer sequences: ``[BOS] prompt-head [P(c(d))] window prompt-tail [P(c(q))]
    question``, where a window is a node's title and a slice of its text (``windows.py``);
    tokenised nodes are cached by their title and text, so a changed text is tokenised again.

    Args:
        tokenizer: The base LM's tokenizer.
        settings: The scorer settings.
        cache_size: Node tokenisations kept (least recently used ones are dropped).
    """

    def __init__(self, tokenizer: Any, settings: ScorerSettings, cache_size: int = 50_000):
        self.tokenizer, self.settings, self.cache_size = tokenizer, settings, cache_size
        head, tail = settings.prompt.split("{passage}")
        self.head = self._ids(head)
        self.tail = self._ids(tail)
        bos = tokenizer.bos_token_id
        probe = tokenizer("x")["input_ids"]
        self.bos = [bos] if bos is not None and probe and probe[0] == bos else []  # e.g. Gemma
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        self._nodes: OrderedDict[tuple[str, str], NodeTokens] = OrderedDict()
        self.truncated = {"query": 0}
        self._warned: set[str] = set()

    def _cut(self, kind: str, ids: list[int], cap: int, keep: str) -> list[int]:
        """``ids`` cut to ``cap`` tokens (keeping the ``keep`` end), counted, warned once."""
        if len(ids) <= cap:
            return ids
        self.truncated[kind] += 1
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"a {kind} text longer than {cap} tokens was truncated to its {keep} "
                          f"{cap} (counted in ScorerTokens.truncated; warned once)", stacklevel=5)
        return ids[:cap] if keep == "first" else ids[-cap:]

    def _ids(self, text: str) -> list[int]:
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def node(self, passage: Passage | str) -> NodeTokens:
        """A node's tokens (cached): the prefix ``Title.`` (none for a plain string) and the
        body, tokenised so that prefix + body is the tokenisation of :func:`passage_text`. A
        node without text has an empty body."""
        title, text = ("", passage) if isinstance(passage, str) else (passage.title,
                                                                     passage.text)
        key = (title, text)
        found = self._nodes.get(key)
        if found is not None:
            self._nodes.move_to_end(key)
            return found
        if not text.strip():
            found = NodeTokens([], [])
        elif title:
            found = NodeTokens(self._ids(f"{title}."), self._ids(f" {text}"))
        else:
            found = NodeTokens([], self._ids(text))
        self._nodes[key] = found
        if len(self._nodes) > self.cache_size:
            self._nodes.popitem(last=False)
        return found

    def windows(self, query: str, nodes: Sequence[Passage | str]) -> tuple[list[list[list[int]]],
                                                                           int]:
        """The token ids of the windows the LM reads of each node for ``query`` (none for a
        node without text), and how many nodes were read in part (more than ``max_windows``
        windows)."""
        settings = self.settings
        return windows_to_read(query, [self.node(n) for n in nodes], settings.max_passage_tokens,
                               settings.stride, settings.max_windows, settings.preselect,
                               self.tokenizer.decode)

    def question(self, text: str) -> list[int]:
        """Token ids of a question as it continues the prompt (a leading space), cut to the
        cap."""
        ids = self._ids(" " + text.strip())
        if not ids:
            raise ValueError(f"the question {text!r} has no tokens")
        return self._cut("query", ids, self.settings.max_query_tokens, "last")

    def row(self, question: list[int], passage: list[int]) -> list[int]:
        """One scorer sequence (soft-token positions hold the pad id); the question's tokens
        end it."""
        soft = [self.pad_id] * self.settings.num_soft_tokens
        return self.bos + self.head + soft + passage + self.tail + soft + question

    def batch(self, pairs: Sequence[tuple[list[int], list[int]]]) -> ScorerBatch:
        """Left-padded sequences for ``(question ids, passage ids)`` pairs."""
        m = self.settings.num_soft_tokens
        rows, starts = [], []
        for question, passage in pairs:
            doc_start = len(self.bos) + len(self.head)
            query_start = doc_start + m + len(passage) + len(self.tail)
            rows.append(self.row(question, passage))
            starts.append((doc_start, query_start))
        width = max(len(r) for r in rows)
        longest = max(len(q) for q, _ in pairs)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        targets = torch.zeros((len(rows), longest), dtype=torch.long)
        target_mask = torch.zeros((len(rows), longest), dtype=torch.bool)
        offsets = []
        for i, (row, (question, _)) in enumerate(zip(rows, pairs)):
            offset = width - len(row)
            offsets.append(offset)
            ids[i, offset:] = torch.tensor(row)
            attention[i, offset:] = 1
            targets[i, longest - len(question):] = torch.tensor(question)
            target_mask[i, longest - len(question):] = True
        positions = (attention.cumsum(-1) - 1).clamp_min(0)
        soft = None
        if m:
            soft = torch.tensor([[o + d, o + q] for o, (d, q) in zip(offsets, starts)])
        return ScorerBatch(ids, attention, positions, targets, target_mask, soft)


class InvarScorer:
    """Score candidate passages for queries with the LM (stage 2 of the Invar retriever).

    Args:
        lm: The base causal LM, plain or peft-wrapped (it may hold the generator adapter too).
        tokenizer: Its tokenizer.
        settings: Scorer settings.
        adapter: The peft adapter to score with (``retriever``), or ``None`` for the base model
            (zero-shot).
        projector: Maps coarse vectors to soft tokens (needed when ``num_soft_tokens > 0``).
        head: The linear head (``settings.head``; a zero-initialised one is made when
            ``None``).
        batch_size: Query-passage pairs per forward pass.
        precision: ``auto`` (bfloat16 autocast where the hardware multiplies bf16 natively,
            else float32), ``float32`` or ``bfloat16``.
    """

    def __init__(self, lm: nn.Module, tokenizer: Any, settings: ScorerSettings,
                 adapter: str | None = None, projector: Projector | None = None,
                 head: nn.Linear | None = None, batch_size: int = 16,
                 precision: str = "auto"):
        if settings.num_soft_tokens and projector is None:
            raise ValueError(f"num_soft_tokens = {settings.num_soft_tokens} needs a projector")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.lm, self.settings, self.adapter, self.projector = lm, settings, adapter, projector
        self.head = head if head is not None or not settings.head else zero_head(
            lm.get_input_embeddings().embedding_dim)
        self.tokens = ScorerTokens(tokenizer, settings)
        self.batch_size = batch_size
        self.dtype = resolve_precision(precision, self.device)
        self._bf16: tuple[nn.Module, int, nn.Module] | None = None  # (source, version, copy)
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
    def tokenizer(self) -> Any:
        return self.tokens.tokenizer

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def _autocast(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        weights = model.get_input_embeddings().weight.dtype
        if self.dtype == torch.bfloat16 and weights != torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def serving_model(self) -> nn.Module:
        """The model that scores without gradients. With bfloat16 precision and float32
        weights, a bfloat16 copy of ``lm`` (on AMX, matrix products on bf16 weights ran ~1.3x
        faster than under autocast, which re-casts every weight on every pass); it is made
        again when ``lm`` is replaced or its weights change in place (an optimizer step, a
        loaded state). Otherwise ``lm`` itself."""
        weights = self.lm.get_input_embeddings().weight.dtype
        if self.dtype != torch.bfloat16 or weights == torch.bfloat16:
            return self.lm
        version = weights_version(self.lm)
        if self._bf16 is None or self._bf16[0] is not self.lm or self._bf16[1] != version:
            self._bf16 = None  # free the stale copy first
            lock = self.lm.__dict__.get("_invar_adapter_lock")  # each model gets its own lock
            copy = deepcopy(self.lm, {id(lock): None} if lock is not None else {})
            self._bf16 = (self.lm, version, copy.to(torch.bfloat16).eval())
        return self._bf16[2]

    def pair_scores(self, questions: Sequence[list[int]], passages: Sequence[list[int]],
                    query_coarse: Tensor | None = None, passage_coarse: Tensor | None = None,
                    model: nn.Module | None = None) -> Tensor:
        """``r(q, d)`` for one batch of tokenised pairs, with gradients (training calls this;
        serving calls it through :meth:`score_batch`): the question's log-likelihood, plus the
        head on the question's hidden states when there is one. Coarse vectors ``[B, d_c]``
        are needed with soft tokens. Runs under the adapter and precision this scorer was
        built with, on ``model`` (default ``lm``; serving passes :meth:`serving_model`)."""
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
        mean final hidden state over the question's tokens (what the head reads)."""
        model = self.lm if model is None else model
        if self.passage_cache is not None and not torch.is_grad_enabled():
            return self._cached_outputs(questions, passages, features, model)
        return self._forward(questions, passages, query_coarse, passage_coarse, features,
                             model)[:2]

    def _forward(self, questions: Sequence[list[int]], passages: Sequence[list[int]],
                 query_coarse: Tensor | None, passage_coarse: Tensor | None, features: bool,
                 model: nn.Module, keep_states: bool = False,
                 ) -> tuple[Tensor, Tensor | None, list[PrefixState] | None]:
        """One pass over whole sequences: :meth:`pair_outputs`, and with ``keep_states`` each
        row's prefix states (everything before its question) for the passage cache."""
        batch = self.tokens.batch(list(zip(questions, passages)))
        device, width = self.device, batch.input_ids.shape[1]
        first_kept = width - batch.targets.shape[1] - 1
        kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask.to(device),
                                  "position_ids": batch.position_ids.to(device),
                                  # as indices, not a count: a sliced (strided) hidden state
                                  # makes the LM head copy its weight once per row (~10x slower)
                                  "logits_to_keep": torch.arange(first_kept, width,
                                                                 device=device),
                                  "output_hidden_states": features, "use_cache": keep_states}
        with use_adapter(model, self.adapter), self._autocast(model):
            if batch.soft_starts is None:
                kwargs["input_ids"] = batch.input_ids.to(device)
            else:
                kwargs["inputs_embeds"] = self._with_soft_tokens(model, batch, query_coarse,
                                                                 passage_coarse)
            out = model(**kwargs)
        states = None
        if keep_states:  # row i's prefix spans [width - row length, width - question length)
            spans = [(width - int(r), width - int(q)) for r, q in
                     zip(batch.attention_mask.sum(-1), batch.target_mask.sum(-1))]
            states = take_prefix_states(out.past_key_values, out.logits, spans, first_kept)
        logits = out.logits[:, :-1].float()
        targets = batch.targets.to(device)
        mask = batch.target_mask.to(device)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
        total = (logprobs * mask).sum(-1)
        likelihood = self._normalized(total, mask.sum(-1))
        if not features:
            return likelihood, None, states
        hidden = out.hidden_states[-1][:, -targets.shape[1]:].float()  # the question positions
        weights = mask[..., None].float()
        return likelihood, (hidden * weights).sum(1) / weights.sum(1), states

    def _cached_outputs(self, questions: Sequence[list[int]], passages: Sequence[list[int]],
                        features: bool, model: nn.Module) -> tuple[Tensor, Tensor | None]:
        """:meth:`pair_outputs` through the passage cache: pairs whose prefix is cached read
        only their question after its states; the others are read whole, as without a cache,
        and their prefix states kept."""
        cache = self.passage_cache
        identity = model_identity(model, self.lm, self.adapter, self.dtype)
        keys = [cache.key(identity, self.tokens.row([], p)) for p in passages]  # no soft tokens
        states = [cache.get(k) for k in keys]
        likelihood = torch.zeros(len(keys), device=self.device)
        vectors = torch.zeros(len(keys), self.lm.get_input_embeddings().embedding_dim,
                              device=self.device) if features else None
        read = [i for i, state in enumerate(states) if state is None]
        if read:
            found, found_vectors, new = self._forward(
                [questions[i] for i in read], [passages[i] for i in read], None, None,
                features, model, keep_states=True)
            likelihood[read] = found
            if features:
                vectors[read] = found_vectors
            for i, state in zip(read, new):
                cache.put(keys[i], state)
        hit = [i for i, state in enumerate(states) if state is not None]
        if hit:
            with use_adapter(model, self.adapter), self._autocast(model):
                total, found_vectors = question_outputs(model, [states[i] for i in hit],
                                                        [questions[i] for i in hit],
                                                        self.tokens.pad_id, features)
            count = torch.tensor([len(questions[i]) for i in hit], device=total.device)
            likelihood[hit] = self._normalized(total, count)
            if features:
                vectors[hit] = found_vectors
        return likelihood, vectors

    def _normalized(self, total: Any, count: Any) -> Any:
        """A question's summed log-likelihood as ``r``: per token (``mean``) or summed."""
        return total / count if self.settings.normalization == "mean" else total

    def _with_soft_tokens(self, model: nn.Module, batch: ScorerBatch,
                          query_coarse: Tensor | None, passage_coarse: Tensor | None) -> Tensor:
        if query_coarse is None or passage_coarse is None:
            raise ValueError("soft tokens need the coarse vectors of queries and passages")
        device = self.device
        embeds = model.get_input_embeddings()(batch.input_ids.to(device))
        m = self.settings.num_soft_tokens
        rows = torch.arange(embeds.shape[0], device=device)[:, None]
        steps = torch.arange(m, device=device)[None]
        for column, coarse in ((0, passage_coarse), (1, query_coarse)):
            soft = self.projector(coarse.to(device, torch.float32)).to(embeds.dtype)
            embeds = embeds.index_put((rows.expand(-1, m),
                                       batch.soft_starts[:, column:column + 1].to(device) + steps),
                                      soft)
        return embeds

    def score_batch(self, queries: Sequence[str], candidates: Sequence[Sequence[Passage | str]],
                    query_coarse: np.ndarray | None = None,
                    passage_coarse: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """``r(q, d)`` for every query's candidates (float32 arrays, one per query).

        A node longer than the window is read in windows and their scores aggregated
        (``ScorerSettings``); a node without text scores ``-inf``, below every other. The
        windows of all queries' candidates are sorted by length and scored in batches, so they
        pad little.

        Args:
            queries: The query texts.
            candidates: Each query's passages (``Passage`` or text).
            query_coarse: ``[Q, d_c]`` coarse vectors of the queries (soft tokens only).
            passage_coarse: Per query, ``[C, d_c]`` coarse vectors of its candidates (soft
                tokens only).
        """
        return self._batched(queries, candidates, query_coarse, passage_coarse, False)[0]

    def likelihoods_and_features(
            self, queries: Sequence[str], candidates: Sequence[Sequence[Passage | str]],
            query_coarse: np.ndarray | None = None,
            passage_coarse: Sequence[np.ndarray] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query, the question log-likelihood ``[C]`` and the head's input features
        ``[C, H]`` of each candidate (the head itself is not applied): what a head is trained
        on while the LM stays frozen. A node read in several windows gets its windows'
        likelihoods and features weighted as its served score weighs them with the current
        head."""
        return self._batched(queries, candidates, query_coarse, passage_coarse, True)

    @torch.inference_mode()
    def _batched(self, queries: Sequence[str], candidates: Sequence[Sequence[Passage | str]],
                 query_coarse: np.ndarray | None, passage_coarse: Sequence[np.ndarray] | None,
                 features: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if len(queries) != len(candidates):
            raise ValueError(f"{len(candidates)} candidate lists for {len(queries)} queries")
        with model_lock(self.lm):  # the tokenizer, its cache and eval mode: threads take turns
            question_ids = [self.tokens.question(q) for q in queries]
            owners: list[tuple[int, int]] = []  # (query, candidate) of each window read
            windows: list[list[int]] = []
            for qi, (query, cands) in enumerate(zip(queries, candidates)):
                read, cut = self.tokens.windows(query, cands)
                self._count(read, cut)
                for ci, node_windows in enumerate(read):
                    owners += [(qi, ci)] * len(node_windows)
                    windows += node_windows
            values, vectors = self._window_outputs(question_ids, owners, windows, query_coarse,
                                                   passage_coarse, features)
        width = self.lm.get_input_embeddings().embedding_dim if features else 0
        scores = [np.full(len(c), EMPTY_SCORE, dtype=np.float32) for c in candidates]
        found = [np.zeros((len(c), width), np.float32) for c in candidates]
        method, temperature = self.settings.window_aggregation, self.settings.window_temperature
        start = 0
        for (qi, ci), group in itertools.groupby(owners):  # a node's windows are consecutive
            stop = start + len(list(group))
            mine = values[start:stop]
            if not features:
                scores[qi][ci] = float(aggregate(mine, method, temperature))
            else:  # the windows weighted as the served score weighs them (head included), so
                # likelihood + head(features) is the served score (the softmax: its weighted mean)
                served = mine if self.head is None else \
                    mine + self.head(vectors[start:stop].to(self.head.weight.dtype))[:, 0].float()
                weights = aggregation_weights(served, method, temperature)
                scores[qi][ci] = float(weights @ mine)
                found[qi][ci] = (weights @ vectors[start:stop]).numpy()
            start = stop
        return scores, found

    @torch.inference_mode()
    def window_scores(self, questions: Sequence[str],
                      windows: Sequence[list[int]]) -> np.ndarray:
        """``r`` of each ``(question, window)`` pair, a window given as its token ids (e.g. from
        ``tokens.node(...).windows(...)``): to study readings of long nodes from one pass."""
        with model_lock(self.lm):
            ids = [self.tokens.question(q) for q in questions]
            values, _ = self._window_outputs(ids, [(i, 0) for i in range(len(ids))],
                                             list(windows), None, None, False)
        return values.numpy()

    def tokens_read(self, query: str, nodes: Sequence[Passage | str]) -> int:
        """Tokens the LM reads to score ``nodes`` for ``query``: each window's whole sequence
        (prompt, window, question); node tokenisations come from the cache."""
        with model_lock(self.lm):
            question = self.tokens.question(query)
            read, _ = self.tokens.windows(query, nodes)
            return sum(len(self.tokens.row(question, w)) for node in read for w in node)

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
                        windows: list[list[int]], query_coarse: np.ndarray | None,
                        passage_coarse: Sequence[np.ndarray] | None,
                        features: bool) -> tuple[Tensor, Tensor | None]:
        """``(r [N], features [N, H] or None)`` of each window read with its query's question;
        windows of all queries are sorted by length and scored in batches (the engine scores
        them all at once)."""
        values = torch.zeros(len(windows))
        vectors = torch.zeros(len(windows), self.lm.get_input_embeddings().embedding_dim) \
            if features else None
        if not windows:
            return values, vectors
        if self.engine is not None and not features:
            questions = [question_ids[qi] for qi, _ in owners]
            rows = [self.tokens.row(q, w) for q, w in zip(questions, windows)]
            found = self.engine.token_logprobs(rows, adapter=self.adapter)
            for i, (question, logprobs) in enumerate(zip(questions, found)):
                values[i] = self._normalized(float(logprobs[-len(question):].sum()),
                                             len(question))
            return values, vectors
        order = sorted(range(len(windows)),
                       key=lambda i: -(len(windows[i]) + len(question_ids[owners[i][0]])))
        was_training = self.lm.training
        self.lm.eval()
        model = self.serving_model()
        try:
            for chunk in _chunks(order, self.batch_size):
                coarse = self._chunk_coarse([owners[i] for i in chunk], query_coarse,
                                            passage_coarse)
                questions = [question_ids[owners[i][0]] for i in chunk]
                passages = [windows[i] for i in chunk]
                if features:
                    found, found_vectors = self.pair_outputs(questions, passages, *coarse, True,
                                                             model)
                    vectors[chunk] = found_vectors.float().cpu()
                else:
                    found = self.pair_scores(questions, passages, *coarse, model)
                values[chunk] = found.float().cpu()
        finally:
            self.lm.train(was_training)
        return values, vectors

    def _chunk_coarse(self, owners: list[tuple[int, int]], query_coarse: np.ndarray | None,
                      passage_coarse: Sequence[np.ndarray] | None) -> tuple[Tensor | None, ...]:
        """The coarse vectors of a chunk's queries and nodes (soft tokens only)."""
        if not self.settings.num_soft_tokens:
            return None, None
        if query_coarse is None or passage_coarse is None:
            raise ValueError("soft tokens need query_coarse and passage_coarse")
        return (torch.from_numpy(np.stack([query_coarse[qi] for qi, _ in owners])),
                torch.from_numpy(np.stack([passage_coarse[qi][ci] for qi, ci in owners])))

    def score(self, query: str, passages: Sequence[Passage | str]) -> np.ndarray:
        """``r(query, d)`` for each passage (an empty list gives an empty array)."""
        return self.score_batch([query], [passages])[0]


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
