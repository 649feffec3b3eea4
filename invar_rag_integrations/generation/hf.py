"""Generation with a Hugging Face causal LM: batched (greedy or sampling, stop strings) and
streamed, with the peft adapter to use chosen per call on one copy of the base model."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..models.adapters import model_lock, use_adapter


@dataclass(frozen=True)
class Generation:
    """Generated text (cut before the first stop string), how many tokens were generated and
    their summed log-probability under the model (the stop string's token included)."""

    text: str
    num_tokens: int
    logprob: float = 0.0


def check_generation_args(max_new_tokens: int, batch_size: int = 1, prompts: Any = ()) -> None:
    """The argument checks every generation backend makes."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings; wrap one prompt in a list")
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    if max_new_tokens <= 0:
        raise ValueError("max_new_tokens must be positive")


class HFGenerator:
    """Generate continuations of plain-text prompts with left-padded, length-sorted batches.

    Args:
        model: A causal LM (``transformers``, or ``peft`` with one or more adapters).
        tokenizer: Its tokenizer (needs a pad token; EOS is used when there is none).
    """

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def name(self) -> str:
        """The base model's name (as loaded), for framework metadata."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else \
            self.model
        source = getattr(model, "invar_source", None)
        return source.name if source else type(model).__name__

    @property
    def context_window(self) -> int:
        """Prompt plus answer tokens the model takes."""
        return self.model.config.max_position_embeddings

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` (the tokenizer may be shared with threads using the model)."""
        with model_lock(self.model):
            return len(self.tokenizer(text)["input_ids"])

    def using(self, adapter: str | None) -> contextlib.AbstractContextManager[None]:
        """Run with the named peft adapter active, or with the plain base model for ``None``."""
        return use_adapter(self.model, adapter)

    def _options(self, max_new_tokens: int, do_sample: bool, temperature: float,
                 top_p: float) -> dict[str, Any]:
        check_generation_args(max_new_tokens)
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                   "pad_token_id": self.tokenizer.pad_token_id}
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        else:  # silence "generation flags are not valid" warnings from the model's defaults
            options.update(temperature=None, top_p=None, top_k=None)
        return options

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
        adapter: str | None = None,
    ) -> list[Generation]:
        """Generate for every prompt; outputs come back in the prompts' order.

        ``adapter`` names the peft adapter to generate with (``None``: the base model).
        """
        check_generation_args(max_new_tokens, batch_size, prompts)
        options = self._options(max_new_tokens, do_sample, temperature, top_p)
        options.update(output_scores=True, return_dict_in_generate=True)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        outputs: list[Generation | None] = [None] * len(prompts)
        self.tokenizer.padding_side = "left"
        if stop:
            options.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        batches = range(0, len(order), batch_size)
        with self.using(adapter):
            for start in tqdm(batches, desc="generate", unit="batch", disable=not show_progress):
                index = order[start : start + batch_size]
                encoded = self.tokenizer([prompts[i] for i in index], return_tensors="pt",
                                         padding=True).to(self.model.device)
                generated = self.model.generate(**encoded, **options)
                new_tokens = generated.sequences[:, encoded["input_ids"].shape[1]:]
                logprobs = self.model.compute_transition_scores(
                    generated.sequences, generated.scores, normalize_logits=True)
                for i, row, row_logprobs in zip(index, new_tokens, logprobs):
                    outputs[i] = self._finish(row, row_logprobs, stop)
        return [o for o in outputs if o is not None]

    def stream(self, prompt: str, max_new_tokens: int = 32, stop: Sequence[str] = ("\n",),
               do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
               adapter: str | None = None) -> Iterator[str]:
        """Yield the text of one generation piece by piece, ending before any stop string.

        The joined pieces equal ``generate([prompt], ...)[0].text`` for greedy decoding.
        """
        from transformers import TextIteratorStreamer

        options = self._options(max_new_tokens, do_sample, temperature, top_p)
        if stop:
            options.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode(), self.using(adapter):
                    encoded = self.tokenizer([prompt], return_tensors="pt").to(self.model.device)
                    self.model.generate(**encoded, **options, streamer=streamer)
            except BaseException as err:  # re-raised in the caller's thread
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        hold = max((len(s) for s in stop), default=1) - 1  # a stop string may span pieces
        text, emitted, stopped = "", 0, False
        for piece in streamer:
            text += piece
            cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
            stopped = bool(cuts)
            safe = min(cuts) if cuts else len(text) - hold
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if stopped:
                break
        if stopped:
            for _ in streamer:  # let generation finish (it stops at the stop string itself)
                pass
        elif len(text) > emitted:
            yield text[emitted:]
        worker.join()
        if failure:
            raise failure[0]

    @torch.inference_mode()
    def answer_logprobs(self, prompts: Sequence[str], answers: Sequence[str],
                        adapter: str | None = None,
                        batch_size: int = 8) -> list[tuple[float, int]]:
        """``log P(answer | prompt)`` summed over the answer's tokens, and how many tokens
        (teacher-forced; each answer as it follows its prompt: ``PromptTemplate.continuation``)."""
        check_generation_args(1, batch_size, prompts)
        prompt_ids, rows = answer_rows(self.tokenizer, prompts, answers)
        sums = []
        pad = self.tokenizer.pad_token_id
        with self.using(adapter):
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                width = max(len(r) for r in batch)
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
                logits = self.model(input_ids=ids.to(self.model.device),
                                    attention_mask=mask.to(self.model.device)).logits
                for i, row in enumerate(batch):  # only the positions that predict the answer
                    first = len(prompt_ids[start + i])
                    targets = torch.tensor(row[first:], device=logits.device)
                    steps = torch.log_softmax(logits[i, first - 1 : len(row) - 1].float(), -1)
                    sums.append((float(steps.gather(1, targets[:, None]).sum()), len(targets)))
        return sums

    def _finish(self, row: torch.Tensor, logprobs: torch.Tensor,
                stop: Sequence[str]) -> Generation:
        special = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        kept = [i for i, t in enumerate(row.tolist()) if t not in special]
        text = self.tokenizer.decode(row[kept].tolist(), skip_special_tokens=True)
        for s in stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        return Generation(text, len(kept), float(logprobs[kept].float().sum()))


def answer_rows(tokenizer: Any, prompts: Sequence[str],
                answers: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prompt and of the prompt followed by its answer."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts")
    if any(not a.strip() for a in answers):
        raise ValueError("an answer is empty: there is nothing to score")
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    answer_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    return prompt_ids, [p + a for p, a in zip(prompt_ids, answer_ids)]
