"""Record converters: each takes :class:`~prepare_data.reading.Located` records and yields training records.

Training reads two shapes: Alpaca ``{instruction, input, output}`` and chat ``{"messages": [{role,
content}, ...]}``. Every converter here yields one of those, checking each field it reads so that a bad
record fails on its own line with its own field name instead of surfacing later as a confusing training error.
Keys the training scripts do not read (ids, categories) are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from finetuning.errors import UserError
from prepare_data.reading import Located

Record = dict[str, object]

JSON_FORMATS = ("seed_tasks", "alpaca", "dolly", "messages", "sharegpt")
CSV_FORMATS = ("csv", "dialogue")
CHAT_FORMATS = ("messages", "sharegpt")
ROLES = ("system", "user", "assistant")
# ShareGPT exports name the speakers in several ways; these are the spellings seen in the common dumps.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
}


def detect_json_format(first: Located) -> str:
    """Tell the format of a JSON/JSONL file from the keys of its first record.

    Rules, first match wins: ``conversations`` -> sharegpt; ``messages`` -> messages; ``instruction`` and
    ``instances`` -> seed_tasks; ``instruction`` and ``response`` -> dolly; ``instruction`` and ``output`` ->
    alpaca. Later records are checked against the detected format as they are converted.
    """
    keys = set(first.record)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys and "instances" in keys:
        return "seed_tasks"
    if "instruction" in keys and "response" in keys:
        return "dolly"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    names = ", ".join(f"'{key}'" for key in first.record) or "none"
    raise first.error(f"cannot tell the format from the keys ({names}); pass --format")


def alpaca_record(instruction: str, input_text: str, output: str) -> Record:
    return {"instruction": instruction, "input": input_text, "output": output}


def seed_tasks_to_alpaca(records: Iterable[Located]) -> Iterator[Record]:
    """Stanford Alpaca seed tasks: one record per instance, all sharing the task's instruction."""
    for task in records:
        instruction = task.text("instruction")
        for instance in task.items("instances"):
            yield alpaca_record(instruction, instance.text("input", optional=True), instance.text("output"))


def alpaca_to_alpaca(records: Iterable[Located]) -> Iterator[Record]:
    """Alpaca records checked and reduced to the three fields (``input`` may be absent: it reads as empty)."""
    for record in records:
        yield alpaca_record(record.text("instruction"), record.text("input", optional=True), record.text("output"))


def dolly_to_alpaca(records: Iterable[Located]) -> Iterator[Record]:
    """Dolly-style ``{instruction, context, response}`` records as Alpaca (context -> input)."""
    for record in records:
        yield alpaca_record(record.text("instruction"), record.text("context", optional=True), record.text("response"))


def find_column(header: list[str], wanted: str | None, defaults: tuple[str, ...], path: str) -> str | None:
    """The header's name for a column: ``wanted`` if given (an error if absent), else the first default.

    Matching ignores case, because transcripts and spreadsheets disagree on ``Speaker`` versus ``speaker``.
    """
    by_folded = {name.casefold(): name for name in header}
    if wanted is not None:
        if wanted.casefold() in by_folded:
            return by_folded[wanted.casefold()]
        columns = ", ".join(f"'{name}'" for name in header)
        raise UserError(f"no such column (the header has: {columns})", path=path, line=1, field=wanted)
    for name in defaults:
        if name.casefold() in by_folded:
            return by_folded[name.casefold()]
    return None


def csv_to_alpaca(
    rows: Iterable[Located],
    *,
    instruction_column: str | None,
    input_column: str | None,
    output_column: str,
    instruction: str | None = None,
) -> Iterator[Record]:
    """CSV rows as Alpaca records; a fixed ``instruction`` stands in when there is no instruction column."""
    for row in rows:
        text = row.text(instruction_column) if instruction_column else (instruction or "")
        input_text = row.text(input_column) if input_column else ""
        yield alpaca_record(text, input_text, row.text(output_column))


def _checked_messages(turns: list[dict[str, str]], where: Located, field: str) -> Record:
    """A conversation with no assistant turn has nothing to train on; the training reader rejects it too."""
    if not any(turn["role"] == "assistant" for turn in turns):
        raise where.error("no assistant message: nothing to train on", field)
    return {"messages": turns}


def messages_to_messages(records: Iterable[Located]) -> Iterator[Record]:
    """Chat records ``{"messages": [{role, content}, ...]}`` checked and reduced to their messages."""
    for record in records:
        turns = []
        for turn in record.items("messages"):
            role = turn.text("role")
            if role not in ROLES:
                raise turn.error(f"expected one of {', '.join(ROLES)}, got '{role}'", "role")
            turns.append({"role": role, "content": turn.text("content")})
        yield _checked_messages(turns, record, "messages")


def sharegpt_to_messages(records: Iterable[Located]) -> Iterator[Record]:
    """ShareGPT ``conversations`` of ``{from, value}`` as messages (human -> user, gpt -> assistant)."""
    for record in records:
        turns = []
        for turn in record.items("conversations"):
            speaker = turn.text("from")
            role = SHAREGPT_ROLES.get(speaker.strip().lower())
            if role is None:
                known = ", ".join(SHAREGPT_ROLES)
                raise turn.error(f"unknown speaker '{speaker}' (expected one of {known})", "from")
            turns.append({"role": role, "content": turn.text("value")})
        yield _checked_messages(turns, record, "conversations")


def alpaca_to_messages(records: Iterable[Record]) -> Iterator[Record]:
    """Alpaca records as one-turn chats: the user says the instruction (and the input after a blank line)."""
    for record in records:
        instruction, input_text = str(record["instruction"]), str(record["input"])
        user = f"{instruction}\n\n{input_text}" if input_text else instruction
        yield {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": record["output"]},
            ]
        }


JSON_CONVERTERS = {
    "seed_tasks": seed_tasks_to_alpaca,
    "alpaca": alpaca_to_alpaca,
    "dolly": dolly_to_alpaca,
    "messages": messages_to_messages,
    "sharegpt": sharegpt_to_messages,
}
