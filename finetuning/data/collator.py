"""Batching tokenized samples (padded) or packed blocks for the Trainer.

Labels are padded with the ignore index by position and are never rebuilt from ``input_ids``: rebuilding
them would erase the prompt mask, and masking "every pad token" would erase EOS wherever pad == EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetuning.data.samples import IGNORE_INDEX

# Packed batches are padded to a multiple of this: few shapes for compiled kernels (FlexAttention's tiles are
# 128 wide, --torch_compile) to specialise on, at under 128 pad tokens a row. Padding every row to the full
# block instead cost 10% of the 7B packed throughput (docs/performance.md).
PACKED_PAD_MULTIPLE = 128


def length_buckets(block: int, buckets: int) -> tuple[int, ...]:
    """``buckets`` row lengths up to ``block``, evenly spaced, each a multiple of ``PACKED_PAD_MULTIPLE``.

    A compiled kernel (FlexAttention, its block mask, ``--torch_compile``) is specialised per row length: a new
    length means a recompile (or, after the second one, a slower dynamic-shape kernel), so packed rows are
    padded to one of a few lengths instead of any multiple of 128.
    """
    step = -(-block // buckets)
    rounded = {-(-step * i // PACKED_PAD_MULTIPLE) * PACKED_PAD_MULTIPLE for i in range(1, buckets + 1)}
    return tuple(sorted({min(block, length) for length in rounded}))


@dataclass
class PaddingCollator:
    """Right-pads each batch to its longest member (rounded up to ``pad_to_multiple_of``; packed batches to
    ``PACKED_PAD_MULTIPLE`` unless it is given; to the shortest of ``lengths`` that fits, when given).

    Padded samples get an ``attention_mask``. Packed blocks (which carry ``position_ids``) get none, so the
    model derives the per-sample causal mask from the restarting position ids; their padding tail forms a
    segment of its own with ignored labels. Packed batches also say ``use_cache=False``: ``transformers``
    skips the per-sample mask whenever a KV cache exists, and models create one by default even in training.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    lengths: tuple[int, ...] | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        packed = "position_ids" in features[0]
        multiple = self.pad_to_multiple_of or (PACKED_PAD_MULTIPLE if packed else None)
        longest = max(len(feature["input_ids"]) for feature in features)
        if multiple:
            longest = -(-longest // multiple) * multiple
        if self.lengths:
            longest = next((length for length in sorted(self.lengths) if length >= longest), longest)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        batch["position_ids" if packed else "attention_mask"] = []
        for feature in features:
            length = len(feature["input_ids"])
            padding = longest - length
            batch["input_ids"].append(list(feature["input_ids"]) + [self.pad_token_id] * padding)
            batch["labels"].append(list(feature["labels"]) + [IGNORE_INDEX] * padding)
            if packed:
                batch["position_ids"].append(list(feature["position_ids"]) + list(range(padding)))
            else:
                batch["attention_mask"].append([1] * length + [0] * padding)
        tensors: dict[str, Any] = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        if packed:
            tensors["use_cache"] = False
        return tensors
