"""finetune_clm.py end to end, run as users run it: the legacy command lines, every PEFT method, every
architecture, reloading what it saved, and a one-line error for each kind of bad input.

The legacy command lines start the script afresh, as users type them; the other runs start it from a warm
interpreter (tests/warm_start.py: the same process less the 5 s of imports)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import sample_records
from runs import FLOAT32_TOLERANCE, adapter_difference, logged_losses, lora_flags, run_start

ARCHITECTURES = ("llama", "mistral", "gpt_neox", "gptj", "bloom", "opt", "mpt", "gpt2")
QUICK = ("--per_device_train_batch_size", "4", "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no")
# Learning runs: 4 records in one batch, so every step sees them all and step 1 logs the initial model's loss.
LEARN = ("--per_device_train_batch_size", "4", "--max_steps", "8", "--logging_steps", "1", "--save_strategy", "no")
LEARN += ("--seed", "7", "--lora_dropout", "0")
LEARN_RECORDS = sample_records(4)
# method -> (learning rate, loss drop required); measured drops after the 8 steps in the comments. The random
# tiny base's head bottlenecks what prompt-learning methods can move, hence their higher rates.
METHOD_LEARNING = {
    "lora": ("1e-2", 0.03),  # 0.072
    "ptun": ("1e-1", 0.004),  # 0.009
    "prefix": ("1e-1", 0.01),  # 0.025
    "prompt": ("5e-1", 0.004),  # 0.010
    "llama_adapter": ("1e-1", 0.01),  # 0.021
    "none": ("1e-2", 0.5),  # 1.59
}
# LoRA at 1e-2 on each architecture: measured drops 0.044 (gpt2) to 0.103 (mpt); bloom's fused qkv alone: 0.003
ARCHITECTURE_MARGIN = {"bloom": 0.001}


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
    assert_run_report(output_dir)


def assert_run_report(output_dir):
    """Every training run leaves a loss curve of its logged steps and a model card naming the base model."""
    from PIL import Image

    from finetuning.training.report import CURVE_METADATA_KEY

    state = json.loads((output_dir / "trainer_state.json").read_text())
    logged = {entry["step"] for entry in state["log_history"] if "loss" in entry or "train_loss" in entry}
    with Image.open(output_dir / "loss_curve.png") as picture:
        plotted = json.loads(picture.text[CURVE_METADATA_KEY])
    assert plotted["loss"] and {step for step, _ in plotted["loss"]} <= logged
    assert {entry["step"] for entry in state["log_history"] if "loss" in entry} <= {s for s, _ in plotted["loss"]}
    arguments = json.loads((output_dir / "finetune_args.json").read_text())
    card = (output_dir / "README.md").read_text()
    assert f"base_model: {json.dumps(arguments['model_name_or_path'])}" in card
    assert "| train_loss |" in card and "## Loss curve" in card
    if "tensorboard" in arguments["report_to"]:  # the default wherever tensorboard(X) is installed
        assert any(output_dir.glob("runs/*/events.out.tfevents.*"))
    for weights in output_dir.glob("*.safetensors"):
        assert weights.stat().st_mode & 0o044 == 0o044, f"{weights.name} is not readable by others"


def assert_every_lora_b_trained(output) -> None:
    """The legacy command lines train a few steps at 1e-4 and log once (logging_steps 100), too little for the
    loss to tell. The saved adapter does: LoRA's B starts at zero, and Adam's first step moves every weight with a
    gradient by about the learning rate, so each adapted layer's B must hold entries of that size (measured: 3.5e-4
    on llama, 5e-4 on mpt). An adapter saved untrained, or a layer cut off from the gradient, keeps a zero B."""
    from safetensors.torch import load_file

    arguments = json.loads((output / "finetune_args.json").read_text())
    weights = load_file(output / "adapter_model.safetensors")
    moved = {name: float(tensor.float().abs().max()) for name, tensor in weights.items() if "lora_B" in name}
    assert moved and all(size > arguments["learning_rate"] / 2 for size in moved.values()), moved


def test_command_line_1_llama_lora_packed(run, tiny_model, sample_file, tmp_path):
    output = tmp_path / "llama_peft_finetuned_model"
    result = run(
        "finetune_clm.py",
        "--model_name_or_path",
        tiny_model("llama"),
        "--bf16",
        "True",
        "--train_file",
        sample_file,
        "--dataset_concatenation",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--gradient_accumulation_steps",
        "1",
        "--do_train",
        "--learning_rate",
        "1e-4",
        "--num_train_epochs",
        "3",
        "--logging_steps",
        "100",
        "--save_total_limit",
        "2",
        "--overwrite_output_dir",
        "--log_level",
        "info",
        "--save_strategy",
        "epoch",
        "--output_dir",
        output,
        "--peft",
        "lora",
        "--use_fast_tokenizer",
        "false",
    )
    assert_ok(result)
    assert "is_gradient_checkpointing" not in result.stderr  # transformers' deprecation, read by PEFT
    assert_trained_run(output)
    assert_every_lora_b_trained(output)
    assert "train data: 24 samples read" in result.stdout and "packed into" in result.stdout


def test_the_fast_path_trains_the_plain_paths_adapter_in_float32(warm_run, tiny_model, sample_file, tmp_path):
    """--auto_optimize (the project's LoRA forward and backward) against --auto_optimize False (PEFT's own), float32,
    packed rows, six optimizer steps: the same per-step losses and the same adapter to 1e-5, while the adapter
    itself moved far more than that from its zero-initialised B."""
    from safetensors.torch import load_file

    common = [*lora_flags(tiny_model("llama"), sample_file, 4), "--dataset_concatenation", "--no_cuda"]
    fast, plain = tmp_path / "fast", tmp_path / "plain"
    logs = {}
    for output, switch in ((fast, "True"), (plain, "False")):
        result = warm_run("finetune_clm.py", *common, "--auto_optimize", switch, "--output_dir", output)
        assert result.returncode == 0, result.stderr[-3000:]
        logs[output] = result.stdout + result.stderr
    assert "LoRA updates fused into one matrix product" in logs[fast]
    assert "LoRA updates fused" not in logs[plain]
    assert logged_losses(fast) == pytest.approx(logged_losses(plain), abs=FLOAT32_TOLERANCE)
    difference = adapter_difference(fast, plain)
    print(f"fast path to plain path: adapter max-abs difference {difference:.3g}")
    assert difference <= FLOAT32_TOLERANCE
    adapter = load_file(str(plain / "adapter_model.safetensors"))
    moved = max(tensor.abs().max().item() for name, tensor in adapter.items() if "lora_B" in name)
    assert moved > 100 * FLOAT32_TOLERANCE


def test_train_metrics_count_every_real_token_and_report_steady_throughput(warm_run, tiny_model, sample_file, tmp_path):
    output = tmp_path / "throughput"
    result = warm_run(
        "finetune_clm.py",
        *("--model_name_or_path", tiny_model("llama"), "--train_file", sample_file, "--output_dir", output),
        *("--do_train", "--dataset_concatenation", "--max_seq_length", "128", "--per_device_train_batch_size", "1"),
        *("--num_train_epochs", "1", "--save_strategy", "no", "--include_num_input_tokens_seen", "non_padding"),
    )
    assert_ok(result)
    metrics = json.loads((output / "train_results.json").read_text())
    data_tokens = int(result.stdout.split(" tokens (")[0].rsplit(" ", 1)[-1])  # from the data report
    assert metrics["num_input_tokens_seen"] == data_tokens  # one epoch: every token once, no padding counted
    assert metrics["train_steady_tokens_per_second"] > 0 and metrics["train_steady_steps_per_second"] > 0


@pytest.mark.slow
def test_command_line_2_mpt_with_remote_code_flag_and_separate_tokenizer(run, tiny_model, sample_file, tmp_path):
    output = tmp_path / "mpt_peft_finetuned_model"
    result = run(
        "finetune_clm.py",
        "--model_name_or_path",
        tiny_model("mpt"),
        "--bf16",
        "True",
        "--train_file",
        sample_file,
        "--dataset_concatenation",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--gradient_accumulation_steps",
        "1",
        "--do_train",
        "--learning_rate",
        "1e-4",
        "--num_train_epochs",
        "3",
        "--logging_steps",
        "100",
        "--save_total_limit",
        "2",
        "--overwrite_output_dir",
        "--log_level",
        "info",
        "--save_strategy",
        "epoch",
        "--output_dir",
        output,
        "--peft",
        "lora",
        "--use_fast_tokenizer",
        "false",
        "--trust_remote_code",
        "True",
        "--tokenizer_name",
        tiny_model("gpt_neox"),
    )
    assert_ok(result)
    assert_trained_run(output)
    assert_every_lora_b_trained(output)
    assert "--dataset_concatenation ignored: 'mpt' attention" in result.stdout + result.stderr


@pytest.mark.slow
def test_command_line_3_ptun_with_group_by_length_and_legacy_eval_flag(run, tiny_model, sample_file, tmp_path):
    output = tmp_path / "llama_peft_finetuned_model"
    result = run(
        "finetune_clm.py",
        "--model_name_or_path",
        tiny_model("llama"),
        "--train_file",
        sample_file,
        "--bf16",
        "True",
        "--output_dir",
        output,
        "--num_train_epochs",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "1",
        "--evaluation_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2000",
        "--save_total_limit",
        "1",
        "--learning_rate",
        "1e-4",
        "--logging_steps",
        "1",
        "--peft",
        "ptun",
        "--group_by_length",
        "True",
        "--dataset_concatenation",
        "--use_fast_tokenizer",
        "false",
        "--do_train",
    )
    assert_ok(result)
    assert_trained_run(output)
    assert "--dataset_concatenation ignored: with --peft ptun" in result.stdout + result.stderr
    assert_prompt_encoder_trained(output, tiny_model("llama"))


def assert_prompt_encoder_trained(output, base_dir) -> None:
    """The 18 steps at 1e-4 move the logged loss by less than batch-to-batch noise; the saved virtual tokens
    tell. finetune_clm.py seeds before loading the base and PEFT initialises the prompt encoder next, so the
    same steps here rebuild the run's start (to 1e-7 when the run's learning rate is 0). Measured: training
    moved the tokens by 0.54 at most (entries of the start reach 0.28), and their loss on the 24 training
    records, computed in float32, went from 5.9353 to 5.9286. A rebuilt start that drifted from the run's
    (another seed or order) would be another random start, with no reason to score worse than the trained one."""
    import peft
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = run_start(base_dir, output, AutoModelForCausalLM, "CAUSAL_LM")
    trained = load_file(output / "adapter_model.safetensors")["prompt_embeddings"].float()
    moved = float((trained - start.get_prompt_embedding_to_save("default").float()).abs().max())
    assert moved > 1e-3, moved
    tokenizer, records = AutoTokenizer.from_pretrained(output), sample_records(24)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    trained_loss = response_token_loss(peft.PeftModel.from_pretrained(base, output).eval(), tokenizer, records)
    start_loss = response_token_loss(start, tokenizer, records)
    assert trained_loss < start_loss - 2e-3, (trained_loss, start_loss)


@pytest.fixture
def learn_file(tmp_path):
    path = tmp_path / "learn.json"
    path.write_text(json.dumps(LEARN_RECORDS), encoding="utf-8")
    return path


def assert_learned(output, base_dir, margin: float, *, adapter: bool = True) -> None:
    """The run learned, and saved what it learned: the last step's loss and the reloaded model's loss on the
    records are both ``margin`` below step 1's (the initial model's). A saved initialization, or an adapter that
    is not applied on reload, leaves the reloaded loss at step 1's."""
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0] - margin, losses
    base = AutoModelForCausalLM.from_pretrained(output if not adapter else base_dir)
    model = (peft.PeftModel.from_pretrained(base, output) if adapter else base).eval()
    reloaded = response_token_loss(model, AutoTokenizer.from_pretrained(output), LEARN_RECORDS)
    assert reloaded < losses[0] - margin, (reloaded, losses)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "ptun", "prefix", "prompt", "llama_adapter", "none"])
