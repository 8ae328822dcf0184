"""Generating answers from a fine-tuned model, prompted exactly as it was trained.

Prompts are rendered by the run's :class:`~finetuning.data.templates.PromptTemplate` and tokenized by the very
function training used for the prompt side of each sample (:func:`~finetuning.data.encoding.encode_prompt` for
causal LMs, :func:`~finetuning.data.seq2seq.encode_source` for encoder-decoders, the chat module's rendering for
chat records). Decoding always gets a complete ``GenerationConfig`` built from the flags, so no device, model
default or library default decides a setting behind the user's back. Only the new tokens are decoded, cut at
the first EOS, so an answer never echoes its prompt.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from finetuning.data.encoding import encode_prompt
from finetuning.data.records import Record
from finetuning.data.templates import Rendering, get_template
from finetuning.errors import UserError

SAMPLE_INSTRUCTIONS: tuple[dict[str, str], ...] = (
    {"instruction": "Tell me about alpacas.", "input": ""},
    {"instruction": "Translate the color 'green' into French.", "input": ""},
    {"instruction": "Add the two numbers.", "input": "12 + 30"},
    {"instruction": "Write the word in capital letters.", "input": "river"},
    {"instruction": "Give three tips for staying healthy.", "input": ""},
)


def build_generation_config(
    model: Any,
    tokenizer: Any,
    *,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    chat_template: str | None = None,
) -> Any:
    """Every decoding setting spelled out, so none is filled in from the model's saved defaults.

    ``generate`` fills the settings left ``None`` from the model's ``generation_config.json`` (which for many
    chat models turns sampling on at temperature 0.6, or sets a repetition penalty): none of the settings
    the flags control, nor the length and repetition ones such files set, is left ``None`` here.
    """
    from transformers import GenerationConfig

    eos_ids = stop_token_ids(model, tokenizer, chat_template)
    settings: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": 0,
        "do_sample": do_sample,
        "num_beams": num_beams,
        "temperature": 1.0 if temperature is None else temperature,
        "top_p": 1.0 if top_p is None else top_p,
        "top_k": 50 if top_k is None else top_k,
        "typical_p": 1.0,
        "repetition_penalty": repetition_penalty,
        "no_repeat_ngram_size": 0,
        "length_penalty": 1.0,
        "num_return_sequences": 1,
        "early_stopping": False,
        "use_cache": True,
        "eos_token_id": eos_ids,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    if getattr(model.config, "is_encoder_decoder", False):
        start = getattr(model.generation_config, "decoder_start_token_id", None)
        settings["decoder_start_token_id"] = model.config.decoder_start_token_id if start is None else start
    return GenerationConfig(**settings)


def stop_token_ids(model: Any, tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """The tokenizer's EOS (what training appended to every response), a named chat template's end-of-turn
    marker, and any EOS the model declares."""
    from finetuning.data.chat import end_of_turn_token_ids

    ids = end_of_turn_token_ids(tokenizer, chat_template)
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in declared if isinstance(declared, list) else [declared]:
        if token is not None and token not in ids:
            ids.append(token)
    if not ids:
        raise UserError("the tokenizer has no EOS token: generation could never stop", field="tokenizer_name")
    return ids


def user_turn(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@dataclass
class Generator:
    """A model, its tokenizer and how it was prompted in training: records in, answers out."""

    model: Any
    tokenizer: Any
    generation_config: Any
    rendering: Rendering = field(default_factory=lambda: Rendering(get_template("alpaca")))
    generated_tokens: int = field(default=0, init=False)  # new tokens so far, stop token excluded

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    # --- prompts -----------------------------------------------------------------------------------------
    def prompt_ids(self, record: Record | str) -> list[int]:
        """Token ids of the prompt for an instruction (a string, or an instruction or chat record), tokenized
        by the very function that tokenized the prompt side of each training sample."""
        if isinstance(record, str):
            record = {"instruction": record, "input": ""}
        if "messages" not in record and self.rendering.chat:  # a chat model: the instruction is a user turn
            given = record.get("input", "")
            record = {"messages": [user_turn(record["instruction"] + (f"\n\n{given}" if given.strip() else ""))]}
        if "messages" in record:
            return self._chat_prompt_ids(record["messages"])
        return self.text_prompt_ids(self.rendering.template.render(record["instruction"], record.get("input", "")))

    def text_prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of an already rendered prompt, tokenized as a rendered instruction is."""
        if self.is_encoder_decoder:
            from finetuning.data.seq2seq import encode_source

            return encode_source(self.tokenizer, prompt, max_length=sys.maxsize)[0]  # T5 keeps its trailing EOS
        return encode_prompt(self.tokenizer, prompt)

    def _chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation (without its final assistant turn, if any), then the assistant header, as in training."""
        from finetuning.data.chat import render_chat_prompt

        if self.is_encoder_decoder:
            raise UserError(
                "chat records (messages) are not supported for encoder-decoder models; use instruction "
                "records (instruction, input)",
                field="messages",
            )
        if messages and messages[-1]["role"] == "assistant":  # a training record: answer its last turn again
            messages = messages[:-1]
        text = render_chat_prompt(self.tokenizer, messages, self.rendering.chat_template)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # the rendering holds any BOS

    # --- generation --------------------------------------------------------------------------------------
    def _batch_tensors(self, prompts: list[list[int]]) -> dict[str, Any]:
        """Pad to the longest prompt: on the left for decoder-only models, so every prompt ends where
        generation starts; position ids follow the attention mask, so padding changes nothing."""
        import torch

        longest = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id
        rows, masks = [], []
        for ids in prompts:
            padding = [pad] * (longest - len(ids))
            mask = [0] * len(padding)
            if self.is_encoder_decoder:
                rows.append(ids + padding)
                masks.append([1] * len(ids) + mask)
            else:
                rows.append(padding + ids)
                masks.append(mask + [1] * len(ids))
        device = self.device
        return {"input_ids": torch.tensor(rows, device=device), "attention_mask": torch.tensor(masks, device=device)}

    def generate_ids(
        self,
        prompts: list[list[int]],
        streamer: Any = None,
        *,
        logits_processor: Any = None,
        stopping_criteria: Any = None,
        **overrides: Any,
    ) -> list[list[int]]:
        """New token ids for each prompt (one batch), cut before the first stop token. ``logits_processor`` and
        ``stopping_criteria`` are added to those ``generate`` builds from the config; ``overrides`` change it."""
        import torch

        if any(not ids for ids in prompts):
            raise UserError("an empty prompt: the tokenizer produced no tokens")
        inputs = self._batch_tensors(prompts)
        config = self.generation_config
        if overrides:
            config = type(config).from_dict({**config.to_dict(), **overrides})
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                generation_config=config,
                streamer=streamer,
                logits_processor=logits_processor,
                stopping_criteria=stopping_criteria,
            )
        # decoder-only outputs repeat the prompt; encoder-decoder outputs start with the decoder start token
        new_tokens = output[:, 1:] if self.is_encoder_decoder else output[:, inputs["input_ids"].shape[1] :]
        stops = set(config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id])
        result = []
        for row in new_tokens.tolist():
            cut = next((index for index, token in enumerate(row) if token in stops), len(row))
            result.append(row[:cut])
        self.generated_tokens += sum(len(ids) for ids in result)
        return result

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(
        self, records: Iterable[Record | str], batch_size: int = 8, on_batch: Callable[[int], Any] | None = None
    ) -> list[str]:
        """Answers for ``records``, in order; batches hold prompts of similar length, to pad little.
        ``on_batch`` is told how many prompts each finished batch answered (a progress bar's ``update``)."""
        prompts = [self.prompt_ids(record) for record in records]
        order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]), reverse=True)
        answers: list[str] = [""] * len(prompts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for index, ids in zip(chunk, self.generate_ids([prompts[index] for index in chunk]), strict=True):
                answers[index] = self.decode(ids)
            if on_batch is not None:
                on_batch(len(chunk))
        return answers

    def stream(self, record: Record | str, out: TextIO) -> str:
        """Generate one answer, writing its text to ``out`` as the tokens come (beam search: at the end)."""
        from transformers import TextStreamer

        ids = self.prompt_ids(record)
        if self.generation_config.num_beams > 1:  # beam search cannot stream: its best beam is known only at the end
            answer = self.decode(self.generate_ids([ids])[0])
            print(answer, file=out, flush=True)
            return answer

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                print(text, end="\n" if stream_end else "", file=out, flush=True)

        new = self.generate_ids([ids], streamer=_Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True))
        return self.decode(new[0])
