"""Build a tiny model of a real architecture, with its own tokenizer, offline: to try the scripts without a hub.

The tokenizer (byte-level BPE) is trained on the text of a data file; the model has random weights and the
structure of the full-size one, so loading, training, saving and inference run exactly as for a real model:
    python scripts/make_tiny_model.py --architecture t5 --output_dir tiny-t5
    python finetune_seq2seq.py --model_name_or_path tiny-t5 --train_file data/sample_instructions.jsonl \\
        --output_dir t5-lora --do_train --peft lora --num_train_epochs 1
    python inference.py --peft_model_path t5-lora --infer
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from finetuning.errors import UserError, exit_on_user_error  # noqa: E402
from finetuning.model.tiny import ARCHITECTURES  # noqa: E402


@dataclass
class TinyModelArguments:
    """What to build and where."""

    output_dir: str = field(metadata={"help": "Directory for the model and its tokenizer (must not hold a model)."})
    architecture: str = field(default="llama", metadata={"help": "Model family.", "choices": ARCHITECTURES})
    data_file: str = field(
        default=str(REPO / "data" / "sample_instructions.jsonl"),
        metadata={"help": "Text to train the tokenizer on: any training-format file (.json, .jsonl, .csv)."},
    )
    vocab_size: int = field(default=512, metadata={"help": "Tokenizer vocabulary size (special tokens included)."})
    hidden: int = field(default=64, metadata={"help": "Hidden size (a multiple of --heads)."})
    layers: int = field(default=2, metadata={"help": "Number of layers (T5: of the encoder and of the decoder)."})
    heads: int = field(default=4, metadata={"help": "Attention heads (an even number: Llama/Mistral use GQA)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})

    def __post_init__(self) -> None:
        if (Path(self.output_dir) / "config.json").exists():
            raise UserError("already holds a model: choose a new directory", path=self.output_dir, field="output_dir")
        if self.heads < 2 or self.heads % 2 or self.hidden % self.heads:
            raise UserError("--heads must be even and divide --hidden", field="heads")
        for name in ("vocab_size", "layers"):
            if getattr(self, name) < 1:
                raise UserError("must be at least 1", field=name)


def main(argv: list[str] | None = None) -> Path:
    from finetuning.cli import parse_arguments
    from finetuning.model.tiny import build_tiny_model_from_data

    (args,) = parse_arguments((TinyModelArguments,), argv)
    output = build_tiny_model_from_data(
        args.architecture,
        args.data_file,
        args.output_dir,
        vocab_size=args.vocab_size,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        seed=args.seed,
    )
    script = "finetune_seq2seq.py" if args.architecture == "t5" else "finetune_clm.py"
    print(f"built a tiny {args.architecture} in {output}; fine-tune it: python {script} --model_name_or_path {output}")
    return output


if __name__ == "__main__":
    exit_on_user_error(main)
