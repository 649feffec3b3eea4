"""Batched generation with a Hugging Face causal LM (greedy or sampling, stop strings)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Generation:
    """Generated text (cut before the first stop string) and how many tokens were generated."""

    text: str
    num_tokens: int


class HFGenerator:
    """Generate continuations of plain-text prompts with left-padded, length-sorted batches.

    Args:
        model: A causal LM (``transformers`` or ``peft``).
        tokenizer: Its tokenizer (needs a pad token; EOS is used when there is none).
    """

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        stop: Sequence[str] = ("\n",),
        batch_size: int = 8,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        show_progress: bool = False,
    ) -> list[Generation]:
        """Generate for every prompt; outputs come back in the prompts' order."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings; wrap one prompt in a list")
        if max_new_tokens <= 0 or batch_size <= 0:
            raise ValueError("max_new_tokens and batch_size must be positive")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        outputs: list[Generation | None] = [None] * len(prompts)
        self.tokenizer.padding_side = "left"
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                   "pad_token_id": self.tokenizer.pad_token_id}
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        else:  # silence "generation flags are not valid" warnings from the model's defaults
            options.update(temperature=None, top_p=None, top_k=None)
        if stop:
            options.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        batches = range(0, len(order), batch_size)
        for start in tqdm(batches, desc="generate", unit="batch", disable=not show_progress):
            index = order[start : start + batch_size]
            encoded = self.tokenizer([prompts[i] for i in index], return_tensors="pt",
                                     padding=True).to(self.model.device)
            generated = self.model.generate(**encoded, **options)
            new_tokens = generated[:, encoded["input_ids"].shape[1]:]
            for i, row in zip(index, new_tokens):
                outputs[i] = self._finish(row, stop)
        return [o for o in outputs if o is not None]

    def _finish(self, row: torch.Tensor, stop: Sequence[str]) -> Generation:
        special = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        tokens = [t for t in row.tolist() if t not in special]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        return Generation(text, len(tokens))
