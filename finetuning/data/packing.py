"""Packing tokenized samples into fixed-size blocks without letting samples see each other.

Each block carries ``position_ids`` that restart at 0 for every sample and no ``attention_mask``: from those
``transformers`` (5.x, ``masking_utils.find_packed_sequence_indices``) builds a block-diagonal causal mask
for SDPA/eager attention, and flash-attention kernels read them as variable-length sequences. The first
label of every sample is masked so that the last token of one sample is never trained to predict the first
token of the next, which makes a packed batch's loss equal the unpacked samples' losses.

Samples are placed first-fit-decreasing within each chunk of the data set: few blocks, little padding, no
sample split across blocks, and the last partial block kept rather than dropped.
"""

from __future__ import annotations

from typing import Any

from finetuning.data.samples import IGNORE_INDEX


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group sample indices into bins of at most ``capacity`` tokens; every index lands in exactly one bin."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"sample {index} has {length} tokens, more than the block size {capacity}")
        for slot, free in enumerate(room):
            if free >= length:
                bins[slot].append(index)
                room[slot] -= length
                break
        else:
            bins.append([index])
            room.append(capacity - length)
    return bins


def pack_batch(batch: dict[str, list[Any]], block_size: int) -> dict[str, list[list[int]]]:
    """``datasets.map(batched=True)`` function: turns a chunk of samples into packed blocks."""
    blocks: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for members in first_fit_decreasing([len(ids) for ids in batch["input_ids"]], block_size):
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for index in sorted(members):  # keep data order inside a block: deterministic and easy to inspect
            sample_ids = batch["input_ids"][index]
            input_ids += sample_ids
            labels += [IGNORE_INDEX, *batch["labels"][index][1:]]
            position_ids += range(len(sample_ids))
        blocks["input_ids"].append(input_ids)
        blocks["labels"].append(labels)
        blocks["position_ids"].append(position_ids)
        blocks["length"].append(len(input_ids))
    return blocks
