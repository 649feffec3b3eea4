"""Training the scorer's head and the fusion weight on a frozen LM.

With the LM frozen, one forward pass per (variant, candidate) gives both the question
likelihood ``r`` and the head's input features; they are cached on disk in resumable chunks,
and the head then trains for many epochs in seconds on the same losses and the same fused score
as LoRA training (``s = fused_score(r + head(f), cos, w, tau, bm25, w_bm25)``), with the
tuning-slice curve choosing the epoch (epoch 0 = the zero head: the zero-shot scorer).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from invar_rag_integrations.data import Passage
from invar_rag_integrations.evaluation.metrics import accuracy_by_dataset
from invar_rag_integrations.invar.projector import zero_head
from invar_rag_integrations.invar.scorer import InvarScorer

from .losses import InvarRetrievalLoss
from .retriever_trainer import FusionWeights


def scorer_identity(scorer: InvarScorer) -> str:
    """What decides a frozen scorer's likelihoods and features (a cache key): the model, the
    settings, the adapter and the model the scorer serves with (precision)."""
    settings = {k: v for k, v in asdict(scorer.settings).items() if k != "head"}
    source = getattr(getattr(scorer.lm, "get_base_model", lambda: scorer.lm)(), "invar_source",
                     None)
    serving = scorer.serving_model().get_input_embeddings().weight.dtype
    return hashlib.sha256(json.dumps([getattr(source, "identity", "unknown"), settings,
                                      scorer.adapter, str(scorer.dtype),
                                      f"weights:{serving}"]).encode()).hexdigest()


def scorer_outputs(scorer: InvarScorer, queries: Sequence[str],
                   views: Sequence[Passage | str],
                   show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(r [N], features [N, H])`` of ``(query, passage view)`` pairs, cached on disk in
    chunks (an interrupted pass resumes)."""
    from invar_rag_integrations.retrieval.embedding_cache import cached_embeddings

    def key(query: str, view: Passage | str) -> str:
        title, text = ("", view) if isinstance(view, str) else (view.title, view.text)
        return json.dumps([query, title, text])

    keys = [key(q, v) for q, v in zip(queries, views)]
    pairs = dict(zip(keys, zip(queries, views)))

    def encode(batch: list[str]) -> np.ndarray:
        chosen = [pairs[k] for k in batch]
        r, features = scorer.likelihoods_and_features([q for q, _ in chosen],
                                                      [[v] for _, v in chosen])
        return np.concatenate([np.stack([x[0] for x in r])[:, None],
                               np.concatenate(features)], axis=1)

    array, _ = cached_embeddings(keys, f"scorer-features:{scorer_identity(scorer)}", encode,
                                 chunk_size=256, show_progress=show_progress)
    return array[:, 0], array[:, 1:]


@dataclass
class FeatureSet:
    """Cached scorer outputs of candidate sets: ``r``, ``features``, ``cosine`` and ``bm25``
    per variant x candidate, with the candidate ``mask``, ``positives`` (or answer hits for
    evaluation) and LSR scores ``lm_logprobs``."""

    r: Tensor          # [N, V, C]
    features: Tensor   # [N, V, C, H]
    cosine: Tensor     # [N, V, C]
    bm25: Tensor       # [N, V, C]
    mask: Tensor       # [N, C]
    positives: Tensor  # [N, C]
    lm_logprobs: Tensor  # [N, V, C]
    datasets: list[str]


