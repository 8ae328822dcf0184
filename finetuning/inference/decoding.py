"""Per-row decoding inside one batched ``generate`` call: each row keeps its own settings, stop and seed.

``generate`` runs a padded batch greedily; :class:`RowSampler` (a logits processor) replaces the scores of each
row that samples by a one-hot of the token it drew with its own temperature, top-k, top-p and random generator,
so greedy and sampled requests share a batch and a seeded request gives the same answer whatever else is in its
batch. :class:`RowStopper` (a stopping criterion, called once per step with the new tokens) records each row's
tokens, cuts its text at a stop string, ends it at its own ``max_tokens`` or when its client has gone, and tells
``generate`` which rows are done: the batch ends when all are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks for; ``do_sample`` False is greedy decoding."""

    max_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: all tokens
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Sequence:
    """One answer (one of a request's ``n`` choices) as it is generated."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Sequence, str], None]  # called with each new piece of text, and with "" when it finishes
    cancelled: Callable[[], bool] = lambda: False
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the text sent so far
    finish_reason: str | None = None  # "stop", "length" or "cancelled" once done
    generator: Any = None


def _warp(scores: Any, params: SamplingParams) -> Any:
    """Temperature, then top-k, then top-p (as ``generate``'s warpers do), on one row's scores."""
    import torch

    scores = scores / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= params.top_p  # keep the smallest prefix that reaches top_p
        scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return scores


class RowSampler:
    """A logits processor: sampled rows get a one-hot of their draw, greedy rows are left alone."""

    def __init__(self, rows: list[Sequence]) -> None:
        self.rows = rows

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for row, sequence in enumerate(self.rows):
            params = sequence.params
            if not params.do_sample or sequence.finish_reason is not None:
                continue
            if sequence.generator is None:
                sequence.generator = torch.Generator(device=scores.device)
                if params.seed is None:
                    sequence.generator.seed()
                else:
                    sequence.generator.manual_seed(params.seed + sequence.index)
            probs = _warp(scores[row], params).softmax(-1)
            token = torch.multinomial(probs, 1, generator=sequence.generator)
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


class RowStopper:
    """A stopping criterion that follows every row: its tokens, its text, its end."""

    def __init__(self, rows: list[Sequence], stop_ids: set[int], decode: Callable[[list[int]], str]) -> None:
        self.rows, self.stop_ids, self.decode = rows, stop_ids, decode

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        for sequence, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if sequence.finish_reason is None:
                self.advance(sequence, token)
        done = [sequence.finish_reason is not None for sequence in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def advance(self, sequence: Sequence, token: int) -> None:
        if sequence.cancelled():
            sequence.finish_reason = "cancelled"
            return
        if token in self.stop_ids:
            self.finish(sequence, "stop", self.decode(sequence.tokens))
            return
        sequence.tokens.append(token)
        text = self.decode(sequence.tokens)
        hits = [position for position in (text.find(stop) for stop in sequence.params.stop) if position >= 0]
        if hits:
            self.finish(sequence, "stop", text[: min(hits)])
        elif len(sequence.tokens) >= sequence.params.max_tokens:
            self.finish(sequence, "length", text)
        else:
            # hold back what may be the start of a stop string, or half of a multi-byte character
            held = max((len(stop) - 1 for stop in sequence.params.stop), default=0)
            safe = len(text.rstrip("\ufffd")) - held
            if safe > len(sequence.text) and text.startswith(sequence.text):
                sequence.emit(sequence, text[len(sequence.text) : safe])
                sequence.text = text[:safe]

    def finish(self, sequence: Sequence, reason: str, text: str) -> None:
        sequence.finish_reason = reason
        if text.startswith(sequence.text) and len(text) > len(sequence.text):
            sequence.emit(sequence, text[len(sequence.text) :])
        sequence.text = text
        sequence.emit(sequence, "")
