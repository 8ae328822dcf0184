"""Complete checkpoints: mark a saved one atomically, and resume only from one whose files still match.

transformers 5 writes ``checkpoint-N`` in place (no temporary directory and rename), so a crash while saving
leaves a half checkpoint that its ``get_last_checkpoint`` would pick. Once the Trainer saved one, the main
process fsyncs its files and atomically writes ``checkpoint_complete.json`` listing their sizes; resuming
considers only checkpoints whose marker is there and whose files still match it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger("finetuning")

MARKER = "checkpoint_complete.json"


_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def _fsync(path: Path, *, directory: bool = False) -> None:
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def mark_complete(checkpoint: Path, step: int) -> None:
    """Flush a saved checkpoint's files to disk, then atomically write the marker that lists them."""
    files = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file() and not path.name.endswith(MARKER) and not path.name.startswith(f".{MARKER}"):
            _fsync(path)
            files[path.relative_to(checkpoint).as_posix()] = path.stat().st_size
    temporary = checkpoint / f".{MARKER}.tmp"
    temporary.write_text(json.dumps({"global_step": step, "files": files}, indent=1) + "\n")
    _fsync(temporary)
    os.replace(temporary, checkpoint / MARKER)
    _fsync(checkpoint, directory=True)


def unmark(checkpoint: Path) -> None:
    (checkpoint / MARKER).unlink(missing_ok=True)


def checkpoint_problem(checkpoint: Path, *, require_marker: bool = True) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None. Without ``require_marker`` an unmarked one passes."""
    marker = checkpoint / MARKER
    if not marker.is_file():
        return "not marked complete (interrupted while saving?)" if require_marker else None
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {MARKER}"
    for name, size in files.items():
        path = checkpoint / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or not the size it was saved with"
    return None


def checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories of ``output_dir``, newest (highest N) first."""
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))]
    return [path for _, path in sorted(found, reverse=True) if path.is_dir()]


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    for path in checkpoints(Path(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("not resuming from %s: %s", path, problem)
    return None
