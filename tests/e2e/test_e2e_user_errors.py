"""What a user sees when a fine-tune command line is wrong: exactly one ``error:`` line on stderr, exit 2, and
nothing written; and a ``--help`` that comes at once, grouped, without torch or transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, SAMPLE_DATA, script_env

ONE_LINE_ERRORS = {
    "unknown choice": (["--peft", "nope"], "error: --peft: invalid choice: 'nope' (choose from"),
    "bad float": (["--learning_rate", "abc"], "error: --learning_rate: invalid float value: 'abc'"),
    "bad bool": (["--bf16", "maybe"], "error: --bf16: Truthy value expected: got maybe"),
    "typo": (["--learnig_rate", "1e-4"], "error: --learnig_rate: no such flag (did you mean --learning_rate?)"),
    "negative lr": (["--learning_rate", "-1"], "error: --learning_rate: must not be negative, got -1.0"),
    "zero length": (["--max_seq_length", "0"], "error: --max_seq_length: must be a positive number of tokens"),
    "negative length": (["--max_seq_length", "-5"], "error: --max_seq_length: must be a positive number of tokens"),
    "offline hub": (["--push_to_hub"], "error: --push_to_hub: the hub is offline here"),
    "no tensorboard": (["--report_to", "tensorboard"], "error: --report_to tensorboard: tensorboard is not installed"),
    "no model": (["--model_name_or_path", "/nope/model"], "error: /nope/model: field 'model_name_or_path': no such"),
    "nothing to do": (["--do_train", "false"], "error: nothing to do: pass --do_train, --do_eval or --do_predict"),
}


def run_script(script: str, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(REPO / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or script_env(), cwd=REPO)


def without_tensorboard(tmp_path) -> dict[str, str]:
    """The scripts' environment as on a machine where neither tensorboard nor tensorboardX is installed."""
    stub = tmp_path / "no_tensorboard"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tensorboard'] = sys.modules['tensorboardX'] = None\n"
    )
    env = script_env()
    return env | {"PYTHONPATH": f"{stub}:{env['PYTHONPATH']}"}


@pytest.mark.parametrize("case", sorted(ONE_LINE_ERRORS))
def test_a_bad_command_line_is_one_error_line_and_nothing_written(case, tiny_model, warm_run, tmp_path):
    """From the warm interpreter (tests/warm_start.py), but for the one case that needs another environment."""
    flags, expected = ONE_LINE_ERRORS[case]
    output = tmp_path / "out"
    args = ["--model_name_or_path", tiny_model("llama"), "--train_file", SAMPLE_DATA, "--output_dir", output]
    args += ["--do_train", "--max_steps", "1", *flags]
    if case == "no tensorboard":
        result = run_script("finetune_clm.py", *args, env=without_tensorboard(tmp_path))
    else:
        result = warm_run("finetune_clm.py", *args)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip().startswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not output.exists()


def test_training_into_the_base_models_folder_is_refused(tiny_model, warm_run, tmp_path):
    model = tiny_model("llama")
    before = sorted(path.name for path in model.iterdir())
    flags = ["--model_name_or_path", model, "--train_file", SAMPLE_DATA, "--output_dir", model, "--do_train"]
    result = warm_run("finetune_clm.py", *flags, "--overwrite_output_dir", "--max_steps", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {model}: field 'output_dir': is the base model's folder: training there would overwrite the model "
        "it starts from"
    )
    assert sorted(path.name for path in model.iterdir()) == before


def blocked_imports(tmp_path) -> dict[str, str]:
    """An environment in which importing torch or transformers fails, to prove --help needs neither."""
    stub = tmp_path / "blocked"
    for name in ("torch", "transformers"):
        (stub / name).mkdir(parents=True)
        (stub / name / "__init__.py").write_text(f"raise ImportError('--help imported {name}')\n")
    env = script_env()
    return env | {"PYTHONPATH": f"{stub}:{env['PYTHONPATH']}"}


@pytest.mark.parametrize("script", ["finetune_clm.py", "finetune_seq2seq.py"])
def test_help_lists_the_suites_flags_by_group_without_importing_torch(script, tmp_path):
    result = run_script(script, "--help", env=blocked_imports(tmp_path))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    headings = [line for line in text.splitlines() if line in ("model:", "data:", "method:", "speed:", "reliability:")]
    assert headings == ["model:", "data:", "method:", "speed:", "reliability:"]
    assert "config file" in text and "--help_all" in text and "--max_seq_length" in text
    assert "--do_train" in text.split("training (transformers.TrainingArguments")[1]
    if script == "finetune_seq2seq.py":
        assert "llama_adapter" not in text and "BLEU" not in text
