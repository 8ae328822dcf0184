"""Read records together with where they came from.

Every complaint about the user's data must name the file, the line and the field (``data.jsonl:7: field
'output': ...``), so the readers here yield :class:`Located` records that carry their path and line, and the
converters ask them for fields instead of indexing dicts.

Modules of this folder are not named after stdlib ones (``io``, ``csv``, ``inspect``): the scripts beside them
run as ``python prepare_data/convert.py``, and such a name could shadow the standard module.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetuning.errors import UserError

CSV_SUFFIXES = (".csv", ".tsv")


def json_type_name(value: Any) -> str:
    """Name a parsed value by its JSON type, as the user sees it in the file (``null``, not ``NoneType``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@dataclass(frozen=True)
class Located:
    """One record (a JSON object or a CSV row as a dict) and the place it came from.

    ``prefix`` names where a nested object sits inside the record (``instances[0].``), so an error about a
    nested field points at it exactly.
    """

    path: str
    line: int
    record: dict[str, Any]
    prefix: str = ""

    def error(self, message: str, field: str | None = None) -> UserError:
        """Build the one-line error for this record, optionally about one of its fields."""
        full_field = None if field is None else f"{self.prefix}{field}"
        return UserError(message, path=self.path, line=self.line, field=full_field)

    def text(self, key: str, *, optional: bool = False) -> str:
        """The string at ``key``: a missing optional field reads as empty, another type is an error."""
        if key not in self.record:
            if optional:
                return ""
            present = ", ".join(f"'{name}'" for name in self.record) or "none"
            raise self.error(f"missing (the record has: {present})", key)
        value = self.record[key]
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {json_type_name(value)}", key)
        return value

    def items(self, key: str) -> list[Located]:
        """The non-empty list of objects at ``key``, each a :class:`Located` whose errors name its index."""
        value = self.record.get(key)
        if key not in self.record:
            raise self.error("missing", key)
        if not isinstance(value, list):
            raise self.error(f"expected a list, got {json_type_name(value)}", key)
        if not value:
            raise self.error("expected a non-empty list, got []", key)
        located = []
        for index, item in enumerate(value):
            field = f"{key}[{index}]"
            if not isinstance(item, dict):
                raise self.error(f"expected an object, got {json_type_name(item)}", field)
            located.append(Located(self.path, self.line, item, f"{self.prefix}{field}."))
        return located


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a BOM is dropped); a missing or undecodable file is the user's error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError("no such file", path=str(path)) from None
    except OSError as error:
        raise UserError(f"cannot read: {error.strerror}", path=str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError("not UTF-8 text (convert the file to UTF-8 first)", path=str(path), line=line) from None


def _as_object(path: Path, line: int, value: Any) -> Located:
    if not isinstance(value, dict):
        raise UserError(f"expected a JSON object, got {json_type_name(value)}", path=str(path), line=line)
    return Located(str(path), line, value)


def read_json_records(path: Path) -> Iterator[Located]:
    """Yield the objects of a JSON list (a file starting with ``[``) or of JSON Lines (anything else).

    The content decides rather than the suffix, because ``.json`` files holding JSON Lines are common. For a
    JSON list each record's line is where its object starts, found by decoding element by element.
    """
    text = read_text(path)
    if text.lstrip().startswith("["):
        yield from _read_json_list(path, text)
        return
    for number, raw in enumerate(text.split("\n"), start=1):
        # split("\n"), not splitlines(): JSON strings may hold U+2028 and the like, no line break here.
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            message = f"malformed JSON: {error.msg} (column {error.colno})"
            raise UserError(message, path=str(path), line=number) from None
        yield _as_object(path, number, value)


def _read_json_list(path: Path, text: str) -> Iterator[Located]:
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    counted_to, line = 0, 1

    def skip_space(index: int) -> int:
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        return index

    def fail(message: str, index: int) -> UserError:
        return UserError(message, path=str(path), line=text.count("\n", 0, index) + 1)

    position = skip_space(position)
    if position < len(text) and text[position] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise UserError(f"malformed JSON: {error.msg}", path=str(path), line=error.lineno) from None
        line += text.count("\n", counted_to, position)
        counted_to = position
        yield _as_object(path, line, value)
        position = skip_space(end)
        if position >= len(text):
            raise fail("malformed JSON: the list is not closed with ']'", position)
        if text[position] == "]":
            if text[skip_space(position + 1) :]:
                raise fail("malformed JSON: extra data after the closing ']'", position + 1)
            return
        if text[position] != ",":
            raise fail("malformed JSON: expected ',' or ']' between records", position)
        position = skip_space(position + 1)


def read_csv(path: Path) -> tuple[list[str], Iterator[Located]]:
    """The header of a CSV (TSV for ``.tsv``) file and an iterator over its rows as dicts keyed by column.

    Each row's line is where it starts, which differs from where it ends when a quoted cell spans lines.
    """
    text = read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise UserError(f"malformed CSV: {error}", path=str(path), line=1) from None
    if not header:
        raise UserError("empty file: expected a header row naming the columns", path=str(path), line=1)
    header = [name.strip() for name in header]

    def rows() -> Iterator[Located]:
        last_line = reader.line_num
        while True:
            try:
                row = next(reader, None)
            except csv.Error as error:
                raise UserError(f"malformed CSV: {error}", path=str(path), line=last_line + 1) from None
            if row is None:
                return
            start, last_line = last_line + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                message = f"the row has {len(row)} cells but the header has {len(header)} columns"
                raise UserError(message, path=str(path), line=start)
            yield Located(str(path), start, dict(zip(header, row, strict=True)))

    return header, rows()
