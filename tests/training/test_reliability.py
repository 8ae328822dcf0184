"""Nothing lost, nothing half-written, nothing trained on garbage (finetuning/training/reliability.py, checkpoints.py).

The end-to-end tests run finetune_clm.py as users do and compare against one uninterrupted run of the same
command: LoRA with dropout 0, float32 and a fixed seed make every run deterministic, so a run that was killed,
crashed while saving or stopped by a signal and then rerun must end with the very same adapter and a loss log
that has every step exactly once.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import sample_records
from processes import crash_env, kill_all, run_crashing, start, wait_for, write_driver

from finetuning.errors import UserError
from finetuning.training import checkpoints
from finetuning.training.run import resolve_resume_checkpoint

STEPS_PER_EPOCH = 12  # 24 samples, batch 2
STEPS = 3 * STEPS_PER_EPOCH
RUN = (
    "--do_train",
    "--peft",
    "lora",
    "--lora_dropout",
    "0",
    "--per_device_train_batch_size",
    "2",
    "--max_seq_length",
    "128",
    "--num_train_epochs",
    "3",
    "--learning_rate",
    "1e-2",
    "--seed",
    "7",
    "--logging_steps",
    "1",
    "--save_strategy",
    "steps",
    "--save_steps",
    "4",
    "--save_total_limit",
    "2",
)
TOLERANCE = 1e-6
FILES = {"adapter_model.safetensors": 64, "optimizer.pt": 128, "trainer_state.json": 16}  # a fake checkpoint


# --- checkpoint markers, without training -----------------------------------------------------------------


def fake_checkpoint(output_dir: Path, step: int, *, complete: bool) -> Path:
    """A checkpoint directory as the Trainer writes it; marked complete as reliability's on_save does."""
    checkpoint = output_dir / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name, size in FILES.items():
        (checkpoint / name).write_bytes(b"x" * size)
    if complete:
        checkpoints.mark_complete(checkpoint, step)
    return checkpoint


def resume_args(output_dir: Path, **overrides) -> SimpleNamespace:
    values = dict(output_dir=str(output_dir), resume_from_checkpoint=None, overwrite_output_dir=False, do_train=True)
    return SimpleNamespace(**(values | overrides))


def test_resume_takes_the_newest_checkpoint_that_is_complete_and_intact(tmp_path, caplog):
    from transformers.trainer_utils import get_last_checkpoint

    fake_checkpoint(tmp_path, 4, complete=True)
    wanted = fake_checkpoint(tmp_path, 8, complete=True)
    fake_checkpoint(tmp_path, 12, complete=False)  # killed while saving: no marker
    damaged = fake_checkpoint(tmp_path, 16, complete=True)
    (damaged / "optimizer.pt").write_bytes(b"o" * 3)  # a file changed after the marker was written
    (tmp_path / "checkpoint-20").write_text("not a directory")

    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-16")  # what transformers alone would pick
    assert resolve_resume_checkpoint(resume_args(tmp_path)) == str(wanted)
    skipped = [record.getMessage() for record in caplog.records if "not resuming" in record.getMessage()]
    assert skipped == [
        f"not resuming from {tmp_path / 'checkpoint-16'}: optimizer.pt is missing or not the size it was saved with",
        f"not resuming from {tmp_path / 'checkpoint-12'}: not marked complete (interrupted while saving?)",
    ]
    marker = json.loads((wanted / checkpoints.MARKER).read_text())
    assert marker["global_step"] == 8
    assert marker["files"] == {name: (wanted / name).stat().st_size for name in FILES} and FILES["optimizer.pt"] == 128


