"""Long runs that lose nothing and never hang. Both fine-tune scripts call :func:`attach` on their Trainer;
:mod:`finetuning.training.run` resumes from the last complete checkpoint and calls :func:`exit_if_stopped`.

* Complete checkpoints (:mod:`finetuning.training.checkpoints`): once the Trainer saved one, the main process
  marks it complete; resuming considers only marked checkpoints whose files still match the marker.
* Signals. SIGTERM (schedulers, torchrun) or SIGINT (Ctrl-C) only sets a flag; at the next optimizer step the ranks
  agree on it (one tiny all-reduce per step, shared with the checks below), save a checkpoint at the step's end and
  stop: ``stopped by SIGTERM at step N, checkpoint saved: rerun the same command to resume from <checkpoint>``, exit
  code 128 + the signal (143 SIGTERM, 130 SIGINT, as a shell reports a process killed by it: the run did not
  finish, so ``&& python inference.py`` must not start). A second signal stops at once. torchrun waits 30 s
  between its SIGTERM and SIGKILL: one step plus a save must fit.
* Non-finite values. Each micro-batch's loss and each step's gradient norm are checked on their device (the
  Trainer syncs on them anyway); before the optimizer step a NaN/inf on any rank stops the run (exit 2) with
  ``error: loss became nan at step N; ...``, before the weights are updated or saved. ``--skip_nonfinite_batches``
  skips that update instead (and stops after 10 in a row).

Exit codes: 0 finished; 1 crash; 2 bad input, flags or a non-finite loss; 130/143 stopped by a signal. A rank
killed by a signal brings the job down within seconds: mpirun's Hydra kills the others (it does not when a rank
merely exits non-zero), torchrun's agent stops them, and gloo fails the pending collective on the closed socket.
A rank that hangs holds the others for ``--ddp_timeout`` (default 1800 s: rank 0 may tokenize or save that long).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetuning.errors import UserError, exit_if_process_group
from finetuning.training.checkpoints import checkpoints, mark_complete, unmark

logger = logging.getLogger("finetuning")

NONFINITE = {4: "loss became nan", 3: "loss became inf", 2: "gradient norm became nan", 1: "gradient norm became inf"}
MAX_SKIPPED_IN_A_ROW = 10
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
        self._nonfinite: Any = None  # device tensor, the worst of this step: a key of NONFINITE, or 0
        self._grad_norm: Any = None  # this step's gradient norm, as the Trainer computed it
        self._previous: dict[int, Any] = {}
        self.handler: Any = None  # the Trainer's CallbackHandler, set by attach()
        self.saved: set[int] = set()  # steps this run saved a checkpoint at

    # --- signals --------------------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_received:  # a second signal: stop now, the previous way
            signal.signal(signum, self._previous.get(signum) or signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal_received = signum

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
            for signum, handler in self._previous.items():
                signal.signal(signum, handler or signal.SIG_DFL)

    # --- loss check and agreement across ranks --------------------------------------------------------------
    def _note(self, value: Any, nan: int, inf: int) -> None:
        import torch

        # FSDP2's gradient norm is a DTensor, which has no all-reduce of its own: use its global value
        value = value.full_tensor() if hasattr(value, "full_tensor") else torch.as_tensor(value)
        code = torch.maximum(torch.isnan(value).any().float() * nan, torch.isinf(value).any().float() * inf)
        self._nonfinite = code if self._nonfinite is None else torch.maximum(self._nonfinite, code.to(self._nonfinite))

    def watch(self, trainer: Any) -> None:
        """Check each micro-batch's loss and keep each step's gradient norm (transformers 5 computes it always)."""
        training_step, get_grad_norm = trainer.training_step, getattr(trainer, "_get_grad_norm", None)

        @functools.wraps(training_step)
        def checked_step(*args: Any, **kwargs: Any) -> Any:
            loss = training_step(*args, **kwargs)
            self._note(loss.detach(), nan=4, inf=3)
            return loss

        def kept_norm(*args: Any, **kwargs: Any) -> Any:
            self._grad_norm = get_grad_norm(*args, **kwargs)
            return self._grad_norm

        trainer.training_step = checked_step
        if get_grad_norm is not None:
            trainer._get_grad_norm = kept_norm

    def _fail(self, message: str) -> None:
        for callback in self.handler.callbacks if self.handler is not None else []:  # so the error is the last line
            if getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()
        raise UserError(message)

    def _agree(self, args: Any) -> tuple[int, int]:
        """(signal, non-finite code), the maximum over all ranks: one tiny all-reduce and one sync per step."""
        import torch

        if self._grad_norm is not None:  # (None for the optimizers that compute no norm)
            self._note(self._grad_norm, nan=2, inf=1)
        nonfinite = torch.zeros((), device=args.device) if self._nonfinite is None else self._nonfinite.to(args.device)
        self._nonfinite = self._grad_norm = None
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
        step, what = state.global_step + 1, NONFINITE[code]
        if not getattr(args, "skip_nonfinite_batches", False):
            self._fail(
                f"{what} at step {step}; stopped before updating the weights (nothing of this step is saved). "
                "Lower --learning_rate, check the data, or pass --skip_nonfinite_batches"
            )
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            self._fail(f"{what} at step {step}, the {MAX_SKIPPED_IN_A_ROW}th step in a row; stopped")
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are not updated
        logger.warning("%s at step %d: skipped this step's update (--skip_nonfinite_batches)", what, step)

    # --- stopping and checkpoint markers ---------------------------------------------------------------------
    def _forget_stale(self, args: Any, state: Any) -> None:
        """A checkpoint of this step from an earlier run is not this run's: unmark it before it is overwritten."""
        if args.should_save and state.global_step not in self.saved:
            unmark(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop_signal and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_save = control.should_training_stop = True
            name = signal.Signals(self.stop_signal).name
            logger.warning("%s received: saving a checkpoint at step %d, then stopping", name, state.global_step)
        self._forget_stale(args, state)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped_at is not None:
            control.should_save = control.should_evaluate = False  # saved at the step's end already
        self._forget_stale(args, state)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        dist = _distributed()
        if dist is not None:
            dist.barrier()  # every rank's files (its RNG state) are written
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and checkpoint.is_dir():
            mark_complete(checkpoint, state.global_step)
        self.saved.add(state.global_step)
        if dist is not None:
            dist.barrier()  # no rank exits before the marker is on disk


def attach(trainer: Any) -> ReliabilityCallback:
    """Give ``trainer`` complete checkpoints, a clean stop on SIGTERM/SIGINT and the non-finite loss check, and
    keep ``--hub_token`` out of the files it saves."""
    callback = ReliabilityCallback()
    callback.handler = trainer.callback_handler
    trainer.add_callback(callback)
    if trainer.args.hub_token:  # the Trainer pickles its arguments into every training_args.bin, token and all
        os.environ["HF_TOKEN"] = trainer.args.hub_token  # where huggingface_hub finds it for --push_to_hub
        trainer.args.hub_token = None
    callback.watch(trainer)
    return callback


def exit_if_stopped(trainer: Any) -> None:
    """After ``trainer.train()``: if a signal stopped it, say how to resume and exit with 128 + the signal."""
    callback = next((c for c in trainer.callback_handler.callbacks if isinstance(c, ReliabilityCallback)), None)
    if callback is None or callback.stopped_at is None:
        return
    checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{callback.stopped_at}"
    if trainer.is_world_process_zero():
        name, step = signal.Signals(callback.stop_signal).name, callback.stopped_at
        resume = f"rerun the same command to resume from {checkpoint}"
        print(f"stopped by {name} at step {step}, checkpoint saved: {resume}", file=sys.stderr, flush=True)
    exit_if_process_group(128 + callback.stop_signal)  # a rank of a process group leaves without finalization
    sys.exit(128 + callback.stop_signal)
