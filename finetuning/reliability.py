"""Keeping long runs safe: checkpoints that are complete or ignored, a clean stop on SIGTERM/SIGINT, no training
on a non-finite loss. Both fine-tune scripts call :func:`attach` on their Trainer; ``training.py`` asks
:func:`last_complete_checkpoint` where to resume and calls :func:`exit_if_stopped` after training.

* Complete checkpoints. transformers 5 writes ``checkpoint-N`` in place (no temporary directory and rename), so
  a crash while saving leaves a half-written directory that ``get_last_checkpoint`` would pick. After the Trainer
  has saved one, its main process flushes every file to disk and then atomically writes ``checkpoint_complete.json``
  listing them with their sizes. Resuming only considers checkpoints whose marker is there and whose files still
  match it; others are skipped with a warning. (A marker is removed before its directory is written again.)
* Signals. SIGTERM (batch schedulers, torchrun) or SIGINT (Ctrl-C) only sets a flag. At the next optimizer step
  all ranks agree on it (one all-reduce per step, shared with the loss check), save a checkpoint at the step's end
  and stop. The process then prints ``... rerun the same command to resume from <checkpoint>`` and exits with
  128 + the signal number (143 for SIGTERM, 130 for SIGINT, the codes a shell reports for a process killed by
  them): the run is not finished, so a following ``&& python inference.py`` must not start. A second signal
  stops at once. torchrun gives workers 30 s between its SIGTERM and SIGKILL, so one step plus a save must fit.
* Non-finite loss. Every micro-batch's loss is checked on its device (no extra host sync: the Trainer already
  syncs on it); before the optimizer step, a NaN/inf loss on any rank stops the run with ``error: loss became nan
  at step N; ...`` (exit 2), before the weights are updated or saved. ``--skip_nonfinite_batches`` skips that
  step's update instead (and still stops after 10 such steps in a row).

Exit codes: 0 finished; 1 crash; 2 bad input, bad flags or a non-finite loss; 130/143 stopped by a signal.
A rank that dies takes the job down within seconds under mpirun (Hydra kills the other ranks), torchrun (its
agent stops them) and gloo (a peer's closed socket fails the pending collective); a rank that hangs instead of
dying holds the others in their collective for ``--ddp_timeout`` (transformers' default 1800 s, kept because the
other ranks legitimately wait that long while rank 0 tokenizes a large data set or saves a large checkpoint).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetuning.errors import UserError

logger = logging.getLogger("finetuning")

MARKER = "checkpoint_complete.json"
MAX_SKIPPED_IN_A_ROW = 10
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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


def _distributed() -> Any | None:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class ReliabilityCallback(TrainerCallback):
    """Signal flag, loss check and checkpoint markers; see the module docstring."""

    def __init__(self) -> None:
        self.signal_received = 0  # set by the handler, nothing else happens there
        self.stop_signal = 0  # the signal all ranks agreed to stop on
        self.stopped_at: int | None = None
        self.skipped_in_a_row = 0
        self._nonfinite: Any = None  # device tensor: 2 if a micro-batch loss was nan, 1 if inf, else 0
        self._previous: dict[int, Any] = {}
        self.handler: Any = None  # the Trainer's CallbackHandler, set by attach()

    # --- signals --------------------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_received:  # a second signal: stop now, the previous way
            signal.signal(signum, self._previous.get(signum) or signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal_received = signum

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler or signal.SIG_DFL)
        self._previous.clear()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            self._previous = {signum: signal.signal(signum, self._handle) for signum in _SIGNALS}
        except ValueError:  # not the main thread: signals cannot be caught here
            logger.warning("not in the main thread: SIGTERM/SIGINT will stop training without a checkpoint")
        if getattr(args, "overwrite_output_dir", False) and not args.resume_from_checkpoint and args.should_save:
            output_dir = Path(args.output_dir)
            for path in checkpoints(output_dir) if output_dir.is_dir() else []:
                unmark(path)  # the run being overwritten: never resume into it

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.signal_received and not self.stopped_at:
            name = signal.Signals(self.signal_received).name
            logger.warning("%s arrived after the last step: finishing the run; send it again to stop at once", name)
        else:
            self._restore_handlers()

    # --- loss check and agreement across ranks --------------------------------------------------------------
    def watch(self, training_step: Any) -> Any:
        import torch

        @functools.wraps(training_step)
        def checked(*args: Any, **kwargs: Any) -> Any:
            loss = training_step(*args, **kwargs)
            code = torch.isnan(loss).any().float() * 2 + torch.isinf(loss).any().float()
            self._nonfinite = code if self._nonfinite is None else torch.maximum(self._nonfinite, code)
            return loss

        return checked

    def _close_progress_bars(self) -> None:
        for callback in self.handler.callbacks if self.handler is not None else []:
            if getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()
                callback.training_bar = None

    def _agree(self, args: Any) -> tuple[int, int]:
        """(signal, non-finite code), the maximum over all ranks: one tiny all-reduce and one sync per step."""
        import torch

        nonfinite = self._nonfinite if self._nonfinite is not None else torch.zeros((), device=args.device)
        self._nonfinite = None
        flags = torch.stack([torch.full_like(nonfinite, float(self.signal_received)), nonfinite])
        dist = _distributed()
        if dist is not None:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, code = (int(value) for value in flags.tolist())
        return signum, code

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        self.stop_signal, code = self._agree(args)
        if not code:
            self.skipped_in_a_row = 0
            return
        step, kind = state.global_step + 1, "nan" if code >= 2 else "inf"
        if not getattr(args, "skip_nonfinite_batches", False):
            self._close_progress_bars()  # so that the error is the last line, not a progress bar drawn at exit
            raise UserError(
                f"loss became {kind} at step {step}; stopped before updating the weights (nothing of this step is "
                "saved). Lower --learning_rate, check the data, or pass --skip_nonfinite_batches"
            )
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            self._close_progress_bars()
            raise UserError(f"loss was nan or inf for {self.skipped_in_a_row} steps in a row (last: step {step})")
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are not updated
        logger.warning("loss became %s at step %d: skipped this step's update (--skip_nonfinite_batches)", kind, step)

    # --- stopping and checkpoint markers ---------------------------------------------------------------------
    def _before_save(self, args: Any, state: Any, control: Any) -> None:
        if control.should_save and args.should_save:
            unmark(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop_signal and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_save = control.should_training_stop = True
            name = signal.Signals(self.stop_signal).name
            logger.warning("%s received: saving a checkpoint at step %d, then stopping", name, state.global_step)
        self._before_save(args, state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped_at is not None and self.stopped_at == state.global_step:
            control.should_save = False  # saved at this step's end already
        self._before_save(args, state, control)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        dist = _distributed()
        if dist is not None:
            dist.barrier()  # every rank's files (its RNG state) are written
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and checkpoint.is_dir():
            mark_complete(checkpoint, state.global_step)
        if dist is not None:
            dist.barrier()  # no rank exits before the marker is on disk


def attach(trainer: Any) -> ReliabilityCallback:
    """Give ``trainer`` complete checkpoints, a clean stop on SIGTERM/SIGINT and the non-finite loss check."""
    callback = ReliabilityCallback()
    callback.handler = trainer.callback_handler
    trainer.add_callback(callback)
    trainer.training_step = callback.watch(trainer.training_step)
    return callback


def exit_if_stopped(trainer: Any) -> None:
    """After ``trainer.train()``: if a signal stopped it, say how to resume and exit with 128 + the signal."""
    callback = next((c for c in trainer.callback_handler.callbacks if isinstance(c, ReliabilityCallback)), None)
    if callback is None or callback.stopped_at is None:
        return
    checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{callback.stopped_at}"
    if trainer.is_world_process_zero():
        name = signal.Signals(callback.stop_signal).name
        print(
            f"stopped by {name} at step {callback.stopped_at}, checkpoint saved: "
            f"rerun the same command to resume from {checkpoint}",
            file=sys.stderr,
            flush=True,
        )
    sys.exit(128 + callback.stop_signal)