def test_no_complete_checkpoint_starts_over_and_a_finished_run_is_refused(tmp_path):
    fake_checkpoint(tmp_path, 4, complete=False)
    assert resolve_resume_checkpoint(resume_args(tmp_path)) is None
    (tmp_path / "adapter_config.json").write_text("{}")  # a finished run (without checkpoints) ...
    with pytest.raises(UserError, match="holds a finished run"):
        resolve_resume_checkpoint(resume_args(tmp_path))
    fake_checkpoint(tmp_path, 8, complete=True)  # ... or one killed while saving its final model: resume
    assert resolve_resume_checkpoint(resume_args(tmp_path)).endswith("checkpoint-8")
    (tmp_path / "train_results.json").write_text("{}")
    with pytest.raises(UserError, match="holds a finished run"):
        resolve_resume_checkpoint(resume_args(tmp_path))


def test_an_explicit_checkpoint_must_exist_and_be_intact(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "old", 8, complete=True)
    assert resolve_resume_checkpoint(resume_args(tmp_path / "new", resume_from_checkpoint=str(checkpoint))) == str(
        checkpoint
    )
    unmarked = fake_checkpoint(tmp_path / "plain", 4, complete=False)  # saved by transformers alone: accepted
    assert resolve_resume_checkpoint(resume_args(tmp_path / "new", resume_from_checkpoint=str(unmarked))) == str(
        unmarked
    )
    (checkpoint / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match=r"field 'resume_from_checkpoint': adapter_model\.safetensors is missing"):
        resolve_resume_checkpoint(resume_args(tmp_path / "new", resume_from_checkpoint=str(checkpoint)))
    with pytest.raises(UserError, match="no such checkpoint directory"):
        resolve_resume_checkpoint(resume_args(tmp_path / "new", resume_from_checkpoint=str(tmp_path / "nope")))


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(sample_records(24)), encoding="utf-8")
    return path


# --- end to end -------------------------------------------------------------------------------------------
# Every scenario's first run goes side by side with the others and with the uninterrupted reference run; then
# their reruns go side by side. The tests check what happened. (Serially these runs take twice as long.) The runs
# that are killed, crash or get a signal start afresh; the reference and the reruns start from the warm
# interpreter (tests/warm_start.py), one at a time.


@dataclass
class Outcome:
    returncode: int | None = None
    log: str = ""
    error: BaseException | None = None  # what went wrong while driving the run

    def check(self) -> Outcome:
        if self.error is not None:
            raise self.error
        return self


@dataclass
class Scenario:
    output: Path
    first: Outcome = field(default_factory=Outcome)
    # what output_dir held after the first run: {"": its files, "checkpoint-N": that checkpoint's files, ...}
    after_first: dict[str, set[str]] = field(default_factory=dict)
    rerun: Outcome = field(default_factory=Outcome)


def listing(output: Path) -> dict[str, set[str]]:
    if not output.is_dir():
        return {}
    found = {"": {path.name for path in output.iterdir()}}
    found |= {path.name: {child.name for child in path.iterdir()} for path in checkpoint_dirs(output)}
    return found


def completed(result: subprocess.CompletedProcess[str]) -> Outcome:
    return Outcome(result.returncode, result.stdout + result.stderr)


def drive(process: subprocess.Popen, log: Path, until: Callable[[], object], what: str, act: Callable[[], None]):
    """Wait until ``until()`` holds, ``act()``, then wait for the process to end (it is cleaned up whatever happens)."""
    try:
        wait_for(until, process, timeout=300, what=what)
        act()
        process.wait(timeout=120)
    finally:
        kill_all(process)
    return Outcome(process.returncode, log.read_text(errors="replace"))


def checkpoint_dirs(output: Path) -> list[Path]:
    return sorted(output.glob("checkpoint-*")) if output.is_dir() else []


def flags(tiny_model, train_file, output: Path) -> list[object]:
    return ["--model_name_or_path", tiny_model("llama"), "--train_file", train_file, "--output_dir", output, *RUN]


STOPPED = re.compile(r"stopped by (\w+) at step (\d+), checkpoint saved: rerun the same command to resume from (\S+)")


