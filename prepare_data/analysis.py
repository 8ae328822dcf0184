"""What is in a training file: loading it for inspection, empty and duplicate records, lengths, splitting.

Pure functions behind ``inspect_data.py``, kept apart from the command line (and from the tokenizer and
matplotlib, which are slow to import) so that they are quick to test.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetuning.errors import UserError
from prepare_data import converters
from prepare_data.reading import CSV_SUFFIXES, read_json_records
from prepare_data.rendering import render_example

TRAINING_FORMATS = ("alpaca", "dolly", "messages")
PERCENTILES = (50, 90, 99, 100)


@dataclass(frozen=True)
class Example:
    """One record of a training file: as written (kept for dedupe and split output) and as trained on."""

    line: int
    raw: dict[str, Any]
    record: dict[str, Any]

    @property
    def key(self) -> str:
        """Identity for exact duplicates: what training sees, so a missing ``input`` equals ``""``."""
        return json.dumps(self.record, sort_keys=True, ensure_ascii=False)

    def text(self) -> str:
        prompt, response = render_example(self.record)
        return prompt + response

    def empty_fields(self) -> list[str]:
        """Which of 'instruction' and 'output' are blank (for chat: no user or no assistant text)."""
        if "messages" in self.record:
            said = {message["role"] for message in self.record["messages"] if message["content"].strip()}
            return [name for name, role in (("instruction", "user"), ("output", "assistant")) if role not in said]
        return [name for name in ("instruction", "output") if not self.record[name].strip()]


@dataclass
class Truncation:
    """What ``--max_seq_length`` does to the records, as training's encoder cuts them."""

    over: list[int] = field(default_factory=list)  # indices of the records that are cut
    prompts_cut: int = 0
    responses_cut: int = 0
    supervised_kept: int = 0
    supervised_total: int = 0

    def add(self, index: int, truncated: bool, *, prompt_cut: bool, supervised: tuple[int, int]) -> None:
        kept, total = supervised
        if truncated:
            self.over.append(index)
            self.prompts_cut += prompt_cut
            self.responses_cut += kept < total
        self.supervised_kept += kept
        self.supervised_total += total


def load_examples(path: Path) -> tuple[str, list[Example]]:
    """Read a training file (Alpaca JSON/JSONL, Dolly-style or chat JSONL) with every field checked."""
    if path.suffix.lower() in CSV_SUFFIXES:
        raise UserError("a CSV file is not a training file; convert it with prepare_data/convert.py", path=str(path))
    located = list(read_json_records(path))
    if not located:
        raise UserError("no records found", path=str(path))
    fmt = converters.detect_json_format(located[0])
    if fmt not in TRAINING_FORMATS:
        raise UserError(f"{fmt} data is not a training file; convert it with prepare_data/convert.py", path=str(path))
    convert = converters.JSON_CONVERTERS[fmt]
    return fmt, [Example(item.line, item.record, next(convert([item]))) for item in located]


def duplicate_of(examples: Sequence[Example]) -> dict[int, int]:
    """Map the index of each record that exactly repeats an earlier one to the index of the first."""
    first: dict[str, int] = {}
    repeats = {}
    for index, example in enumerate(examples):
        seen = first.setdefault(example.key, index)
        if seen != index:
            repeats[index] = seen
    return repeats


def percentile(sorted_values: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile: a value that occurs in the data, so 'p100' is the maximum."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def split_indices(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/validation split of ``range(count)``; both parts keep file order, neither is empty."""
    if not 0 < fraction < 1:
        raise UserError(f"--split_validation: expected a fraction between 0 and 1, got {fraction}")
    if count < 2:
        raise UserError(f"--split_validation: {count} record(s) cannot be split in two")
    validation_size = min(count - 1, max(1, round(count * fraction)))
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return sorted(order[validation_size:]), sorted(order[:validation_size])


def _lines(examples: Sequence[Example], indices: Sequence[int], limit: int = 5) -> str:
    """``line 7`` or ``lines 4, 6, ...``: where to look in the file."""
    shown = ", ".join(str(examples[index].line) for index in indices[:limit])
    return f"line{'s' if len(indices) > 1 else ''} {shown}" + (", ..." if len(indices) > limit else "")


def _share(part: int, whole: int) -> str:
    """``3 (0.1%)``; a share too small to show reads ``<0.1%``, not a misleading ``0.0%``."""
    if not whole:
        return str(part)
    percent = 100 * part / whole
    return f"{part} ({'<0.1' if 0 < percent < 0.05 else f'{percent:.1f}'}%)"


def format_report(
    path: Path,
    fmt: str,
    examples: Sequence[Example],
    char_lengths: Sequence[int],
    token_lengths: Sequence[int] | None,
    truncation: Truncation | None,
    max_seq_length: int,
) -> list[str]:
    """The report's lines: counts, empty and duplicate records, length percentiles, records over the limit."""
    total = len(examples)
    lines = [f"file: {path}", f"format: {fmt}", f"records: {total}"]
    empty = {
        name: [i for i, ex in enumerate(examples) if name in ex.empty_fields()] for name in ("instruction", "output")
    }
    any_empty = sorted(set(empty["instruction"]) | set(empty["output"]))
    detail = f"empty output: {len(empty['output'])}, empty instruction: {len(empty['instruction'])}"
    where = f"; {_lines(examples, any_empty)}" if any_empty else ""
    lines.append(f"empty records: {_share(len(any_empty), total)} ({detail}{where})")
    repeats = duplicate_of(examples)
    pairs = ", ".join(f"{examples[index].line} = {examples[first].line}" for index, first in list(repeats.items())[:5])
    where = f"; line = earlier line: {pairs}{', ...' if len(repeats) > 5 else ''}" if repeats else ""
    lines.append(f"exact duplicates: {_share(len(repeats), total)} repeat an earlier record{where}")
    template = "role-tagged chat" if fmt == "messages" else "Alpaca"
    lines.append(f"length of the rendered prompt + response ({template} template):")
    lines.append(f"  {'':<11}" + "".join(f"{'max' if p == 100 else f'p{p}':>9}" for p in PERCENTILES))
    rows = [("characters", char_lengths)] + ([("tokens", token_lengths)] if token_lengths is not None else [])
    for name, values in rows:
        ordered = sorted(values)
        lines.append(f"  {name:<11}" + "".join(f"{percentile(ordered, p):>9,}" for p in PERCENTILES))
    if token_lengths is None or truncation is None:
        lines.append("tokens: pass --tokenizer DIR to count tokens and the records over --max_seq_length")
        return lines
    over = truncation.over
    where = f"; {_lines(examples, over)}" if over else ""
    lines.append(
        f"over --max_seq_length {max_seq_length} tokens: {_share(len(over), total)}, cut in training as here: "
        f"prompt cut in {truncation.prompts_cut}, response cut in {truncation.responses_cut}{where}"
    )
    lines.append(
        f"tokens in the loss after cutting: {truncation.supervised_kept:,} of {truncation.supervised_total:,} "
        "(the response keeps at least half the window; the prompt is cut from the left, after its first token)"
    )
    return lines
