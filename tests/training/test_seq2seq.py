"""Encoder-decoder pieces: exact source/target encoding and truncation, the collator, ROUGE on decoded ids,
flag handling, the loss scaling fix, and every PEFT method on a tiny T5."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import sample_records

from finetuning.data.preprocessing import build_dataset
from finetuning.data.records import LoadedData
from finetuning.data.samples import IGNORE_INDEX
from finetuning.data.seq2seq import Seq2SeqPaddingCollator, encode_seq2seq_record
from finetuning.data.templates import get_template
from finetuning.errors import UserError
from finetuning.model.arguments import PeftArguments
from finetuning.model.peft_setup import apply_peft, build_peft_config
from finetuning.training.seq2seq import (
    RougeMetrics,
    decode_ids,
    decoder_start_token_id,
    require_instruction_records,
    settle_seq2seq_arguments,
    summed_over_supervised_tokens,
    token_count_loss,
)

RECORD = {"instruction": "Reverse the letters of the word.", "input": "apple", "output": "elppa and more text"}
ADAPTER_METHODS = ("lora", "ptun", "prefix", "prompt", "ia3")
ADAPTER_MARKERS = ("lora_", "ia3_", "prompt_encoder.")  # names of PEFT's own parameters


def encode(tokenizer, record=RECORD, *, source=512, target=256):
    return encode_seq2seq_record(
        record, tokenizer=tokenizer, template=get_template("alpaca"), max_source_length=source, max_target_length=target
    )


def prompt_ids(tokenizer, record=RECORD):
    return tokenizer(get_template("alpaca").render(record["instruction"], record["input"]))["input_ids"]


def content_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(params=["bos", "t5", "bart"])
def tokenizer(request, tiny_tokenizer):
    """The tiny tokenizer with each convention of special tokens: BOS only (as built), T5's trailing EOS, and
    BART's ``<s> ... </s>``; returns it with the special tokens it puts before and after a text."""
    import copy

    from tokenizers import processors

    tokenizer = copy.deepcopy(tiny_tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    before, after = {"bos": ([bos], []), "t5": ([], [eos]), "bart": ([bos], [eos])}[request.param]
    if request.param != "bos":
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=" ".join(["<s>"] * len(before) + ["$A"] + ["</s>"] * len(after)),
            special_tokens=[("<s>", bos), ("</s>", eos)],
        )
    assert tokenizer("a")["input_ids"] == [*before, *content_ids(tokenizer, "a"), *after]
    return SimpleNamespace(tokenizer=tokenizer, before=before, after=after)


def target_ids(styled, text):
    """The response as the tokenizer writes it, and exactly one EOS at the end."""
    return [*styled.before, *content_ids(styled.tokenizer, text), styled.tokenizer.eos_token_id]


# --- encoding -----------------------------------------------------------------------------------------------


def test_prompt_is_the_source_and_the_response_with_one_eos_the_target(tokenizer):
    sample = encode(tokenizer.tokenizer)
    assert sample["input_ids"] == prompt_ids(tokenizer.tokenizer)  # with its special tokens, as inference has it
    assert sample["labels"] == target_ids(tokenizer, RECORD["output"])
    assert sample["labels"].count(tokenizer.tokenizer.eos_token_id) == 1
    assert IGNORE_INDEX not in sample["labels"]  # nothing to mask: every target token is in the loss
    assert sample["supervised"] == len(sample["labels"]) and sample["truncated"] is False
    assert tokenizer.tokenizer.decode(sample["labels"], skip_special_tokens=True) == RECORD["output"]


def test_source_is_cut_to_max_source_length_keeping_its_special_tokens(tokenizer):
    full = prompt_ids(tokenizer.tokenizer)
    sample = encode(tokenizer.tokenizer, source=12)
    assert len(full) > 12 and len(sample["input_ids"]) == 12 and sample["truncated"] is True
    # the prompt's start (the instruction) survives, and so does T5's trailing EOS
    assert sample["input_ids"] == full[: 12 - len(tokenizer.after)] + tokenizer.after
    assert sample["labels"] == target_ids(tokenizer, RECORD["output"])


def test_target_is_cut_to_max_target_length_without_a_false_eos(tokenizer):
    target = target_ids(tokenizer, RECORD["output"])
    sample = encode(tokenizer.tokenizer, target=3)
    assert len(target) > 3 and sample["labels"] == target[:3] and sample["truncated"] is True
    assert tokenizer.tokenizer.eos_token_id not in sample["labels"] and sample["supervised"] == 3


def test_target_that_just_fits_keeps_its_eos(tokenizer):
    fits = len(target_ids(tokenizer, RECORD["output"]))
    sample = encode(tokenizer.tokenizer, target=fits)
    assert len(sample["labels"]) == fits and sample["labels"][-1] == tokenizer.tokenizer.eos_token_id
    assert sample["truncated"] is False


def test_empty_response_still_teaches_to_stop(tokenizer):
    sample = encode(tokenizer.tokenizer, {"instruction": "Say nothing.", "input": "", "output": ""})
    assert sample["labels"] == [*tokenizer.before, tokenizer.tokenizer.eos_token_id]


