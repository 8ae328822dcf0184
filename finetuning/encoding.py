"""Instruction records to token ids and labels for causal LMs.

The prompt and the response are tokenized separately and their ids concatenated, so the boundary between
masked prompt and supervised response is exact by construction; a prompt mask computed from a second,
separate tokenization of the prompt can drift by a token where the two texts merge. Inference tokenizes the
same rendered prompt the same way, so what the model sees there is what it was trained on. Every complete
response ends with EOS and that EOS is supervised, whatever the pad token is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetuning.templates import PromptTemplate

IGNORE_INDEX = -100  # label value that PyTorch's cross-entropy skips


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    def as_dict(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "labels": self.labels, "truncated": self.truncated}


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt ids exactly as inference will feed them: with BOS if the tokenizer adds one, never with EOS."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and ids and ids[-1] == tokenizer.eos_token_id:
        ids.pop()  # tokenizers configured with add_eos_token would otherwise end the prompt with EOS
    return ids


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


def encode_instruction(
    tokenizer: Any,
    template: PromptTemplate,
    record: dict[str, str],
    *,
    max_length: int,
    train_on_inputs: bool = False,
) -> EncodedSample:
    """Token ids and labels of one instruction record: prompt masked (unless asked), response + EOS supervised."""
    prompt_ids = encode_prompt(tokenizer, template.render(record["instruction"], record["input"]))
    response_ids = list(tokenizer(record["output"], add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: the model could never learn to stop")
    response_ids.append(tokenizer.eos_token_id)
    fitted_prompt, fitted_response = fit_to_length(prompt_ids, response_ids, max_length)
    truncated = (len(fitted_prompt), len(fitted_response)) != (len(prompt_ids), len(response_ids))
    prompt_labels = list(fitted_prompt) if train_on_inputs else [IGNORE_INDEX] * len(fitted_prompt)
    return EncodedSample(
        input_ids=fitted_prompt + fitted_response,
        labels=prompt_labels + fitted_response,
        truncated=truncated,
    )


def encode_causal_record(
    record: dict[str, Any],
    *,
    tokenizer: Any,
    template: PromptTemplate,
    max_length: int,
    train_on_inputs: bool,
    chat_template: str | None = None,
) -> dict[str, Any]:
    """Encode one normalized record (instruction or chat) for a causal LM."""
    if "messages" in record:
        from finetuning.chat import encode_chat

        return encode_chat(tokenizer, record["messages"], max_length=max_length, chat_template=chat_template).as_dict()
    return encode_instruction(
        tokenizer, template, record, max_length=max_length, train_on_inputs=train_on_inputs
    ).as_dict()
