"""The one place the scorer's token sequences are built: ``[BOS] prompt-head [P(c(d))] window
prompt-tail [P(c(q))] question``, for serving and training alike (a node's windows come from
``windows.py``)."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data import Passage
from ..models.chat_template import ChatForm, adds_bos, resolve_chat_template
from .settings import ScorerSettings
from .windows import NodeTokens, windows_to_read


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
        # SentencePiece tokenizers that put "▁" before a text's first word (Llama-2, Mistral,
        # Phi-3): a segment that continues the sequence must not get one
        probe = tokenizer("a", add_special_tokens=False)["input_ids"]
        self.dummy_prefix = bool(probe) and \
            str(tokenizer.convert_ids_to_tokens(probe[:1])[0]).startswith("\u2581")
        form = resolve_chat_template(settings.chat_template, tokenizer)
        prompt = ChatForm.parse(form).prompt(settings.prompt) if form else settings.prompt
        # the question is the assistant's turn in a chat form, and follows "Question:" otherwise
        self.question_space = "" if form else " "
        head, tail = prompt.split("{passage}")
        # the spaces that end the head begin the passage, as in the joined text ("ĠTitle", not
        # "Ġ" then "Title")
        self.lead = head[len(head.rstrip(" ")):]
        self.head_text, self.tail_text = head[:len(head) - len(self.lead)], tail
        self.head = self._encode(self.head_text)
        self.tail = self._ids(tail)  # after any window
        self.bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []  # e.g. Gemma
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

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] \
            if text else []

    def _ids(self, text: str, after: str = "") -> list[int]:
        """Token ids of ``text`` as it follows ``after`` in one text: the tokenisation of both
        less ``after``'s own. Where nothing known comes before, or the two merge across the
        join, ``text`` is tokenised alone, without the "▁" a SentencePiece tokenizer puts before
        a first word that follows no space."""
        if after and text:
            context, joined = self._encode(after), self._encode(after + text)
            if joined[:len(context)] == context:
                return joined[len(context):]
        ids = self._encode(text)
        if self.dummy_prefix and not text.startswith(" ") and ids:
            first = str(self.tokenizer.convert_ids_to_tokens(ids[:1])[0])
            if first == "\u2581":
                return ids[1:]
            bare = self.tokenizer.convert_tokens_to_ids(first[1:]) if \
                first.startswith("\u2581") else None
            if bare is not None and bare != self.tokenizer.unk_token_id:
                return [bare, *ids[1:]]
        return ids

    def node(self, passage: Passage | str) -> NodeTokens:
        """A node's tokens (cached): the prefix ``Title.`` (none for a plain string) and the
        body, tokenised so that prefix + body is the tokenisation of :func:`passage_text` as it
        follows the prompt's head. A node without text has an empty body."""
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
            found = NodeTokens(self._ids(f"{self.lead}{title}.", self.head_text),
                               self._ids(f" {text}", f"{title}."))
        else:
            found = NodeTokens([], self._ids(self.lead + text, self.head_text))
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
        """Token ids of a question as it continues the prompt (after a space in the plain
        prompt), cut to the cap."""
        ids = self._ids(self.question_space + text.strip(), self.tail_text)
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
