"""finetune_seq2seq.py end to end, run as users run it: the Flan-T5 command line, every PEFT method, ROUGE on
generated text, torch.distributed.launch, reloading the adapter, one-line errors, and a learning check.

The Flan-T5 command line and the launched ranks start the script afresh; the other runs start it from a warm
interpreter (tests/warm_start.py: the same process less the 5 s of imports)."""

from __future__ import annotations

import json
import random
import socket
import sys

import pytest
from conftest import sample_records
from runs import FLOAT32_TOLERANCE, adapter_difference, logged_losses, run_start, t5_without_dropout, trainer_state

QUICK = ("--per_device_train_batch_size", "4", "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no")


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_trained_run(output_dir, *, adapter: bool = True):
    names = {path.name for path in output_dir.iterdir()}
    expected = {
        "tokenizer.json",
        "all_results.json",
        "train_results.json",
        "trainer_state.json",
        "finetune_args.json",
        "prompt_template.json",
    }
    expected |= {"adapter_model.safetensors", "adapter_config.json"} if adapter else {"model.safetensors"}
    assert expected <= names, sorted(names)
    assert not any(name.endswith(".bin") and name != "training_args.bin" for name in names)
    assert json.loads((output_dir / "prompt_template.json").read_text())["prompt_template"] == "alpaca"


def free_port() -> int:
    """A port no other test run on this host is using for its rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_records(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_flan_t5_command_line(run, tiny_model, sample_file, tmp_path):
    output = tmp_path / "flan-t5-xl_peft_finetuned_model"
    result = run(
        "finetune_seq2seq.py",
        "--model_name_or_path",
        tiny_model("t5"),
        "--bf16",
        "True",
        "--train_file",
        sample_file,
        "--per_device_train_batch_size",
        "2",
        "--per_device_eval_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--do_train",
        "--learning_rate",
        "1.0e-5",
        "--warmup_ratio",
        "0.03",
        "--weight_decay",
        "0.0",
        "--num_train_epochs",
        "5",
        "--logging_steps",
        "10",
        "--save_steps",
        "2000",
        "--save_total_limit",
        "2",
        "--overwrite_output_dir",
        "--output_dir",
        output,
        "--peft",
        "lora",
        "--max_steps",
        "2",
    )
    assert_ok(result)
    assert_trained_run(output)
    assert "train data: 24 samples read, 0 empty skipped, 0 truncated" in result.stdout
    saved = json.loads((output / "finetune_args.json").read_text())
    assert (saved["peft"], saved["max_source_length"], saved["max_target_length"]) == ("lora", 512, 256)


# method -> (learning rate, drop of the training records' loss required after the 2 steps); measured drops in the
# comments. The start's loss is about 6.64 (ln of the 512-token vocabulary is 6.24).
METHOD_LEARNING = {
    "ptun": ("1e-4", 0.003),  # 0.0066; at 1e-3 and above the loss drops less, and from 1e-2 it rises 0.012
    "prefix": ("1e-1", 0.07),  # 0.147
    "prompt": ("5e-1", 0.008),  # 0.016
    "ia3": ("1e-1", 0.2),  # 0.430
    "none": ("1e-3", 0.15),  # 0.298
}


@pytest.mark.parametrize("method", ["ptun", "prefix", "prompt", "ia3", "none"])
def test_every_peft_method_trains_and_saves(method, warm_run, tiny_model, sample_file, tmp_path):
    """Two steps at a rate high enough that the saved model's loss on the training records is measurably below
    the run's start (the base with its untrained adapter, rebuilt from the run's seed: the same loss to the last
    digit when the run's learning rate is 0)."""
    from transformers import AutoModelForSeq2SeqLM

    output = tmp_path / method
    rate, margin = METHOD_LEARNING[method]
    result = warm_run(
        "finetune_seq2seq.py",
        "--model_name_or_path",
        tiny_model("t5"),
        "--train_file",
        sample_file,
        "--output_dir",
        output,
        "--do_train",
        "--peft",
        method,
        "--dataset_concatenation",
        "--learning_rate",
        rate,
        *QUICK,
    )
    assert_ok(result)
    assert_trained_run(output, adapter=method != "none")
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "--dataset_concatenation" in line]
    assert len(warnings) == 1 and "ignored: packing does not apply to encoder-decoder models" in warnings[0]
    trained = load_trained(tiny_model("t5"), output, adapter=method != "none").eval()
    assert generates(trained, output)
    start = run_start(tiny_model("t5"), output, AutoModelForSeq2SeqLM, "SEQ_2_SEQ_LM")
    trained_loss, start_loss = (target_loss(model, output, sample_records(24)) for model in (trained, start))
    assert trained_loss < start_loss - margin, (trained_loss, start_loss)


