"""Show what is in a training file before training on it, and optionally dedupe and split it.

    python prepare_data/inspect_data.py --input data/train.jsonl --tokenizer path/to/tokenizer \
        --max_seq_length 512 --histogram lengths.png
    python prepare_data/inspect_data.py --input data/train.jsonl --dedupe data/train.dedup.jsonl \
        --split_validation 0.05 --seed 42 --train_out data/train.split.jsonl --validation_out data/val.jsonl

The report gives the record count, empty and exactly duplicated records (with their lines), the length of
each rendered prompt + response in characters and (with ``--tokenizer``) tokens as p50/p90/p99/max, and how
many records ``--max_seq_length`` would truncate.

This file is not called ``inspect.py``: run as a script, its folder comes first on ``sys.path``, and a module
named ``inspect`` there would shadow the standard library's, which much of Python (dataclasses, torch,
transformers) imports.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):
    # Run as `python prepare_data/inspect_data.py`: Python put prepare_data/ first on sys.path, where its
    # modules could shadow top-level ones; the repository root goes there instead, so both packages import.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from finetuning.data.samples import IGNORE_INDEX
from finetuning.errors import UserError, exit_on_user_error
from prepare_data.analysis import (
    Example,
    Truncation,
    duplicate_of,
    format_report,
    load_examples,
    split_indices,
)
from prepare_data.writing import check_output_suffix, write_atomically, write_records

# What save_pretrained leaves in a tokenizer directory; checked first, because transformers' own error for a
# folder without them is a puzzling multi-line message.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Report what is in a training file; optionally dedupe and split it.")
    parser.add_argument(
        "--input", required=True, type=Path, metavar="FILE", help="Alpaca JSON/JSONL, Dolly-style or messages JSONL"
    )
    parser.add_argument("--tokenizer", type=Path, metavar="DIR", help="a local tokenizer directory, to count tokens")
    parser.add_argument(
        "--max_seq_length", type=int, metavar="N", default=512, help="token limit to check against (default 512)"
    )
    parser.add_argument(
        "--prompt_template", default="alpaca", metavar="NAME", help="instruction template, as in training (alpaca)"
    )
    parser.add_argument("--chat_template", metavar="NAME", help="chat records: a named template, as in training")
    parser.add_argument("--histogram", type=Path, metavar="PNG", help="write a PNG histogram of the lengths here")
    parser.add_argument("--dedupe", type=Path, metavar="OUT", help="write the records without exact duplicates here")
    parser.add_argument(
        "--split_validation", type=float, metavar="FRACTION", help="fraction of records for validation, e.g. 0.05"
    )
    parser.add_argument("--seed", type=int, metavar="N", default=42, help="seed of the split (default 42)")
    parser.add_argument("--train_out", type=Path, metavar="OUT", help="where the split writes the training records")
    parser.add_argument(
        "--validation_out", type=Path, metavar="OUT", help="where the split writes the validation records"
    )
    return parser


def load_tokenizer_dir(tokenizer_dir: Path) -> Any:
    """A local tokenizer, or one line saying why the directory is not one."""
    if not tokenizer_dir.is_dir():
        raise UserError("not a tokenizer directory", path=str(tokenizer_dir))
    if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        expected = ", ".join(TOKENIZER_FILES[:2])
        raise UserError(f"no tokenizer files here (expected {expected} or the like)", path=str(tokenizer_dir))
    from transformers import AutoTokenizer  # slow to import: only when tokens are asked for

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load a tokenizer: {first_line}", path=str(tokenizer_dir)) from None


def encode_as_training(args: argparse.Namespace, examples: Sequence[Example]) -> tuple[list[int], Truncation]:
    """Each record's token length, and what ``--max_seq_length`` does to it, through training's own encoder
    (finetuning/data/encoding.py: same template, same truncation rule), so this report and training agree."""
    from finetuning.data.encoding import encode_causal_record
    from finetuning.data.samples import supervised_count
    from finetuning.data.templates import get_template

    tokenizer = load_tokenizer_dir(args.tokenizer)
    settings = {"tokenizer": tokenizer, "template": get_template(args.prompt_template), "train_on_inputs": False}
    settings["chat_template"] = args.chat_template
    lengths, truncation = [], Truncation()
    for index, example in enumerate(examples):
        whole = encode_causal_record(example.record, max_length=sys.maxsize, **settings)
        fitted = encode_causal_record(example.record, max_length=args.max_seq_length, **settings)
        lengths.append(len(whole["input_ids"]))
        truncation.add(
            index,
            fitted["truncated"],
            prompt_cut=fitted["labels"].count(IGNORE_INDEX) < whole["labels"].count(IGNORE_INDEX),
            supervised=(supervised_count(fitted["labels"]), supervised_count(whole["labels"])),
        )
    return lengths, truncation


def save_histogram(path: Path, lengths: Sequence[int], unit: str, limit: int | None, title: str) -> None:
    """Histogram of lengths as a PNG, with the --max_seq_length limit drawn when counting tokens."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.hist(lengths, bins=60, color="tab:blue")
    if limit is not None:
        axes.axvline(limit, color="tab:red", linestyle="--", label=f"--max_seq_length {limit}")
        axes.legend()
    axes.set_xlabel(f"length of prompt + response ({unit})")
    axes.set_ylabel("records")
    axes.set_title(title)
    figure.tight_layout()

    def write(handle: IO[Any]) -> None:
        figure.savefig(handle, format="png", dpi=100)

    try:
        write_atomically(path, write, binary=True)
    finally:
        plt.close(figure)