def test_every_peft_method_trains_on_llama(method, warm_run, tiny_model, learn_file, tmp_path):
    output = tmp_path / method
    rate, margin = METHOD_LEARNING[method]
    result = warm_run(
        "finetune_clm.py",
        "--model_name_or_path",
        tiny_model("llama"),
        "--train_file",
        learn_file,
        "--output_dir",
        output,
        "--do_train",
        "--peft",
        method,
        "--dataset_concatenation",
        "--learning_rate",
        rate,
        *LEARN,
    )
    assert_ok(result)
    assert_trained_run(output, adapter=method != "none")
    assert_learned(output, tiny_model("llama"), margin, adapter=method != "none")


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_trains_on_every_architecture(architecture, warm_run, tiny_model, learn_file, tmp_path):
    output = tmp_path / architecture
    result = warm_run(
        "finetune_clm.py",
        "--model_name_or_path",
        tiny_model(architecture),
        "--train_file",
        learn_file,
        "--output_dir",
        output,
        "--do_train",
        "--peft",
        "lora",
        "--dataset_concatenation",
        "--learning_rate",
        "1e-2",
        *LEARN,
    )
    assert_ok(result)
    assert_trained_run(output)
    assert_learned(output, tiny_model(architecture), ARCHITECTURE_MARGIN.get(architecture, 0.02))


