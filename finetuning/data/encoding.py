"""Instruction records to token ids and labels for causal LMs.

The prompt and the response are tokenized separately and their ids concatenated, so the boundary between
masked prompt and supervised response is exact by construction; a prompt mask computed from a second,
separate tokenization of the prompt can drift by a token where the two texts merge. Inference tokenizes the
same rendered prompt the same way, so what the model sees there is what it was trained on. Every complete
response ends with EOS and that EOS is supervised, whatever the pad token is.
"""

from __future__ import annotations

from typing import Any

from finetuning.data.chat import encode_chat
from finetuning.data.samples import IGNORE_INDEX, EncodedSample, fit_to_length
from finetuning.data.templates import PromptTemplate


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt ids exactly as inference will feed them: with BOS if the tokenizer adds one, never with EOS."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and ids and ids[-1] == tokenizer.eos_token_id:
        ids.pop()  # tokenizers configured with add_eos_token would otherwise end the prompt with EOS
    return ids


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
        return encode_chat(tokenizer, record["messages"], max_length=max_length, chat_template=chat_template).as_dict()
    return encode_instruction(
        tokenizer, template, record, max_length=max_length, train_on_inputs=train_on_inputs
    ).as_dict()
