"""Reading instruction data from disk into validated, normalized records.

Every supported layout becomes one of two record shapes, so the rest of the package never looks at file
formats again:

* instruction records ``{"instruction": str, "input": str, "output": str}`` (Alpaca's ``input``/``output``
  and Dolly's ``context``/``response`` both map here);
* chat records ``{"messages": [{"role": ..., "content": ...}, ...]}``.

Anything malformed stops the run with a :class:`UserError` naming the file, the line (or record) and the
field, before a model is loaded or anything is written.
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

Record = dict[str, Any]
CHAT_ROLES = ("system", "user", "assistant")
_OUTPUT_KEYS = ("output", "response")
_INPUT_KEYS = ("input", "context")


@dataclass
class LoadedData:
    """Records of one source plus what was set aside, for the data report."""

    records: list[Record]
    source: str
    empty_skipped: int = 0


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string_field(raw: Record, key: str, where: dict[str, Any], required: bool) -> str:
    value = raw.get(key)
    if value is None and key not in raw and not required:
        return ""
    if not isinstance(value, str):
        missing = key not in raw
        raise UserError("missing" if missing else f"expected a string, got {_describe(value)}", field=key, **where)
    return value


def _normalize_chat(raw: Record, where: dict[str, Any]) -> Record:
    messages = raw["messages"]
    if not isinstance(messages, list) or not messages:
        raise UserError("expected a non-empty list of messages", field="messages", **where)
    normalized = []
    for index, message in enumerate(messages):
        name = f"messages[{index}]"
        if not isinstance(message, dict):
            raise UserError(f"expected an object, got {_describe(message)}", field=name, **where)
        role = _string_field(message, "role", where, required=True)
        if role not in CHAT_ROLES:
            raise UserError(f"role must be one of {', '.join(CHAT_ROLES)}, got '{role}'", field=f"{name}.role", **where)
        content = message.get("content")
        if not isinstance(content, str):
            raise UserError(f"expected a string, got {_describe(content)}", field=f"{name}.content", **where)
        normalized.append({"role": role, "content": content})
    if not any(message["role"] == "assistant" for message in normalized):
        raise UserError("no assistant message: nothing to learn", field="messages", **where)
    return {"messages": normalized}


def normalize_record(raw: Any, where: dict[str, Any]) -> Record:
    """Validate one raw record and map it to the instruction or chat shape.

    ``where`` holds the location keywords of :class:`UserError` (``path`` and ``line`` or ``record``).
    """
    if not isinstance(raw, dict):
        raise UserError(f"expected a JSON object, got {_describe(raw)}", **where)
    if "messages" in raw:
        return _normalize_chat(raw, where)
    output_key = next((key for key in _OUTPUT_KEYS if key in raw), None)
    if "instruction" not in raw and output_key is None:
        found = ", ".join(sorted(map(str, raw))) or "none"
        raise UserError(
            f"no known fields (want instruction+output, instruction+response or messages; found: {found})", **where
        )
    input_key = next((key for key in _INPUT_KEYS if key in raw), "input")
    return {
        "instruction": _string_field(raw, "instruction", where, required=True),
        "input": _string_field(raw, input_key, where, required=False),
        "output": _string_field(raw, output_key or "output", where, required=True),
    }


def is_empty(record: Record) -> bool:
    """A record with no instruction and no response teaches nothing."""
    if "messages" in record:
        return not any(message["content"].strip() for message in record["messages"])
    return not record["instruction"].strip() and not record["output"].strip()


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")  # -sig: a leading byte-order mark is not data
    except UnicodeDecodeError as error:
        raise UserError(f"not UTF-8 text (bad byte at offset {error.start})", path=str(path)) from None
    except OSError as error:
        raise UserError(f"cannot read: {error.strerror}", path=str(path)) from None


def _json_lines(path: Path, text: str) -> Iterator[tuple[dict[str, Any], Any]]:
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as error:
            raise UserError(f"invalid JSON: {error.msg} (column {error.colno})", path=str(path), line=number) from None
        yield {"path": str(path), "line": number}, value


def iter_raw_records(path: Path) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every record of a JSON, JSONL or CSV file as ``(location, raw value)``, not yet validated.

    ``location`` holds the :class:`UserError` keywords that point at the record. Inference reads prompt files
    through this too, since their records need no response.
    """
    suffix = path.suffix.lower()
    text = _read_text(path)
    if suffix == ".jsonl":
        yield from _json_lines(path, text)
    elif suffix == ".json":
        try:
            value = json.loads(text)
        except ValueError as error:
            if error.msg == "Extra data":  # a JSON Lines file named .json
                yield from _json_lines(path, text)
                return
            raise UserError(f"invalid JSON: {error.msg}", path=str(path), line=error.lineno) from None
        if not isinstance(value, list):
            raise UserError(f"expected a JSON list of records, got {_describe(value)}", path=str(path))
        for index, item in enumerate(value, start=1):
            yield {"path": str(path), "record": index}, item
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            return
        header = set(reader.fieldnames)
        if "instruction" not in header or not header & set(_OUTPUT_KEYS):
            found = ", ".join(reader.fieldnames)
            raise UserError(
                f"CSV header needs columns instruction and output (or response); found: {found}", path=str(path), line=1
            )
        for row in reader:
            if None in row:
                raise UserError("more cells than header columns", path=str(path), line=reader.line_num)
            yield {"path": str(path), "line": reader.line_num}, row
    else:
        raise UserError(f"unsupported file type '{suffix}' (use .json, .jsonl or .csv)", path=str(path))


def load_data_file(path_text: str) -> LoadedData:
    """Read and validate every record of a JSON, JSONL or CSV file."""
    path = Path(path_text)
    if path.is_dir():
        raise UserError("is a directory; pass it as --dataset_name to read a saved data set", path=path_text)
    if not path.exists():
        raise UserError("no such file", path=path_text)
    records, empty = [], 0
    for where, raw in iter_raw_records(path):
        record = normalize_record(raw, where)
        if is_empty(record):
            empty += 1
        else:
            records.append(record)
    if not records:
        detail = f" ({empty} empty records)" if empty else ""
        raise UserError(f"no usable records{detail}", path=path_text)
    return LoadedData(records=records, source=path_text, empty_skipped=empty)
