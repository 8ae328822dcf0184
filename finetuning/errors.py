"""One-line errors for problems in what the user gave us, and the way every entry script exits.

A user who points a script at a bad file or passes a bad flag needs one line that names the file, the line
and the field, not a traceback. Code anywhere in the package raises :class:`UserError`; the scripts' entry
wrapper :func:`exit_on_user_error` turns it into that line on stderr and a non-zero exit. This module is the
bottom of the package: it imports nothing of the project, so every layer can raise its errors.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
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

    A rank of a distributed run leaves here through :func:`exit_if_process_group` (exit code
    2, or ``main``'s result when that is an int, else 0), which skips the interpreter finalization that can abort
    a rank that finished its work.
    """
    try:
        result = main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        exit_if_process_group(EXIT_USER_ERROR)
        sys.exit(EXIT_USER_ERROR)
    exit_if_process_group(result if type(result) is int else 0)
    return result


def exit_if_process_group(exit_code: int) -> None:
    """End this rank now, without Python's interpreter finalization, if it belongs to a started process group.

    A gloo worker thread releases the tensors of a collective it has just finished itself, which needs the GIL;
    when the main thread has meanwhile begun finalizing the interpreter, Python < 3.14 ends that thread by
    unwinding it, and the rank aborts with "terminate called without an active exception" (SIGABRT) after a
    complete, saved run (pytorch/pytorch#190489). ``destroy_process_group`` does not prevent it while DDP
    still holds the group. So a rank does what normal shutdown does up to that point (threading's exit hooks and
    the join of non-daemon threads, the atexit handlers, MPI's finalization if mpi4py started it, a flush) and then
    leaves with ``os._exit``.
    Returns, doing nothing, in a process without a process group (a single process, or one already destroyed).
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    # As the interpreter's own shutdown begins: threading's exit hooks first (they stop the idle workers of
    # concurrent.futures pools, such as the one torch.compile's inductor compiles in; joined without them, those
    # workers wait for work forever and the rank never exits), then the join of every non-daemon thread.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    else:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    for stream in (sys.stdout, sys.stderr):
        # a closed or broken pipe must not turn a finished run into a failure
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(exit_code)