@pytest.mark.parametrize("architecture", ["gpt_neox", "bloom"])
def test_llama_adapter_is_refused_where_peft_cannot_apply_it(architecture, warm_run, tiny_model, sample_file, tmp_path):
    result = warm_run(
        "finetune_clm.py",
        "--model_name_or_path",
        tiny_model(architecture),
        "--train_file",
        sample_file,
        "--output_dir",
        tmp_path / "out",
        "--do_train",
        "--peft",
        "llama_adapter",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: field 'peft': llama_adapter supports only")
    assert not (tmp_path / "out").exists()


def test_adapter_reloads_and_base_weights_are_unchanged(warm_run, tiny_model, sample_file, tmp_path):
    import peft
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base_dir = tiny_model("llama")
    before = load_file(str(base_dir / "model.safetensors"))
    output = tmp_path / "adapter"
    result = warm_run(
        "finetune_clm.py",
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
    assert load_file(str(base_dir / "model.safetensors")).keys() == before.keys()
    assert all(
        torch.equal(tensor, before[name]) for name, tensor in load_file(str(base_dir / "model.safetensors")).items()
    )
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), output)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained: LoRA B starts at zero
    base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    merged_free = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p
        for n, p in model.state_dict().items()
        if "lora_" not in n
    }
    assert all(torch.equal(merged_free[name], tensor) for name, tensor in base.items() if name in merged_free)


