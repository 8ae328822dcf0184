"""The built-in demo (`make demo`): the whole job on a small default, offline, in a few minutes on a CPU.

1. Train a byte-level BPE tokenizer on the shipped sample data and build a tiny Llama (random weights).
2. LoRA fine-tune it with packing (``--dataset_concatenation``) on the first records of
   ``data/sample_instructions.jsonl``.
3. Generate answers to two of the training instructions with ``inference.py``.

A tiny random model learns the answers' shape, not the world: the point is to see every stage run, and
the commands printed here are the ones to reuse with a real model.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "sample_instructions.jsonl"
OUTPUT = REPO / "demo_output"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
TRAIN_RECORDS = 6  # what a tiny random model memorizes in a minute or two on two cores
QUESTIONS = ["What is the capital of Norway?", "Translate the color 'black' into French."]

sys.path.insert(0, str(REPO))


def run(script: str, *args: object) -> None:
    command = [sys.executable, str(REPO / script), *map(str, args)]
    print(f"\n$ {shlex.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def main() -> None:
    from finetuning.model.tiny import build_tiny_model_from_data

    base = OUTPUT / "tiny-llama"
    print(f"building a tiny Llama and its tokenizer from {DATA.relative_to(REPO)} (scripts/make_tiny_model.py)")
    build_tiny_model_from_data("llama", DATA, base, vocab_size=512, hidden=64, layers=2, heads=4)

    adapter = OUTPUT / "tiny-llama-lora"
    run(
        "finetune_clm.py",
        "--model_name_or_path",
        base,
        "--train_file",
        DATA,
        "--output_dir",
        adapter,
        # lm_head too: a random base's output layer is too weak for confident answers (a pretrained one is not)
        "--do_train",
        "--peft",
        "lora",
        "--lora_rank",
        "16",
        "--lora_alpha",
        "32",
        "--lora_target_modules",
        *LORA_TARGETS,
        "--lora_dropout",
        "0",
        "--dataset_concatenation",
        "--max_seq_length",
        "256",
        "--max_train_samples",
        TRAIN_RECORDS,
        "--per_device_train_batch_size",
        "6",
        "--num_train_epochs",
        "150",
        "--learning_rate",
        "1e-2",
        "--warmup_ratio",
        "0.05",
        "--logging_steps",
        "100",
        "--save_strategy",
        "no",
        "--overwrite_output_dir",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    )

    run("inference.py", "--peft_model_path", adapter, "--max_new_tokens", "24", "--instructions", *QUESTIONS)
    print(f"\ndemo done: base model in {base.relative_to(REPO)}, adapter in {adapter.relative_to(REPO)}")


if __name__ == "__main__":
    main()
