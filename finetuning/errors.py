"""One-line errors for problems in what the user gave us.

A user who points a script at a bad file or passes a bad flag needs one line that names the file, the line
and the field, not a traceback. Code anywhere in the package raises :class:`UserError`; the scripts' entry
wrapper :func:`exit_on_user_error` turns it into that line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2

_Result = TypeVar("_Result")


class UserError(Exception):
    """A problem with the user's input: a path, the content of a file, or a flag."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        record: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        # JSON lists have no useful line numbers: a 1-based record index says where instead.
        self.record = record

    def __str__(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path if self.line is None else f"{self.path}:{self.line}")
        if self.record is not None:
            parts.append(f"record {self.record}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return ": ".join([*parts, self.message])


def exit_on_user_error(main: Callable[[], _Result]) -> _Result:
    """Run ``main``; on :class:`UserError` print ``error: <message>`` on one line and exit with code 2.

    A rank of a distributed run leaves here through :func:`finetuning.distributed.exit_if_process_group` (exit code
    2, or ``main``'s result when that is an int, else 0), which skips the interpreter finalization that can abort
    a rank that finished its work.
    """
    from finetuning.distributed import exit_if_process_group

    try:
        result = main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        exit_if_process_group(EXIT_USER_ERROR)
        sys.exit(EXIT_USER_ERROR)
    exit_if_process_group(result if type(result) is int else 0)
    return result
