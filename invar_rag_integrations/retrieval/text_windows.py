"""Token windows over a long text: the spans the Invar scorer reads a node in, and the text
windows a stage-1 encoder indexes a long passage as (``DenseRetriever(windows=True)``)."""

from __future__ import annotations

from typing import Any


def window_spans(length: int, size: int, stride: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the windows over ``length`` tokens: every ``stride`` tokens, the
    last one ending at the end (one window when ``length <= size``)."""
    if length <= size:
        return [(0, length)]
    starts = list(range(0, length - size, stride)) + [length - size]
    return [(start, start + size) for start in starts]


def text_windows(tokenizer: Any, title: str, text: str, size: int,
                 stride: int) -> list[str]:
    """A node's text cut into windows of at most ``size`` tokens of ``tokenizer`` (a stage-1
    encoder's), every ``stride`` tokens, each under the title as ``Passage.full_text`` puts it;
    a node that fits is one window, its ``full_text`` unchanged."""
    full = f"{title}\n{text}" if title else text
    head = len(tokenizer(full[: len(full) - len(text)], add_special_tokens=False)["input_ids"])
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)  # longer than the encoder reads: that is the point
    offsets = encoded["offset_mapping"]
    room = max(size - head, size // 2)
    if len(offsets) <= room:
        return [full]
    prefix = full[: len(full) - len(text)]
    return [prefix + text[offsets[start][0] : offsets[stop - 1][1]]
            for start, stop in window_spans(len(offsets), room, min(stride, room))]