@pytest.fixture(scope="module")
def scenarios(tiny_model, train_file, warm_run, tmp_path_factory) -> dict[str, Scenario]:
    root = tmp_path_factory.mktemp("scenarios")
    driver = write_driver(root)
    names = ("reference", "sigkill", "crash", "SIGTERM", "SIGINT", "seq2seq SIGTERM")
    runs = {name: Scenario(root / name.replace(" ", "_") / "out") for name in names}

    def script(name: str) -> str:
        return "finetune_seq2seq.py" if name.startswith("seq2seq") else "finetune_clm.py"

    def args(name: str) -> list[object]:
        if name.startswith("seq2seq"):
            return ["--model_name_or_path", tiny_model("t5"), *flags(tiny_model, train_file, runs[name].output)[2:]]
        return flags(tiny_model, train_file, runs[name].output)

    def background(name: str) -> tuple[subprocess.Popen, Path]:
        log = runs[name].output.parent / "first.log"
        log.parent.mkdir(exist_ok=True)
        return start(script(name), *args(name), log=log), log

    def first(name: str) -> Outcome:
        if name == "reference":
            return completed(warm_run("finetune_clm.py", *args(name)))
        if name == "crash":  # SIGKILLed inside the save of checkpoint-8, after its adapter, before its optimizer
            return completed(run_crashing(driver, args(name), crash_env("checkpoint", step=8)))
        process, log = background(name)
        if name == "sigkill":  # as the second checkpoint's directory appears, the save starts: the kill may land in it
            two = lambda: len(checkpoint_dirs(runs[name].output)) >= 2  # noqa: E731
            return drive(process, log, two, "a second checkpoint", process.kill)
        signum = getattr(signal, name.split()[-1])
        logged = lambda: "'loss'" in log.read_text(errors="replace")  # noqa: E731
        return drive(process, log, logged, "a logged step", lambda: process.send_signal(signum))

    def second(name: str) -> Outcome:
        extra: list[object] = []
        if name == "SIGINT":  # resume through the flag, from the checkpoint the message named
            stopped = STOPPED.search(runs[name].first.log)
            extra = ["--resume_from_checkpoint", stopped[3]] if stopped else []
        return completed(warm_run(script(name), *args(name), *extra))

    def guarded(step: Callable[[str], Outcome], name: str) -> Outcome:
        try:
            return step(name)
        except BaseException as error:  # kept for the test of this scenario to raise
            return Outcome(error=error)

    with ThreadPoolExecutor(max_workers=3) as pool:
        for name, outcome in zip(runs, pool.map(lambda name: guarded(first, name), runs), strict=True):
            runs[name].first, runs[name].after_first = outcome, listing(runs[name].output)
        again = [name for name in runs if name != "reference" and runs[name].first.error is None]
        for name, outcome in zip(again, pool.map(lambda name: guarded(second, name), again), strict=True):
            runs[name].rerun = outcome
    return runs


def assert_same_run(output: Path, reference: Path) -> None:
    """The same adapter as the uninterrupted run, and a loss log with every step once (and the same losses)."""
    from safetensors.torch import load_file

    left, right = (load_file(str(path / "adapter_model.safetensors")) for path in (output, reference))
    assert left.keys() == right.keys() and left
    difference = max((left[name] - right[name]).abs().max().item() for name in left)
    assert difference <= TOLERANCE, difference
    histories = [json.loads((path / "trainer_state.json").read_text())["log_history"] for path in (output, reference)]
    steps, reference_steps = ([entry["step"] for entry in history if "loss" in entry] for history in histories)
    assert steps == reference_steps == list(range(1, STEPS + 1))
    losses = [[entry["loss"] for entry in history if "loss" in entry] for history in histories]
    assert losses[0] == pytest.approx(losses[1], abs=TOLERANCE)


# A step's log line as the run prints it (finetuning/training/console.py): {'step': 7, 'loss': '5.919', ...}
LOGGED_STEP = re.compile(r"\{'step': (\d+), 'loss': ")


def steps_trained(log: str) -> list[int]:
    """The optimizer steps a run took, read from its own log (logging_steps 1: one line per step)."""
    return [int(step) for step in LOGGED_STEP.findall(log)]


