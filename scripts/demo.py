"""The built-in demo (`make demo`): the whole job on a small default, offline, in a few minutes on a CPU.

1. Train a byte-level BPE tokenizer on the shipped sample data and build a tiny Llama (random weights).
2. LoRA fine-tune it with packing (``--dataset_concatenation``) on ``data/sample_instructions.jsonl``.
3. Generate answers to a few of the training instructions with ``inference.py``.

A tiny random model learns the answers' shape, not the world: the point is to see every stage run, and
the commands printed here are the ones to reuse with a real model.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "sample_instructions.jsonl"
OUTPUT = REPO / "demo_output"
QUESTIONS = ["What is the capital of France?", "Translate the color 'red' into French."]

sys.path.insert(0, str(REPO))


def run(script: str, *args: object) -> None:
    command = [sys.executable, str(REPO / script), *map(str, args)]
    print(f"\n$ {shlex.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def main() -> None:
    from finetuning.tiny_models import build_tiny_model, build_tokenizer

    records = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    base = OUTPUT / "tiny-llama"
    print(f"building a tiny Llama and its tokenizer from {DATA.relative_to(REPO)} ({len(records)} records)")
    tokenizer = build_tokenizer([" ".join(record.values()) for record in records], vocab_size=512)
    build_tiny_model("llama", tokenizer, base, hidden=128, layers=2, heads=4)

    adapter = OUTPUT / "tiny-llama-lora"
    run("finetune_clm.py", "--model_name_or_path", base, "--train_file", DATA, "--output_dir", adapter,
        "--do_train", "--peft", "lora", "--lora_all_linear", "--lora_rank", "32", "--lora_alpha", "64",
        "--lora_dropout", "0", "--dataset_concatenation", "--max_seq_length", "256",
        "--per_device_train_batch_size", "4", "--num_train_epochs", "30", "--learning_rate", "5e-3",
        "--warmup_ratio", "0.05", "--logging_steps", "50", "--save_strategy", "no", "--overwrite_output_dir",
        "--report_to", "none", "--disable_tqdm", "true")

    run("inference.py", "--peft_model_path", adapter, "--max_new_tokens", "24", "--instructions", *QUESTIONS)
    print(f"\ndemo done: base model in {base.relative_to(REPO)}, adapter in {adapter.relative_to(REPO)}")


if __name__ == "__main__":
    main()
