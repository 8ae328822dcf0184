"""inference.py end to end, run as users run it, on models fine-tuned here by finetune_clm.py.

The proof that training and inference agree (prompt template, prompt masking, EOS): a tiny model trained
until it has memorized six records must answer each of them with exactly its training response. Also every
mode (--infer, --instructions, --interactive, --bench, --merge_and_save), an encoder-decoder model, and the
one-line error for each kind of bad input.

The runs start from a warm interpreter (tests/warm_start.py: the same process less the 5 s of imports), but for
the interactive ones (they read stdin) and the missing model's, whose point is the subprocess itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import MEMORIZE as TRAIN
from conftest import MEMORIZED_RECORDS as RECORDS
from conftest import REPO, script_env
from runs import save_lora_adapter, t5_without_dropout


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("inference")


# the memorized runs are shared with the serving tests (tests/conftest.py): trained once a session
@pytest.fixture(scope="module")
def train_file(memorized_train_file):
    return memorized_train_file


@pytest.fixture(scope="module")
def full_run(memorized_full_run):
    return memorized_full_run


@pytest.fixture(scope="module")
def lora_run(memorized_lora_run):
    return memorized_lora_run


@pytest.fixture
def predict(warm_run):
    """``predict(*flags, output=path)`` -> the rows inference.py wrote to ``path``."""

    def run_inference(*flags, output) -> list[dict]:
        result = warm_run("inference.py", *flags, "--output_file", output)
        assert_ok(result)
        assert f"wrote {len(RECORDS)} predictions to {output}" in result.stdout
        return read_jsonl(output)

    return run_inference


def assert_memorized(rows: list[dict]) -> None:
    assert [{key: row[key] for key in ("instruction", "input", "output")} for row in rows] == RECORDS
    assert [row["prediction"] for row in rows] == [record["output"] for record in RECORDS]


# --- memorization: training and inference agree ----------------------------------------------------------


@pytest.mark.slow
def test_full_fine_tuned_model_answers_its_training_records_exactly(predict, full_run, train_file, workdir):
    rows = predict(
        "--base_model_path",
        full_run,
        "--input_file",
        train_file,
        "--batch_size",
        "4",
        output=workdir / "full_predictions.jsonl",
    )
    assert_memorized(rows)


@pytest.mark.slow
def test_lora_adapter_and_its_merged_model_answer_exactly(predict, lora_run, train_file, workdir):
    merged = workdir / "merged"
    adapter_rows = predict(
        "--peft_model_path",
        lora_run,
        "--merge_and_save",
        merged,
        "--input_file",
        train_file,
        output=workdir / "lora_predictions.jsonl",
    )
    assert_memorized(adapter_rows)
    names = {path.name for path in merged.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "prompt_template.json"} <= names
    assert "adapter_config.json" not in names and not any(name.endswith(".bin") for name in names)
    # one by one this time: batching (with left padding) must not change an answer
    merged_rows = predict(
        "--base_model_path",
        merged,
        "--input_file",
        train_file,
        "--batch_size",
        "1",
        output=workdir / "merged_predictions.jsonl",
    )
    assert merged_rows == adapter_rows


@pytest.mark.slow
def test_seq2seq_model_answers_its_training_records_exactly(warm_run, predict, workdir, tiny_tokenizer, train_file):
    from finetuning.model.tiny import build_tiny_model

    if not (REPO / "finetune_seq2seq.py").is_file():
        pytest.skip("finetune_seq2seq.py is not there yet")
    base = t5_without_dropout(build_tiny_model("t5", tiny_tokenizer, workdir / "t5_64", hidden=64))
    output = workdir / "t5_full"
    result = warm_run(
        "finetune_seq2seq.py",
        "--model_name_or_path",
        base,
        "--train_file",
        train_file,
        "--output_dir",
        output,
        "--peft",
        "none",
        "--learning_rate",
        "5e-3",
        "--num_train_epochs",
        "60",
        *TRAIN,
    )
    assert_ok(result)
    rows = predict("--base_model_path", output, "--input_file", train_file, output=workdir / "t5_predictions.jsonl")
    assert_memorized(rows)


# --- the other modes -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_infer_and_instructions_print_answers(warm_run, full_run):
    result = warm_run(
        "inference.py",
        "--base_model_path",
        full_run,
        "--infer",
        "--instructions",
        RECORDS[0]["instruction"],
        RECORDS[3]["instruction"],
        "--max_new_tokens",
        "24",
    )
    assert_ok(result)
    assert result.stdout.count("Instruction: ") == 5 + 2
    assert "Instruction: Tell me about alpacas.\nResponse: " in result.stdout
    assert f"Instruction: {RECORDS[0]['instruction']}\nResponse: noir\n" in result.stdout
    assert f"Instruction: {RECORDS[3]['instruction']}\nResponse: {RECORDS[3]['output']}\n" in result.stdout
    assert "Below is an instruction" not in result.stdout  # no prompt echo


@pytest.mark.slow
def test_interactive_mode_streams_answers_read_from_stdin(full_run):
    lines = [RECORDS[0]["instruction"], "", RECORDS[3]["instruction"], "exit", RECORDS[0]["instruction"]]
    result = subprocess.run(
        [sys.executable, str(REPO / "inference.py"), "--base_model_path", str(full_run), "--interactive"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=300,
        env=script_env(),
        cwd=REPO,
    )
    assert_ok(result)
    assert result.stdout.splitlines() == ["noir", RECORDS[3]["output"]]  # stops at 'exit'


@pytest.mark.slow
def test_ctrl_c_at_the_interactive_prompt_ends_the_session_without_a_traceback(full_run):
    import signal

    process = subprocess.Popen(
        [sys.executable, str(REPO / "inference.py"), "--base_model_path", str(full_run), "--interactive"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(),
        cwd=REPO,
    )
    try:
        process.stdin.write(RECORDS[0]["instruction"] + "\n")
        process.stdin.flush()
        assert process.stdout.readline() == "noir\n"  # answered: now waiting for the next line
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]


@pytest.mark.slow
def test_bench_prints_first_token_latency_and_throughput(warm_run, full_run):
    result = warm_run(
        "inference.py", "--base_model_path", full_run, "--bench", "--bench_runs", "2", "--max_new_tokens", "32"
    )
    assert_ok(result)
    latency = re.search(
        r"first-token latency: ([\d.]+) ms median \(min [\d.]+, max [\d.]+\) over 10 generations", result.stdout
    )
    throughput = re.search(r"throughput: ([\d.]+) new tokens/s \((\d+) tokens in ([\d.]+) s", result.stdout)
    assert latency and throughput, result.stdout
    assert 0 < float(latency.group(1)) < 10_000 and float(throughput.group(1)) > 0 and int(throughput.group(2)) > 0


def test_seq2seq_model_runs(warm_run, tiny_model, train_file, tmp_path):
    output = tmp_path / "predictions.jsonl"
    result = warm_run(
        "inference.py",
        "--base_model_path",
        tiny_model("t5"),
        "--instructions",
        "Name a color.",
        "--input_file",
        train_file,
        "--output_file",
        output,
        "--max_new_tokens",
        "6",
        "--num_beams",
        "2",
        "--prompt_template",
        "plain",
    )
    assert_ok(result)
    assert "Instruction: Name a color.\nResponse: " in result.stdout
    rows = read_jsonl(output)
    # what transformers alone answers, one unpadded prompt at a time, from the "plain" template's text
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model("t5")).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("t5"))

    def answer(instruction: str, input_text: str) -> str:
        text = f"{instruction}\n{input_text}\n" if input_text.strip() else f"{instruction}\n"
        ids = model.generate(**tokenizer(text, return_tensors="pt"), num_beams=2, max_new_tokens=6, do_sample=False)
        return tokenizer.decode(ids[0], skip_special_tokens=True)

    assert [row["prediction"] for row in rows] == [answer(r["instruction"], r["input"]) for r in RECORDS]
    assert f"Response: {answer('Name a color.', '')}" in result.stdout


@pytest.mark.slow
def test_clm_do_predict_writes_and_scores_predictions_of_the_validation_file(warm_run, full_run, train_file, tmp_path):
    output = tmp_path / "predict"
    result = warm_run(
        "finetune_clm.py",
        *("--model_name_or_path", full_run, "--validation_file", train_file, "--output_dir", output),
        *("--do_predict", "--peft", "none", "--report_to", "none", "--generation_max_length", "32"),
    )
    assert_ok(result)
    assert_memorized(read_jsonl(output / "predictions.jsonl"))
    metrics = json.loads((output / "predict_results.json").read_text())
    assert metrics["predict_samples"] == len(RECORDS) and metrics["predict_exact_match"] == 100.0
    assert metrics["predict_rougeL"] == 100.0 and metrics["predict_empty_answers"] == 0


@pytest.mark.slow
def test_seq2seq_do_predict_saves_its_generated_predictions(warm_run, tiny_model, train_file, tmp_path):
    output = tmp_path / "predict"
    result = warm_run(
        "finetune_seq2seq.py",
        *("--model_name_or_path", tiny_model("t5"), "--validation_file", train_file, "--output_dir", output),
        *("--do_predict", "--predict_with_generate", "--max_target_length", "6", "--report_to", "none"),
    )
    assert_ok(result)
    rows = read_jsonl(output / "predictions.jsonl")
    assert [row["instruction"] for row in rows] == [record["instruction"] for record in RECORDS]
    assert all(isinstance(row["prediction"], str) for row in rows)
    metrics = json.loads((output / "predict_results.json").read_text())
    assert {"predict_exact_match", "predict_rouge1", "predict_rougeL"} <= set(metrics)


# --- bad input: one line, exit code 2 --------------------------------------------------------------------


def user_error(capsys, *flags) -> str:
    """Run inference.main in-process expecting a user error; return its one-line message."""
    import inference
    from finetuning.errors import exit_on_user_error

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: inference.main([str(flag) for flag in flags]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: ") and not any("Traceback" in line for line in err)
    return err[-1]


def test_missing_model_is_one_line_exit_2_in_a_subprocess(run, tmp_path):
    result = run("inference.py", "--base_model_path", tmp_path / "nope", "--infer")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope'}: field 'base_model_path': no such model directory"


def test_adapter_whose_base_is_gone(capsys, tiny_model, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model("llama"), base)
    save_lora_adapter(base, tmp_path / "adapter")
    shutil.rmtree(base)
    message = user_error(capsys, "--peft_model_path", tmp_path / "adapter", "--infer")
    assert message == (
        f"error: field 'base_model_path': the adapter's base model '{base}' (base_model_name_or_path in "
        "adapter_config.json) is neither a local directory nor in the Hugging Face cache: pass --base_model_path "
        "(its local copy, or a hub name to download)"
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no_adapter_dir", "{tmp}/nope: field 'peft_model_path': no such adapter directory"),
        (
            "full_model_as_adapter",
            "field 'peft_model_path': no adapter_config.json: not an adapter directory (it holds "
            "a full model: pass it as --base_model_path)",
        ),
        (
            "pickled_adapter",
            "only a pickled adapter_model.bin (unpickling can run arbitrary code): pass --allow_pickle",
        ),
        ("malformed_input", "{tmp}/bad.jsonl:2: invalid JSON: Expecting value (column 1)"),
        ("chat_on_seq2seq", "chat records (messages) are not supported for encoder-decoder models"),
        ("merge_full_model", "nothing to merge: --merge_and_save needs an adapter"),
        ("unknown_template", "unknown prompt template 'nope'"),
        ("sampling_without_do_sample", "--temperature applies only when sampling: add --do_sample"),
    ],
)
def test_bad_input_is_one_line_exit_2(case, expected, capsys, tiny_model, tmp_path):
    llama = tiny_model("llama")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "Name a color."}\n', encoding="utf-8")
    io = ("--input_file", prompts, "--output_file", tmp_path / "out.jsonl")
    if case == "pickled_adapter":
        from safetensors.torch import load_file
        from torch import save

        save_lora_adapter(llama, tmp_path / "adapter")
        save(load_file(tmp_path / "adapter" / "adapter_model.safetensors"), tmp_path / "adapter" / "adapter_model.bin")
        (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    if case == "malformed_input":
        (tmp_path / "bad.jsonl").write_text('{"instruction": "a"}\n]\n', encoding="utf-8")
    if case == "chat_on_seq2seq":
        prompts.write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n', encoding="utf-8")
    flags = {
        "no_adapter_dir": ("--peft_model_path", tmp_path / "nope", "--infer"),
        "full_model_as_adapter": ("--peft_model_path", llama, "--infer"),
        "pickled_adapter": ("--peft_model_path", tmp_path / "adapter", "--infer"),
        "malformed_input": (
            "--base_model_path",
            llama,
            "--input_file",
            tmp_path / "bad.jsonl",
            "--output_file",
            tmp_path / "out.jsonl",
        ),
        "chat_on_seq2seq": ("--base_model_path", tiny_model("t5"), *io),
        "merge_full_model": ("--base_model_path", llama, "--merge_and_save", tmp_path / "merged"),
        "unknown_template": ("--base_model_path", llama, "--infer", "--prompt_template", "nope"),
        "sampling_without_do_sample": ("--base_model_path", llama, "--infer", "--temperature", "0.7"),
    }[case]
    message = user_error(capsys, *flags)
    assert expected.format(tmp=tmp_path) in message
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "merged").exists()


def test_merge_destination_is_checked_before_any_model_loads(capsys, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    # the adapter does not exist either: the destination is what must be refused, since it is checked first
    message = user_error(capsys, "--peft_model_path", tmp_path / "no_adapter", "--merge_and_save", taken, "--infer")
    assert message == f"error: {taken}: field 'merge_and_save': already holds a model: choose a new directory"