def assert_resumed_to_the_reference(scenario: Scenario, scenarios: dict[str, Scenario], checkpoint: int) -> None:
    """The rerun trained exactly the steps after ``checkpoint`` (a deterministic restart from scratch would
    also end at the reference adapter, with the same loss history, but would log all STEPS steps) and ended
    where the uninterrupted run did."""
    reference, rerun = scenarios["reference"].first.check(), scenario.rerun.check()
    assert reference.returncode == 0, reference.log[-3000:]
    assert rerun.returncode == 0, rerun.log[-3000:]
    assert steps_trained(reference.log) == list(range(1, STEPS + 1))  # the log line still reads as expected
    assert 0 < checkpoint < STEPS
    assert steps_trained(rerun.log) == list(range(checkpoint + 1, STEPS + 1)), rerun.log[-3000:]
    assert_same_run(scenario.output, scenarios["reference"].output)


RESUMING = re.compile(r"(?<!not )resuming from (\S+/checkpoint-(\d+))")


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_resumes_to_the_same_adapter(scenarios):
    killed = scenarios["sigkill"]
    assert killed.first.check().returncode == -signal.SIGKILL, killed.first.log[-3000:]
    assert "train_results.json" not in killed.after_first[""]  # really cut short
    resuming = RESUMING.search(killed.rerun.check().log)
    assert resuming, killed.rerun.log[-3000:]
    assert_resumed_to_the_reference(killed, scenarios, int(resuming[2]))


