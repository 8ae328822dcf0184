"""On an NVIDIA GPU only (skipped elsewhere; `bash bench/gpu_suite.sh cuda` runs them on the lent machine): the
fast CUDA path, bf16 with packed rows through FlashAttention's variable-length kernel, still trains a model that
answers its training records exactly through inference.py."""

from __future__ import annotations

import json

import pytest
from conftest import LORA_TARGETS, MEMORIZE, MEMORIZED_RECORDS, run_script

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def test_packed_bf16_lora_run_on_cuda_answers_its_records_exactly(memorized_base, memorized_train_file, tmp_path):
    output = tmp_path / "lora_cuda"
    trained = run_script(
        "finetune_clm.py",
        *("--model_name_or_path", memorized_base, "--train_file", memorized_train_file, "--output_dir", output),
        *("--peft", "lora", "--lora_rank", "16", "--lora_alpha", "32", "--lora_dropout", "0"),
        *("--lora_target_modules", *LORA_TARGETS, "--learning_rate", "1e-2", "--num_train_epochs", "150"),
        *("--dataset_concatenation", "--max_seq_length", "256", "--bf16", "True", "--log_level", "info"),
        *MEMORIZE,
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    log = trained.stdout + trained.stderr
    assert "packed into" in log and "FlashAttention variable-length kernel over packed blocks" in log
    prompts = tmp_path / "prompts.json"  # the records without their answers: nothing to score, only to answer
    prompts.write_text(json.dumps([{k: r[k] for k in ("instruction", "input")} for r in MEMORIZED_RECORDS]))
    predictions = tmp_path / "predictions.jsonl"
    answered = run_script(
        "inference.py",
        *("--base_model_path", memorized_base, "--peft_model_path", output, "--input_file", prompts),
        *("--output_file", predictions),
    )
    assert answered.returncode == 0, answered.stdout[-3000:] + answered.stderr[-3000:]
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert [row["prediction"] for row in rows] == [record["output"] for record in MEMORIZED_RECORDS]
