"""The tokenized sample every encoder produces, and the one truncation rule they all share.

Instruction records (:mod:`finetuning.data.encoding`) and chat records (:mod:`finetuning.data.chat`) become
the same :class:`EncodedSample`, cut to length by the same :func:`fit_to_length`, so the data report, packing
and the collator never need to know which kind of record a sample came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100  # label value that PyTorch's cross-entropy skips


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    def as_dict(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "labels": self.labels, "truncated": self.truncated}


def fit_to_length(prompt_ids: list[int], response_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Truncate a too-long sample while keeping both a usable prompt and a usable response.

    The response keeps at least half the budget (or all of itself if shorter) and is cut at its end; the
    prompt is cut from the left after its first token, so BOS and the template's final "### Response:"
    marker, which the model relies on to start answering, survive.
    """
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids
    response_budget = max(max_length - len(prompt_ids), min(len(response_ids), max_length // 2))
    response_ids = response_ids[:response_budget]
    prompt_budget = max_length - len(response_ids)
    if len(prompt_ids) > prompt_budget:
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - prompt_budget + 1 :] if prompt_budget > 1 else []
    return prompt_ids, response_ids


def supervised_count(labels: list[int]) -> int:
    """Label tokens the loss really sees: position 0 is never a target (labels shift by one), packed or not."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)