@pytest.mark.slow
def test_a_crash_while_writing_a_checkpoint_leaves_nothing_resume_would_pick(scenarios):
    crash = scenarios["crash"]
    assert crash.first.check().returncode == -signal.SIGKILL, crash.first.log[-3000:]
    half = crash.after_first["checkpoint-8"]  # transformers writes in place: the adapter is there, the rest is not
    assert "adapter_model.safetensors" in half and "optimizer.pt" not in half and checkpoints.MARKER not in half
    assert checkpoints.MARKER in crash.after_first["checkpoint-4"]
    half = crash.output / "checkpoint-8"
    assert f"not resuming from {half}: not marked complete" in crash.rerun.check().log
    assert f"resuming from {crash.output / 'checkpoint-4'}" in crash.rerun.log
    assert_resumed_to_the_reference(crash, scenarios, 4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_stops_and_the_rerun_finishes_the_same_run(name, scenarios):
    scenario, signum = scenarios[name], getattr(signal, name)
    first = scenario.first.check()
    assert first.returncode == 128 + signum, first.log[-3000:]
    stopped = STOPPED.search(first.log)
    assert stopped and stopped[1] == name, first.log[-3000:]
    step, checkpoint = int(stopped[2]), Path(stopped[3])
    assert checkpoint == scenario.output / f"checkpoint-{step}" and step < STEPS and "Traceback" not in first.log
    assert checkpoints.MARKER in scenario.after_first[checkpoint.name]  # a complete checkpoint ...
    assert not {"train_results.json", "adapter_model.safetensors"} & scenario.after_first[""]  # ... no final model
    if name == "SIGTERM":  # the same command; SIGINT's rerun passed --resume_from_checkpoint <that checkpoint>
        assert f"resuming from {checkpoint}" in scenario.rerun.check().log
    assert_resumed_to_the_reference(scenario, scenarios, step)


@pytest.mark.slow
def test_finetune_seq2seq_has_the_same_guard(scenarios):
    """finetune_seq2seq.py attaches the same callback: a clean SIGTERM stop, a complete checkpoint, a resume."""
    scenario = scenarios["seq2seq SIGTERM"]
    first, rerun = scenario.first.check(), scenario.rerun.check()
    assert first.returncode == 128 + signal.SIGTERM, first.log[-3000:]
    stopped = STOPPED.search(first.log)
    assert stopped and checkpoints.MARKER in scenario.after_first[Path(stopped[3]).name], first.log[-3000:]
    assert rerun.returncode == 0 and f"resuming from {stopped[3]}" in rerun.log, rerun.log[-3000:]
    assert steps_trained(rerun.log) == list(range(int(stopped[2]) + 1, STEPS + 1)), rerun.log[-3000:]
    history = json.loads((scenario.output / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == list(range(1, STEPS + 1))


NAN_RUN = ("--do_train", "--peft", "lora", "--lora_dropout", "0", "--per_device_train_batch_size", "2")
NAN_RUN += ("--max_seq_length", "128", "--max_steps", "6", "--seed", "7", "--logging_steps", "1", "--save_steps", "1")


def model_with_an_inf_weight(source: Path, target: Path) -> Path:
    """A copy of a tiny model whose final norm holds one inf: every forward pass gives a nan loss."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(str(target / "model.safetensors"))
    weights["model.norm.weight"][0] = float("inf")
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("inf weight", id="inf-weight"),
        pytest.param("learning rate 1e30", id="lr-1e30", marks=pytest.mark.slow),
    ],
)
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_saves_nothing_of_it(
    fault, warm_run, tiny_model, train_file, tmp_path
):
    output = tmp_path / "out"
    model = tiny_model("llama")
    if fault == "inf weight":
        model, expected = model_with_an_inf_weight(model, tmp_path / "broken"), "loss became nan at step 1"
    else:  # the first update makes the weights huge: the second step's gradients overflow
        expected = "gradient norm became nan at step 2"
    args = ["--model_name_or_path", model, "--train_file", train_file, "--output_dir", output, *NAN_RUN]
    result = warm_run("finetune_clm.py", *args, "--learning_rate", "1e30" if fault != "inf weight" else "1e-2")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {expected}; stopped before updating the weights"), last
    step = int(expected.rsplit(" ", 1)[1])
    saved = sorted(int(path.name.split("-")[1]) for path in output.glob("checkpoint-*"))
    assert saved == list(range(1, step))  # the good steps, not the broken one
    assert all(checkpoints.checkpoint_problem(output / f"checkpoint-{n}") is None for n in saved)
    assert all(finite_adapter(output / f"checkpoint-{n}") for n in saved)  # no garbage was saved
    assert not (output / "adapter_model.safetensors").exists() and not (output / "train_results.json").exists()


def finite_adapter(directory: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(
        torch.isfinite(tensor).all() for tensor in load_file(str(directory / "adapter_model.safetensors")).values()
    )


@pytest.mark.slow
def test_skip_nonfinite_batches_skips_their_updates_instead(warm_run, tiny_model, train_file, tmp_path):
    output = tmp_path / "out"
    args = ["--model_name_or_path", tiny_model("llama"), "--train_file", train_file, "--output_dir", output]
    result = warm_run("finetune_clm.py", *args, *NAN_RUN, "--learning_rate", "1e30", "--skip_nonfinite_batches")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    skipped = re.findall(r"became (?:nan|inf) at step (\d+): skipped this step's update", result.stdout)
    assert skipped == ["2", "3", "4", "5", "6"], result.stdout[-3000:]
    assert finite_adapter(output)


def test_a_sharded_gradient_norm_is_checked_by_its_global_value():
    """FSDP2 returns the gradient norm as a DTensor, which the per-step all-reduce cannot take: its full value
    is what the check reads (a 7B FSDP run stopped at step 1 on this before)."""
    import torch

    from finetuning.training.reliability import ReliabilityCallback

    class ShardedNorm:  # the one DTensor method the check relies on
        def __init__(self, value: float) -> None:
            self.value = value

        def full_tensor(self):
            return torch.tensor(self.value)

    callback = ReliabilityCallback()
    callback._note(ShardedNorm(1.5), nan=2, inf=1)
    assert callback._nonfinite.item() == 0
    callback._note(ShardedNorm(float("nan")), nan=2, inf=1)
    assert callback._nonfinite.item() == 2


# --- the callback's decisions, driven in-process (the subprocess tests above show them in real runs; these are
# the ones mutation testing sees) -------------------------------------------------------------------------------


class Optimizer:
    def __init__(self) -> None:
        self.zeroed = 0

    def zero_grad(self, set_to_none: bool) -> None:
        assert set_to_none  # parameters left with no gradient are not updated by the optimizer step
        self.zeroed += 1


def hook_args(tmp_path: Path, **overrides) -> SimpleNamespace:
    values = dict(
        device="cpu", output_dir=str(tmp_path), should_save=True, skip_nonfinite_batches=False, hub_token=None
    )
    return SimpleNamespace(**(values | overrides))


def step(callback, args, global_step: int, losses=(1.0,), grad_norm=None, optimizer=None) -> SimpleNamespace:
    """One optimizer step as the Trainer calls the hooks: micro-batch losses, the norm, then the step's end."""
    import torch

    for loss in losses:
        callback._note(torch.tensor(loss), nan=4, inf=3)
    callback._grad_norm = None if grad_norm is None else torch.tensor(grad_norm)
    state, control = SimpleNamespace(global_step=global_step), SimpleNamespace(should_save=False)
    control.should_training_stop = control.should_evaluate = False
    callback.on_pre_optimizer_step(args, state, control, optimizer=optimizer or Optimizer())
    state.global_step += 1
    callback.on_step_end(args, state, control)
    return control


def test_a_nan_or_inf_fails_naming_what_and_the_step_worst_first(tmp_path):
    from finetuning.training.reliability import ReliabilityCallback

    args = hook_args(tmp_path)
    callback = ReliabilityCallback()
    assert step(callback, args, 0, losses=(1.0, 2.0), grad_norm=0.5).should_training_stop is False
    for losses, grad_norm, what in [
        ((1.0, float("nan")), 0.5, "loss became nan"),
        ((float("inf"), float("nan")), float("nan"), "loss became nan"),  # the worst of the step's values
        ((float("inf"),), float("nan"), "loss became inf"),
        ((1.0,), float("nan"), "gradient norm became nan"),
        ((1.0,), float("-inf"), "gradient norm became inf"),
    ]:
        with pytest.raises(UserError) as error:
            step(ReliabilityCallback(), args, 6, losses=losses, grad_norm=grad_norm)
        assert str(error.value).startswith(f"{what} at step 7; stopped before updating the weights"), what
        assert str(error.value).endswith("Lower --learning_rate, check the data, or pass --skip_nonfinite_batches")


def test_skip_nonfinite_batches_skips_the_update_and_stops_at_ten_in_a_row(tmp_path, caplog):
    from finetuning.training.reliability import MAX_SKIPPED_IN_A_ROW, ReliabilityCallback

    args, callback, optimizer = hook_args(tmp_path, skip_nonfinite_batches=True), ReliabilityCallback(), Optimizer()
    with caplog.at_level("WARNING", logger="finetuning"):
        step(callback, args, 0, losses=(float("nan"),), optimizer=optimizer)
    assert optimizer.zeroed == 1 and callback.skipped_in_a_row == 1
    assert "loss became nan at step 1: skipped this step's update (--skip_nonfinite_batches)" in caplog.text
    step(callback, args, 1, optimizer=optimizer)  # a finite step starts the count again
    assert optimizer.zeroed == 1 and callback.skipped_in_a_row == 0
    for number in range(MAX_SKIPPED_IN_A_ROW - 1):
        step(callback, args, 2 + number, grad_norm=float("inf"), optimizer=optimizer)
    assert callback.skipped_in_a_row == MAX_SKIPPED_IN_A_ROW - 1 == 9
    with pytest.raises(UserError, match=r"^gradient norm became inf at step 12, the 10th step in a row; stopped$"):
        step(callback, args, 11, grad_norm=float("inf"), optimizer=optimizer)


def test_a_signal_stops_at_the_step_end_with_a_checkpoint_and_exits_128_plus_it(tmp_path, caplog, capsys):
    from finetuning.training import reliability

    args = hook_args(tmp_path)
    callback = reliability.ReliabilityCallback()
    previous = signal.getsignal(signal.SIGTERM)
    callback.on_train_begin(args, SimpleNamespace(), SimpleNamespace())
    try:
        assert signal.getsignal(signal.SIGTERM) == callback._handle == signal.getsignal(signal.SIGINT)
        assert not step(callback, args, 0).should_save and callback.stopped_at is None
        callback._handle(signal.SIGTERM, None)  # only a flag: the step in progress finishes
        assert callback.signal_received == signal.SIGTERM and callback.stop_signal == 0
        with caplog.at_level("WARNING", logger="finetuning"):
            control = step(callback, args, 1)
        assert control.should_save and control.should_training_stop and callback.stopped_at == 2
        assert "SIGTERM received: saving a checkpoint at step 2, then stopping" in caplog.text
        epoch_end = SimpleNamespace(should_save=True, should_evaluate=True)
        callback.on_epoch_end(args, SimpleNamespace(global_step=2), epoch_end)
        assert not epoch_end.should_save and not epoch_end.should_evaluate  # saved at the step's end already
        control = step(callback, args, 2)  # a step more (a Trainer finishing its epoch) stops where it did
        assert callback.stopped_at == 2
    finally:
        callback.on_train_end(args, SimpleNamespace(), SimpleNamespace())
    assert signal.getsignal(signal.SIGTERM) == previous

    trainer = SimpleNamespace(
        args=args, callback_handler=SimpleNamespace(callbacks=[object(), callback]), is_world_process_zero=lambda: True
    )
    with pytest.raises(SystemExit) as exit_code:
        reliability.exit_if_stopped(trainer)
    assert exit_code.value.code == 143
    resume = f"rerun the same command to resume from {tmp_path / 'checkpoint-2'}"
    assert capsys.readouterr().err == f"stopped by SIGTERM at step 2, checkpoint saved: {resume}\n"
    reliability.exit_if_stopped(SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[])))  # none: returns
    callback.stopped_at = None
    reliability.exit_if_stopped(trainer)  # not stopped: returns


def test_a_finished_run_restores_the_signal_handlers_unless_a_signal_came_after_the_last_step(tmp_path, caplog):
    from finetuning.training.reliability import ReliabilityCallback

    previous = signal.getsignal(signal.SIGINT)
    callback = ReliabilityCallback()
    callback.on_train_begin(hook_args(tmp_path), SimpleNamespace(), SimpleNamespace())
    assert signal.getsignal(signal.SIGINT) == callback._handle
    callback.on_train_end(hook_args(tmp_path), SimpleNamespace(), SimpleNamespace())
    assert signal.getsignal(signal.SIGINT) == previous
    late = ReliabilityCallback()
    late.on_train_begin(hook_args(tmp_path), SimpleNamespace(), SimpleNamespace())
    try:
        late._handle(signal.SIGINT, None)
        with caplog.at_level("WARNING", logger="finetuning"):
            late.on_train_end(hook_args(tmp_path), SimpleNamespace(), SimpleNamespace())
        message = "SIGINT arrived after the last step: finishing the run; send it again to stop at once"
        assert message in caplog.text and signal.getsignal(signal.SIGINT) == late._handle  # saving goes on
    finally:
        for signum, handler in late._previous.items():
            signal.signal(signum, handler)
    assert signal.getsignal(signal.SIGINT) == previous


def test_saves_are_marked_complete_and_a_stale_checkpoint_of_this_step_is_unmarked(tmp_path):
    from finetuning.training.reliability import ReliabilityCallback

    args, callback = hook_args(tmp_path), ReliabilityCallback()
    stale = fake_checkpoint(tmp_path, 4, complete=True)  # an earlier run's, about to be overwritten
    callback.on_step_end(args, SimpleNamespace(global_step=4), SimpleNamespace())
    assert checkpoints.checkpoint_problem(stale) is not None
    callback.on_save(hook_args(tmp_path, should_save=False), SimpleNamespace(global_step=4), SimpleNamespace())
    assert checkpoints.checkpoint_problem(stale) is not None  # only the saving process writes markers
    callback.on_save(args, SimpleNamespace(global_step=4), SimpleNamespace())
    assert checkpoints.checkpoint_problem(stale) is None and callback.saved == {4}
    assert json.loads((stale / checkpoints.MARKER).read_text())["global_step"] == 4
    callback.on_epoch_end(args, SimpleNamespace(global_step=4), SimpleNamespace())  # this run's own: kept
    assert checkpoints.checkpoint_problem(stale) is None
    other = fake_checkpoint(tmp_path, 8, complete=True)
    callback.on_epoch_end(hook_args(tmp_path, should_save=False), SimpleNamespace(global_step=8), SimpleNamespace())
    assert checkpoints.checkpoint_problem(other) is None  # only the saving process touches markers


def test_attach_checks_every_micro_batch_and_keeps_the_hub_token_out_of_saved_arguments(monkeypatch):
    import torch

    from finetuning.training import reliability

    monkeypatch.delenv("HF_TOKEN", raising=False)
    callbacks = []
    trainer = SimpleNamespace(
        args=SimpleNamespace(hub_token="hf_secret"),
        callback_handler=SimpleNamespace(callbacks=callbacks),
        add_callback=callbacks.append,
        training_step=lambda batch: torch.tensor(batch),
        _get_grad_norm=lambda *args: torch.tensor(float("inf")),
    )
    callback = reliability.attach(trainer)
    assert callbacks == [callback] and callback.handler is trainer.callback_handler
    assert trainer.args.hub_token is None and __import__("os").environ["HF_TOKEN"] == "hf_secret"
    assert trainer.training_step(2.0).item() == 2.0 and callback._nonfinite.item() == 0
    trainer.training_step(float("nan"))
    assert callback._nonfinite.item() == 4
    assert trainer._get_grad_norm().item() == float("inf") and callback._grad_norm.item() == float("inf")


def test_a_second_signal_stops_at_once_the_previous_way(tmp_path):
    from finetuning.training.reliability import ReliabilityCallback

    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    callback = ReliabilityCallback()
    callback.on_train_begin(hook_args(tmp_path), SimpleNamespace(), SimpleNamespace())
    try:
        signal.raise_signal(signal.SIGINT)
        assert callback.signal_received == signal.SIGINT and received == []
        signal.raise_signal(signal.SIGINT)  # the handler before the run's gets it, and is the handler again
        assert received == [signal.SIGINT] and signal.getsignal(signal.SIGINT) == callback._previous[signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, callback._previous[signal.SIGTERM])


def test_overwriting_a_run_unmarks_its_checkpoints_unless_resuming_or_not_the_saving_process(tmp_path):
    from finetuning.training.reliability import ReliabilityCallback

    def begin(**overrides):
        values = dict(overwrite_output_dir=True, resume_from_checkpoint=None) | overrides
        callback = ReliabilityCallback()
        callback.on_train_begin(hook_args(tmp_path, **values), SimpleNamespace(), SimpleNamespace())
        callback.on_train_end(hook_args(tmp_path), SimpleNamespace(), SimpleNamespace())

    old = [fake_checkpoint(tmp_path, step, complete=True) for step in (4, 8)]
    for overrides in ({"overwrite_output_dir": False}, {"resume_from_checkpoint": True}, {"should_save": False}):
        begin(**overrides)
        assert all(checkpoints.checkpoint_problem(path) is None for path in old), overrides
    begin()
    assert all(checkpoints.checkpoint_problem(path) is not None for path in old)
    begin(output_dir=str(tmp_path / "new"))  # nothing there yet: nothing to do


def test_a_failure_closes_the_progress_bar_so_the_error_is_the_last_line():
    from finetuning.training.reliability import ReliabilityCallback

    bar = SimpleNamespace(closed=False)
    bar.close = lambda: setattr(bar, "closed", True)
    callback = ReliabilityCallback()
    callback.handler = SimpleNamespace(
        callbacks=[object(), SimpleNamespace(training_bar=None), SimpleNamespace(training_bar=bar)]
    )
    with pytest.raises(UserError, match=r"^loss became nan"):
        callback._fail("loss became nan at step 1")
    assert bar.closed
