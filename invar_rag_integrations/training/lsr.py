"""LM-supervised retrieval (LSR) scores: ``log P_LM(answer | passage, query)``, cached on disk.

Each score is keyed by a hash of its exact prompt and answer and appended to a JSON-lines
file after every batch (flushed and fsynced), so a killed preparation run continues where it
stopped and a changed setting only computes what is new. The file name carries the base
model's identity, so scores of different models never mix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm


def lsr_prompt(context: str, question: str) -> str:
    """The prompt whose answer continuation is scored (zero-shot, passage first)."""
    return f"{context}\n\nQuestion: {question}\nAnswer:"


def _key(prompt: str, answer: str) -> str:
    return hashlib.sha256(f"{prompt}\x00{answer}".encode()).hexdigest()[:24]


def lsr_cache_file(folder: str | os.PathLike[str], model_identity: str) -> Path:
    """The cache file for one base model inside ``folder``."""
    digest = hashlib.sha256(model_identity.encode()).hexdigest()[:16]
    return Path(folder) / f"lsr-{digest}.jsonl"


class LSRScorer:
    """Batched answer log-likelihoods with a resumable on-disk cache.

    Args:
        model: A causal LM (no adapter active), in eval mode.
        tokenizer: Its tokenizer.
        cache_file: JSON-lines cache (created if missing); ``None`` disables caching.
        model_identity: The base model's identity (``model.invar_source.identity`` when not
            given): recorded in a new cache file and checked against an existing one.
        batch_size: Prompts per forward pass (sorted by length to pad little).
        show_progress: Progress bar over the prompts still to score.
        engine: A ``VLLMGenerator`` over the same base model: scores come from its prompt
            log-probabilities instead of the HF model (the scale path on GPUs).
    """

    def __init__(self, model: Any, tokenizer: Any, cache_file: str | os.PathLike[str] | None,
                 batch_size: int = 16, show_progress: bool = True,
                 model_identity: str | None = None, engine: Any = None):
        self.model, self.tokenizer, self.engine = model, tokenizer, engine
        self.batch_size, self.show_progress = batch_size, show_progress
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self.model_identity = model_identity or getattr(
            getattr(model, "invar_source", None), "identity", "unknown")
        self.cache: dict[str, float] = {}
        self.computed = 0  # prompts scored by the LM (not from the cache) by this scorer
        if self.cache_file is not None and self.cache_file.is_file():
            built_with, self.cache = _read_cache(self.cache_file)
            if built_with is not None and built_with != self.model_identity:
                raise ValueError(f"the LSR cache {self.cache_file} was built with base model "
                                 f"{built_with}, but this run's base model is "
                                 f"{self.model_identity}; point lsr_cache_dir elsewhere or "
                                 f"delete the file")
            with self.cache_file.open("rb+") as handle:  # end a line cut short by a kill
                handle.seek(0, os.SEEK_END)
                if handle.tell() and (handle.seek(-1, os.SEEK_END), handle.read(1))[1] != b"\n":
                    handle.write(b"\n")

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """``sum_t log P(answer_t | prompt, answer_<t)`` for each ``(prompt, answer)`` pair."""
        keys = [_key(p, a) for p, a in pairs]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.cache}.values(),
                      key=lambda i: -len(pairs[i][0]))
        with tqdm(total=len(todo), desc="LSR scores", unit="prompt",
                  disable=not self.show_progress or not todo) as bar:
            for start in range(0, len(todo), self.batch_size):
                rows = todo[start : start + self.batch_size]
                values = self._forward([pairs[i] for i in rows])
                fresh = {keys[i]: v for i, v in zip(rows, values)}
                self.computed += len(rows)
                self.cache.update(fresh)
                self._append(fresh)
                bar.update(len(rows))
        return np.array([self.cache[k] for k in keys], dtype=np.float32)

    @torch.inference_mode()
    def _forward(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        tok = self.tokenizer
        prompts = tok([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
        answers = tok([" " + a.strip() for _, a in pairs], add_special_tokens=False)["input_ids"]
        if any(not a for a in answers):
            raise ValueError("an answer tokenised to nothing; every LSR answer needs text")
        rows = [p + a for p, a in zip(prompts, answers)]
        if self.engine is not None:
            values = [float(lp[-len(a):].sum())
                      for lp, a in zip(self.engine.token_logprobs(rows), answers)]
        else:
            values = self._hf_sums(prompts, answers, rows)
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError("the LM produced a non-finite answer log-likelihood")
        return values

    def _hf_sums(self, prompts: list[list[int]], answers: list[list[int]],
                 rows: list[list[int]]) -> list[float]:
        tok = self.tokenizer
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
        hidden = self.model.base_model(input_ids=ids, attention_mask=attention).last_hidden_state
        # only the positions that predict answer tokens go through the vocabulary head
        batch_idx, pos_idx, targets = [], [], []
        for i, (p, a) in enumerate(zip(prompts, answers)):
            for t, token in enumerate(a):
                batch_idx.append(i)
                pos_idx.append(len(p) + t - 1)
                targets.append(token)
        logits = self.model.get_output_embeddings()(hidden[batch_idx, pos_idx]).float()
        logprobs = torch.log_softmax(logits, dim=-1)[torch.arange(len(targets)), targets]
        return torch.zeros(len(rows)).index_add_(0, torch.tensor(batch_idx), logprobs).tolist()

    def _append(self, fresh: dict[str, float]) -> None:
        if self.cache_file is None or not fresh:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with self.cache_file.open("a", encoding="utf-8") as handle:
            if not handle.tell():
                handle.write(json.dumps({"model": self.model_identity}) + "\n")
            handle.writelines(json.dumps({"k": k, "lp": v}) + "\n" for k, v in fresh.items())
            handle.flush()
            os.fsync(handle.fileno())


def _read_cache(path: Path) -> tuple[str | None, dict[str, float]]:
    """``(the base model it records, scores)`` of a cache file, ignoring a line cut short by a
    killed run."""
    model, cache = None, {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                if "model" in record:
                    model = str(record["model"])
                else:
                    cache[record["k"]] = float(record["lp"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue
    return model, cache
