"""finetune_clm.py against hostile input, end to end: every malformed file, bad flag or unsafe model gives one
line naming the problem, exit code 2, no traceback and nothing in output_dir; valid-but-odd files train; and no
secret or pickle gets through.

The failing runs stop before a model is loaded, so they are cheap once torch is imported: they start from a warm
interpreter (tests/warm_start.py), each run once a module for the one parametrized test that reads them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, sample_records, script_env

HOSTILE = REPO / "tests" / "fixtures" / "hostile"
SECRETS = {"HF_TOKEN": "hf_EnvSecret0123456789", "--hub_token": "hf_FlagSecret9876543210"}

# file in tests/fixtures/hostile -> what follows its path in the one error line
BAD_FILES = {
    "empty.jsonl": ": no usable records",
    "blank_lines.jsonl": ": no usable records",
    "truncated.json": ":1: invalid JSON: ",
    "bad_line_in_middle.jsonl": ":2: invalid JSON: ",
    "missing_field.jsonl": ":2: field 'output': missing",
    "null_field.jsonl": ":3: field 'output': expected a string, got null",
    "non_string_field.json": ": record 2: field 'instruction': expected a string, got list",
    "wrong_encoding.jsonl": ": not UTF-8 text (bad byte at offset ",
    "object_not_list.json": ": expected a JSON list of records, got dict",
    "unknown_keys_only.jsonl": ":1: no known fields (want instruction+output, ",
    "all_empty_records.jsonl": ": no usable records (3 empty records)",
    "wrong_columns.csv": ":1: CSV header needs columns instruction and output (or response); found: question, answer",
    "does_not_exist.jsonl": ": no such file",
    "": ": is a directory; pass it as --dataset_name",  # the fixture directory itself
}
# bad flags and unsafe models -> (extra flags, the start of the error line); a missing model: test_e2e_clm.py
BAD_STARTS = {
    "unknown peft method": (["--peft", "lorra"], "error: --peft: invalid choice: 'lorra'"),
    "missing checkpoint": (
        ["--resume_from_checkpoint", "{tmp}/no_checkpoint"],
        "error: {tmp}/no_checkpoint: field 'resume_from_checkpoint': no such checkpoint directory",
    ),
    "pickled weights only": (
        ["--model_name_or_path", "{tmp}/pickled"],
        "error: field 'model_name_or_path': model '{tmp}/pickled' has only pickled weights (pytorch_model.bin), "
        "which can run code when loaded; convert them to safetensors, or pass --allow_pickle_weights",
    ),
}


def pickled_copy(model_dir: Path, target: Path) -> Path:
    """The tiny model with its weights as a pickled pytorch_model.bin and no safetensors file."""
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(model_dir, target)
    torch.save(load_file(str(target / "model.safetensors")), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    return target


@pytest.fixture(scope="module")
def failed_starts(
    tiny_model, warm_run, tmp_path_factory
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path, str]]:
    """Every failing case run once: case -> (finished process, its output_dir, expected line)."""
    tmp = tmp_path_factory.mktemp("failed_starts")
    pickled_copy(tiny_model("llama"), tmp / "pickled")
    train = tmp / "train.json"
    train.write_text(json.dumps(sample_records(8)), encoding="utf-8")
    cases = {}
    for name, tail in BAD_FILES.items():
        path = HOSTILE / name if name else HOSTILE
        cases[name or "directory"] = (["--train_file", path], f"error: {path}{tail}")
    for name, (extra, expected) in BAD_STARTS.items():
        cases[name] = ([*(flag.format(tmp=tmp) for flag in extra), "--train_file", train], expected.format(tmp=tmp))

    def one(name: str) -> tuple[subprocess.CompletedProcess[str], Path, str]:
        extra, expected = cases[name]
        output = tmp / name.replace(" ", "_").replace(".", "_") / "out"
        args = ["--model_name_or_path", tiny_model("llama"), "--output_dir", output, "--do_train", *extra]
        return warm_run("finetune_clm.py", *args), output, expected

    return {name: one(name) for name in cases}


@pytest.mark.parametrize("case", [*(name or "directory" for name in BAD_FILES), *BAD_STARTS])
def test_a_failed_start_is_one_line_exit_2_no_traceback_and_writes_nothing(case, failed_starts):
    result, output, expected = failed_starts[case]
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-2000:]
    assert errors[0].startswith(expected), f"{errors[0]}\nexpected: {expected}"
    assert not output.exists()  # not even an empty output_dir


@pytest.fixture(scope="module")
def odd_run(tiny_model, tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One short run on the file with every valid oddity, with a token in the environment and in a flag."""
    output = tmp_path_factory.mktemp("odd") / "out"
    command = [
        *(sys.executable, str(REPO / "finetune_clm.py")),
        *("--model_name_or_path", str(tiny_model("llama")), "--output_dir", str(output), "--do_train"),
        *("--train_file", str(HOSTILE / "valid_but_odd.jsonl"), "--max_seq_length", "256", "--max_steps", "1"),
        *("--per_device_train_batch_size", "5", "--save_steps", "1", "--logging_steps", "1"),
        *("--hub_token", SECRETS["--hub_token"]),
    ]
    env = script_env() | {"HF_TOKEN": SECRETS["HF_TOKEN"]}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, output


def test_valid_but_odd_records_all_train_and_an_overlong_one_is_truncated_not_dropped(odd_run):
    raw = (HOSTILE / "valid_but_odd.jsonl").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw and raw.endswith(b"\r\n  \r\n")  # fixture intact
    assert len(raw) > 8 * 256 and any(byte > 127 for byte in raw)  # a record far over 256 tokens, non-ASCII
    result, output = odd_run
    assert "train data: 5 samples read, 0 empty skipped, 1 truncated;" in result.stdout
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 1
    assert (output / "adapter_model.safetensors").is_file()


def test_remote_code_and_pickles_stay_off_by_default_and_everything_is_saved_as_safetensors(odd_run):
    _, output = odd_run
    saved = json.loads((output / "finetune_args.json").read_text())
    assert saved["trust_remote_code"] is False and saved["allow_pickle_weights"] is False
    weights = [path.name for path in output.rglob("*") if path.suffix in {".bin", ".safetensors", ".pt", ".pth"}]
    # The Trainer's own optimizer/scheduler/RNG state is torch.save'd (and read back with weights_only=True);
    # model and adapter weights are safetensors only.
    assert {"adapter_model.safetensors"} <= set(weights)
    assert set(weights) <= {"adapter_model.safetensors", "training_args.bin", "optimizer.pt", "scheduler.pt"} | {
        "rng_state.pth"
    }


def test_no_token_reaches_the_logs_or_any_saved_file(odd_run):
    result, output = odd_run
    for secret in SECRETS.values():
        assert secret not in result.stdout and secret not in result.stderr
        leaks = [str(path) for path in output.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
        assert not leaks, f"{secret} saved in {leaks}"
    assert json.loads((output / "finetune_args.json").read_text())["hub_token"] in (None, "<HUB_TOKEN>")


@pytest.mark.slow
def test_pickled_weights_load_when_explicitly_allowed(failed_starts, warm_run, tmp_path):
    _, _, expected = failed_starts["pickled weights only"]
    pickled = Path(expected.split("model '")[1].split("'")[0])
    output = tmp_path / "out"
    args = ["--model_name_or_path", pickled, "--output_dir", output, "--do_train", "--allow_pickle_weights"]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(sample_records(8)), encoding="utf-8")
    result = warm_run("finetune_clm.py", *args, "--train_file", train, "--max_steps", "1", "--save_strategy", "no")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (output / "adapter_model.safetensors").is_file()