def feature_set(scorer: InvarScorer, variants: Sequence[Sequence[str]],
                views: Sequence[Sequence[Sequence[Passage | str]]], cosine: Sequence[np.ndarray],
                bm25: Sequence[np.ndarray], positives: Sequence[Sequence[bool]],
                lm_logprobs: Sequence[np.ndarray] | None, datasets: Sequence[str],
                show_progress: bool = True) -> FeatureSet:
    """Score every (variant, candidate view) once (cached) and pad them into tensors.

    Args:
        variants: Per question, its ``V`` query texts.
        views: Per question, per variant, its candidates' passage views.
        cosine, bm25: Per question, ``[V, C]`` coarse cosines and BM25 features.
        positives: Per question, which candidates are positive (or contain an answer).
        lm_logprobs: Per question, ``[V, C]`` LSR scores (``None``: zeros, for evaluation).
    """
    queries, texts, cells = [], [], []
    for n, (rows, question_views) in enumerate(zip(variants, views)):
        for v, (query, candidates) in enumerate(zip(rows, question_views)):
            for c, text in enumerate(candidates):
                queries.append(query)
                texts.append(text)
                cells.append((n, v, c))
    r, features = scorer_outputs(scorer, queries, texts, show_progress)
    count, width = len(variants[0]), max(len(p) for p in positives)
    shape = (len(variants), count, width)
    out = FeatureSet(torch.zeros(shape), torch.zeros((*shape, features.shape[1])),
                     torch.zeros(shape), torch.zeros(shape),
                     torch.zeros(shape[0], width, dtype=torch.bool),
                     torch.zeros(shape[0], width, dtype=torch.bool), torch.zeros(shape),
                     list(datasets))
    index = torch.tensor(cells)
    out.r[index[:, 0], index[:, 1], index[:, 2]] = torch.from_numpy(r)
    out.features[index[:, 0], index[:, 1], index[:, 2]] = torch.from_numpy(features)
    for n, flags in enumerate(positives):
        out.mask[n, : len(flags)] = True
        out.positives[n, : len(flags)] = torch.tensor(flags)
        out.cosine[n, :, : len(flags)] = torch.from_numpy(np.asarray(cosine[n]))
        out.bm25[n, :, : len(flags)] = torch.from_numpy(np.asarray(bm25[n]))
        if lm_logprobs is not None:
            out.lm_logprobs[n, :, : len(flags)] = torch.from_numpy(np.asarray(lm_logprobs[n]))
    return out


class HeadScore(nn.Module):
    """``s = fused_score(r + head(features), cos, w, tau, bm25, w_bm25)`` over cached scorer
    outputs (without a head: ``r`` alone, and only the fusion weights learn)."""

    def __init__(self, width: int, settings: Any, learn_weights: bool):
        super().__init__()
        self.head = zero_head(width) if settings.head else None
        self.weights = FusionWeights(settings, learn_weights)

    def forward(self, data: FeatureSet, rows: Tensor | slice = slice(None)) -> Tensor:
        lm = data.r[rows]
        if self.head is not None:
            lm = lm + self.head(data.features[rows])[..., 0]
        return self.weights(lm, data.cosine[rows], data.bm25[rows])


def head_accuracy(model: HeadScore, tune: FeatureSet) -> dict[str, float]:
    """Acc@1 per dataset (and their mean) of the fused score on the tuning candidates."""
    with torch.no_grad():
        scores = model(tune)[:, 0].masked_fill(~tune.mask, -1e9)
    top = tune.positives[torch.arange(len(scores)), scores.argmax(-1)].tolist()
    return accuracy_by_dataset(tune.datasets, top)


def train_head(train: FeatureSet, tune: FeatureSet | None, loss: InvarRetrievalLoss,
               settings: Any, learn_weights: bool, epochs: int, batch_size: int,
               learning_rate: float, weight_decay: float,
               seed: int) -> tuple[HeadScore, list[dict[str, Any]]]:
    """Train the head (if ``settings.head``) and the fusion weights on cached outputs; returns
    the best model on the tuning slice (epoch 0, the untrained start, included) and the curve
    (tuning Acc@1, the weights and the mean loss per epoch)."""
    torch.manual_seed(seed)
    model = HeadScore(train.features.shape[-1], settings, learn_weights)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("nothing to train: no head and fusion weights fixed")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=learning_rate, weight_decay=weight_decay)
    curve: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Tensor]] | None = None

    def record(epoch: int, losses: list[float]) -> None:
        nonlocal best
        row: dict[str, Any] = {"step": epoch}
        if losses:
            row["loss"] = round(float(np.mean(losses)), 5)
        row.update(model.weights.values())
        if tune is not None:
            row.update({k: round(v, 4) for k, v in head_accuracy(model, tune).items()})
        curve.append(row)
        print(f"head epoch {epoch}: {row}", file=sys.stderr, flush=True)
        score = row.get("mean", -float(row.get("loss", 0.0)))
        if best is None or score > best[0]:
            best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()})

    record(0, [])
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        losses = []
        for rows in torch.randperm(len(train.r), generator=generator).split(batch_size):
            scores = model(train, rows)
            out = loss(scores[:, 0], train.mask[rows], positives=train.positives[rows],
                       lm_logprobs=train.lm_logprobs[rows, 0], variant_scores=scores,
                       variant_lm_logprobs=train.lm_logprobs[rows],
                       question_logprobs=train.r[rows, 0])
            if not torch.isfinite(out["loss"]):
                raise FloatingPointError(f"non-finite head training loss at epoch {epoch}")
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            losses.append(out["loss"].item())
        record(epoch, losses)
    model.load_state_dict(best[1])
    return model, curve