def _write_examples(path: Path, examples: Sequence[Example]) -> int:
    """Records as they were in the input (a Dolly file stays Dolly); a JSON list when ``path`` is .json."""
    return write_records(path, (example.raw for example in examples), json_list=path.suffix.lower() == ".json")


def run(args: argparse.Namespace) -> int:
    if args.split_validation is not None and (args.train_out is None or args.validation_out is None):
        raise UserError("--split_validation needs --train_out FILE and --validation_out FILE")
    if args.split_validation is None and (args.train_out or args.validation_out):
        raise UserError("--train_out and --validation_out need --split_validation FRACTION")
    if args.split_validation is not None and not 0 < args.split_validation < 1:
        raise UserError(f"--split_validation: expected a fraction between 0 and 1, got {args.split_validation}")
    for output in (args.dedupe, args.train_out, args.validation_out):
        if output is not None:
            check_output_suffix(output, json_list=output.suffix.lower() == ".json")
    fmt, examples = load_examples(args.input)
    texts = [example.text() for example in examples]
    tokens = truncation = None
    if args.tokenizer is not None:
        tokens, truncation = encode_as_training(args, examples)
    chars = [len(text) for text in texts]
    lines = format_report(args.input, fmt, examples, chars, tokens, truncation, args.max_seq_length)
    if args.histogram is not None:
        unit, lengths, limit = ("tokens", tokens, args.max_seq_length) if tokens else ("characters", chars, None)
        save_histogram(args.histogram, lengths, unit, limit, f"{args.input.name}: {len(examples)} records")
        lines.append(f"histogram ({unit}): {args.histogram}")
    kept = list(examples)
    if args.dedupe is not None:
        repeats = duplicate_of(examples)
        kept = [example for index, example in enumerate(examples) if index not in repeats]
        lines.append(f"dedupe: wrote {_write_examples(args.dedupe, kept)} records to {args.dedupe}")
    if args.split_validation is not None:
        train, validation = split_indices(len(kept), args.split_validation, args.seed)
        source = "deduplicated records" if args.dedupe is not None else "records"
        written_train = _write_examples(args.train_out, [kept[index] for index in train])
        written_validation = _write_examples(args.validation_out, [kept[index] for index in validation])
        lines.append(
            f"split ({source}, seed {args.seed}): {written_train} to {args.train_out}, "
            f"{written_validation} to {args.validation_out}"
        )
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_on_user_error(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
