"""Dialogue transcripts -> Alpaca records that teach a model to speak like one character.

A transcript is a CSV of lines, each with a speaker and a text, in order, usually with episode and scene
columns. For every line the chosen character speaks, one record is made: the ``input`` is the previous few
lines of the same scene as ``Speaker: text``, one per line, and the ``output`` is the character's line. The
context never reaches back into an earlier scene, because a line from another scene is not what the character
is answering.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence

from finetuning.errors import UserError
from prepare_data.converters import Record, alpaca_record
from prepare_data.reading import Located

DEFAULT_INSTRUCTION = "Continue the conversation as {character}."
SPEAKER_COLUMNS = ("speaker", "character")
TEXT_COLUMNS = ("text", "line")
GROUP_COLUMNS = ("episode", "scene")


def dialogue_to_alpaca(
    rows: Iterable[Located],
    *,
    character: str,
    speaker_column: str,
    text_column: str,
    group_columns: Sequence[str] = (),
    context_lines: int = 5,
    instruction: str = DEFAULT_INSTRUCTION,
) -> Iterator[Record]:
    """Yield one record per line of ``character`` with up to ``context_lines`` earlier lines of its scene.

    A scene is a run of consecutive rows with the same values in ``group_columns`` (the whole file when there
    are none). The character is matched ignoring case and surrounding space, and is named in the instruction
    as the transcript spells it, so the instruction agrees with the ``Speaker:`` prefixes of the context.
    Rows with an empty text (stage business) are skipped; rows with an empty speaker (narration) count as
    context, shown without a prefix. A character line that opens a scene gets an empty input: it still
    shows how the character speaks.
    """
    wanted = character.strip().casefold()
    context: deque[str] = deque(maxlen=max(context_lines, 0))
    scene: tuple[str, ...] | None = None
    speakers: Counter[str] = Counter()
    found = 0
    last_row: Located | None = None
    for row in rows:
        last_row = row
        key = tuple(row.text(column) for column in group_columns)
        if key != scene:
            scene = key
            context.clear()
        speaker, text = row.text(speaker_column).strip(), row.text(text_column).strip()
        if not text:
            continue
        if speaker:
            speakers[speaker] += 1
        if speaker.casefold() == wanted:
            found += 1
            yield alpaca_record(instruction.format(character=speaker), "\n".join(context), text)
        context.append(f"{speaker}: {text}" if speaker else text)
    if found == 0 and last_row is not None:
        common = ", ".join(f"{name} ({count})" for name, count in speakers.most_common(10)) or "none"
        message = f"no lines spoken by --character '{character}'; the most frequent speakers are: {common}"
        raise UserError(message, path=last_row.path)