def test_data_report_counts_every_target_token(tiny_tokenizer, tmp_path):
    records = sample_records(6)
    loaded = LoadedData(records=records, source="sample")
    dataset, report = build_dataset(
        loaded,
        lambda record: encode(tiny_tokenizer, record),
        split="train",
        settings={"t": "seq2seq"},
        tokenizer=tiny_tokenizer,
        pack_block_size=None,
        batch_size=2,
        num_proc=None,
        cache_dir=str(tmp_path),
        overwrite_cache=True,
    )
    assert report.supervised_tokens == sum(len(labels) for labels in dataset["labels"])
    assert report.supervised_tokens == sum(len(tiny_tokenizer(r["output"])["input_ids"]) + 1 for r in records)
    assert dataset.column_names == ["input_ids", "labels"]


# --- collator -----------------------------------------------------------------------------------------------


def test_collator_pads_each_side_to_its_own_length_and_labels_by_position():
    eos = 1
    collator = Seq2SeqPaddingCollator(pad_token_id=eos, decoder_start_token_id=0)  # pad == EOS: EOS labels survive
    batch = collator(
        [
            {"input_ids": [5, 6, 7], "labels": [8, eos]},
            {"input_ids": [5], "labels": [9, 9, 9, eos]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, eos, IGNORE_INDEX, IGNORE_INDEX], [9, 9, 9, eos]]
    assert batch["decoder_input_ids"].tolist() == [[0, 8, eos, eos], [0, 9, 9, 9]]  # labels shifted right, padded
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_collator_rounds_up_to_a_multiple():
    collator = Seq2SeqPaddingCollator(pad_token_id=0, decoder_start_token_id=0, pad_to_multiple_of=4)
    batch = collator([{"input_ids": [5], "labels": [6, 7]}])
    assert batch["input_ids"].tolist() == [[5, 0, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, IGNORE_INDEX, IGNORE_INDEX]]


# --- decoding and ROUGE -------------------------------------------------------------------------------------


def ids(tokenizer, text):
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def padded(rows, value, width=None):
    width = width or max(map(len, rows))
    return [row + [value] * (width - len(row)) for row in rows]


def test_decoding_skips_pad_eos_and_the_trainers_minus_100(tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    rows = [[pad, *ids(tiny_tokenizer, "green apple")], [pad, *ids(tiny_tokenizer, "red")]]
    assert decode_ids(tiny_tokenizer, padded(rows, -100)) == ["green apple", "red"]
    assert decode_ids(tiny_tokenizer, padded(rows, pad)) == ["green apple", "red"]


def test_rouge_scores_generated_text(tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    generated = padded([[pad, *ids(tiny_tokenizer, "the cat sat")], [pad, *ids(tiny_tokenizer, "a dog")]], pad, 12)
    references = padded([ids(tiny_tokenizer, "the cat sat"), ids(tiny_tokenizer, "the red fox")], IGNORE_INDEX)
    metrics = RougeMetrics(tiny_tokenizer)(SimpleNamespace(predictions=generated, label_ids=references))
    assert metrics["rouge1"] == pytest.approx(50.0) and metrics["rougeL"] == pytest.approx(50.0)
    assert metrics["rouge2"] == pytest.approx(50.0)  # "the cat sat" is perfect, "a dog" shares nothing
    assert metrics["exact_match"] == pytest.approx(50.0)
    assert metrics["gen_len"] == pytest.approx(
        (len(ids(tiny_tokenizer, "the cat sat")) - 1 + len(ids(tiny_tokenizer, "a dog")) - 1) / 2
    )


# --- arguments ----------------------------------------------------------------------------------------------


def data_arguments(**overrides):
    values = {
        "max_source_length": 512,
        "max_target_length": 256,
        "dataset_concatenation": False,
        "train_on_inputs": False,
    } | overrides
    return SimpleNamespace(**values)


def test_packing_flag_warns_once_and_generation_length_defaults_to_the_target(caplog):
    training = SimpleNamespace(generation_max_length=None)
    config = SimpleNamespace(is_encoder_decoder=True, model_type="t5")
    with caplog.at_level(logging.WARNING):
        settle_seq2seq_arguments(config, data_arguments(dataset_concatenation=True), training)
    warnings = [record.message for record in caplog.records if "dataset_concatenation" in record.message]
    assert len(warnings) == 1 and "ignored" in warnings[0]
    assert training.generation_max_length == 257  # the decoder start token + a full-length target


def test_an_explicit_generation_length_is_kept():
    training = SimpleNamespace(generation_max_length=32)
    settle_seq2seq_arguments(SimpleNamespace(is_encoder_decoder=True), data_arguments(), training)
    assert training.generation_max_length == 32


def test_decoder_only_models_and_tiny_lengths_are_refused():
    training = SimpleNamespace(generation_max_length=None)
    with pytest.raises(UserError, match=r"'llama' is not an encoder-decoder model: fine-tune it with finetune_clm\.py"):
        settle_seq2seq_arguments(
            SimpleNamespace(is_encoder_decoder=False, model_type="llama"), data_arguments(), training
        )
    with pytest.raises(UserError, match="field 'max_target_length': must be at least 2"):
        settle_seq2seq_arguments(
            SimpleNamespace(is_encoder_decoder=True), data_arguments(max_target_length=1), training
        )


def test_chat_records_are_refused_with_their_source():
    chat = LoadedData(records=[{"messages": [{"role": "assistant", "content": "hi"}]}], source="chat.jsonl")
    with pytest.raises(UserError, match=r"chat\.jsonl: chat records"):
        require_instruction_records(SimpleNamespace(train=chat, validation=None))


# --- models and PEFT ----------------------------------------------------------------------------------------


def load_t5(path):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(path)


def tiny_batch(tokenizer):
    records = sample_records(2)
    features = [encode(tokenizer, record, source=64, target=16) for record in records]
    return Seq2SeqPaddingCollator(tokenizer.pad_token_id, tokenizer.pad_token_id)(features)  # T5 starts with pad


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_every_adapter_method_builds_for_t5_trains_only_itself(method, tiny_model, tiny_tokenizer):
    base = load_t5(tiny_model("t5"))
    config = build_peft_config(PeftArguments(peft=method), base.config, task_type="SEQ_2_SEQ_LM")
    model = apply_peft(base, config)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) > 0
    assert all(any(marker in name for marker in ADAPTER_MARKERS) for name in trainable), sorted(
        trainable
    )  # base frozen
    model(**tiny_batch(tiny_tokenizer)).loss.backward()
    # every adapter parameter is in the graph (LoRA's A only after B leaves zero, so its B must get a gradient)
    missing = [name for name, p in trainable.items() if p.grad is None and "lora_A" not in name]
    assert not missing
    assert any(p.grad.abs().sum() > 0 for p in trainable.values() if p.grad is not None)


def test_lora_targets_t5_query_and_value_by_default(tiny_model):
    base = load_t5(tiny_model("t5"))
    config = build_peft_config(PeftArguments(peft="lora"), base.config, task_type="SEQ_2_SEQ_LM")
    model = apply_peft(base, config)
    adapted = {name.split(".")[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q", "v"}


def test_full_fine_tuning_and_llama_adapter(tiny_model):
    config = load_t5(tiny_model("t5")).config
    assert build_peft_config(PeftArguments(peft="none"), config, task_type="SEQ_2_SEQ_LM") is None
    with pytest.raises(UserError, match=r"llama_adapter supports only .*not 't5'"):
        build_peft_config(PeftArguments(peft="llama_adapter"), config, task_type="SEQ_2_SEQ_LM")


@pytest.mark.parametrize("method", ["none", "lora", "prompt"])
def test_accumulated_micro_batches_train_what_one_batch_of_them_trains(method, tiny_model, tiny_tokenizer, tmp_path):
    """The loss is summed over target tokens and divided by their count over the whole optimizer step
    (token_count_loss), so two micro-batches of one sample each (or two ranks) take the same step as one batch of
    both. With the models' own per-batch mean the short target weighs as much as the long one: the two updates
    then differ by 100% of their size (relative norm, measured without clipping), against a tolerance of 1e-5."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    long, short = dict(RECORD, output="one two three four five six seven eight nine ten"), dict(RECORD, output="x")
    samples = [encode(tiny_tokenizer, record, target=16) for record in (long, short)]
    assert len(samples[0]["labels"]) > 4 * len(samples[1]["labels"])

    def one_step(batch: int, accumulation: int) -> dict[str, torch.Tensor]:
        from transformers import AutoModelForSeq2SeqLM

        base = AutoModelForSeq2SeqLM.from_pretrained(tiny_model("t5"), dropout_rate=0.0)  # same forward both ways
        torch.manual_seed(0)
        model = apply_peft(base, build_peft_config(PeftArguments(peft=method), base.config, task_type="SEQ_2_SEQ_LM"))
        loss = token_count_loss(model)
        start = decoder_start_token_id(model)
        args = Seq2SeqTrainingArguments(
            output_dir=str(tmp_path / f"{batch}x{accumulation}"),
            **dict(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=1),
            **dict(optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", report_to=[], use_cpu=True),
            **dict(train_sampling_strategy="sequential", save_strategy="no", disable_tqdm=True),
        )
        collator = Seq2SeqPaddingCollator(tiny_tokenizer.pad_token_id, decoder_start_token_id=start)
        Seq2SeqTrainer(
            model=model, args=args, train_dataset=samples, data_collator=collator, compute_loss_func=loss
        ).train()
        return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    accumulated, together = one_step(1, 2), one_step(2, 1)
    for name, value in together.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_decoder_inputs_are_the_models_own_shift_of_the_labels(tiny_model, tiny_tokenizer):
    model = load_t5(tiny_model("t5"))
    batch = tiny_batch(tiny_tokenizer)
    assert decoder_start_token_id(model) == tiny_tokenizer.pad_token_id
    assert batch["decoder_input_ids"].tolist() == model.prepare_decoder_input_ids_from_labels(batch["labels"]).tolist()
    summed = summed_over_supervised_tokens(model(**batch), batch["labels"])
    assert summed.item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)  # one batch: the plain mean
