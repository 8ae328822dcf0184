"""Argument parsing: legacy flags keep their old meaning, config files work, bad flags fail in one line."""

from __future__ import annotations

import dataclasses
import json

import pytest

from finetuning.cli import parse_arguments
from finetuning.data.arguments import DataArguments, Seq2SeqDataArguments
from finetuning.errors import UserError
from finetuning.model.arguments import ModelArguments, PeftArguments, Seq2SeqPeftArguments
from finetuning.training.arguments import FinetuneTrainingArguments, Seq2SeqFinetuneTrainingArguments

CLM = (ModelArguments, DataArguments, PeftArguments, FinetuneTrainingArguments)


def parse(*flags: str, dataclasses=CLM):
    return parse_arguments(dataclasses, list(flags))


def test_defaults_match_the_scripts_this_suite_replaces(tmp_path):
    model, data, peft, training = parse("--output_dir", str(tmp_path))
    assert model.trust_remote_code is False
    assert (data.max_seq_length, data.train_on_inputs, data.prompt_template) == (512, False, "alpaca")
    assert (peft.peft, peft.lora_rank, peft.lora_alpha, peft.lora_dropout) == ("lora", 8, 16, 0.0)
    assert (peft.num_virtual_tokens, peft.ptun_hidden_size, peft.adapter_layers, peft.adapter_len) == (10, 1024, 30, 10)
    assert training.overwrite_output_dir is False


def test_legacy_flags_map_to_their_new_names(tmp_path):
    *_, training = parse(
        "--output_dir",
        str(tmp_path),
        "--evaluation_strategy",
        "steps",
        "--no_cuda",
        "--xpu_backend",
        "gloo",
        "--group_by_length",
        "True",
        "--overwrite_output_dir",
    )
    assert training.eval_strategy == "steps"
    assert training.use_cpu is True
    assert training.ddp_backend is None  # one process: a backend means nothing (old releases ignored it too)
    assert training.train_sampling_strategy == "group_by_length"
    assert training.overwrite_output_dir is True


def test_warmup_ratio_becomes_fractional_warmup_steps(tmp_path):
    *_, training = parse("--output_dir", str(tmp_path), "--warmup_ratio", "0.03")
    assert training.warmup_steps == pytest.approx(0.03)


def test_bf16_without_an_accelerator_means_cpu_autocast(tmp_path):
    *_, training = parse("--output_dir", str(tmp_path), "--bf16", "True")
    assert training.bf16 is True and training.use_cpu is True


def test_use_fast_tokenizer_false_and_lists(tmp_path):
    model, data, peft, _ = parse(
        "--output_dir",
        str(tmp_path),
        "--use_fast_tokenizer",
        "false",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--special_tokens",
        "<a>",
        "<b>",
    )
    assert model.use_fast_tokenizer is False
    assert peft.lora_target_modules == ["q_proj", "v_proj"]
    assert data.special_tokens == ["<a>", "<b>"]


def test_local_rank_from_torch_distributed_launch_is_accepted(tmp_path):
    *_, training = parse(
        "--output_dir",
        str(tmp_path),
        "--local-rank=0",
        dataclasses=(ModelArguments, Seq2SeqDataArguments, PeftArguments, Seq2SeqFinetuneTrainingArguments),
    )
    assert training.local_rank == 0


def test_yaml_config_with_flags_overriding_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'out'}\npeft: ptun\nlearning_rate: 0.001\nlora_target_modules: [q_proj, k_proj]\n"
        "dataset_concatenation: true\nbf16: false\n"
    )
    _, data, peft, training = parse(str(config), "--learning_rate", "0.002")
    assert peft.peft == "ptun" and peft.lora_target_modules == ["q_proj", "k_proj"]
    assert data.dataset_concatenation is True
    assert training.learning_rate == pytest.approx(0.002)


def test_json_config_via_flag(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path), "max_seq_length": 128, "peft": "none"}))
    _, data, peft, _ = parse("--config", str(config))
    assert data.max_seq_length == 128 and peft.peft == "none"


def test_committed_presets_parse(tmp_path):
    from pathlib import Path

    presets = sorted((Path(__file__).resolve().parents[2] / "scripts" / "configs").glob("*.yaml"))
    assert presets, "scripts/configs/ holds the presets"
    for preset in presets:
        parse(str(preset), "--output_dir", str(tmp_path))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--config", "missing.yaml"], "missing.yaml: config file not found"),
        ([], "--output_dir is required"),
    ],
)
def test_bad_configuration_is_one_clear_error(flags, expected):
    with pytest.raises(UserError) as error:
        parse(*flags)
    assert expected in str(error.value)


def test_unknown_peft_method_is_one_line_naming_the_flag(tmp_path):
    with pytest.raises(UserError) as error:
        parse("--output_dir", str(tmp_path), "--peft", "qlora")
    assert str(error.value).startswith("--peft: invalid choice: 'qlora'")


def test_a_misspelt_flag_gets_a_did_you_mean(tmp_path):
    with pytest.raises(UserError) as error:
        parse("--output_dir", str(tmp_path), "--learnig_rate", "1e-4")
    assert str(error.value) == "--learnig_rate: no such flag (did you mean --learning_rate?)"


def test_seq2seq_flags_offer_no_llama_adapter_and_promise_no_bleu(tmp_path):
    seq2seq = (ModelArguments, Seq2SeqDataArguments, Seq2SeqPeftArguments, Seq2SeqFinetuneTrainingArguments)
    with pytest.raises(UserError, match="invalid choice: 'llama_adapter'"):
        parse("--output_dir", str(tmp_path), "--peft", "llama_adapter", dataclasses=seq2seq)
    helps = [field.metadata.get("help", "") for group in seq2seq for field in dataclasses.fields(group)]
    assert not [text for text in helps if "BLEU" in text or "llama_adapter" in text]


def test_every_default_runs_finetune_args_json_parses_back_to_the_same_arguments(tmp_path):
    from finetuning.training.run import RUN_ARGUMENTS_FILE, save_run_arguments

    for extra in ([], ["--report_to", "none"], ["--peft", "ptun", "--evaluation_strategy", "epoch", "--do_eval"]):
        first = parse("--output_dir", str(tmp_path), "--do_train", *extra)
        save_run_arguments(str(tmp_path), first)
        again = parse(str(tmp_path / RUN_ARGUMENTS_FILE))
        for before, after in zip(first, again, strict=True):
            as_dict = (lambda group: group.to_dict()) if hasattr(before, "to_dict") else dataclasses.asdict
            assert as_dict(after) == as_dict(before)


def test_partial_checkpointing_reaches_the_trainer_under_the_old_and_new_names(tmp_path):
    """Every N-th layer recomputed (transformers' every_n_layers): the old scripts' flag name and the new one."""
    for switch, options in (
        ("--gradient_checkpointing", "--gradient_checkpointing_kwargs"),
        ("--activation_checkpointing", "--activation_checkpointing_kwargs"),
    ):
        *_, training = parse("--output_dir", str(tmp_path), switch, "True", options, '{"every_n_layers": 4}')
        assert training.gradient_checkpointing is True
        assert training.activation_checkpointing_kwargs == {"every_n_layers": 4}
