"""Convert raw data into a file the training scripts read.

    python prepare_data/convert.py --input alpaca_seed_tasks.jsonl --output data/seed.jsonl
    python prepare_data/convert.py --input transcript.csv --output data/ada.jsonl --character Ada
    python prepare_data/convert.py --input sharegpt.json --output data/chat.jsonl

The input format is detected unless ``--format`` names it (see ``prepare_data/README.md`` for the rules);
the output is Alpaca JSONL by default, a JSON list with ``--to alpaca_json``, chat ``messages`` JSONL with
``--to messages`` (the default, and the only choice, for chat input). A bad record stops the conversion with
one line naming the file, line and field, and no output is written.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python prepare_data/convert.py`: Python put prepare_data/ first on sys.path, where its modules
    # could shadow top-level ones; the repository root goes there instead, so both packages import.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from finetuning.errors import UserError, exit_on_user_error
from prepare_data import converters, dialogue
from prepare_data.converters import Record
from prepare_data.reading import CSV_SUFFIXES, read_csv, read_json_records
from prepare_data.writing import check_output_suffix, write_records

FORMATS = ("auto", *converters.JSON_FORMATS, *converters.CSV_FORMATS)
TARGETS = ("alpaca", "alpaca_json", "messages")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert raw data (seed tasks, Alpaca, Dolly, CSV, dialogue transcripts, chat) into "
        "training files: Alpaca JSONL/JSON or chat messages JSONL.",
    )
    parser.add_argument("--input", required=True, type=Path, metavar="FILE", help="the raw data file")
    parser.add_argument("--output", required=True, type=Path, metavar="OUT", help="where to write (written atomically)")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="input format (default: detect)")
    parser.add_argument(
        "--to", choices=TARGETS, default=None, help="output: alpaca (JSONL, default), alpaca_json, messages"
    )
    csv_group = parser.add_argument_group("CSV with named columns")
    csv_group.add_argument("--instruction_column", metavar="COLUMN", help="default: 'instruction'")
    csv_group.add_argument(
        "--input_column", metavar="COLUMN", help="default: 'input' if present, else the input is empty"
    )
    csv_group.add_argument("--output_column", metavar="COLUMN", help="default: 'output'")
    csv_group.add_argument(
        "--instruction",
        metavar="TEXT",
        help="CSV: the instruction of every record when there is no instruction column; dialogue: the "
        f"instruction template (default: '{dialogue.DEFAULT_INSTRUCTION}')",
    )
    dialogue_group = parser.add_argument_group("dialogue transcripts (one CSV row per spoken line)")
    dialogue_group.add_argument("--character", metavar="NAME", help="the character whose lines become the outputs")
    dialogue_group.add_argument("--speaker_column", metavar="COLUMN", help="default: 'speaker' or 'character'")
    dialogue_group.add_argument("--text_column", metavar="COLUMN", help="default: 'text' or 'line'")
    dialogue_group.add_argument(
        "--group_columns",
        metavar="COLUMNS",
        help="comma-separated scene key (default: those of 'episode,scene' present; '' for none)",
    )
    dialogue_group.add_argument(
        "--context_lines",
        metavar="N",
        type=_non_negative,
        default=5,
        help="earlier lines of the scene to show (default 5)",
    )
    return parser


def _csv_records(path: Path, fmt: str, args: argparse.Namespace) -> tuple[str, Iterator[Record]]:
    header, rows = read_csv(path)
    where = str(path)
    columns = ", ".join(f"'{name}'" for name in header)
    if fmt in ("auto", "csv"):
        output_column = converters.find_column(header, args.output_column, ("output",), where)
        if output_column is not None or fmt == "csv":
            if output_column is None:
                raise UserError(f"no 'output' column; pass --output_column (the header has: {columns})", path=where)
            instruction_column = converters.find_column(header, args.instruction_column, ("instruction",), where)
            if instruction_column is None and args.instruction is None:
                message = (
                    "no 'instruction' column; pass --instruction_column or --instruction TEXT "
                    f"(the header has: {columns})"
                )
                raise UserError(message, path=where)
            input_column = converters.find_column(header, args.input_column, ("input",), where)
            records = converters.csv_to_alpaca(
                rows,
                instruction_column=instruction_column,
                input_column=input_column,
                output_column=output_column,
                instruction=args.instruction,
            )
            return "csv", records
    speaker_column = converters.find_column(header, args.speaker_column, dialogue.SPEAKER_COLUMNS, where)
    text_column = converters.find_column(header, args.text_column, dialogue.TEXT_COLUMNS, where)
    if speaker_column is None or text_column is None:
        message = (
            "cannot tell the CSV layout: expected 'instruction'/'output' columns or speaker ('speaker', "
            f"'character') and text ('text', 'line') columns; pass the --*_column flags "
            f"(the header has: {columns})"
        )
        raise UserError(message, path=where)
    if not args.character:
        raise UserError("a dialogue transcript needs --character NAME (whose lines to learn)", path=where)
    if args.group_columns is None:
        found = (converters.find_column(header, None, (name,), where) for name in dialogue.GROUP_COLUMNS)
        group_columns = [name for name in found if name is not None]
    else:
        wanted = [name.strip() for name in args.group_columns.split(",") if name.strip()]
        group_columns = [converters.find_column(header, name, (), where) or name for name in wanted]
    instruction = args.instruction or dialogue.DEFAULT_INSTRUCTION
    try:
        instruction.format(character=args.character)
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(f"--instruction: bad template ({error!r}); the only placeholder is {{character}}") from None
    records = dialogue.dialogue_to_alpaca(
        rows,
        character=args.character,
        speaker_column=speaker_column,
        text_column=text_column,
        group_columns=group_columns,
        context_lines=args.context_lines,
        instruction=instruction,
    )
    return "dialogue", records


def open_records(args: argparse.Namespace) -> tuple[str, Iterator[Record]]:
    """Detect (or take) the input format and return it with a lazy iterator over the converted records."""
    path: Path = args.input
    if not path.is_file():
        raise UserError("no such file" if not path.exists() else "not a file", path=str(path))
    fmt = args.format
    if fmt in converters.CSV_FORMATS or (fmt == "auto" and path.suffix.lower() in CSV_SUFFIXES):
        return _csv_records(path, fmt, args)
    located = read_json_records(path)
    first = next(located, None)
    if first is None:
        raise UserError("no records found", path=str(path))
    if fmt == "auto":
        fmt = converters.detect_json_format(first)
    return fmt, converters.JSON_CONVERTERS[fmt](itertools.chain([first], located))


def _require_records(records: Iterable[Record], path: Path) -> Iterator[Record]:
    count = 0
    for record in records:
        count += 1
        yield record
    if count == 0:
        raise UserError("no records found", path=str(path))


def run(args: argparse.Namespace) -> int:
    check_output_suffix(args.output, json_list=args.to == "alpaca_json")
    fmt, records = open_records(args)
    chat = fmt in converters.CHAT_FORMATS
    target = args.to or ("messages" if chat else "alpaca")
    if chat and target != "messages":
        raise UserError(f"{fmt} conversations convert only to --to messages", path=str(args.input))
    if target == "messages" and not chat:
        records = converters.alpaca_to_messages(records)
    count = write_records(args.output, _require_records(records, args.input), json_list=target == "alpaca_json")
    print(f"wrote {count} records ({fmt} -> {target}) to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_on_user_error(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