def target_loss(model, output, records) -> float:
    """Mean cross-entropy of the records' target tokens, each record encoded as the run in ``output`` encodes it."""
    import torch
    from transformers import AutoTokenizer

    from finetuning.data.seq2seq import encode_seq2seq_record
    from finetuning.data.templates import get_template

    arguments = json.loads((output / "finetune_args.json").read_text())
    tokenizer, template = AutoTokenizer.from_pretrained(output), get_template(arguments["prompt_template"])
    total, count = 0.0, 0
    for record in records:
        encoded = encode_seq2seq_record(
            record,
            tokenizer=tokenizer,
            template=template,
            max_source_length=arguments["max_source_length"],
            max_target_length=arguments["max_target_length"],
        )
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([encoded["input_ids"]]), labels=torch.tensor([encoded["labels"]])).loss
        total += loss.item() * len(encoded["labels"])
        count += len(encoded["labels"])
    return total / count


def load_trained(base_dir, output, *, adapter: bool):
    """The saved run as inference loads it: base + adapter through PEFT, or the full model."""
    import peft
    from transformers import AutoModelForSeq2SeqLM

    if not adapter:
        return AutoModelForSeq2SeqLM.from_pretrained(output)
    return peft.PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_dir), output)


def generates(model, tokenizer_dir) -> bool:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    generated = model.generate(**tokenizer(["Add the two numbers.\n1 + 2\n"], return_tensors="pt"), max_new_tokens=4)
    return generated.shape[0] == 1 and 1 < generated.shape[1] <= 5


def test_eval_with_generation_writes_rouge(warm_run, tiny_model, sample_file, tmp_path):
    """ROUGE of generated text; under --bf16 with LoRA, so generation must run under autocast like training."""
    validation = write_records(tmp_path / "validation.json", sample_records(30)[24:])
    output = tmp_path / "eval"
    result = warm_run(
        "finetune_seq2seq.py",
        "--model_name_or_path",
        tiny_model("t5"),
        "--train_file",
        sample_file,
        "--validation_file",
        validation,
        "--bf16",
        "True",
        "--output_dir",
        output,
        "--do_train",
        "--do_eval",
        "--predict_with_generate",
        "--generation_max_length",
        "8",
        "--generation_num_beams",
        "2",
        "--max_source_length",
        "64",
        "--max_target_length",
        "16",
        "--peft",
        "lora",
        *QUICK,
    )
    assert_ok(result)
    metrics = json.loads((output / "all_results.json").read_text())
    assert {"eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_gen_len", "eval_loss", "perplexity"} <= set(metrics)
    assert metrics["eval_samples"] == 6 and 0 <= metrics["eval_rougeL"] <= 100
    assert 0 <= metrics["eval_gen_len"] <= 7  # generation_max_length counts the decoder start token
    assert "eval_rougeL" in json.loads((output / "eval_results.json").read_text())
    assert "validation data: 6 samples read" in result.stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_torch_distributed_launch_on_cpu_trains_what_one_process_trains(
    run, warm_run, tiny_model, sample_file, tmp_path
):
    """2 ranks x 4 samples take the steps of one process with batch 8: the same per-step losses and adapter.
    The loss is a mean over the target tokens of the whole step (training/seq2seq.token_count_loss); with T5's own
    per-batch mean a rank's short targets weighed as much as another's long ones and the adapters differed."""
    base = t5_without_dropout(tiny_model("t5"), tmp_path / "t5_without_dropout")
    common = [
        *("--model_name_or_path", base, "--train_file", sample_file, "--do_train", "--peft", "lora", "--no_cuda"),
        *("--lora_dropout", "0", "--num_train_epochs", "1", "--learning_rate", "1e-2", "--logging_steps", "1"),
        *("--save_strategy", "no", "--seed", "0", "--max_grad_norm", "0"),
    ]
    output = tmp_path / "ddp"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.launch",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--node_rank=0",
    ]
    result = run(
        "finetune_seq2seq.py",
        *common,
        *("--validation_file", sample_file, "--do_eval", "--predict_with_generate", "--generation_max_length", "6"),
        *("--output_dir", output, "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4"),
        launcher=launcher,
    )
    assert_ok(result)
    assert_trained_run(output)
    metrics = json.loads((output / "all_results.json").read_text())
    assert trainer_state(output)["global_step"] == 3  # 24 samples / (2 ranks x 4): one data-parallel job, not two
    assert metrics["eval_samples"] == 24 and "eval_rougeL" in metrics
    alone = tmp_path / "one_process"
    assert_ok(warm_run("finetune_seq2seq.py", *common, "--output_dir", alone, "--per_device_train_batch_size", "8"))
    assert logged_losses(output) == pytest.approx(logged_losses(alone), abs=FLOAT32_TOLERANCE)
    assert adapter_difference(output, alone) <= FLOAT32_TOLERANCE


