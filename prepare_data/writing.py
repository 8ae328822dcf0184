"""Write output atomically: a failed conversion never leaves a half-written file behind.

Output goes to a temporary file in the destination folder, renamed over the destination only once every record
converted, so a bad record half-way through neither leaves a truncated file that would train silently on part
of the data nor clobbers an older good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from finetuning.errors import UserError

OUTPUT_SUFFIXES = (".jsonl", ".json")


def check_output_suffix(path: Path, *, json_list: bool) -> None:
    """Refuse names the training scripts would misread: they pick the parser from the suffix."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UserError("the training scripts read .jsonl and .json files; name the output so", path=str(path))
    if json_list and suffix == ".jsonl":
        raise UserError("a JSON list must be named .json: .jsonl files are read as JSON Lines", path=str(path))


def write_atomically(path: Path, write: Callable[[IO[Any]], None], *, binary: bool = False) -> None:
    """Call ``write`` on a temporary file beside ``path`` and rename it over ``path`` only if it succeeds."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle_fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise UserError(f"cannot write: {error.strerror}", path=str(path)) from None
    try:
        mode = "wb" if binary else "w"
        encoding = None if binary else "utf-8"
        with os.fdopen(handle_fd, mode, encoding=encoding, newline=None if binary else "\n") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file private (0600); give it the mode a plainly created file would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_records(path: Path, records: Iterable[dict[str, Any]], *, json_list: bool = False) -> int:
    """Write records as JSON Lines, or as a JSON list (a record a line) if ``json_list``; return the count.

    ``records`` may be a generator that raises :class:`UserError` part-way; nothing is written then.
    """
    count = 0

    def write(handle: IO[str]) -> None:
        nonlocal count
        if json_list:
            handle.write("[")
        for record in records:
            line = json.dumps(record, ensure_ascii=False)
            if json_list:
                handle.write(("\n" if count == 0 else ",\n") + line)
            else:
                handle.write(line + "\n")
            count += 1
        if json_list:
            handle.write("\n]\n")

    write_atomically(path, write)
    return count
