"""The Invar encoder: MiniLM coarse vector -> projector -> soft tokens -> LLM + LoRA -> pooling.

``InvarEncoder.embed`` is the one place where prefixes, soft tokens, text tokens, EOS and
last-token pooling are put together; training and serving both call it (DESIGN.md §2, §5).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..models.adapters import LORA_TARGETS, check_lora, lora_config, use_adapter

DOC_INPUTS = ("coarse", "text", "coarse+text")
RETRIEVER_ADAPTER = "retriever"


@dataclass
class InvarSettings:
    """Representation settings stored in the manifest (everything that changes a vector).

    Attributes:
        num_soft_tokens: ``m``, soft tokens the projector makes from one coarse vector.
        doc_input: ``coarse`` (prefix + soft tokens), ``text`` (prefix + passage tokens,
            RepLLaMA-style) or ``coarse+text`` (both).
        query_prefix, passage_prefix: Text before the soft tokens.
        tau: Temperature of ``s(q, d) = cos(u, v) / tau``.
        beta: Weight of the coarse score in ``s + beta * cos(c(q), c(d))`` (0 = off); query-side
            only, so changing it never needs a re-index.
        max_query_tokens, max_passage_tokens: Text token limits (longer input is truncated,
            counted and warned about once).
        projector_hidden: Hidden width of the projector MLP.
        lora_r, lora_alpha, lora_dropout, lora_targets: The ``retriever`` LoRA adapter.
    """

    num_soft_tokens: int = 4
    doc_input: str = "coarse"
    query_prefix: str = "query:"
    passage_prefix: str = "passage:"
    tau: float = 0.05
    beta: float = 0.0
    max_query_tokens: int = 64
    max_passage_tokens: int = 256
    projector_hidden: int = 1024
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.doc_input not in DOC_INPUTS:
            raise ValueError(f"doc_input must be one of {DOC_INPUTS}, got {self.doc_input!r}")
        if self.num_soft_tokens < 1 or self.tau <= 0 or self.beta < 0:
            raise ValueError("need num_soft_tokens >= 1, tau > 0 and beta >= 0; got "
                             f"{self.num_soft_tokens}, {self.tau}, {self.beta}")
        check_lora(self.lora_r, self.lora_targets)

    def index_fields(self) -> dict[str, Any]:
        """The settings a passage vector depends on (``beta`` is query-side only)."""
        return {k: v for k, v in asdict(self).items() if k != "beta"}


class Projector(nn.Module):
    """``P``: coarse vector ``[B, d_c]`` -> ``m`` soft tokens ``[B, m, H]``.

    A two-layer MLP; each soft token is rescaled to the mean norm of the LM's token
    embeddings so it starts in the range the LM was trained on.
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