def test_adapter_reloads_and_generates(warm_run, tiny_model, sample_file, tmp_path):
    import peft
    import torch
    from safetensors.torch import load_file

    base_dir = tiny_model("t5")
    before = load_file(str(base_dir / "model.safetensors"))
    output = tmp_path / "adapter"
    result = warm_run(
        "finetune_seq2seq.py",
        "--model_name_or_path",
        base_dir,
        "--train_file",
        sample_file,
        "--output_dir",
        output,
        "--do_train",
        "--peft",
        "lora",
        "--learning_rate",
        "1e-2",
        *QUICK,
    )
    assert_ok(result)
    after = load_file(str(base_dir / "model.safetensors"))
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    model = load_trained(base_dir, output, adapter=True)
    assert isinstance(model, peft.PeftModel)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained: LoRA B starts at zero
    assert generates(model, output)


@pytest.mark.parametrize("case", ["decoder-only model", "llama_adapter", "chat records"])
def test_what_cannot_work_is_one_line_exit_2_and_nothing_written(case, warm_run, tiny_model, sample_file, tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n"
    )
    flags, message = {
        "decoder-only model": (
            ["--model_name_or_path", tiny_model("llama"), "--train_file", sample_file],
            "field 'model_name_or_path': 'llama' is not an encoder-decoder model",
        ),
        "llama_adapter": (
            ["--model_name_or_path", tiny_model("t5"), "--train_file", sample_file, "--peft", "llama_adapter"],
            "--peft: invalid choice: 'llama_adapter'",
        ),
        "chat records": (
            ["--model_name_or_path", tiny_model("t5"), "--train_file", chat],
            "chat.jsonl: chat records (messages) are not supported",
        ),
    }[case]
    output = tmp_path / "out"
    result = warm_run("finetune_seq2seq.py", "--output_dir", output, "--do_train", *flags)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not output.exists()


def reverse_task(seed: int = 0) -> list[dict[str, str]]:
    """64 requests to reverse the order of three 3-5 letter words (a model that merely copies scores ~33)."""
    rng = random.Random(seed)
    words = sorted(
        {"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 5))) for _ in range(24)}
    )
    records = []
    for _ in range(64):
        chosen = rng.sample(words, 3)
        records.append(
            {
                "instruction": "Reverse the order of the words.",
                "input": " ".join(chosen),
                "output": " ".join(reversed(chosen)),
            }
        )
    return records


@pytest.mark.slow
def test_training_raises_rouge_on_a_synthetic_task(warm_run, tmp_path):
    """The whole pipeline learns: encoding, labels, collator, loss, generation and decoding all have to be right.

    The check scores 16 of the training requests: it asks whether the model fits what it was taught (held-out
    combinations of the words score about 50 after this budget; the tiny model memorizes more than it generalizes).
    """
    from finetuning.model.tiny import build_tiny_model, build_tokenizer

    records = reverse_task()
    train = write_records(tmp_path / "train.json", records)
    seen = write_records(tmp_path / "seen.json", records[:16])
    tokenizer = build_tokenizer([" ".join(record.values()) for record in records], vocab_size=384)
    model_dir = build_tiny_model("t5", tokenizer, tmp_path / "model", hidden=64, layers=2)
    common = [
        "--model_name_or_path",
        model_dir,
        "--validation_file",
        seen,
        "--do_eval",
        "--predict_with_generate",
        "--prompt_template",
        "plain",
        "--per_device_eval_batch_size",
        "16",
        "--generation_max_length",
        "12",
    ]
    # Evaluation alone: transformers' TensorBoard callback, never told the output directory by a training start,
    # writes its events under ./runs, so this run works in tmp_path, not in the repository.
    untrained = warm_run("finetune_seq2seq.py", *common, "--output_dir", tmp_path / "before", cwd=tmp_path)
    assert_ok(untrained)
    trained = warm_run(
        "finetune_seq2seq.py",
        *common,
        "--output_dir",
        tmp_path / "after",
        "--train_file",
        train,
        "--do_train",
        "--peft",
        "none",
        "--learning_rate",
        "3e-3",
        "--max_steps",
        "250",
        "--per_device_train_batch_size",
        "16",
        "--logging_steps",
        "50",
        "--save_strategy",
        "no",
    )
    assert_ok(trained)
    before = json.loads((tmp_path / "before" / "eval_results.json").read_text())["eval_rougeL"]
    after = json.loads((tmp_path / "after" / "eval_results.json").read_text())["eval_rougeL"]
    print(f"ROUGE-L on the reverse-words task: untrained {before:.1f}, trained {after:.1f}")
    assert after >= before + 50 and after >= 80, (before, after)