def response_token_loss(model, tokenizer, records) -> float:
    """Mean cross-entropy over every answer token and its EOS, computed here one record at a time from the
    text of the alpaca template: the prompt is what precedes the answer, and is not scored."""
    import torch

    from finetuning.data.templates import get_template

    total, count = 0.0, 0
    for record in records:
        prompt = tokenizer(get_template("alpaca").render(record["instruction"], record["input"]))["input_ids"]
        answer = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -len(answer) - 1 : -1]  # prompt tuning prepends tokens
        total += torch.nn.functional.cross_entropy(logits, torch.tensor(answer), reduction="sum").item()
        count += len(answer)
    return total / count


def test_eval_gives_loss_and_perplexity(warm_run, tiny_model, sample_file, tmp_path):
    """The reported eval loss is the trained model's loss on the answers of the validation records (one eval
    batch holds them all), and the perplexity its exponential: both checked against a computation made here."""
    import math

    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    validation = tmp_path / "validation.json"
    validation.write_text(json.dumps(sample_records(30)[24:]), encoding="utf-8")
    output = tmp_path / "eval"
    result = warm_run(
        "finetune_clm.py",
        *("--model_name_or_path", tiny_model("llama"), "--train_file", sample_file, "--output_dir", output),
        *("--validation_file", validation, "--per_device_eval_batch_size", "8", "--do_train", "--do_eval"),
        *("--peft", "lora", "--learning_rate", "1e-2", "--lora_dropout", "0"),
        *QUICK,
    )
    assert_ok(result)
    metrics = json.loads((output / "all_results.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(tiny_model("llama"))
    untrained = response_token_loss(base, AutoTokenizer.from_pretrained(output), sample_records(30)[24:])
    trained = peft.PeftModel.from_pretrained(base, output).eval()
    expected = response_token_loss(trained, AutoTokenizer.from_pretrained(output), sample_records(30)[24:])
    assert abs(expected - untrained) > 1e-3  # the adapter moved this loss, so the check below sees which was used
    assert metrics["eval_loss"] == pytest.approx(expected, abs=1e-4)
    assert metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
    assert metrics["eval_samples"] == 6


def test_golden_loss(warm_run, tiny_model, tmp_path):
    """A fixed tiny run: its loss values are pinned, so any change to data, masks or training shows up."""
    data = tmp_path / "golden.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in sample_records(16)))
    output = tmp_path / "golden"
    result = warm_run(
        "finetune_clm.py",
        "--model_name_or_path",
        tiny_model("llama"),
        "--train_file",
        data,
        "--output_dir",
        output,
        "--do_train",
        "--peft",
        "lora",
        "--dataset_concatenation",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "4",
        "--logging_steps",
        "1",
        "--learning_rate",
        "1e-2",
        "--lora_dropout",
        "0",
        "--seed",
        "7",
        "--save_strategy",
        "no",
        "--max_seq_length",
        "256",
    )
    assert_ok(result)
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=5e-4), losses


GOLDEN_LOSSES = [5.921905517578125, 5.940191268920898, 5.896446704864502, 5.889659881591797]


def bad_input_cases(tmp_path, sample_file):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": null}\n')
    return {
        "missing file": (["--train_file", tmp_path / "nope.json"], "nope.json: no such file"),
        "bad field": (["--train_file", broken], "broken.jsonl:2: field 'output': expected a string, got null"),
        "no data": ([], "field 'train_file': no training data"),
        "bad model": (
            ["--train_file", sample_file, "--model_name_or_path", tmp_path / "no_model"],
            "field 'model_name_or_path': no such model directory",
        ),
    }


@pytest.mark.parametrize("case", ["missing file", "bad field", "no data", "bad model"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, warm_run, tiny_model, sample_file, tmp_path):
    flags, message = bad_input_cases(tmp_path, sample_file)[case]
    output = tmp_path / "out"
    args = ["--model_name_or_path", tiny_model("llama"), "--output_dir", output, "--do_train", *flags]
    result = warm_run("finetune_clm.py", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not output.exists()


def test_a_finished_run_is_not_overwritten_without_the_flag(warm_run, tiny_model, sample_file, tmp_path):
    output = tmp_path / "done"
    args = [
        "--model_name_or_path",
        tiny_model("llama"),
        "--train_file",
        sample_file,
        "--output_dir",
        output,
        "--do_train",
        *QUICK,
    ]
    assert_ok(warm_run("finetune_clm.py", *args))
    stamp = (output / "adapter_model.safetensors").stat().st_mtime_ns
    again = warm_run("finetune_clm.py", *args)
    assert again.returncode == 2 and "holds a finished run; pass --overwrite_output_dir" in again.stderr
    assert (output / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert_ok(warm_run("finetune_clm.py", *args, "--overwrite_output_dir"))


@pytest.mark.slow
def test_a_resumed_run_logs_steps_and_warns_of_changed_settings(warm_run, tiny_model, sample_file, tmp_path):
    """An interrupted run (checkpoint, no results) resumed with another learning rate and length says so."""
    output = tmp_path / "out"
    common = ("--model_name_or_path", tiny_model("llama"), "--train_file", sample_file, "--output_dir", output)
    steps = ("--do_train", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--report_to", "none")
    first = warm_run(
        "finetune_clm.py", *common, *steps, "--max_steps", "2", "--save_steps", "2", "--disable_tqdm", "true"
    )
    assert_ok(first)
    assert "{'step': 2, 'loss':" in first.stdout  # every loss line carries its step
    for name in ("all_results.json", "train_results.json"):
        (output / name).unlink()  # as if the run had been stopped after its checkpoint
    resumed = warm_run(
        "finetune_clm.py",
        *common,
        *steps,
        *("--max_steps", "3", "--learning_rate", "1e-4", "--max_seq_length", "256", "--disable_tqdm", "true"),
    )
    assert_ok(resumed)
    warning = next(line for line in resumed.stdout.splitlines() if "resuming with settings that differ" in line)
    assert warning.split("the checkpoint's run: ")[1].split("; ") == [
        "learning_rate: 5e-05 -> 0.0001",
        "max_seq_length: 512 -> 256",
        "max_steps: 2 -> 3",
    ]
    assert "{'step': 3, 'loss':" in resumed.stdout and "{'step': 2, 'loss':" not in resumed.stdout


@pytest.mark.slow
def test_a_prompt_template_file_trains_is_saved_with_the_run_and_prompts_inference(
    warm_run, tiny_model, sample_file, tmp_path
):
    template = tmp_path / "qa.yaml"
    template.write_text('with_input: "Q: {instruction}\\n{input}\\nA: "\nwithout_input: "Q: {instruction}\\nA: "\n')
    output = tmp_path / "out"
    flags = ("--model_name_or_path", tiny_model("llama"), "--train_file", sample_file, "--output_dir", output, *QUICK)
    first = warm_run("finetune_clm.py", *flags, "--do_train", "--prompt_template", template)
    assert_ok(first)
    saved = json.loads((output / "prompt_template.json").read_text())
    assert (saved["prompt_template"], saved["without_input"]) == ("qa", "Q: {instruction}\nA: ")
    # the same file name with another text: tokenized again, not read from the cache
    template.write_text(template.read_text().replace("Q: ", "Question: "))
    second = warm_run("finetune_clm.py", *flags, "--do_train", "--prompt_template", template, "--overwrite_output_dir")
    assert_ok(second)
    tokens = [re.search(r"train data: .*; (\d+) tokens", result.stdout).group(1) for result in (first, second)]
    assert int(tokens[1]) > int(tokens[0])
    template.unlink()  # the run holds the template: inference needs no file
    answered = warm_run("inference.py", "--peft_model_path", output, "--instructions", "Hi", "--max_new_tokens", "2")
    assert_ok(answered)
    assert "prompts: qa" in answered.stderr