class InvarEncoder(nn.Module):
    """Encode queries and passages into normalised vectors with the base LM + ``retriever`` LoRA.

    Args:
        lm: A causal LM, already wrapped by peft with the ``retriever`` adapter.
        tokenizer: Its tokenizer.
        coarse_encoder: The frozen coarse ``SentenceTransformer`` (MiniLM).
        settings: Representation settings.
        projector: The trained projector (a fresh one is made when ``None``).
    """

    def __init__(self, lm: nn.Module, tokenizer: Any, coarse_encoder: Any,
                 settings: InvarSettings, projector: Projector | None = None):
        super().__init__()
        self.lm, self.tokenizer, self.settings = lm, tokenizer, settings
        self._coarse = [coarse_encoder]  # a list keeps it out of this module's parameters
        embeddings = lm.get_input_embeddings()
        self.projector = projector or Projector(
            coarse_encoder.get_embedding_dimension(), settings.projector_hidden,
            settings.num_soft_tokens, embeddings.embedding_dim,
            embeddings.weight.detach().norm(dim=-1).mean().item())
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._prefix_ids = {
            "query": tokenizer(settings.query_prefix, add_special_tokens=False)["input_ids"],
            "passage": tokenizer(settings.passage_prefix, add_special_tokens=False)["input_ids"],
        }
        self.truncated = {"query": 0, "passage": 0}
        self._warned: set[str] = set()

    @property
    def coarse_encoder(self) -> Any:
        return self._coarse[0]

    @property
    def hidden_size(self) -> int:
        return self.lm.get_input_embeddings().embedding_dim

    def coarse(self, texts: Sequence[str], batch_size: int = 64,
               show_progress: bool = False) -> np.ndarray:
        """``c(x)``: normalised coarse vectors (float32 ``[N, d_c]``) of ``texts``."""
        return self.coarse_encoder.encode(list(texts), batch_size=batch_size,
                                          normalize_embeddings=True, convert_to_numpy=True,
                                          show_progress_bar=show_progress).astype(np.float32)

    def _uses(self, kind: str) -> tuple[bool, bool]:
        """(soft tokens?, text tokens?) for a ``query`` or ``passage`` sequence."""
        if kind == "query":
            return True, True
        if kind == "passage":
            doc_input = self.settings.doc_input
            return "coarse" in doc_input, "text" in doc_input
        raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")

    def _text_ids(self, kind: str, texts: Sequence[str]) -> list[list[int]]:
        limit = (self.settings.max_query_tokens if kind == "query"
                 else self.settings.max_passage_tokens)
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        over = sum(len(row) > limit for row in ids)
        if over:
            self.truncated[kind] += over
            if kind not in self._warned:
                self._warned.add(kind)
                warnings.warn(f"{over} {kind} text(s) longer than {limit} tokens were truncated "
                              f"(counted in InvarEncoder.truncated; warned once)", stacklevel=3)
        return [row[:limit] for row in ids]

    def embed(self, kind: str, texts: Sequence[str] | None, coarse: Tensor | None) -> Tensor:
        """Normalised last-token vectors ``[B, H]`` of queries or passages (with gradients).

        Sequence: ``prefix tokens + P(coarse) (m soft tokens) + text tokens + EOS``, right-padded;
        the soft-token and text parts are present as ``kind`` and ``doc_input`` say.

        Args:
            kind: ``"query"`` or ``"passage"``.
            texts: The query or passage texts (needed when the sequence has text tokens).
            coarse: ``[B, d_c]`` normalised coarse vectors (needed when it has soft tokens).
        """
        soft, text = self._uses(kind)
        if soft and coarse is None:
            raise ValueError(f"{kind} sequences need coarse vectors")
        if text and texts is None:
            raise ValueError(f"{kind} sequences need texts")
        batch = coarse.shape[0] if coarse is not None else len(texts)
        prefix = self._prefix_ids[kind]
        m = self.settings.num_soft_tokens if soft else 0
        bodies = self._text_ids(kind, texts) if text else [[] for _ in range(batch)]
        rows = [prefix + [self.pad_id] * m + body + [self.eos_id] for body in bodies]
        lengths = torch.tensor([len(r) for r in rows])
        width = int(lengths.max())
        device = self.lm.get_input_embeddings().weight.device
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        attention = (torch.arange(width) < lengths[:, None]).long()
        embeds = self.lm.get_input_embeddings()(ids.to(device))
        if soft:
            start = len(prefix)
            soft_tokens = self.projector(coarse.to(device, embeds.dtype))
            embeds = torch.cat([embeds[:, :start], soft_tokens, embeds[:, start + m :]], dim=1)
        with use_adapter(self.lm, RETRIEVER_ADAPTER):  # the generator may share this model
            hidden = self._decoder()(inputs_embeds=embeds,
                                     attention_mask=attention.to(device)).last_hidden_state
        pooled = hidden[torch.arange(batch, device=device), (lengths - 1).to(device)]
        return nn.functional.normalize(pooled.float(), dim=-1)

    def _decoder(self) -> nn.Module:
        """The LM's transformer without its vocabulary head (LoRA layers are inside it)."""
        model = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return model.base_model

    @torch.inference_mode()
    def encode(self, kind: str, texts: Sequence[str] | None, coarse: np.ndarray | None,
               batch_size: int = 32) -> np.ndarray:
        """Inference: :meth:`embed` in batches, as float32 ``[N, H]``."""
        was_training = self.training
        self.eval()
        count = len(coarse) if coarse is not None else len(texts)
        # sort by text length so each batch pads little
        order = (np.argsort([-len(t) for t in texts], kind="stable") if texts is not None
                 else np.arange(count))
        out = np.empty((count, self.hidden_size), dtype=np.float32)
        for start in range(0, count, batch_size):
            rows = order[start : start + batch_size]
            batch_texts = [texts[i] for i in rows] if texts is not None else None
            batch_coarse = torch.from_numpy(coarse[rows]) if coarse is not None else None
            out[rows] = self.embed(kind, batch_texts, batch_coarse).cpu().numpy()
        self.train(was_training)
        return out


def add_retriever_adapter(lm: nn.Module, settings: InvarSettings) -> nn.Module:
    """Wrap ``lm`` with a fresh ``retriever`` LoRA adapter (base weights frozen)."""
    from peft import get_peft_model

    config = lora_config(settings.lora_r, settings.lora_alpha, settings.lora_dropout,
                         settings.lora_targets)
    return get_peft_model(lm, config, adapter_name=RETRIEVER_ADAPTER)


def projector_from_file(path: Path, settings: InvarSettings) -> Projector:
    """Load a projector saved with safetensors (shapes come from the weights)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    first, last = state["net.0.weight"], state["net.2.weight"]
    projector = Projector(first.shape[1], first.shape[0], settings.num_soft_tokens,
                          last.shape[0] // settings.num_soft_tokens, float(state["token_norm"]))
    projector.load_state_dict(state)
    return projector
