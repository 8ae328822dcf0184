"""Instruction records to encoder inputs and decoder targets, and their batches, for encoder-decoder models.

The rendered instruction prompt is the encoder input and the response is the decoder target, so the two sides
are tokenized and truncated separately (``--max_source_length``, ``--max_target_length``) and no label ever
needs masking inside a sequence: every target position is in the loss. The decoder inputs are the labels
shifted right behind ``decoder_start_token_id`` (built here, so that the loss can be computed outside the
model, normalized over a whole optimizer step); the target is the response as the model's
tokenizer writes it (BART's with a leading ``<s>``, T5's without) and always ends with EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetuning.data.samples import IGNORE_INDEX
from finetuning.data.templates import PromptTemplate


def encode_source(tokenizer: Any, prompt: str, max_length: int) -> tuple[list[int], bool]:
    """Encoder ids of a prompt, with the tokenizer's special tokens (T5 appends EOS), and whether it was cut.

    An over-long prompt is cut at its end, as the tokenizer's own truncation does (keeping the special
    tokens): the encoder reads the prompt as a whole and the decoder starts answering from its own start
    token, so, unlike for a causal LM, no trailing "### Response:" marker is needed, while the instruction at
    the front of the prompt is what says what to do.
    """
    ids = list(tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])
    if len(ids) <= max_length:
        return ids, False
    return list(tokenizer(prompt, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]), True


def encode_target(tokenizer: Any, response: str, max_length: int) -> tuple[list[int], bool]:
    """Label ids of a response, with the tokenizer's special tokens and always EOS, cut at ``max_length``.

    The tokenizer's own special tokens are kept because generation reproduces them: BART's generation config
    forces ``<s>`` as the first token, so BART targets must start with it, as its tokenizer writes them; T5's
    tokenizer adds only EOS. A cut response keeps no EOS, as in the causal encoding: the model must not learn
    to stop mid-answer.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: the model could never learn to stop")
    ids = list(tokenizer(response, add_special_tokens=True, verbose=False)["input_ids"])
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids[:max_length], len(ids) > max_length


def encode_seq2seq_record(
    record: dict[str, Any],
    *,
    tokenizer: Any,
    template: PromptTemplate,
    max_source_length: int,
    max_target_length: int,
) -> dict[str, Any]:
    """Encode one instruction record: ``input_ids`` (prompt) and ``labels`` (response, EOS), unpadded.

    ``supervised`` is counted here because every label is a target: the data report's default count assumes
    causal labels, whose first position is never predicted.
    """
    source, source_cut = encode_source(
        tokenizer, template.render(record["instruction"], record["input"]), max_source_length
    )
    target, target_cut = encode_target(tokenizer, record["output"], max_target_length)
    return {"input_ids": source, "labels": target, "truncated": source_cut or target_cut, "supervised": len(target)}


@dataclass
class Seq2SeqPaddingCollator:
    """Right-pads encoder inputs with the pad id (and masks them) and labels with the ignore index; builds the
    decoder inputs (the labels shifted right behind ``decoder_start_token_id``, padded with the pad id), as
    T5 and BART build them from labels, so that the model needs no labels to compute the logits.

    The two sides are padded to their own longest member. Labels are padded by position, never rebuilt from
    ids: where pad == EOS, masking "every pad token" would erase the supervised EOS.
    """

    pad_token_id: int
    decoder_start_token_id: int
    pad_to_multiple_of: int | None = None

    def _padded(self, length: int) -> int:
        if self.pad_to_multiple_of:
            return -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return length

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        source_length = self._padded(max(len(feature["input_ids"]) for feature in features))
        target_length = self._padded(max(len(feature["labels"]) for feature in features))
        batch: dict[str, list[list[int]]] = {
            "input_ids": [],
            "attention_mask": [],
            "labels": [],
            "decoder_input_ids": [],
        }
        for feature in features:
            source, target = list(feature["input_ids"]), list(feature["labels"])
            padding = source_length - len(source)
            batch["input_ids"].append(source + [self.pad_token_id] * padding)
            batch["attention_mask"].append([1] * len(source) + [0] * padding)
            labels = target + [IGNORE_INDEX] * (target_length - len(target))
            batch["labels"].append(labels)
            shifted = [self.decoder_start_token_id, *labels[:-1]]
            batch["decoder_input_ids"].append([self.pad_token_id if t == IGNORE_INDEX else t for t in shifted])
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
